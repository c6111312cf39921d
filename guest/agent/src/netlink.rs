//! A minimal rtnetlink client: just the few requests `network.configure` needs (set link
//! attributes, add an address, add a route), each sent with NLM_F_ACK and checked. Raw
//! messages keep the dependency surface small; the layouts are the kernel's uapi structs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_NEWROUTE: u16 = 24;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_F_NODAD: u32 = 0x02;
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTNH_F_ONLINK: u32 = 4;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;

/// A request body: the fixed header struct, then attributes.
pub struct Msg(Vec<u8>);

impl Msg {
    /// struct ifinfomsg { u8 family, pad; u16 type; i32 index; u32 flags, change; }
    pub fn link(index: u32, flags: u32, change: u32) -> Msg {
        let mut v = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&change.to_ne_bytes());
        Msg(v)
    }

    /// struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }
    pub fn addr(family: u8, prefix: u8, flags: u8, index: u32) -> Msg {
        let mut v = vec![family, prefix, flags, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        Msg(v)
    }

    /// struct rtmsg { u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags; }
    pub fn route(family: u8, dst_len: u8, scope: u8, flags: u32) -> Msg {
        const RT_TABLE_MAIN: u8 = 254;
        const RTPROT_BOOT: u8 = 3; // what `ip route add` uses
        const RTN_UNICAST: u8 = 1;
        let mut v = vec![family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST];
        v.extend_from_slice(&flags.to_ne_bytes());
        Msg(v)
    }

    pub fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A receive timeout: a lost ack must not hang the request forever.
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Send one request and wait for its ack; a kernel error comes back as io::Error.
    pub fn request(&mut self, ty: u16, flags: u16, body: Msg) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + body.0.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body.0);
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16384];
        loop {
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if let Some(r) = find_ack(&buf[..n as usize], seq) {
                return r;
            }
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The ack for `seq` in a datagram of netlink messages, if there is one.
fn find_ack(mut b: &[u8], seq: u32) -> Option<io::Result<()>> {
    while b.len() >= 16 {
        let len = u32_at(b, 0)? as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if ty == NLMSG_ERROR && u32_at(b, 8) == Some(seq) {
            let err = u32_at(b, 16)? as i32;
            return Some(if err == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-err)) });
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_padded() {
        let m = Msg::link(2, 0, 0).attr(IFLA_IFNAME, b"eth0\0");
        assert_eq!(m.0.len(), 16 + 12);
        assert_eq!(&m.0[16..18], &9u16.to_ne_bytes());
    }

    #[test]
    fn ack_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&7u32.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        d.extend_from_slice(&(-17i32).to_ne_bytes());
        d.extend_from_slice(&[0u8; 16]);
        let r = find_ack(&d, 7).unwrap();
        assert_eq!(r.unwrap_err().raw_os_error(), Some(17));
        assert!(find_ack(&d, 8).is_none());
        assert!(find_ack(&d[..10], 7).is_none());
    }
}

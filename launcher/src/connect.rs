//! `podvisor-launch connect --netns PATH --port N`: one port-forward connection into a host pod.
//!
//! Enters the network namespace PATH (a pod's pinned one), connects to localhost:N there (IPv4,
//! then IPv6, as kubelet's port-forward expects of a runtime), and relays between the
//! connection and its own stdin/stdout until both directions ended: stdin's end becomes a
//! shutdown(SHUT_WR) of the connection, the connection's end closes stdout. One 0 byte on stdout
//! comes first and says the connection is made (so the caller can tell a refused port from a
//! connection that ends at once). The daemon cannot
//! enter a namespace itself (a multi-threaded process), so it runs one of these per connection.
//! A connection that cannot be made exits 1 with the reason on stderr (as `connect: …`).

use std::os::unix::ffi::OsStrExt;

use crate::sys::{errno, open_cloexec};

const USAGE: &str = "usage: podvisor-launch connect --netns PATH --port N";

pub struct ConnectOpts {
    pub netns: String,
    pub port: u16,
}

pub fn parse(args: Vec<String>) -> Result<ConnectOpts, String> {
    let (mut netns, mut port) = (None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--netns" => netns = it.next(),
            "--port" => port = it.next().and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0),
            _ => return Err(USAGE.into()),
        }
    }
    let netns = netns.filter(|n| n.starts_with('/')).ok_or(USAGE)?;
    Ok(ConnectOpts { netns, port: port.ok_or(USAGE)? })
}

fn connect(port: u16) -> Result<libc::c_int, String> {
    let mut last = String::new();
    // 127.0.0.1, then ::1
    for v6 in [false, true] {
        let fd = unsafe { libc::socket(if v6 { libc::AF_INET6 } else { libc::AF_INET }, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            last = format!("socket: {}", errno());
            continue;
        }
        let rc = if v6 {
            let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = port.to_be();
            a.sin6_addr.s6_addr[15] = 1;
            unsafe { libc::connect(fd, &a as *const _ as *const libc::sockaddr, std::mem::size_of_val(&a) as libc::socklen_t) }
        } else {
            let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = port.to_be();
            a.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            unsafe { libc::connect(fd, &a as *const _ as *const libc::sockaddr, std::mem::size_of_val(&a) as libc::socklen_t) }
        };
        if rc == 0 {
            return Ok(fd);
        }
        last = format!("connecting to localhost:{port}: {}", errno());
        unsafe { libc::close(fd) };
    }
    Err(last)
}

/// Copies both ways with poll(2); returns when both directions have ended.
fn relay(sock: libc::c_int) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut up, mut down) = (true, true); // stdin → sock, sock → stdout
    while up || down {
        let mut fds = [
            libc::pollfd { fd: if up { 0 } else { -1 }, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: if down { sock } else { -1 }, events: libc::POLLIN, revents: 0 },
        ];
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        for (i, (from, to)) in [(0, sock), (sock, 1)].into_iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let n = unsafe { libc::read(from, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            let ok = n > 0 && write_all(to, &buf[..n as usize]);
            if !ok {
                if i == 0 {
                    up = false;
                    unsafe { libc::shutdown(sock, libc::SHUT_WR) };
                } else {
                    down = false;
                    unsafe { libc::close(1) };
                }
            }
        }
    }
}

fn write_all(fd: libc::c_int, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let n = unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), libc::MSG_NOSIGNAL) };
        let n = if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSOCK) {
            unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) }
        } else {
            n
        };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

pub fn run(o: ConnectOpts) -> Result<(), String> {
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let ns = open_cloexec(std::ffi::OsStr::new(&o.netns).as_bytes(), libc::O_RDONLY)?;
    if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
        return Err(format!("entering network namespace {}: {}", o.netns, errno()));
    }
    unsafe { libc::close(ns) };
    let sock = connect(o.port).map_err(|e| format!("connect: {e}"))?;
    if !write_all(1, &[0]) {
        return Ok(());
    }
    relay(sock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let o = parse(vec!["--netns".into(), "/run/p/net".into(), "--port".into(), "8080".into()]).unwrap();
        assert_eq!((o.netns.as_str(), o.port), ("/run/p/net", 8080));
        for bad in [vec!["--netns", "rel", "--port", "1"], vec!["--netns", "/n", "--port", "0"], vec!["--netns", "/n", "--port", "70000"], vec!["--netns", "/n"], vec!["--bogus"]] {
            assert!(parse(bad.iter().map(|s| s.to_string()).collect()).is_err(), "{bad:?}");
        }
    }
}

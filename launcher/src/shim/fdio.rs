//! File descriptor plumbing for the shim: pipes, non-blocking reads and writes, the pty master
//! libcontainer hands over a console socket, terminal sizes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::sys::errno;

pub fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", errno()));
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn dev_null() -> Result<OwnedFd, String> {
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open /dev/null: {}", errno()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

pub fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(format!("dup: {}", errno()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

pub enum Read {
    Data(usize),
    Eof,
    WouldBlock,
}

/// One read; EIO from a pty master whose slave side is closed counts as the end.
pub fn read(fd: RawFd, buf: &mut [u8]) -> Read {
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n > 0 {
            return Read::Data(n as usize);
        }
        if n == 0 {
            return Read::Eof;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Read::WouldBlock,
            _ => return Read::Eof,
        }
    }
}

/// Writes what it can without blocking; Err when the other side is gone. MSG_NOSIGNAL for
/// sockets, and pipes rely on the shim's SIGPIPE handler: no SIGPIPE ever kills the shim.
pub fn write(fd: RawFd, data: &[u8], socket: bool) -> Result<usize, ()> {
    loop {
        let n = if socket {
            unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), libc::MSG_NOSIGNAL) }
        } else {
            unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(0),
            _ => return Err(()),
        }
    }
}

/// Receives the pty master libcontainer sends over the console socket once the process made it.
pub fn recv_master(l: &UnixListener, timeout: Duration) -> Result<OwnedFd, String> {
    l.set_nonblocking(true).map_err(|e| format!("console socket: {e}"))?;
    let deadline = Instant::now() + timeout;
    let conn = loop {
        match l.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(format!("console socket accept: {e}")),
        }
    };
    let _ = conn.set_read_timeout(Some(timeout));
    conn.set_nonblocking(false).map_err(|e| format!("console socket: {e}"))?;
    let mut byte = [0u8; 4096];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr() as *mut libc::c_void, iov_len: byte.len() };
    let mut cbuf = [0u64; 8]; // room for one SCM_RIGHTS fd, aligned
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    if unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return Err(format!("console socket recvmsg: {}", errno()));
    }
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd) };
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Err("no pty master received on the console socket".into())
}

pub fn resize(master: RawFd, rows: u16, cols: u16) -> Result<(), String> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(format!("TIOCSWINSZ: {}", errno()));
    }
    Ok(())
}

//! Small shared helpers: logging, id/path validation, fd plumbing.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// Everything under this directory belongs to the agent; host-named targets must stay inside.
pub const RUN_DIR: &str = "/run/podvisor";

#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let up = std::fs::read_to_string("/proc/uptime").ok()
            .and_then(|s| s.split_whitespace().next().map(|x| x.to_string()))
            .unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "podvisor-agent[{}]: {}", up, format!($($arg)*));
    }};
}

/// Verbose tracing, enabled by `podvisor_debug=1` on the kernel command line (the kernel
/// hands unknown `k=v` parameters to PID 1 as environment).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {{
        if std::env::var_os("podvisor_debug").is_some() {
            $crate::log!($($arg)*);
        }
    }};
}

/// Ids from the host: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    let b = id.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid(format!("invalid {what} {id:?}")))
    }
}

/// An absolute, normalized path (no `..`, no `.`) strictly under /run/podvisor.
pub fn check_run_path(what: &str, p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    if p.len() > 4096 || !path.is_absolute() || p.contains('\0') {
        return Err(AgentError::invalid(format!("{what} must be an absolute path: {p:?}")));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => out.push(s),
            _ => return Err(AgentError::invalid(format!("{what} must be normalized: {p:?}"))),
        }
    }
    if !out.starts_with(RUN_DIR) || out == Path::new(RUN_DIR) {
        return Err(AgentError::invalid(format!("{what} must be under {RUN_DIR}: {p:?}")));
    }
    // Refuse symlinks on the way: a symlinked component could point anywhere.
    let mut cur = PathBuf::from("/");
    for c in out.components().skip(1) {
        cur.push(c);
        if let Ok(md) = std::fs::symlink_metadata(&cur) {
            if md.file_type().is_symlink() {
                return Err(AgentError::invalid(format!("{what} goes through a symlink: {p:?}")));
            }
        }
    }
    Ok(out)
}

pub fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// A pipe with both ends close-on-exec (libcontainer dup2()s the child's end onto 0/1/2).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(AgentError::internal(format!("pipe2: {}", std::io::Error::last_os_error())));
    }
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

pub fn dev_null() -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    f.map(OwnedFd::from).map_err(|e| AgentError::internal(format!("/dev/null: {e}")))
}

pub fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(AgentError::internal(format!("dup: {}", std::io::Error::last_os_error())));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

pub fn now_unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Open `rel` inside `root` with every symlink resolved as if `root` were `/`
/// (openat2 RESOLVE_IN_ROOT): image files cannot point us outside the image.
pub fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    let dir = std::fs::File::open(root).ok()?;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let how = OpenHow { flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE_IN_ROOT };
    let c = CString::new(rel).ok()?;
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
    };
    if fd < 0 {
        return None;
    }
    let f = unsafe { std::fs::File::from_raw_fd(fd as RawFd) };
    let mut s = String::new();
    use std::io::Read;
    f.take(4 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("id", "abc-1.2_3").is_ok());
        assert!(check_id("id", "").is_err());
        assert!(check_id("id", ".x").is_err());
        assert!(check_id("id", "a/b").is_err());
        assert!(check_id("id", &"a".repeat(129)).is_err());
        assert!(check_id("id", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn run_paths() {
        assert!(check_run_path("t", "/run/podvisor/images/x").is_ok());
        assert!(check_run_path("t", "/run/podvisor/../etc").is_err());
        assert!(check_run_path("t", "/etc").is_err());
        assert!(check_run_path("t", "/run/podvisor").is_err());
        assert!(check_run_path("t", "relative").is_err());
    }
}

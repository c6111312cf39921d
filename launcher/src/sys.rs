//! Small libc helpers shared by the subcommands.

use std::ffi::CString;
use std::os::unix::io::RawFd;

pub fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

pub fn cstr(p: &[u8]) -> Result<CString, String> {
    CString::new(p).map_err(|_| format!("{:?}: contains a NUL byte", String::from_utf8_lossy(p)))
}

pub fn open_cloexec(path: &[u8], flags: libc::c_int) -> Result<RawFd, String> {
    let c = cstr(path)?;
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {}: {}", String::from_utf8_lossy(path), errno()));
    }
    Ok(fd)
}

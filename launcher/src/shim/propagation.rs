//! Mount propagation of a host container's own mounts: the OCI mount options `rprivate`,
//! `rslave`, `rshared` (and their non-recursive and `unbindable` forms), which CRI's
//! `PROPAGATION_PRIVATE` / `HOST_TO_CONTAINER` / `BIDIRECTIONAL` become. libcontainer 0.7 parses
//! them and drops them (it honours only `linux.rootfsPropagation`), so without this every bind
//! mount kept the propagation its source got from the root's (a slave of a shared host path,
//! whatever the CRI mount asked). runc sets each with one more mount(2) after the bind; here it is
//! done right after libcontainer's create, while the init waits for start and nothing of the
//! container has run: a child of the shim enters the container's mount namespace (its root is
//! then the container's root, after pivot_root), opens each destination resolved inside that
//! root (openat2 RESOLVE_IN_ROOT, no magic links, as libcontainer resolved it to mount there) and
//! sets the propagation with mount_setattr(2), recursively for the `r` forms, in spec order (a
//! later nested mount overrides what an earlier recursive change gave it).
//!
//! A bidirectional mount needs the container's root shared (`rootfsPropagation: "shared"`, the
//! daemon's spec builder sets it, as containerd sets `rshared`): the container's copies of the
//! host's shared mounts then stay peers of the host's, so the bind is one too; every other
//! mount of that container is then made private or slave here.
//!
//! Trade-off: a fork per container create that has such mounts (each CRI mount has one), well
//! under a millisecond, instead of a patched libcontainer.

use std::ffi::CString;

use serde_json::Value;

use crate::sys::errno;

const MS_PRIVATE: u64 = libc::MS_PRIVATE as u64;
const MS_SLAVE: u64 = libc::MS_SLAVE as u64;
const MS_SHARED: u64 = libc::MS_SHARED as u64;
const MS_UNBINDABLE: u64 = libc::MS_UNBINDABLE as u64;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// One propagation change: where (a path in the container) and what.
#[derive(Debug, PartialEq)]
pub struct Change {
    pub dest: CString,
    pub propagation: u64,
    pub recursive: bool,
}

fn option(o: &str) -> Option<(u64, bool)> {
    Some(match o {
        "private" => (MS_PRIVATE, false),
        "rprivate" => (MS_PRIVATE, true),
        "slave" => (MS_SLAVE, false),
        "rslave" => (MS_SLAVE, true),
        "shared" => (MS_SHARED, false),
        "rshared" => (MS_SHARED, true),
        "unbindable" => (MS_UNBINDABLE, false),
        "runbindable" => (MS_UNBINDABLE, true),
        _ => return None,
    })
}

/// The changes `spec`'s mounts ask for, in spec order (each propagation option of a mount in
/// its order, as runc applies them).
pub fn changes(spec: &Value) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    for m in spec.get("mounts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let Some(dest) = m.get("destination").and_then(Value::as_str) else { continue };
        for o in m.get("options").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            if let Some((propagation, recursive)) = o.as_str().and_then(option) {
                let dest = CString::new(dest).map_err(|_| format!("mount destination {dest:?} contains a NUL byte"))?;
                out.push(Change { dest, propagation, recursive });
            }
        }
    }
    Ok(out)
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// In the child, after setns: sets one change; the failing step's name on error.
unsafe fn set_one(root: libc::c_int, c: &Change) -> Result<(), &'static str> {
    let how = OpenHow { flags: (libc::O_PATH | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    let fd = libc::syscall(libc::SYS_openat2, root, c.dest.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) as libc::c_int;
    if fd < 0 {
        return Err("openat2");
    }
    let attr = libc::mount_attr { attr_set: 0, attr_clr: 0, propagation: c.propagation, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if c.recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    let r = libc::syscall(libc::SYS_mount_setattr, fd, c"".as_ptr(), flags, &attr as *const libc::mount_attr, std::mem::size_of::<libc::mount_attr>());
    libc::close(fd);
    if r < 0 {
        return Err("mount_setattr");
    }
    Ok(())
}

/// The child's report on the pipe: the change's index, errno, the step's name.
const MSG: usize = 32;

/// In the child: reports which change failed at which step (errno from the failed call), exits.
unsafe fn child_fail(fd: libc::c_int, i: usize, step: &str) -> ! {
    let e = *libc::__errno_location();
    let mut msg = [0u8; MSG];
    let n = step.len().min(MSG - 13);
    msg[..8].copy_from_slice(&(i as u64).to_ne_bytes());
    msg[8..12].copy_from_slice(&e.to_ne_bytes());
    msg[12] = n as u8;
    msg[13..13 + n].copy_from_slice(&step.as_bytes()[..n]);
    libc::write(fd, msg.as_ptr().cast(), MSG);
    libc::_exit(1)
}

/// Applies `changes` in the mount namespace of process `pid` (the container's init, created and
/// not yet started).
pub fn apply(pid: i32, changes: &[Change]) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let ns = crate::sys::open_cloexec(format!("/proc/{pid}/ns/mnt").as_bytes(), libc::O_RDONLY)?;
    let mut pipe = [0; 2];
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        let e = errno();
        unsafe { libc::close(ns) };
        return Err(format!("pipe: {e}"));
    }
    let child = unsafe { libc::fork() };
    if child == 0 {
        // the child: only raw syscalls from here
        unsafe {
            libc::close(pipe[0]);
            if libc::setns(ns, libc::CLONE_NEWNS) < 0 {
                child_fail(pipe[1], usize::MAX, "setns");
            }
            let root = libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            if root < 0 {
                child_fail(pipe[1], usize::MAX, "open root");
            }
            for (i, c) in changes.iter().enumerate() {
                if let Err(step) = set_one(root, c) {
                    child_fail(pipe[1], i, step);
                }
            }
            libc::_exit(0)
        }
    }
    let fork_err = errno();
    unsafe {
        libc::close(pipe[1]);
        libc::close(ns);
    }
    if child < 0 {
        unsafe { libc::close(pipe[0]) };
        return Err(format!("fork: {fork_err}"));
    }
    let mut msg = [0u8; MSG];
    let n = loop {
        let n = unsafe { libc::read(pipe[0], msg.as_mut_ptr().cast(), msg.len()) };
        if n < 0 && errno().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    unsafe { libc::close(pipe[0]) };
    let mut status = 0;
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0 && errno().kind() == std::io::ErrorKind::Interrupted {}
    if n == msg.len() as isize {
        let i = u64::from_ne_bytes(msg[..8].try_into().unwrap()) as usize;
        let e = std::io::Error::from_raw_os_error(i32::from_ne_bytes(msg[8..12].try_into().unwrap()));
        let step = String::from_utf8_lossy(&msg[13..13 + (msg[12] as usize).min(MSG - 13)]).into_owned();
        return Err(match changes.get(i) {
            Some(c) => format!("mount propagation of {}: {step}: {e}", c.dest.to_string_lossy()),
            None => format!("mount propagation: {step}: {e}"),
        });
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("mount propagation: the helper process ended with status {status:#x}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_follow_the_spec_order_and_ignore_other_options() {
        let spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "options": ["nosuid"]},
            {"destination": "/a", "type": "bind", "options": ["rbind", "rw", "rshared"]},
            {"destination": "/a/b", "type": "bind", "options": ["rbind", "rro", "rprivate"]},
            {"destination": "/c", "type": "bind", "options": ["bind", "slave", "unbindable"]},
            {"destination": "/d", "type": "bind", "options": ["rbind", "rw"]},
        ]});
        let c = changes(&spec).unwrap();
        let got: Vec<(&str, u64, bool)> = c.iter().map(|c| (c.dest.to_str().unwrap(), c.propagation, c.recursive)).collect();
        assert_eq!(got, vec![("/a", MS_SHARED, true), ("/a/b", MS_PRIVATE, true), ("/c", MS_SLAVE, false), ("/c", MS_UNBINDABLE, false)]);
        assert!(changes(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn nothing_to_do_needs_no_process() {
        // no fork, no /proc lookup: an impossible pid is fine
        apply(-1, &[]).unwrap();
    }
}

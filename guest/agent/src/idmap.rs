//! User namespaces for containers of a `hostUsers: false` pod (PROTOCOL.md "container.create",
//! user namespaces): the image a container runs from belongs to guest uid 0, while its root is
//! a mapped uid (e.g. 65536), so its root file system is built on an *idmapped* clone of the
//! image mount (mount_setattr MOUNT_ATTR_IDMAP, erofs allows it since Linux 5.19): through it
//! the image's root-owned files belong to the container's root, without copying or chowning
//! the image. The writable layer (guest tmpfs, which 6.1 cannot idmap) is chowned instead: it
//! starts empty, and what the container writes into it is owned by the mapped ids anyway.
//!
//! An idmapped mount takes its mapping from a user namespace: one is made per distinct mapping
//! (a short-lived child unshares it, the agent writes the maps as root and keeps the namespace
//! file open) and kept for the VM's lifetime; pods have one mapping, so there is one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Deserialize;

use crate::error::{AgentError, Result};

/// One OCI `linux.uidMappings` / `gidMappings` entry.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IdMap {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

/// A user namespace's mapping: what the host asks for, validated.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Mapping {
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
}

/// At most this many lines per map (the kernel's own limit is 340; pods use one).
const MAX_LINES: usize = 5;

fn check(what: &str, m: &[IdMap]) -> Result<()> {
    if m.is_empty() || m.len() > MAX_LINES {
        return Err(AgentError::invalid(format!("{what}: 1..{MAX_LINES} mappings")));
    }
    for e in m {
        if e.size == 0 || (e.host_id as u64 + e.size as u64) > u32::MAX as u64 || (e.container_id as u64 + e.size as u64) > u32::MAX as u64 {
            return Err(AgentError::invalid(format!("{what}: mapping {e:?} out of range")));
        }
    }
    Ok(())
}

impl Mapping {
    pub fn new(uids: Vec<IdMap>, gids: Vec<IdMap>) -> Result<Mapping> {
        check("uidMappings", &uids)?;
        check("gidMappings", &gids)?;
        Ok(Mapping { uids, gids })
    }

    /// The host (guest) id that `id` inside the namespace maps to.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        map_id(&self.uids, id)
    }

    pub fn host_gid(&self, id: u32) -> Option<u32> {
        map_id(&self.gids, id)
    }
}

fn map_id(m: &[IdMap], id: u32) -> Option<u32> {
    m.iter().find(|e| id >= e.container_id && id - e.container_id < e.size).map(|e| e.host_id + (id - e.container_id))
}

fn map_text(m: &[IdMap]) -> String {
    m.iter().map(|e| format!("{} {} {}\n", e.container_id, e.host_id, e.size)).collect()
}

/// User namespaces by mapping, made on first use and kept open.
#[derive(Default)]
pub struct UserNamespaces {
    by_mapping: RefCell<HashMap<Mapping, OwnedFd>>,
}

impl UserNamespaces {
    /// A file descriptor of a user namespace with `m` (made on first use).
    pub fn get(&self, m: &Mapping) -> Result<OwnedFd> {
        if let Some(fd) = self.by_mapping.borrow().get(m) {
            return dup(fd);
        }
        let fd = make_userns(m)?;
        let out = dup(&fd)?;
        self.by_mapping.borrow_mut().insert(m.clone(), fd);
        Ok(out)
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(AgentError::internal(format!("dup: {}", std::io::Error::last_os_error())));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn os_err(what: &str) -> AgentError {
    AgentError::internal(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// A child unshares a user namespace and waits; the agent writes the maps (as root of the
/// parent namespace any mapping is allowed, and setgroups stays allowed), opens the namespace
/// and lets the child go. Only async-signal-safe calls in the child (we may be multi-threaded
/// through libcontainer's helpers).
fn make_userns(m: &Mapping) -> Result<OwnedFd> {
    let mut ready = [0; 2];
    let mut go = [0; 2];
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } < 0 || unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(os_err("pipe2"));
    }
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        unsafe {
            // our copies of the parent's ends, or the read below would never see EOF
            libc::close(ready[0]);
            libc::close(go[1]);
            let ok: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 { 1 } else { 0 };
            libc::write(ready[1], &ok as *const u8 as *const libc::c_void, 1);
            let mut b = 0u8;
            libc::read(go[0], &mut b as *mut u8 as *mut libc::c_void, 1);
            libc::_exit(0);
        }
    }
    unsafe {
        libc::close(ready[1]);
        libc::close(go[0]);
    }
    let ready_r = unsafe { OwnedFd::from_raw_fd(ready[0]) };
    let go_w = unsafe { OwnedFd::from_raw_fd(go[1]) };
    let res = (|| {
        let mut ok = 0u8;
        let n = unsafe { libc::read(ready_r.as_raw_fd(), &mut ok as *mut u8 as *mut libc::c_void, 1) };
        if n != 1 || ok != 1 {
            return Err(AgentError::internal("unshare(CLONE_NEWUSER) failed in the helper"));
        }
        std::fs::write(format!("/proc/{pid}/uid_map"), map_text(&m.uids)).map_err(|e| AgentError::invalid(format!("uid_map: {e}")))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map_text(&m.gids)).map_err(|e| AgentError::invalid(format!("gid_map: {e}")))?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).map_err(|e| AgentError::internal(format!("open user namespace: {e}")))?;
        Ok(OwnedFd::from(f))
    })();
    drop(go_w); // the child's read returns: it exits
    // Reaped here or by the reaper task, whichever comes first.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    res
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| AgentError::invalid(format!("path with NUL: {}", p.display())))
}

/// Mounts an idmapped clone of the mount at `src` (not the mounts under it) at `dst`
/// (created): files owned by id N there belong to the id N maps to through `userns`.
pub fn idmapped_clone(src: &Path, dst: &Path, userns: &OwnedFd) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| AgentError::internal(format!("mkdir {}: {e}", dst.display())))?;
    let s = cstr(src)?;
    let d = cstr(dst)?;
    let empty = CString::new("").unwrap();
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, s.as_ptr(), libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(&format!("open_tree {}", src.display())));
    }
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr { attr_set: libc::MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    let r = unsafe {
        libc::syscall(libc::SYS_mount_setattr, tree.as_raw_fd(), empty.as_ptr(), libc::AT_EMPTY_PATH, &attr as *const libc::mount_attr, std::mem::size_of::<libc::mount_attr>())
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(AgentError::precondition(format!("idmapped mount of {} (the guest kernel must allow it for this file system): {e}", src.display())));
    }
    let r = unsafe { libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, d.as_ptr(), libc::MOVE_MOUNT_F_EMPTY_PATH) };
    if r < 0 {
        return Err(os_err(&format!("move_mount to {}", dst.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ids() {
        let m = Mapping::new(vec![IdMap { container_id: 0, host_id: 65536, size: 65536 }], vec![IdMap { container_id: 0, host_id: 1000, size: 10 }]).unwrap();
        assert_eq!(m.host_uid(0), Some(65536));
        assert_eq!(m.host_uid(65535), Some(131071));
        assert_eq!(m.host_uid(65536), None);
        assert_eq!(m.host_gid(9), Some(1009));
        assert_eq!(m.host_gid(10), None);
        assert!(Mapping::new(vec![], vec![]).is_err());
        assert!(Mapping::new(vec![IdMap { container_id: 0, host_id: u32::MAX, size: 2 }], vec![IdMap { container_id: 0, host_id: 0, size: 1 }]).is_err());
        assert_eq!(map_text(&m.uids), "0 65536 65536\n");
    }
}

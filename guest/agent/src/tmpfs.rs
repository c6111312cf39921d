//! `tmpfs.mount`: a pod-wide tmpfs in guest memory, for volumes that kubelet backs with memory
//! (an emptyDir with `medium: Memory`). Mounted once per pod under /run/podvisor/tmpfs/<name>
//! and bound into every container that mounts the volume, so they share it; its pages are the
//! VM's own memory, charged to the container that writes them, and I/O never crosses 9p.
//!
//! A container may mount a sub path of such a volume (kubelet's subPath). Other containers of the
//! pod can write to the volume, so a sub path could be swapped for a symlink out of it between a
//! check and the bind. The sub path is therefore walked one component at a time with
//! O_NOFOLLOW (created when missing, as kubelet does on a node) and the directory reached is bound
//! through its file descriptor to a private path of the container (`bind_sub_path`), which is
//! what the container's spec then names.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::disks::mount_fstype;
use crate::error::{AgentError, Ctx, Result};
use crate::util::check_id;

pub const TMPFS_DIR: &str = "/run/podvisor/tmpfs";
/// A tmpfs smaller than a page is a mistake.
const MIN_SIZE: u64 = 4096;

#[derive(Deserialize)]
struct MountParams {
    name: String,
    size: u64,
    #[serde(default = "default_mode")]
    mode: u32,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
}

fn default_mode() -> u32 {
    0o777
}

/// `{ name, size, mode, uid, gid }` → `{ "path": guest path }`. Idempotent: a volume that is
/// already mounted is kept as it is (its data belongs to the pod), and its path returned.
pub fn mount_tmpfs(params: Value) -> Result<Value> {
    let p: MountParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("tmpfs.mount: {e}")))?;
    check_id("tmpfs name", &p.name)?;
    if p.size < MIN_SIZE {
        return Err(AgentError::invalid(format!("tmpfs size {} is below {MIN_SIZE} bytes", p.size)));
    }
    if p.mode > 0o7777 {
        return Err(AgentError::invalid(format!("tmpfs mode {:o} is not a file mode", p.mode)));
    }
    let target = Path::new(TMPFS_DIR).join(&p.name);
    let tstr = target.to_string_lossy().to_string();
    match mount_fstype(&tstr).as_deref() {
        Some("tmpfs") => return Ok(json!({ "path": tstr })),
        Some(other) => return Err(AgentError::precondition(format!("{tstr} is already a {other} mount"))),
        None => {}
    }
    std::fs::create_dir_all(&target).ctx("mkdir tmpfs volume")?;
    let opts = format!("size={},mode={:o},uid={},gid={}", p.size, p.mode, p.uid, p.gid);
    mount(Some("tmpfs"), &target, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
        .map_err(|e| AgentError::internal(format!("mount tmpfs on {tstr} ({opts}): {e}")))?;
    crate::log!("tmpfs volume {} mounted ({opts})", p.name);
    Ok(json!({ "path": tstr }))
}

/// For a mount source inside a tmpfs volume: None when it is the volume itself (bound as is),
/// else the volume root and the sub path. Errors for a source that names no mounted volume or
/// is not normalized.
pub fn split_source(src: &str) -> Result<Option<(PathBuf, PathBuf)>> {
    let rel = Path::new(src).strip_prefix(TMPFS_DIR).map_err(|_| AgentError::invalid(format!("tmpfs source {src:?}")))?;
    let mut comps = rel.components();
    let name = match comps.next() {
        Some(Component::Normal(n)) => n.to_string_lossy().to_string(),
        _ => return Err(AgentError::invalid(format!("tmpfs source {src:?} names no volume"))),
    };
    check_id("tmpfs name", &name)?;
    let root = Path::new(TMPFS_DIR).join(&name);
    if mount_fstype(&root.to_string_lossy()).as_deref() != Some("tmpfs") {
        return Err(AgentError::not_found(format!("tmpfs volume {name} is not mounted (tmpfs.mount first)")));
    }
    let mut sub = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(n) => sub.push(n),
            _ => return Err(AgentError::invalid(format!("tmpfs source {src:?} must be normalized"))),
        }
    }
    if sub.as_os_str().len() > 4096 {
        return Err(AgentError::invalid("tmpfs sub path too long"));
    }
    Ok((!sub.as_os_str().is_empty()).then_some((root, sub)))
}

/// Opens `root/sub` without following a symlink anywhere below `root`, creating missing
/// directories with the mode of `root`, as kubelet makes a missing subPath (so that an fsGroup's
/// group keeps its access; the group itself is inherited through the set-gid bit).
fn open_beneath(root: &Path, sub: &Path) -> Result<OwnedFd> {
    let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| AgentError::invalid("NUL in a path"));
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = unsafe { libc::open(c(root)?.as_ptr(), flags) };
    if fd < 0 {
        return Err(AgentError::internal(format!("open {}: {}", root.display(), std::io::Error::last_os_error())));
    }
    let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
    let mode = std::fs::metadata(root).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777).ctx("stat tmpfs volume")?;
    for comp in sub.components() {
        let name = c(Path::new(comp.as_os_str()))?;
        // mkdirat does not follow a symlink in the last component (EEXIST instead)
        if unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o700) } == 0 {
            // the exact mode, whatever the umask (a directory we made cannot be a symlink)
            unsafe { libc::fchmodat(cur.as_raw_fd(), name.as_ptr(), mode, 0) };
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(AgentError::internal(format!("mkdir {}: {e}", sub.display())));
            }
        }
        let fd = unsafe { libc::openat(cur.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => AgentError::invalid(format!("tmpfs sub path {} is not a directory (a symlink?)", sub.display())),
                _ => AgentError::internal(format!("open {}: {e}", sub.display())),
            });
        }
        cur = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(cur)
}

/// Binds the directory `root/sub` (reached without symlinks) onto `at` (created), a path only
/// the agent writes; the container's spec names `at`. The caller unmounts it with the container.
pub fn bind_sub_path(root: &Path, sub: &Path, at: &Path) -> Result<()> {
    let fd = open_beneath(root, sub)?;
    std::fs::create_dir_all(at).ctx("mkdir tmpfs bind")?;
    let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(Some(src.as_str()), at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| AgentError::internal(format!("bind {}/{} on {}: {e}", root.display(), sub.display(), at.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_sub_path_without_following_symlinks() {
        let dir = std::env::temp_dir().join(format!("pv-tmpfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vol/a")).unwrap();
        std::os::unix::fs::symlink("/", dir.join("vol/a/link")).unwrap();
        let root = dir.join("vol");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o2770)).unwrap();
        assert!(open_beneath(&root, Path::new("a/b/c")).is_ok());
        assert!(dir.join("vol/a/b/c").is_dir(), "missing directories are created");
        assert_eq!(std::fs::metadata(dir.join("vol/a/b/c")).unwrap().permissions().mode() & 0o7777, 0o2770, "with the volume's mode");
        assert_eq!(std::fs::metadata(dir.join("vol/a")).unwrap().permissions().mode() & 0o7777, 0o755, "what existed stays as it was");
        let e = open_beneath(&root, Path::new("a/link")).unwrap_err();
        assert_eq!(e.code, "invalid_argument", "{}", e.message);
        let e = open_beneath(&root, Path::new("a/link/etc")).unwrap_err();
        assert_eq!(e.code, "invalid_argument", "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sources_must_be_normalized_and_name_a_volume() {
        assert!(split_source("/run/podvisor/tmpfs").is_err());
        assert!(split_source("/run/podvisor/tmpfs/../x").is_err());
        assert!(split_source("/run/podvisor/other/x").is_err());
    }
}

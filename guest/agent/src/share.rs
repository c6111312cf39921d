//! `share.release` / `share.attach`: the pod's 9p host share let go for a checkpoint and taken
//! back after it (PROTOCOL.md "share.release").
//!
//! QEMU refuses to save a VM while its guest has the 9p export attached (the migration blocker
//! is added at the attach and dropped only when the guest clunks the attach's root fid, i.e.
//! when the 9p superblock goes). Every container's share-backed mounts (host paths, files such
//! as /etc/hosts, ConfigMaps…) are binds of that superblock in the container's own mount
//! namespace, so the agent's umount alone does not end it: release unmounts each of them in each
//! container's namespace (deepest first), then the agent's share, and remembers them; attach
//! (after sandbox.setup mounted the share again, in this VM or in one restored from the
//! checkpoint) clones each source out of the new share (open_tree OPEN_TREE_CLONE, the flags and
//! propagation it had set with mount_setattr) and moves it into the container's namespace at
//! the same place (setns in a thread of its own, then move_mount).
//!
//! Trade-offs: while released (the VM's save, tens of ms to seconds) a container looking at one
//! of those paths sees what lies under the mount in its root file system (an empty file or
//! directory), and what it writes there stays in that layer; a process holding a file, a
//! working directory or a mapping on the share pins the superblock, so release refuses (and
//! changes nothing), naming the process and path; so does a non-share mount stacked on a share
//! mount, which the re-attach could not bring back.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use crate::containers::{Containers, Status};
use crate::disks::is_mountpoint;
use crate::error::{AgentError, Result};
use crate::log;
use crate::sandbox::SHARED_DIR;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// At most this many busy files are reported (a process may hold thousands).
const MAX_BUSY: usize = 16;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One share mount of a container, as it was before release.
#[derive(Clone, Debug, PartialEq)]
struct ShareMount {
    /// where it is mounted, in the container's root
    point: String,
    /// its source: a path inside the share ("/c/<id>/0")
    root: String,
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
}

/// The share mounts of one container's mount namespace, in mount order.
struct Released {
    id: String,
    pid: i32,
    /// readlink of /proc/<pid>/ns/mnt: the same namespace still (a restarted process is not)
    ns: String,
    mounts: Vec<ShareMount>,
}

/// What release took down, for attach (the agent's memory: it survives the checkpoint).
static RELEASED: Mutex<Option<Vec<Released>>> = Mutex::new(None);

/// A line of /proc/<pid>/mountinfo.
#[derive(Debug)]
struct MountLine {
    id: u32,
    parent: u32,
    dev: (u32, u32),
    root: String,
    point: String,
    opts: String,
    optional: Vec<String>,
    fstype: String,
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            if f.len() < 6 {
                return None;
            }
            let (maj, min) = f[2].split_once(':')?;
            Some(MountLine {
                id: f[0].parse().ok()?,
                parent: f[1].parse().ok()?,
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: unescape(f[3]),
                point: unescape(f[4]),
                opts: f[5].to_string(),
                optional: f[6..].iter().map(|s| s.to_string()).collect(),
                fstype: post.split(' ').next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The mount's flags as mount_setattr sets them back, and its propagation.
fn share_mount(m: &MountLine) -> ShareMount {
    let opts: HashSet<&str> = m.opts.split(',').collect();
    let mut set = 0;
    let mut clr = 0;
    for (name, bit) in [("ro", MOUNT_ATTR_RDONLY), ("nosuid", MOUNT_ATTR_NOSUID), ("nodev", MOUNT_ATTR_NODEV), ("noexec", MOUNT_ATTR_NOEXEC)] {
        if opts.contains(name) {
            set |= bit;
        } else {
            clr |= bit;
        }
    }
    let propagation = if m.optional.iter().any(|o| o.starts_with("shared:")) {
        libc::MS_SHARED
    } else if m.optional.iter().any(|o| o.starts_with("master:")) {
        libc::MS_SLAVE
    } else {
        libc::MS_PRIVATE
    };
    ShareMount { point: m.point.clone(), root: m.root.clone(), attr_set: set, attr_clr: clr, propagation: propagation as u64 }
}

/// The share mounts of a mount table (device `dev`), in mount order; refused when a mount that
/// is not of the share sits on one (attach could not bring it back) or one is idmapped.
fn share_mounts(lines: &[MountLine], dev: (u32, u32), who: &str) -> Result<Vec<ShareMount>> {
    let share: Vec<&MountLine> = lines.iter().filter(|m| m.dev == dev && m.fstype == "9p").collect();
    let ids: HashSet<u32> = share.iter().map(|m| m.id).collect();
    for m in lines {
        if ids.contains(&m.parent) && !ids.contains(&m.id) {
            return Err(AgentError::precondition(format!("{who}: {} ({}) is mounted on a host-share mount, which cannot be let go and brought back", m.point, m.fstype)));
        }
    }
    if let Some(m) = share.iter().find(|m| m.opts.split(',').any(|o| o == "idmapped")) {
        return Err(AgentError::precondition(format!("{who}: host-share mount {} is idmapped", m.point)));
    }
    Ok(share.iter().map(|m| share_mount(m)).collect())
}

fn cstr(s: &str) -> std::result::Result<CString, String> {
    CString::new(s).map_err(|_| format!("path with NUL: {s:?}"))
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Runs `f` in a thread of its own that has joined the mount namespace of `pid` and its root
/// (unshare CLONE_FS first: a thread sharing its fs with others cannot setns a mount
/// namespace).
fn in_mount_ns<R: Send + 'static>(pid: i32, f: impl FnOnce() -> R + Send + 'static) -> std::result::Result<R, String> {
    let ns = File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("mount namespace of pid {pid}: {e}"))?;
    let root = File::open(format!("/proc/{pid}/root")).map_err(|e| format!("root of pid {pid}: {e}"))?;
    std::thread::spawn(move || -> std::result::Result<R, String> {
        unsafe {
            if libc::unshare(libc::CLONE_FS) != 0 {
                return Err(errno("unshare(CLONE_FS)"));
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                return Err(errno("setns"));
            }
            if libc::fchdir(root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0 {
                return Err(errno("chroot to the container's root"));
            }
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "the mount thread panicked".to_string())?
}

/// umount(2), retried while busy for up to a second: a path walk in flight (a container's stat
/// of a file there) holds the mount for the length of its 9p round trip. A holder the busy scan
/// did not see (one that came after it) keeps it busy: then the error.
fn umount_settled(p: &CString) -> std::result::Result<(), std::io::Error> {
    let deadline = Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if unsafe { libc::umount2(p.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Unmounts `points` (the last first) in the namespace of `pid`; the number unmounted and, if
/// one failed, why.
fn unmount_in(pid: i32, points: Vec<String>) -> (usize, Option<String>) {
    let n = points.len();
    match in_mount_ns(pid, move || {
        for (done, p) in points.iter().rev().enumerate() {
            let c = match cstr(p) {
                Ok(c) => c,
                Err(e) => return (done, Some(e)),
            };
            if let Err(e) = umount_settled(&c) {
                return (done, Some(format!("umount {p}: {e}")));
            }
        }
        (n, None)
    }) {
        Ok(r) => r,
        Err(e) => (0, Some(e)),
    }
}

/// A detached clone of `root` (inside the share) with the mount's flags and propagation.
fn clone_tree(m: &ShareMount) -> std::result::Result<OwnedFd, String> {
    let src = if m.root == "/" { SHARED_DIR.to_string() } else { format!("{SHARED_DIR}{}", m.root) };
    let s = cstr(&src)?;
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, s.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint) };
    if fd < 0 {
        return Err(errno(&format!("open_tree {src}")));
    }
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr { attr_set: m.attr_set, attr_clr: m.attr_clr, propagation: m.propagation, userns_fd: 0 };
    let r = unsafe { libc::syscall(libc::SYS_mount_setattr, tree.as_raw_fd(), c"".as_ptr(), AT_EMPTY_PATH, &attr as *const MountAttr, std::mem::size_of::<MountAttr>()) };
    if r < 0 {
        return Err(errno(&format!("mount_setattr {src}")));
    }
    Ok(tree)
}

/// Mounts `mounts` (in order) back into the namespace of `pid`; the failures, if any.
fn attach_in(pid: i32, mounts: &[ShareMount]) -> Vec<String> {
    let mut trees = Vec::new();
    let mut failed = Vec::new();
    for m in mounts {
        match clone_tree(m) {
            Ok(t) => trees.push((m.point.clone(), t)),
            Err(e) => failed.push(format!("{}: {e}", m.point)),
        }
    }
    match in_mount_ns(pid, move || {
        let mut failed = Vec::new();
        for (point, tree) in trees {
            let r = cstr(&point).and_then(|p| {
                let r = unsafe { libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, p.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) };
                if r < 0 {
                    Err(errno("move_mount"))
                } else {
                    Ok(())
                }
            });
            if let Err(e) = r {
                failed.push(format!("{point}: {e}"));
            }
        }
        failed
    }) {
        Ok(f) => failed.extend(f),
        Err(e) => failed.push(e),
    }
    failed
}

fn ns_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().map(|p| p.to_string_lossy().into_owned())
}

fn dev_pair(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// Processes holding something on the share (`dev`): open files, working directory, root,
/// mappings. (container id or "", pid, path)
fn busy(dev: u64, owners: &[(String, String)]) -> Vec<(String, i32, String)> {
    let me = std::process::id() as i32;
    let (maj, min) = dev_pair(dev);
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let base = format!("/proc/{pid}");
        let mut held: Vec<String> = Vec::new();
        let on_share = |p: &str| std::fs::metadata(p).map(|m| m.dev() == dev).unwrap_or(false);
        for link in ["cwd", "root"] {
            let p = format!("{base}/{link}");
            if on_share(&p) {
                held.push(std::fs::read_link(&p).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default() + &format!(" (its {link})"));
            }
        }
        if let Ok(fds) = std::fs::read_dir(format!("{base}/fd")) {
            for fd in fds.flatten() {
                let p = fd.path();
                if std::fs::metadata(&p).map(|m| m.dev() == dev).unwrap_or(false) {
                    held.push(std::fs::read_link(&p).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default());
                }
            }
        }
        // maps: "addr perms offset MAJ:MIN inode path", the device in hex
        for l in std::fs::read_to_string(format!("{base}/maps")).unwrap_or_default().lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let Some((a, b)) = f[3].split_once(':') else { continue };
            if u32::from_str_radix(a, 16).ok() == Some(maj) && u32::from_str_radix(b, 16).ok() == Some(min) {
                let p = format!("{} (mapped)", f[5..].join(" "));
                if !held.contains(&p) {
                    held.push(p);
                }
            }
        }
        if held.is_empty() {
            continue;
        }
        let owner = ns_of(pid).and_then(|ns| owners.iter().find(|(_, o)| *o == ns).map(|(id, _)| id.clone())).unwrap_or_default();
        for h in held {
            if out.len() < MAX_BUSY {
                out.push((owner.clone(), pid, h));
            }
        }
    }
    out
}

/// `share.release` `{}`: see the module comment.
pub fn release(containers: &Rc<Containers>, _params: Value) -> Result<Value> {
    let t0 = Instant::now();
    if RELEASED.lock().unwrap().is_some() {
        return Err(AgentError::precondition("the host share is released already"));
    }
    if !is_mountpoint(SHARED_DIR) {
        return Ok(json!({ "released": false, "mounts": 0 }));
    }
    let dev = std::fs::metadata(SHARED_DIR).map_err(|e| AgentError::internal(format!("stat {SHARED_DIR}: {e}")))?.dev();
    // one entry per mount namespace of a live container
    let mut owners: Vec<(String, i32, String)> = Vec::new();
    for (id, c) in containers.table.borrow().iter() {
        if c.status == Status::Stopped || c.init.pid <= 0 {
            continue;
        }
        if let Some(ns) = ns_of(c.init.pid) {
            if !owners.iter().any(|(_, _, n)| *n == ns) {
                owners.push((id.clone(), c.init.pid, ns));
            }
        }
    }
    let names: Vec<(String, String)> = owners.iter().map(|(id, _, ns)| (id.clone(), ns.clone())).collect();
    let held = busy(dev, &names);
    if !held.is_empty() {
        let busy: Vec<Value> = held.iter().map(|(c, pid, p)| json!({ "container_id": c, "pid": pid, "path": p })).collect();
        return Ok(json!({ "released": false, "busy": busy }));
    }
    let mut plan = Vec::new();
    for (id, pid, ns) in owners {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_err(|e| AgentError::internal(format!("mounts of container {id}: {e}")))?;
        let mounts = share_mounts(&parse_mountinfo(&text), dev_pair(dev), &format!("container {id}"))?;
        if !mounts.is_empty() {
            plan.push(Released { id, pid, ns, mounts });
        }
    }
    // down: each container's share mounts, then the agent's; on a failure everything done is undone
    let mut done: Vec<Released> = Vec::new();
    let mut failure: Option<String> = None;
    for r in plan {
        let (n, err) = unmount_in(r.pid, r.mounts.iter().map(|m| m.point.clone()).collect());
        let k = r.mounts.len();
        if let Some(e) = err {
            // the last n are gone: bring those back
            let gone = r.mounts[k - n..].to_vec();
            done.push(Released { mounts: gone, ..r });
            failure = Some(format!("container {}: {e}", done.last().unwrap().id));
            break;
        }
        done.push(r);
    }
    if failure.is_none() {
        if let Err(e) = umount_settled(&CString::new(SHARED_DIR).unwrap()) {
            failure = Some(format!("umount {SHARED_DIR}: {e}"));
        }
    }
    if let Some(e) = failure {
        let undone = reattach(&done);
        if !undone.is_empty() {
            log!("share.release: undoing a failed release left {} mount(s) off: {}", undone.len(), undone.join("; "));
        }
        return Err(AgentError::precondition(format!("the host share cannot be let go: {e}")));
    }
    let n: usize = done.iter().map(|r| r.mounts.len()).sum();
    log!("share released: {n} container mount(s) in {} namespace(s), {:?}", done.len(), t0.elapsed());
    *RELEASED.lock().unwrap() = Some(done);
    Ok(json!({ "released": true, "mounts": n }))
}

/// Every released mount back (in mount order), in namespaces that are still those containers';
/// the failures.
fn reattach(rs: &[Released]) -> Vec<String> {
    let mut failed = Vec::new();
    for r in rs {
        if ns_of(r.pid).as_deref() != Some(r.ns.as_str()) {
            continue; // the container is gone: nothing to give back
        }
        failed.extend(attach_in(r.pid, &r.mounts).into_iter().map(|e| format!("container {}: {e}", r.id)));
    }
    failed
}

/// `share.attach` `{}`: the mounts release took down, back from the share (mounted again by
/// sandbox.setup); nothing when nothing was released.
pub fn attach(_params: Value) -> Result<Value> {
    let t0 = Instant::now();
    let taken = RELEASED.lock().unwrap().take();
    let Some(rs) = taken else { return Ok(json!({ "attached": 0 })) };
    if !is_mountpoint(SHARED_DIR) {
        *RELEASED.lock().unwrap() = Some(rs);
        return Err(AgentError::precondition(format!("{SHARED_DIR} is not mounted: sandbox.setup with the share first")));
    }
    let failed = reattach(&rs);
    let n: usize = rs.iter().map(|r| r.mounts.len()).sum();
    log!("share attached: {n} container mount(s), {} failed, {:?}", failed.len(), t0.elapsed());
    if !failed.is_empty() {
        return Err(AgentError::internal(format!("{} host-share mount(s) could not be brought back: {}", failed.len(), failed.join("; "))));
    }
    Ok(json!({ "attached": n }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:20 / / rw,relatime shared:1 - rootfs rootfs rw
300 290 0:45 / / rw,relatime - overlay overlay rw,lowerdir=/x
301 300 0:51 /c/abc/0 /etc/hosts rw,nosuid,nodev,relatime - 9p share rw,trans=virtio
302 300 0:51 /c/abc/1 /data\\040dir ro,nosuid,nodev,noexec,relatime master:7 - 9p share rw,trans=virtio
303 302 0:51 /c/abc/2 /data\\040dir/sub ro,nosuid,relatime shared:9 - 9p share rw,trans=virtio
304 300 0:52 / /tmp rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_share_mounts_in_order_with_flags() {
        let lines = parse_mountinfo(INFO);
        let ms = share_mounts(&lines, (0, 51), "c").unwrap();
        assert_eq!(ms.iter().map(|m| m.point.as_str()).collect::<Vec<_>>(), vec!["/etc/hosts", "/data dir", "/data dir/sub"]);
        assert_eq!(ms[0].root, "/c/abc/0");
        assert_eq!(ms[0].attr_set, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
        assert_eq!(ms[0].attr_clr, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC);
        assert_eq!(ms[0].propagation, libc::MS_PRIVATE as u64);
        assert_eq!(ms[1].attr_set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
        assert_eq!(ms[1].propagation, libc::MS_SLAVE as u64);
        assert_eq!(ms[2].propagation, libc::MS_SHARED as u64);
    }

    #[test]
    fn refuses_a_foreign_mount_on_a_share_mount() {
        let mut info = INFO.to_string();
        info.push_str("305 301 0:53 / /etc/hosts/x rw - tmpfs tmpfs rw\n");
        let err = share_mounts(&parse_mountinfo(&info), (0, 51), "container c").unwrap_err();
        assert_eq!(err.code, "failed_precondition");
        assert!(err.message.contains("/etc/hosts/x"), "{}", err.message);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}

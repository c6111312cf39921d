//! `disk.mount` / `disk.unmount`: hot-plugged SCSI disks (image rootfs as erofs, volumes).
//! The host names the disk by its SCSI address; we find the block device through sysfs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Ctx, Result};
use crate::reaper::Reaper;
use crate::probe;
use crate::util::check_run_path;

#[derive(Deserialize)]
struct MountParams {
    scsi_id: u32,
    lun: u32,
    fstype: String,
    #[serde(default)]
    readonly: bool,
    target: String,
    #[serde(default)]
    options: Vec<String>,
    /// format with this type first when the disk is blank
    #[serde(default)]
    format: Option<String>,
    /// grow the filesystem to the device's size when the device is larger (a volume expanded
    /// while detached, e.g. CSI ControllerExpandVolume); ext2/3/4, read-write mounts only
    #[serde(default)]
    grow: bool,
    /// how long the disk may take to appear and take the mount (ms; default 10 s)
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Deserialize)]
struct DeviceParams {
    scsi_id: u32,
    lun: u32,
    /// how long the disk may take to appear (ms; default 10 s)
    #[serde(default)]
    wait_ms: Option<u64>,
}

const FSTYPES: &[&str] = &["erofs", "ext4", "xfs", "ext3", "ext2", "vfat"];
/// Types we can create (mke2fs is in the initramfs).
const FORMATS: &[&str] = &["ext4", "ext3", "ext2"];
const MKFS: &str = "/sbin/mke2fs";
/// How long a disk may take to appear when the host does not say (hosts before `wait_ms`).
const DEFAULT_WAIT_MS: u64 = 10_000;
/// The longest wait a host may ask for: a hot-plugged disk of a VM starved of CPU can take
/// long to scan, but a call never holds a disk wait longer than this.
const MAX_WAIT_MS: u64 = 600_000;

/// The wait the host asked for (it follows the host's own deadline), bounded.
fn wait_for(ms: Option<u64>) -> Duration {
    Duration::from_millis(ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS))
}

fn waited(d: Duration) -> String {
    format!("waited {:.1} s", d.as_secs_f64())
}

pub fn is_mountpoint(path: &str) -> bool {
    mount_fstype(path).is_some()
}

/// The filesystem type mounted at `path` (the topmost mount), if any.
pub fn mount_fstype(path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // mountinfo: id parent major:minor root mountpoint opts [optional...] - fstype source super
    mounts.lines().rfind(|l| l.split(' ').nth(4) == Some(path)).map(|l| {
        l.split(" - ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("").to_string()
    })
}

/// Size in sectors from sysfs (0 while the disk is still being probed).
fn block_size(dev: &Path) -> u64 {
    let name = dev.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    std::fs::read_to_string(format!("/sys/class/block/{name}/size")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn find_block(scsi_id: u32, lun: u32) -> Option<PathBuf> {
    let dir = format!("/sys/bus/scsi/devices/0:0:{scsi_id}:{lun}/block");
    let name = std::fs::read_dir(dir).ok()?.flatten().next()?.file_name();
    let dev = Path::new("/dev").join(name);
    dev.exists().then_some(dev)
}

fn check_scsi(scsi_id: u32, lun: u32) -> Result<()> {
    if scsi_id > 255 || lun > 16383 {
        return Err(AgentError::invalid("scsi_id/lun out of range"));
    }
    Ok(())
}

/// The SCSI scan is asynchronous: the sysfs entry and /dev node can exist before the disk is
/// readable (size still 0, open gives ENXIO). Wait until it can be opened, until `deadline`.
async fn wait_device(scsi_id: u32, lun: u32, deadline: Instant, wait: Duration) -> Result<PathBuf> {
    loop {
        let err = match find_block(scsi_id, lun) {
            None => format!("SCSI disk 0:0:{scsi_id}:{lun} did not appear"),
            Some(dev) if block_size(&dev) == 0 => format!("{} has no media yet", dev.display()),
            Some(dev) => match std::fs::File::open(&dev) {
                Ok(_) => return Ok(dev),
                Err(e) => format!("open {}: {e}", dev.display()),
            },
        };
        if Instant::now() > deadline {
            return Err(AgentError::timeout(format!("{err} ({})", waited(wait))));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `disk.device`: the block device of a SCSI disk (for raw block volumes).
pub async fn device(params: Value) -> Result<Value> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let p: DeviceParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("disk.device: {e}")))?;
    check_scsi(p.scsi_id, p.lun)?;
    let wait = wait_for(p.wait_ms);
    let dev = wait_device(p.scsi_id, p.lun, Instant::now() + wait, wait).await?;
    let md = std::fs::metadata(&dev).ctx("stat device")?;
    if !md.file_type().is_block_device() {
        return Err(AgentError::internal(format!("{} is not a block device", dev.display())));
    }
    let rdev = md.rdev();
    Ok(json!({ "device": dev.to_string_lossy(), "major": libc::major(rdev), "minor": libc::minor(rdev) }))
}

/// Create a filesystem on a blank disk; refuse anything that is not blank.
async fn format_if_blank(reaper: &Reaper, dev: &Path, fstype: &str) -> Result<()> {
    match probe::probe_device(dev).ctx("read device")? {
        probe::Probe::Fs(_) => return Ok(()),
        probe::Probe::Unknown => {
            return Err(AgentError::precondition(format!(
                "{} has data but no filesystem signature we know; refusing to format it",
                dev.display()
            )))
        }
        probe::Probe::Blank => {}
    }
    let t0 = Instant::now();
    // lazy_itable_init: the kernel zeroes inode tables in the background instead of mke2fs
    // writing them all now (slow under TCG for big volumes). -m0: no root reserve on volumes.
    // Spawned by hand and waited through the reaper: PID 1 reaps every child itself.
    let mut child = std::process::Command::new(MKFS)
        .args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-t", fstype])
        .arg(dev)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ctx("run mke2fs")?;
    let rx = reaper.watch(child.id() as i32);
    let st = rx.await.map_err(|_| AgentError::internal("mke2fs: exit status lost"))?;
    if st.code != 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = (&mut e).take(4096).read_to_string(&mut err);
        }
        return Err(AgentError::internal(format!("mke2fs -t {fstype} {}: exit {}: {}", dev.display(), st.code, err.trim())));
    }
    crate::log!("formatted {} as {fstype} in {:?}", dev.display(), t0.elapsed());
    Ok(())
}

pub async fn mount_disk(reaper: &Reaper, params: Value) -> Result<Value> {
    let p: MountParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("disk.mount: {e}")))?;
    check_scsi(p.scsi_id, p.lun)?;
    if p.fstype != "auto" && !FSTYPES.contains(&p.fstype.as_str()) {
        return Err(AgentError::invalid(format!("unsupported fstype {:?}", p.fstype)));
    }
    if let Some(f) = &p.format {
        if !FORMATS.contains(&f.as_str()) {
            return Err(AgentError::invalid(format!("cannot format as {f:?} (supported: {FORMATS:?})")));
        }
    }
    let target = check_run_path("target", &p.target)?;
    let (mut flags, data) = parse_options(&p.options)?;
    if p.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let tstr = target.to_string_lossy().to_string();
    if is_mountpoint(&tstr) {
        return Err(AgentError::exists(format!("{tstr} is already mounted")));
    }

    // one deadline for the disk to appear and take the mount
    let wait = wait_for(p.wait_ms);
    let deadline = Instant::now() + wait;
    let dev = wait_device(p.scsi_id, p.lun, deadline, wait).await?;
    if let Some(f) = &p.format {
        if p.readonly {
            return Err(AgentError::invalid("format and readonly exclude each other"));
        }
        format_if_blank(reaper, &dev, f).await?;
    }
    let fstype = if p.fstype == "auto" {
        match probe::probe_device(&dev).ctx("read device")? {
            probe::Probe::Fs(t) if FSTYPES.contains(&t) => t.to_string(),
            probe::Probe::Fs(t) => return Err(AgentError::precondition(format!("{} holds {t}, which the guest cannot mount", dev.display()))),
            _ => return Err(AgentError::precondition(format!("{} has no filesystem", dev.display()))),
        }
    } else {
        p.fstype.clone()
    };
    let group = match fstype.as_str() {
        "ext2" | "ext3" | "ext4" => Some("ext4"),
        "xfs" => Some("xfs"),
        "vfat" => Some("vfat"),
        _ => None,
    };
    if let Some(g) = group {
        crate::modules::ensure(g).map_err(AgentError::internal)?;
    }
    // Opening worked, but the first mount can still race the end of the scan: retry until the
    // deadline (at least one more second, whatever a format took).
    let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    std::fs::create_dir_all(&target).ctx("mkdir target")?;
    loop {
        let err = match mount(Some(&dev), &target, Some(fstype.as_str()), flags, (!data.is_empty()).then_some(data.as_str())) {
            Ok(()) => break,
            Err(e @ (Errno::ENXIO | Errno::ENODEV | Errno::ENOENT | Errno::ENOMEDIUM)) => {
                format!("mount {} ({fstype}) on {tstr}: {e}", dev.display())
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&target);
                return Err(AgentError::internal(format!("mount {} ({fstype}) on {tstr}: {e}", dev.display())));
            }
        };
        if Instant::now() > deadline {
            let _ = std::fs::remove_dir(&target);
            return Err(AgentError::timeout(format!("{err} ({})", waited(wait))));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut res = json!({ "device": dev.to_string_lossy(), "fstype": fstype });
    if p.grow && !flags.contains(MsFlags::MS_RDONLY) && group == Some("ext4") {
        // A grow that fails leaves a working, smaller filesystem: report it, do not fail the mount.
        match grow_ext4(&dev, &target) {
            Ok(Some((from, to))) => {
                crate::log!("grew {} on {tstr} from {from} to {to} bytes", dev.display());
                res["grown"] = json!({ "from": from, "to": to });
            }
            Ok(None) => {}
            Err(e) => {
                crate::log!("growing {} on {tstr}: {}", dev.display(), e.message);
                res["grow_error"] = json!(e.message);
            }
        }
    }
    Ok(res)
}

/// EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64): online resize of a mounted ext2/3/4 (ext4 driver).
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Grows the ext2/3/4 filesystem mounted at `target` to fill `dev` when the device is larger.
/// Returns (old, new) size in bytes, or None when there is nothing to grow.
fn grow_ext4(dev: &Path, target: &Path) -> Result<Option<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let mut sb = [0u8; 1024];
    std::fs::File::open(dev).and_then(|f| f.read_exact_at(&mut sb, 1024)).ctx("read ext4 superblock")?;
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
    if sb[56..58] != [0x53, 0xef] {
        return Err(AgentError::internal("no ext2/3/4 superblock"));
    }
    let block = 1024u64 << u32_at(24).min(6);
    let incompat_64bit = u32_at(0x60) & 0x80 != 0;
    let blocks = u32_at(4) | if incompat_64bit { u32_at(0x150) << 32 } else { 0 };
    let mut want = block_size(dev) * 512 / block;
    if !incompat_64bit {
        want = want.min(u32::MAX as u64); // a 32-bit filesystem cannot address more
    }
    if want <= blocks {
        return Ok(None);
    }
    let dir = std::fs::File::open(target).ctx("open mount point")?;
    if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &want as *const u64) } != 0 {
        return Err(AgentError::internal(format!("EXT4_IOC_RESIZE_FS to {want} blocks: {}", std::io::Error::last_os_error())));
    }
    Ok(Some((blocks * block, want * block)))
}

/// Mount flags by name; everything else is passed to the filesystem, after a sanity check.
pub fn parse_options(opts: &[String]) -> Result<(MsFlags, String)> {
    let mut flags = MsFlags::MS_NODEV;
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            _ => {
                if o.is_empty() || o.len() > 256 || o.contains(',') || o.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(AgentError::invalid(format!("invalid mount option {o:?}")));
                }
                data.push(o.clone());
            }
        }
    }
    Ok((flags, data.join(",")))
}

#[derive(Deserialize)]
struct UnmountParams {
    target: String,
}

pub fn unmount_disk(params: Value) -> Result<Value> {
    let p: UnmountParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("disk.unmount: {e}")))?;
    let target = check_run_path("target", &p.target)?;
    let tstr = target.to_string_lossy().to_string();
    if !is_mountpoint(&tstr) {
        return Err(AgentError::not_found(format!("{tstr} is not mounted")));
    }
    // NFS: detach lazily; a plain umount can block on a server that is gone, and there is no
    // device to unplug.
    if mount_fstype(&tstr).map(|t| t.starts_with("nfs")).unwrap_or(false) {
        umount2(&target, MntFlags::MNT_DETACH).map_err(|e| AgentError::precondition(format!("umount {tstr}: {e}")))?;
        let _ = std::fs::remove_dir(&target);
        return Ok(json!({}));
    }
    // Not lazy: the host unplugs the disk next, so a busy mount must be an error, not a
    // silent detach that leaves I/O pointing at a vanished device.
    umount2(&target, MntFlags::empty()).map_err(|e| AgentError::precondition(format!("umount {tstr}: {e}")))?;
    let _ = std::fs::remove_dir(&target);
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_wait_follows_the_host_within_bounds() {
        assert_eq!(wait_for(None), Duration::from_secs(10));
        assert_eq!(wait_for(Some(95_000)), Duration::from_secs(95));
        assert_eq!(wait_for(Some(0)), Duration::ZERO);
        assert_eq!(wait_for(Some(u64::MAX)), Duration::from_millis(MAX_WAIT_MS));
        let p: MountParams = serde_json::from_value(json!({ "scsi_id": 1, "lun": 0, "fstype": "erofs", "target": "/run/podvisor/images/x", "wait_ms": 42000 })).unwrap();
        assert_eq!(p.wait_ms, Some(42_000));
        let d: DeviceParams = serde_json::from_value(json!({ "scsi_id": 1, "lun": 0 })).unwrap();
        assert_eq!(d.wait_ms, None);
    }
}

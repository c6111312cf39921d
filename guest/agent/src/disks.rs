//! `disk.mount` / `disk.unmount`: hot-plugged SCSI disks (image rootfs as erofs, volumes).
//! The host names the disk by its SCSI address; we find the block device through sysfs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Ctx, Result};
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
}

const FSTYPES: &[&str] = &["erofs", "ext4", "xfs", "ext3", "ext2"];

pub fn is_mountpoint(path: &str) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(path))
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

pub async fn mount_disk(params: Value) -> Result<Value> {
    let p: MountParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("disk.mount: {e}")))?;
    if p.scsi_id > 255 || p.lun > 16383 {
        return Err(AgentError::invalid("scsi_id/lun out of range"));
    }
    if !FSTYPES.contains(&p.fstype.as_str()) {
        return Err(AgentError::invalid(format!("unsupported fstype {:?}", p.fstype)));
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

    let group = match p.fstype.as_str() {
        "ext2" | "ext3" | "ext4" => Some("ext4"),
        "xfs" => Some("xfs"),
        _ => None,
    };
    if let Some(g) = group {
        crate::modules::ensure(g).map_err(AgentError::internal)?;
    }
    // The SCSI scan is asynchronous: the sysfs entry and /dev node can exist before the disk
    // is readable (size still 0, open gives ENXIO). Retry until it mounts or 10 s pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    std::fs::create_dir_all(&target).ctx("mkdir target")?;
    let dev = loop {
        let err = match find_block(p.scsi_id, p.lun) {
            None => format!("SCSI disk 0:0:{}:{} did not appear", p.scsi_id, p.lun),
            Some(dev) if block_size(&dev) == 0 => format!("{} has no media yet", dev.display()),
            Some(dev) => match mount(Some(&dev), &target, Some(p.fstype.as_str()), flags, (!data.is_empty()).then_some(data.as_str())) {
                Ok(()) => break dev,
                Err(e @ (Errno::ENXIO | Errno::ENODEV | Errno::ENOENT | Errno::ENOMEDIUM)) => {
                    format!("mount {} ({}) on {tstr}: {e}", dev.display(), p.fstype)
                }
                Err(e) => {
                    return Err(AgentError::internal(format!("mount {} ({}) on {tstr}: {e}", dev.display(), p.fstype)));
                }
            },
        };
        if Instant::now() > deadline {
            let _ = std::fs::remove_dir(&target);
            return Err(AgentError::timeout(format!("{err} (waited 10 s)")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(json!({ "device": dev.to_string_lossy() }))
}

/// Mount flags by name; everything else is passed to the filesystem, after a sanity check.
fn parse_options(opts: &[String]) -> Result<(MsFlags, String)> {
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
    // Not lazy: the host unplugs the disk next, so a busy mount must be an error, not a
    // silent detach that leaves I/O pointing at a vanished device.
    umount2(&target, MntFlags::empty()).map_err(|e| AgentError::precondition(format!("umount {tstr}: {e}")))?;
    let _ = std::fs::remove_dir(&target);
    Ok(json!({}))
}

//! `stats`: cgroup v2 numbers per container, its processes' file descriptors and writable layer,
//! plus the VM's memory and network interfaces. Every walk is bounded: a container with huge
//! numbers of processes, descriptors or files is counted up to a limit, never stalls the agent.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::containers::Containers;
use crate::error::{AgentError, Result};
use crate::util::check_id;

/// Processes, descriptors and writable-layer entries looked at per container at most.
const MAX_PROCS: usize = 4096;
const MAX_FDS: usize = 65536;
const MAX_LAYER_ENTRIES: usize = 100_000;
/// Where a container's writable layer lives (containers.rs: upper in tmpfs).
const CONTAINERS_DIR: &str = "/run/podvisor/containers";

#[derive(Deserialize)]
struct StatsParams {
    /// the containers to report: all of them when absent, none when empty (the pod's figures only)
    #[serde(default)]
    ids: Option<Vec<String>>,
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// A cgroup limit: None for "max" (or unreadable).
fn read_limit(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok())
}

/// "key value" lines (cpu.stat, memory.stat, memory.events).
fn kv(p: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// cpu.max: (quota µs or None for "max", period µs)
fn cpu_max(cg: &Path) -> (Option<u64>, u64) {
    let s = std::fs::read_to_string(cg.join("cpu.max")).unwrap_or_default();
    let mut it = s.split_whitespace();
    let quota = it.next().and_then(|q| q.parse().ok());
    let period = it.next().and_then(|p| p.parse().ok()).unwrap_or(100_000);
    (quota, period)
}

/// io.stat per device: (major, minor, [rbytes, wbytes, rios, wios]), at most 64 devices.
fn io_devices(cg: &Path) -> Vec<(u32, u32, [u64; 4])> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(cg.join("io.stat")).unwrap_or_default().lines().take(64) {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
        let mut t = [0u64; 4];
        for field in fields {
            let Some((k, v)) = field.split_once('=') else { continue };
            let i = match k {
                "rbytes" => 0,
                "wbytes" => 1,
                "rios" => 2,
                "wios" => 3,
                _ => continue,
            };
            t[i] = v.parse().unwrap_or(0);
        }
        out.push((major, minor, t));
    }
    out
}

/// io.stat summed over devices: rbytes, wbytes, rios, wios.
fn io_totals(devices: &[(u32, u32, [u64; 4])]) -> [u64; 4] {
    let mut t = [0u64; 4];
    for (_, _, d) in devices {
        for i in 0..4 {
            t[i] = t[i].saturating_add(d[i]);
        }
    }
    t
}

/// A block device's name in the guest (/dev/<DEVNAME>), from sysfs.
fn block_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        .unwrap_or_default()
}

/// The container's processes, then their open descriptors and how many of those are sockets;
/// not its exec helper (`hidden`, executor.rs), which is podvisor's, not the container's.
fn processes(cg: &Path, hidden: Option<i32>) -> (Vec<u32>, u64, u64) {
    let pids: Vec<u32> = std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| Some(*p as i32) != hidden)
        .take(MAX_PROCS)
        .collect();
    let (mut fds, mut sockets) = (0u64, 0u64);
    'outer: for pid in &pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            if fds as usize >= MAX_FDS {
                break 'outer;
            }
            fds += 1;
            if std::fs::read_link(e.path()).map(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:")).unwrap_or(false) {
                sockets += 1;
            }
        }
    }
    (pids, fds, sockets)
}

/// Bytes (allocated blocks) and inodes under a directory, without following links or leaving
/// its file system.
fn usage(root: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else { return (0, 0) };
    let dev = top.dev();
    let (mut bytes, mut inodes) = (top.blocks() * 512, 1u64);
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > MAX_LAYER_ENTRIES {
                return (bytes, inodes);
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            bytes = bytes.saturating_add(m.blocks() * 512);
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// The guest's network interfaces but loopback, from /proc/net/dev.
fn interfaces() -> Vec<Value> {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.is_empty() {
                return None;
            }
            let v: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            if v.len() < 12 {
                return None;
            }
            Some(json!({
                "name": name,
                "rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11],
            }))
        })
        .take(64)
        .collect()
}

pub fn stats(containers: &Containers, params: Value) -> Result<Value> {
    let p: StatsParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("stats: {e}")))?;
    if p.ids.as_ref().is_some_and(|ids| ids.len() > 4096) {
        return Err(AgentError::invalid("too many ids"));
    }
    let cs = containers.table.borrow();
    let ids: Vec<String> = p.ids.unwrap_or_else(|| cs.keys().cloned().collect());
    let layer_fs = nix::sys::statvfs::statvfs(CONTAINERS_DIR).ok();
    let mut out = Vec::new();
    for id in ids {
        check_id("container id", &id)?;
        let Some(c) = cs.get(&id) else { continue };
        let cg = &c.cgroup;
        let usage_bytes = read_u64(&cg.join("memory.current"));
        let mem = kv(&cg.join("memory.stat"));
        let m = |k: &str| mem.get(k).copied().unwrap_or(0);
        let cpu = kv(&cg.join("cpu.stat"));
        let cpu_us = |k: &str| cpu.get(k).copied().unwrap_or(0);
        let events = kv(&cg.join("memory.events"));
        let (quota, period) = cpu_max(cg);
        let weight = read_u64(&cg.join("cpu.weight"));
        let devices = io_devices(cg);
        let io = io_totals(&devices);
        let (procs, fds, sockets) = processes(cg, crate::executor::pid_of(&id));
        let (layer_bytes, layer_inodes) = usage(&Path::new(CONTAINERS_DIR).join(&id).join("upper"));
        out.push(json!({
            "id": id,
            "cpu_usage_ns": cpu_us("usage_usec") * 1000,
            // Working set as the kubelet computes it: usage minus inactive file cache.
            "memory_working_set": usage_bytes.saturating_sub(m("inactive_file")),
            "memory_rss": m("anon"),
            "memory_usage": usage_bytes,
            "pids": read_u64(&cg.join("pids.current")).saturating_sub(crate::executor::pid_of(&id).is_some() as u64),
            "cpu_user_ns": cpu_us("user_usec") * 1000,
            "cpu_system_ns": cpu_us("system_usec") * 1000,
            "cpu_periods": cpu_us("nr_periods"),
            "cpu_throttled_periods": cpu_us("nr_throttled"),
            "cpu_throttled_ns": cpu_us("throttled_usec") * 1000,
            "cpu_quota_us": quota,
            "cpu_period_us": period,
            "cpu_weight": weight,
            "memory_cache": m("file"),
            "memory_mapped_file": m("file_mapped"),
            "memory_kernel": m("kernel"),
            "memory_pgfault": m("pgfault"),
            "memory_pgmajfault": m("pgmajfault"),
            "memory_peak": read_u64(&cg.join("memory.peak")),
            "memory_swap": read_u64(&cg.join("memory.swap.current")),
            "memory_limit": read_limit(&cg.join("memory.max")),
            "memory_swap_limit": read_limit(&cg.join("memory.swap.max")),
            "memory_events_max": events.get("max").copied().unwrap_or(0),
            "oom_kills": events.get("oom_kill").copied().unwrap_or(0),
            "pids_max": read_limit(&cg.join("pids.max")),
            "processes": procs.len(),
            "fds": fds,
            "sockets": sockets,
            "io_read_bytes": io[0],
            "io_write_bytes": io[1],
            "io_reads": io[2],
            "io_writes": io[3],
            "io_devices": devices.iter().map(|(major, minor, d)| json!({
                "major": major, "minor": minor, "name": block_name(*major, *minor), "read_bytes": d[0], "write_bytes": d[1],
            })).collect::<Vec<_>>(),
            "layer_bytes": layer_bytes,
            "layer_inodes": layer_inodes,
        }));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |k: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.trim_start_matches(':').split_whitespace().next()?.parse::<u64>().ok()))
            .unwrap_or(0)
            * 1024
    };
    let layer = layer_fs.map(|s| {
        let frsize = s.fragment_size() as u64;
        json!({
            "bytes": s.blocks() as u64 * frsize,
            "free_bytes": s.blocks_available() as u64 * frsize,
            "inodes": s.files() as u64,
            "free_inodes": s.files_free() as u64,
        })
    });
    Ok(json!({
        "containers": out,
        "memory_total": mem("MemTotal"),
        "memory_available": mem("MemAvailable"),
        "layer_fs": layer,
        "interfaces": interfaces(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("podvisor-stats-{}-{}", std::process::id(), files.len()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_cgroup_v2_files() {
        let cg = cgroup(&[
            ("cpu.max", "20000 100000\n"),
            ("io.stat", "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=1 wbytes=1 rios=1 wios=1\n"),
            ("memory.max", "max\n"),
            ("pids.max", "128\n"),
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nnr_throttled 3\n"),
        ]);
        assert_eq!(cpu_max(&cg), (Some(20000), 100000));
        let devs = io_devices(&cg);
        assert_eq!(devs[0], (254, 0, [4096, 8192, 1, 2]));
        assert_eq!(io_totals(&devs), [4097, 8193, 2, 3]);
        assert_eq!(read_limit(&cg.join("memory.max")), None);
        assert_eq!(read_limit(&cg.join("pids.max")), Some(128));
        let cpu = kv(&cg.join("cpu.stat"));
        assert_eq!((cpu["usage_usec"], cpu["user_usec"], cpu["nr_throttled"]), (1500, 1000, 3));
        std::fs::write(cg.join("cpu.max"), "max 50000\n").unwrap();
        assert_eq!(cpu_max(&cg), (None, 50000));
        std::fs::remove_dir_all(&cg).unwrap();
    }

    #[test]
    fn counts_a_layer_without_leaving_it() {
        let dir = std::env::temp_dir().join(format!("podvisor-layer-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), vec![1u8; 10000]).unwrap();
        std::os::unix::fs::symlink("/", dir.join("a/root")).unwrap();
        let (bytes, inodes) = usage(&dir);
        assert_eq!(inodes, 5); // dir, a, a/b, a/b/f, a/root (not followed)
        assert!(bytes >= 10000, "{bytes}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

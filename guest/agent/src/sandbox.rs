//! `sandbox.setup`: the pod-wide parts: hostname, the 9p share, resolv.conf, sysctls.

use std::collections::BTreeMap;

use nix::mount::{mount, MsFlags};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Ctx, Result};
use crate::util::RUN_DIR;

pub const SHARED_DIR: &str = "/run/podvisor/shared";
pub const RESOLV_CONF: &str = "/run/podvisor/resolv.conf";
pub const POD_SHM: &str = "/run/podvisor/shm";

#[derive(Deserialize, Default)]
struct Dns {
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    searches: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Deserialize)]
struct Setup {
    hostname: String,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    share_tag: Option<String>,
    #[serde(default)]
    sysctls: BTreeMap<String, String>,
}

pub fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty() && h.len() <= 64 && h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid(format!("invalid hostname {h:?}")))
    }
}

pub fn set_hostname(h: &str) -> Result<()> {
    check_hostname(h)?;
    nix::unistd::sethostname(h).ctx("sethostname")
}

fn check_line(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AgentError::invalid(format!("invalid {what} {s:?}")));
    }
    Ok(())
}

pub fn setup(params: Value) -> Result<Value> {
    let p: Setup = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("sandbox.setup: {e}")))?;
    check_hostname(&p.hostname)?;
    if let Some(tag) = &p.share_tag {
        if tag.is_empty() || tag.len() > 31 || !tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
            return Err(AgentError::invalid(format!("invalid share_tag {tag:?}")));
        }
    }
    for (k, v) in &p.sysctls {
        sysctl_path(k)?;
        if v.len() > 4096 || v.contains('\0') {
            return Err(AgentError::invalid(format!("invalid sysctl value for {k}")));
        }
    }
    let mut resolv = String::new();
    if let Some(dns) = &p.dns {
        for s in &dns.servers {
            s.parse::<std::net::IpAddr>().map_err(|_| AgentError::invalid(format!("invalid DNS server {s:?}")))?;
            resolv.push_str(&format!("nameserver {s}\n"));
        }
        if !dns.searches.is_empty() {
            dns.searches.iter().try_for_each(|s| check_line("DNS search", s))?;
            resolv.push_str(&format!("search {}\n", dns.searches.join(" ")));
        }
        if !dns.options.is_empty() {
            dns.options.iter().try_for_each(|s| check_line("DNS option", s))?;
            resolv.push_str(&format!("options {}\n", dns.options.join(" ")));
        }
    }

    set_hostname(&p.hostname)?;
    std::fs::create_dir_all(RUN_DIR).ctx("mkdir /run/podvisor")?;
    // Always written (empty without DNS config) so every container gets a resolv.conf to bind.
    std::fs::write(RESOLV_CONF, resolv).ctx("write resolv.conf")?;
    // The /dev/shm of containers that share the pod IPC namespace: one tmpfs for the pod.
    if !crate::disks::is_mountpoint(POD_SHM) {
        std::fs::create_dir_all(POD_SHM).ctx("mkdir pod shm")?;
        mount(Some("shm"), POD_SHM, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("mode=1777,size=65536k"))
            .map_err(|e| AgentError::internal(format!("mount pod shm: {e}")))?;
    }
    if let Some(tag) = &p.share_tag {
        if !crate::disks::is_mountpoint(SHARED_DIR) {
            std::fs::create_dir_all(SHARED_DIR).ctx("mkdir shared")?;
            mount(
                Some(tag.as_str()),
                SHARED_DIR,
                Some("9p"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("trans=virtio,version=9p2000.L,cache=none,msize=262144"),
            )
            .map_err(|e| AgentError::internal(format!("mount 9p share {tag}: {e}")))?;
        }
    }
    for (k, v) in &p.sysctls {
        std::fs::write(sysctl_path(k)?, v).map_err(|e| AgentError::invalid(format!("sysctl {k}={v}: {e}")))?;
    }
    Ok(json!({}))
}

/// `net.ipv4.ip_forward` → /proc/sys/net/ipv4/ip_forward; only plain names, no traversal.
fn sysctl_path(k: &str) -> Result<String> {
    let ok = !k.is_empty()
        && k.len() <= 256
        && k.split(['.', '/']).all(|part| !part.is_empty() && part != ".." && part.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
    if !ok {
        return Err(AgentError::invalid(format!("invalid sysctl name {k:?}")));
    }
    Ok(format!("/proc/sys/{}", k.replace('.', "/")))
}

//! In-place resize of the pod VM's vCPUs (PROTOCOL.md `vm.cpus`). The VM boots with its resize
//! ceiling of vCPUs; the host asks for how many run, and the rest are taken offline here (CPU
//! hot-unplug inside the guest: the kernel migrates their tasks and timers away). vCPU 0 never
//! goes offline. Onlining happens in ascending order, offlining in descending, so the online set
//! is always 0..n-1.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Result};

const CPU_DIR: &str = "/sys/devices/system/cpu";

#[derive(Deserialize)]
struct Params {
    online: u32,
}

/// "0-3" or "0,2-5" (a sysfs CPU list) → how many CPUs it names.
fn count_list(s: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse::<u32>().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

fn read(name: &str) -> Result<String> {
    std::fs::read_to_string(format!("{CPU_DIR}/{name}")).map_err(|e| AgentError::internal(format!("{CPU_DIR}/{name}: {e}")))
}

fn present() -> Result<u32> {
    count_list(&read("present")?).filter(|n| *n > 0).ok_or_else(|| AgentError::internal("cannot parse /sys/devices/system/cpu/present"))
}

fn set(cpu: u32, on: bool) -> Result<()> {
    let file = format!("{CPU_DIR}/cpu{cpu}/online");
    let want = if on { "1" } else { "0" };
    if std::fs::read_to_string(&file).map(|s| s.trim() == want).unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(&file, want).map_err(|e| AgentError::internal(format!("cpu{cpu} {}: {e}", if on { "online" } else { "offline" })))
}

pub fn set_online(params: Value) -> Result<Value> {
    let p: Params = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("vm.cpus: {e}")))?;
    let present = present()?;
    if p.online < 1 || p.online > present {
        return Err(AgentError::invalid(format!("vm.cpus: online must be 1..{present}, got {}", p.online)));
    }
    for cpu in 1..p.online {
        set(cpu, true)?;
    }
    for cpu in (p.online..present).rev() {
        set(cpu, false)?;
    }
    let online = count_list(&read("online")?).unwrap_or(0);
    if online != p.online {
        return Err(AgentError::internal(format!("vm.cpus: {online} vCPUs online after asking for {}", p.online)));
    }
    Ok(json!({ "online": online, "present": present }))
}

#[cfg(test)]
mod tests {
    use super::count_list;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(count_list("0-3\n"), Some(4));
        assert_eq!(count_list("0"), Some(1));
        assert_eq!(count_list("0,2-5"), Some(5));
        assert_eq!(count_list("x"), None);
        assert_eq!(count_list("3-1"), None);
    }
}

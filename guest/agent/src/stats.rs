//! `stats`: cgroup v2 numbers per container, plus the VM's memory.

use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::util::check_id;

#[derive(Deserialize)]
struct StatsParams {
    #[serde(default)]
    ids: Vec<String>,
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn keyed(p: &Path, key: &str) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

pub fn stats(agent: &Rc<Agent>, params: Value) -> Result<Value> {
    let p: StatsParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("stats: {e}")))?;
    if p.ids.len() > 4096 {
        return Err(AgentError::invalid("too many ids"));
    }
    let cs = agent.containers.borrow();
    let ids: Vec<String> = if p.ids.is_empty() { cs.keys().cloned().collect() } else { p.ids };
    let mut out = Vec::new();
    for id in ids {
        check_id("container id", &id)?;
        let Some(c) = cs.get(&id) else { continue };
        let cg = &c.cgroup;
        let usage = read_u64(&cg.join("memory.current"));
        let stat = cg.join("memory.stat");
        // Working set as the kubelet computes it: usage minus inactive file cache.
        let ws = usage.saturating_sub(keyed(&stat, "inactive_file"));
        out.push(json!({
            "id": id,
            "cpu_usage_ns": keyed(&cg.join("cpu.stat"), "usage_usec") * 1000,
            "memory_working_set": ws,
            "memory_rss": keyed(&stat, "anon"),
            "memory_usage": usage,
            "pids": read_u64(&cg.join("pids.current")),
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
    Ok(json!({ "containers": out, "memory_total": mem("MemTotal"), "memory_available": mem("MemAvailable") }))
}

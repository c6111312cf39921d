//! The guest's /sbin/modprobe: a symlink to the agent binary, which the kernel runs (as
//! `modprobe -q -- <name>`, from a kernel thread, with full privileges) when something asks for
//! a feature that is a module: `ip link add … type dummy` asks for `rtnl-link-dummy`, an nft rule
//! for `nft-chain-2-nat`, a fuse mount for `fs-fuse`. Privileged pods expect that of a node kernel.
//!
//! What it loads: only modules the build shipped in the index (modules.rs), after their
//! dependencies; anything else is refused, as a missing module would be.
//!
//! On whose behalf: the kernel does not say who asked, and an unprivileged container can make it
//! ask (a socket of an unloaded family; a user namespace gives CAP_NET_ADMIN over a new netns, so
//! `unshare -rn ip link add … type dummy` reaches the request). So the helper looks for the
//! requesters itself: every task blocked in `__request_module` (its kernel stack says so; the
//! requester waits until modprobe exits). It loads only if there is at least one and each of them
//! could load a module itself: CAP_SYS_MODULE in its bounding set, in the guest's initial user
//! namespace (a privileged container, the agent, a kernel thread). A request raised by any other
//! task, or one whose requester cannot be found, is refused. Concurrent requests from a privileged
//! and an unprivileged task are both refused (the helper cannot tell them apart): refusing is
//! the safe side, and the privileged one can retry.
//!
//! One narrower grant, the line the host kernel itself draws in dev_load ("netdev-" aliases for
//! CAP_NET_ADMIN): a requester holding CAP_NET_ADMIN (effective) in the initial user namespace,
//! a container given NET_ADMIN, may have the modules of network setup loaded (link types, the
//! bridge ioctl, netfilter): on a node such a container finds them there (critest's "adding
//! capability" runs `brctl addbr`). `unshare -rn` gives CAP_NET_ADMIN only in a user namespace of
//! its own, so it stays refused.
//!
//! Every decision is written to the kernel log (/dev/kmsg), which privileged containers can read.

use std::io::Write;

use crate::modules;

const CAP_SYS_MODULE: u32 = 16;
const CAP_NET_ADMIN: u32 = 12;
/// Requests (module aliases as the kernel asks for them) that network setup makes.
const NETWORK_REQUESTS: &[&str] = &["bridge", "rtnl-link-", "netdev-", "nft-", "nfnetlink-subsys-", "ipt_", "ip6t_", "xt_", "iptable_", "ip6table_"];

fn is_network_request(request: &str) -> bool {
    NETWORK_REQUESTS.iter().any(|p| if p.ends_with(['-', '_']) { request.starts_with(p) } else { request == *p })
}

/// Entry point when the binary runs as `modprobe`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let Some(request) = parse_args(args) else {
        kmsg(&format!("unsupported modprobe arguments {:?}", &args[1..]));
        return 1;
    };
    let index = modules::parse_index(&std::fs::read_to_string(modules::INDEX).unwrap_or_default());
    let aliases = std::fs::read_to_string(modules::ALIASES).unwrap_or_default();
    let Some(module) = modules::resolve(&request, &index, &aliases) else {
        // Not shipped (or builtin): what modprobe says of a module it cannot find.
        return 1;
    };
    let requesters = requesters();
    if requesters.is_empty() {
        kmsg(&format!("refused {module} (for {request}): no task is waiting for it"));
        return 1;
    }
    let init_userns = std::fs::read_link("/proc/1/ns/user").ok();
    if let Some(t) = requesters.iter().find(|t| !t.may_request(&request, init_userns.as_ref())) {
        kmsg(&format!(
            "refused {module} (for {request}) requested by pid {} ({}): not privileged (CAP_SYS_MODULE, or CAP_NET_ADMIN for network modules, in the initial user namespace)",
            t.tid, t.comm
        ));
        return 1;
    }
    match modules::load_indexed(&module, &index) {
        Ok(loaded) => {
            let who: Vec<String> = requesters.iter().map(|t| format!("{} ({})", t.tid, t.comm)).collect();
            if !loaded.is_empty() {
                kmsg(&format!("loaded {} (for {request}) requested by pid {}", loaded.join(" "), who.join(", ")));
            }
            0
        }
        Err(e) => {
            kmsg(&format!("loading {module} (for {request}): {e}"));
            1
        }
    }
}

/// `modprobe [-q] [-v] [--] <name>` (what the kernel's request_module runs); anything else
/// (removal, options, several names) is not for us.
fn parse_args(args: &[String]) -> Option<String> {
    let mut name = None;
    let mut only_names = false;
    for a in args.iter().skip(1) {
        match a.as_str() {
            "-q" | "--quiet" | "-v" | "--verbose" | "-b" | "--use-blacklist" if !only_names => {}
            "--" if !only_names => only_names = true,
            s if s.starts_with('-') && !only_names => return None,
            s => {
                if name.is_some() || s.is_empty() || s.len() > 256 || s.contains(['/', '\0']) {
                    return None;
                }
                name = Some(s.to_string());
            }
        }
    }
    name
}

struct Task {
    tid: i32,
    comm: String,
    /// CapBnd from /proc/<pid>/task/<tid>/status
    bounding: u64,
    /// CapEff
    effective: u64,
    userns: Option<std::path::PathBuf>,
}

impl Task {
    fn may_load_modules(&self, init_userns: Option<&std::path::PathBuf>) -> bool {
        self.bounding & (1 << CAP_SYS_MODULE) != 0 && self.in_init_userns(init_userns)
    }

    /// May this task's request for `request` be served: a task that could load any module
    /// itself, or a network request from a task with CAP_NET_ADMIN in the initial user namespace.
    fn may_request(&self, request: &str, init_userns: Option<&std::path::PathBuf>) -> bool {
        self.may_load_modules(init_userns)
            || (is_network_request(request) && self.effective & (1 << CAP_NET_ADMIN) != 0 && self.in_init_userns(init_userns))
    }

    fn in_init_userns(&self, init_userns: Option<&std::path::PathBuf>) -> bool {
        self.userns.is_some() && self.userns.as_ref() == init_userns
    }
}

/// Tasks blocked in `__request_module`, from their kernel stacks (bounded: a pod has at most a
/// few thousand tasks; a task that exits while we look is skipped).
fn requesters() -> Vec<Task> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten().take(65536) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else { continue };
        for t in tasks.flatten().take(65536) {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let dir = t.path();
            let Ok(stack) = std::fs::read_to_string(dir.join("stack")) else { continue };
            if !stack.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|f| f.starts_with("__request_module+"))) {
                continue;
            }
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("").to_string();
            out.push(Task {
                tid,
                comm: field("Name:"),
                bounding: u64::from_str_radix(&field("CapBnd:"), 16).unwrap_or(0),
                effective: u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(0),
                userns: std::fs::read_link(dir.join("ns/user")).ok(),
            });
        }
    }
    out
}

/// A line in the kernel log (warning level: shown on the console despite `quiet`).
fn kmsg(msg: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<4>podvisor-modprobe: {msg}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn takes_what_the_kernel_passes_and_nothing_else() {
        assert_eq!(parse_args(&args(&["/sbin/modprobe", "-q", "--", "rtnl-link-dummy"])).as_deref(), Some("rtnl-link-dummy"));
        assert_eq!(parse_args(&args(&["modprobe", "fs-fuse"])).as_deref(), Some("fs-fuse"));
        assert_eq!(parse_args(&args(&["modprobe", "-r", "dummy"])), None);
        assert_eq!(parse_args(&args(&["modprobe", "-q", "--", "a", "b"])), None);
        assert_eq!(parse_args(&args(&["modprobe", "-q"])), None);
        assert_eq!(parse_args(&args(&["modprobe", "--", "../x"])), None);
    }

    #[test]
    fn only_a_task_that_could_load_a_module_itself_counts_as_privileged() {
        let init = std::path::PathBuf::from("user:[4026531837]");
        let t = |bounding: u64, ns: &str| Task { tid: 1, comm: "ip".into(), bounding, effective: bounding, userns: Some(ns.into()) };
        assert!(t(0x1ff_ffff_ffff, "user:[4026531837]").may_load_modules(Some(&init)));
        // the default container capabilities (no CAP_SYS_MODULE)
        assert!(!t(0xa80425fb, "user:[4026531837]").may_load_modules(Some(&init)));
        // full capabilities, but in a user namespace of its own (`unshare -r`)
        assert!(!t(0x1ff_ffff_ffff, "user:[4026532201]").may_load_modules(Some(&init)));
        assert!(!Task { tid: 1, comm: "x".into(), bounding: u64::MAX, effective: u64::MAX, userns: None }.may_load_modules(Some(&init)));
    }

    #[test]
    fn net_admin_in_the_initial_user_namespace_gets_network_modules_only() {
        let init = std::path::PathBuf::from("user:[4026531837]");
        // the default container capabilities plus NET_ADMIN (critest's "adding capability")
        let caps = 0xa80425fb_u64 | (1 << CAP_NET_ADMIN);
        let t = |ns: &str| Task { tid: 1, comm: "brctl".into(), bounding: caps, effective: caps, userns: Some(ns.into()) };
        for r in ["bridge", "rtnl-link-dummy", "netdev-foo", "nft-chain-2-nat", "nfnetlink-subsys-10", "ipt_MASQUERADE", "xt_conntrack"] {
            assert!(t("user:[4026531837]").may_request(r, Some(&init)), "{r}");
        }
        for r in ["fs-fuse", "bridgex", "loop", "net-pf-40"] {
            assert!(!t("user:[4026531837]").may_request(r, Some(&init)), "{r}");
        }
        // `unshare -rn`: NET_ADMIN only in a user namespace of its own
        assert!(!t("user:[4026532201]").may_request("rtnl-link-dummy", Some(&init)));
        // NET_ADMIN in the bounding set but not effective
        let b = Task { tid: 1, comm: "ip".into(), bounding: caps, effective: 0xa80425fb, userns: Some("user:[4026531837]".into()) };
        assert!(!b.may_request("rtnl-link-dummy", Some(&init)));
    }
}

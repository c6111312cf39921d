//! Exec processes of a user-namespaced container (a `hostUsers: false` pod). libcontainer's
//! tenant path joins a container's namespaces but not its user namespace, which would leave an
//! exec'd process as the guest's real root. So the exec process is set up by libcontainer as
//! root of the guest with every capability (nothing of the container's runs yet), and its
//! executor, just before execve, joins the container's user namespace, takes the container's
//! user and groups there, and narrows its capabilities to the container's sets: what runc does
//! in nsexec for such containers, done in the last step instead of the first.

use caps::{CapSet, Capability, CapsHashSet};
use serde_json::{json, Map, Value};
use std::str::FromStr;

use crate::error::{AgentError, Result};

#[derive(Clone, Default)]
struct CapSets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

/// How an exec process enters its container's user namespace, and who it is there.
#[derive(Clone)]
pub struct UsernsEntry {
    /// /proc/<container init>/ns/user
    ns: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    caps: CapSets,
}

fn set_of(process: &Map<String, Value>, set: &str) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    let names = process.get("capabilities").and_then(|c| c.get(set)).and_then(Value::as_array).cloned().unwrap_or_default();
    for n in names {
        let name = n.as_str().ok_or_else(|| AgentError::invalid("capability names must be strings"))?;
        out.insert(Capability::from_str(name).map_err(|_| AgentError::invalid(format!("unknown capability {name:?}")))?);
    }
    Ok(out)
}

fn all_caps() -> Vec<String> {
    caps::all().into_iter().map(|c| c.to_string()).collect()
}

impl UsernsEntry {
    /// Takes the container's identity and capabilities out of the exec `process` spec and
    /// makes that spec what libcontainer sets up before the executor: uid 0, every capability.
    pub fn prepare(init_pid: i32, process: &mut Map<String, Value>) -> Result<UsernsEntry> {
        if init_pid <= 0 {
            return Err(AgentError::precondition("the container's init process is gone"));
        }
        let user = process.get("user").cloned().unwrap_or(Value::Null);
        let id = |k: &str| user.get(k).and_then(Value::as_u64).map(|v| v as u32).unwrap_or(0);
        let groups = user
            .get("additionalGids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|g| g.as_u64().map(|g| g as u32)).collect())
            .unwrap_or_default();
        let caps = CapSets {
            bounding: set_of(process, "bounding")?,
            effective: set_of(process, "effective")?,
            permitted: set_of(process, "permitted")?,
            inheritable: set_of(process, "inheritable")?,
            ambient: set_of(process, "ambient")?,
        };
        let entry = UsernsEntry { ns: format!("/proc/{init_pid}/ns/user"), uid: id("uid"), gid: id("gid"), groups, caps };
        // open it now: a container that is gone fails the exec here, with a clear error
        std::fs::metadata(&entry.ns).map_err(|e| AgentError::precondition(format!("the container's user namespace: {e}")))?;
        process.insert("user".into(), json!({ "uid": 0, "gid": 0, "additionalGids": [] }));
        let all = all_caps();
        process.insert("capabilities".into(), json!({ "bounding": all, "effective": all, "permitted": all, "inheritable": [], "ambient": [] }));
        Ok(entry)
    }

    /// In the exec process: join the namespace (with every capability in it), become the
    /// container's user there keeping the capabilities, and drop the bounding set to the
    /// container's. Effective and permitted stay full until final_caps (the seccomp filter
    /// may need CAP_SYS_ADMIN to load).
    pub fn enter(&self) -> std::result::Result<(), String> {
        let f = std::fs::File::open(&self.ns).map_err(|e| format!("open {}: {e}", self.ns))?;
        use std::os::fd::AsRawFd;
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        drop(f);
        unsafe {
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(format!("keepcaps: {}", std::io::Error::last_os_error()));
            }
            let gids: Vec<libc::gid_t> = self.groups.clone();
            if libc::setgroups(gids.len(), gids.as_ptr()) != 0 {
                return Err(format!("setgroups {:?}: {}", self.groups, std::io::Error::last_os_error()));
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(format!("setresgid {}: {}", self.gid, std::io::Error::last_os_error()));
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(format!("setresuid {}: {}", self.uid, std::io::Error::last_os_error()));
            }
        }
        // a non-zero uid cleared the effective set: raise it back from the permitted one
        let permitted = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
        caps::set(None, CapSet::Effective, &permitted).map_err(|e| format!("raise effective: {e}"))?;
        for c in caps::all() {
            if !self.caps.bounding.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(|e| format!("drop {c} from the bounding set: {e}"))?;
            }
        }
        Ok(())
    }

    /// The container's own capability sets, last.
    pub fn final_caps(&self) -> std::result::Result<(), String> {
        caps::set(None, CapSet::Inheritable, &self.caps.inheritable).map_err(|e| format!("inheritable: {e}"))?;
        caps::set(None, CapSet::Effective, &self.caps.effective).map_err(|e| format!("effective: {e}"))?;
        caps::set(None, CapSet::Permitted, &self.caps.permitted).map_err(|e| format!("permitted: {e}"))?;
        caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient: {e}"))?;
        for c in &self.caps.ambient {
            caps::raise(None, CapSet::Ambient, *c).map_err(|e| format!("ambient {c}: {e}"))?;
        }
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_keeps_the_container_identity_and_hands_libcontainer_root() {
        let mut p = json!({
            "user": { "uid": 1000, "gid": 1001, "additionalGids": [1001, 5] },
            "capabilities": { "bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"] },
        });
        let me = std::process::id() as i32;
        let e = UsernsEntry::prepare(me, p.as_object_mut().unwrap()).unwrap();
        assert_eq!((e.uid, e.gid, e.groups.clone()), (1000, 1001, vec![1001, 5]));
        assert!(e.caps.bounding.contains(&Capability::CAP_CHOWN) && e.caps.bounding.len() == 2);
        assert!(e.caps.effective.contains(&Capability::CAP_KILL) && e.caps.ambient.is_empty());
        assert_eq!(p["user"]["uid"], 0);
        assert!(p["capabilities"]["bounding"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"));
        let mut bad = json!({ "capabilities": { "bounding": ["CAP_NOPE"] } });
        assert!(UsernsEntry::prepare(me, bad.as_object_mut().unwrap()).is_err());
    }
}

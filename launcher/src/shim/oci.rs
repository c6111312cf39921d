//! The OCI runtime of host containers: youki's libcontainer, in the shim's own process.
//! create (the init waits on libcontainer's notify socket), start, signals (one process, or
//! every process of the container's cgroup), exec (libcontainer's tenant builder, under the
//! container's seccomp filter, which that builder does not load itself: the exec process and
//! that filter's executor are oci-exec/'s, shared with the guest agent), delete (kills what is
//! left, removes the cgroup and the state).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use podvisor_oci_exec::SeccompExecutor;
use serde_json::Value;

/// The exec process made from the container's own (oci-exec/, shared with the guest agent).
pub use podvisor_oci_exec::exec_process;

pub enum Stdio {
    /// stdin, stdout, stderr of the process
    Pipes([OwnedFd; 3]),
    /// libcontainer makes a pty and sends its master to this socket
    Console(PathBuf),
}

pub struct Oci {
    pub root: PathBuf,
    pub id: String,
}

fn lc(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Oci {
    fn builder(&self, stdio: Stdio) -> Result<ContainerBuilder, String> {
        let mut b = ContainerBuilder::new(self.id.clone(), SyscallType::Linux).with_root_path(&self.root).map_err(|e| lc("OCI state root", e))?;
        match stdio {
            Stdio::Pipes([i, o, e]) => b = b.with_stdin(i).with_stdout(o).with_stderr(e),
            Stdio::Console(p) => b = b.with_console_socket(Some(p)),
        }
        Ok(b)
    }

    fn load(&self) -> Result<Container, String> {
        Container::load(self.root.join(&self.id)).map_err(|e| lc("loading the container state", e))
    }

    /// Creates the container from `bundle`/config.json; returns its init's pid.
    pub fn create(&self, bundle: &Path, stdio: Stdio) -> Result<i32, String> {
        let c = self.builder(stdio)?.as_init(bundle).with_systemd(false).with_detach(true).build().map_err(|e| lc("creating the container", e))?;
        c.pid().map(|p| p.as_raw()).ok_or_else(|| "the container has no pid".to_string())
    }

    pub fn start(&self) -> Result<(), String> {
        self.load()?.start().map_err(|e| lc("starting the container", e))
    }

    /// `all`: every process in the container's cgroup (a container in the host's or the pod's
    /// PID namespace leaves other processes behind its init).
    pub fn kill_all(&self, signal: i32) -> Result<(), String> {
        let sig = Signal::try_from(signal).map_err(|e| lc("signal", e))?;
        self.load()?.kill(sig, true).map_err(|e| lc("signalling the container's processes", e))
    }

    /// Kills whatever is left, removes the cgroup and the state. A container that is already
    /// gone is fine.
    pub fn delete(&self) -> Result<(), String> {
        if !self.root.join(&self.id).exists() {
            return Ok(());
        }
        self.load()?.delete(true).map_err(|e| lc("deleting the container", e))
    }

    /// Runs `process` (an OCI process) in the container; returns its pid (a child of this
    /// process). `seccomp`: the container's filter, loaded in the new process before execve.
    pub fn exec(&self, dir: &Path, mut process: Value, seccomp: Option<&Value>, stdio: Stdio) -> Result<i32, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let executor = match seccomp {
            Some(s) => Some(SeccompExecutor::prepare(s, &mut process)?),
            None => None,
        };
        let file = dir.join(format!("exec-{}.json", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        std::fs::write(&file, serde_json::to_vec(&process).map_err(|e| lc("exec process", e))?).map_err(|e| lc("writing the exec process", e))?;
        let mut b = self.builder(stdio)?;
        if let Some(x) = executor {
            b = b.with_executor(x);
        }
        let res = b.as_tenant().with_process(Some(&file)).with_detach(true).build();
        let _ = std::fs::remove_file(&file);
        res.map(|p| p.as_raw()).map_err(|e| lc("exec", e))
    }
}

// The tests of oci-exec/ (built here as the host builds it; it has no build of its own).
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_process_replaces_command_and_merges_env() {
        let c = json!({"args": ["sleep", "1"], "terminal": true, "consoleSize": {"height": 1, "width": 1}, "env": ["PATH=/bin", "A=1"], "cwd": "/w", "user": {"uid": 7, "gid": 7}});
        let p = exec_process(&c, &["sh".into(), "-c".into(), "id".into()], false, &["A=2".into(), "B=3".into()], None);
        assert_eq!(p["args"], json!(["sh", "-c", "id"]));
        assert_eq!(p["terminal"], json!(false));
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(p["cwd"], json!("/w"));
        assert_eq!(p["user"]["uid"], json!(7));
    }

    #[test]
    fn seccomp_executor_lends_cap_sys_admin_only_when_needed() {
        let filter = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []});
        let mut p = json!({"capabilities": {"effective": ["CAP_KILL"], "permitted": ["CAP_KILL"], "bounding": ["CAP_KILL"]}});
        let x = SeccompExecutor::prepare(&filter, &mut p).unwrap();
        assert!(x.lends_sys_admin());
        assert_eq!(p["capabilities"]["effective"], json!(["CAP_KILL", "CAP_SYS_ADMIN"]));
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_KILL"]));
        let mut nnp = json!({"noNewPrivileges": true, "capabilities": {"effective": []}});
        assert!(!SeccompExecutor::prepare(&filter, &mut nnp).unwrap().lends_sys_admin());
        assert_eq!(nnp["capabilities"]["effective"], json!([]));
    }
}

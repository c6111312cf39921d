//! An extra process in a running container, as both of podvisor's container runners make it
//! through libcontainer's tenant builder: the guest agent for VM pods (guest/agent/src/exec.rs)
//! and the host shim for host pods (launcher/src/shim/oci.rs). One copy, a path dependency of
//! both crates, so a fix to the exec process or to its seccomp filter reaches both kinds of pod.
//! What differs stays with each caller: the agent also joins a user namespace, the shim writes
//! its own process files and errors.
//!
//! Its unit tests run in the launcher's `cargo test` (launcher/src/shim/oci.rs), which builds
//! this crate as the host build does: the crate has no lock file or build of its own.

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use serde_json::{json, Value};

/// The exec process: the container's own process spec (user, capabilities, rlimits …) with the
/// command, terminal and working directory of the request; `env` entries override the
/// container's by key.
pub fn exec_process(container: &Value, args: &[String], tty: bool, env: &[String], cwd: Option<&str>) -> Value {
    let mut p = container.clone();
    if !p.is_object() {
        p = json!({});
    }
    let obj = p.as_object_mut().unwrap();
    obj.insert("args".into(), json!(args));
    obj.insert("terminal".into(), json!(tty));
    obj.remove("consoleSize");
    if let Some(cwd) = cwd {
        obj.insert("cwd".into(), json!(cwd));
    }
    if !env.is_empty() {
        let mut merged: Vec<String> = obj.get("env").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
        for e in env {
            let key = e.split('=').next().unwrap_or("");
            merged.retain(|m| m.split('=').next() != Some(key));
            merged.push(e.clone());
        }
        obj.insert("env".into(), json!(merged));
    }
    p
}

/// Runs an exec process under its container's seccomp filter, which libcontainer's tenant path
/// does not load. The filter goes on last, just before execve, in the exec'd process itself.
/// Loading a filter takes no_new_privs or CAP_SYS_ADMIN; a process with neither (the usual
/// container) is given CAP_SYS_ADMIN in its effective and permitted sets only (never the
/// bounding set, so execve could not keep it anyway), loads the filter with it, and drops it
/// again before execve: the order runc uses for such processes.
#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    drop_sys_admin: bool,
}

impl SeccompExecutor {
    /// `process` is the exec process spec; it is adjusted when the filter needs CAP_SYS_ADMIN.
    pub fn prepare(seccomp: &Value, process: &mut Value) -> Result<Self, String> {
        let seccomp: LinuxSeccomp = serde_json::from_value(seccomp.clone()).map_err(|e| format!("container seccomp: {e}"))?;
        let obj = process.as_object_mut().ok_or("exec process is not an object")?;
        let nnp = obj.get("noNewPrivileges").and_then(Value::as_bool).unwrap_or(false);
        let has_admin = obj.get("capabilities").and_then(|c| c.get("effective")).and_then(Value::as_array).map(|a| a.iter().any(|c| c == "CAP_SYS_ADMIN")).unwrap_or(false);
        let drop_sys_admin = !nnp && !has_admin;
        if drop_sys_admin {
            let caps = obj.entry("capabilities").or_insert_with(|| json!({}));
            let caps = caps.as_object_mut().ok_or("process capabilities is not an object")?;
            for set in ["effective", "permitted"] {
                if let Some(a) = caps.entry(set).or_insert_with(|| json!([])).as_array_mut() {
                    if !a.iter().any(|c| c == "CAP_SYS_ADMIN") {
                        a.push(json!("CAP_SYS_ADMIN"));
                    }
                }
            }
        }
        Ok(SeccompExecutor { seccomp, drop_sys_admin })
    }

    /// Whether the process was lent CAP_SYS_ADMIN to load the filter (and drops it after).
    pub fn lends_sys_admin(&self) -> bool {
        self.drop_sys_admin
    }

    /// In the exec'd process, just before execve: loads the filter, then drops what was lent.
    pub fn load(&self) -> Result<(), ExecutorError> {
        install(&self.seccomp).map_err(|e| ExecutorError::Other(format!("loading the container's seccomp filter: {e}")))?;
        if self.drop_sys_admin {
            for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
                caps::drop(None, set, caps::Capability::CAP_SYS_ADMIN).map_err(|e| ExecutorError::Other(format!("dropping CAP_SYS_ADMIN: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Loads an OCI seccomp filter (its JSON form, as in a runtime spec's `linux.seccomp`) on the
/// calling thread; it stays across execve and is inherited by every thread and child made after.
/// Loading takes no_new_privs or CAP_SYS_ADMIN, and none is set here. Besides exec processes,
/// podvisor-launch uses it for the filter it puts on QEMU (launcher/src/nopunch.rs).
pub fn load_filter(seccomp: &Value) -> Result<(), String> {
    let seccomp: LinuxSeccomp = serde_json::from_value(seccomp.clone()).map_err(|e| format!("seccomp filter: {e}"))?;
    install(&seccomp)
}

fn install(seccomp: &LinuxSeccomp) -> Result<(), String> {
    match libcontainer::seccomp::initialize_seccomp(seccomp) {
        Ok(None) => Ok(()),
        // a notify filter needs a listener to hand the fd to; neither caller has one
        Ok(Some(fd)) => {
            unsafe { libc::close(fd) };
            Err("seccomp notify is not supported here".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.load()?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

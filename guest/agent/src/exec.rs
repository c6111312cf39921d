//! `exec.start`, `process.signal`, `process.resize`: extra processes in a running container,
//! joined through libcontainer's tenant builder (namespaces, cgroup, user, capabilities of
//! the container's own process spec). The exec process and the executor that loads the
//! container's seccomp filter are oci-exec/'s (shared with the host shim of host pods). Plain
//! execs go through the container's resident executor instead (executor.rs).

use std::rc::Rc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use podvisor_oci_exec::{exec_process, SeccompExecutor};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::containers::{check_signal, Containers, Proc, Status, YOUKI_ROOT};
use crate::userns::UsernsEntry;
use crate::error::{AgentError, Ctx, Result};
use crate::stdio::{self, StdioIds};
use crate::util::check_id;

#[derive(Deserialize)]
struct ExecParams {
    container_id: String,
    exec_id: String,
    args: Vec<String>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    stdin: u32,
    stdout: u32,
    #[serde(default)]
    stderr: u32,
}

fn bad_str(s: &str) -> bool {
    s.contains('\0') || s.len() > 128 * 1024
}

pub fn start(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: ExecParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("exec.start: {e}")))?;
    check_id("container id", &p.container_id)?;
    check_id("exec id", &p.exec_id)?;
    if p.args.is_empty() || p.args.len() > 4096 || p.args.iter().any(|a| bad_str(a)) {
        return Err(AgentError::invalid("args must be 1..4096 strings without NUL"));
    }
    if let Some(env) = &p.env {
        if env.len() > 4096 || env.iter().any(|e| bad_str(e) || !e.contains('=')) {
            return Err(AgentError::invalid("env entries must be KEY=VALUE"));
        }
    }
    if let Some(cwd) = &p.cwd {
        if !cwd.starts_with('/') || bad_str(cwd) {
            return Err(AgentError::invalid("cwd must be absolute"));
        }
    }
    let (dir, mut process, seccomp, userns_of) = {
        let cs = containers.table.borrow();
        let c = cs.get(&p.container_id).ok_or_else(|| AgentError::not_found(format!("container {}", p.container_id)))?;
        if c.status != Status::Running {
            return Err(AgentError::precondition(format!("container {} is {:?}", p.container_id, c.status)));
        }
        if c.execs.get(&p.exec_id).map(|e| e.exit.is_none()).unwrap_or(false) {
            return Err(AgentError::exists(format!("exec {} is running", p.exec_id)));
        }
        (c.dir.clone(), c.process.clone(), c.seccomp.clone(), c.userns.then_some(c.init.pid))
    };

    // The exec process: the container's process spec with args/env/cwd/terminal replaced.
    if !process.is_object() {
        return Err(AgentError::internal("container has no process spec"));
    }
    // libcontainer's tenant path does not join a user namespace: the executor does (userns.rs)
    let userns = match userns_of {
        Some(pid) => Some(UsernsEntry::prepare(pid, process.as_object_mut().unwrap())?),
        None => None,
    };
    let seccomp = match seccomp {
        Some(s) => Some(SeccompExecutor::prepare(&s, &mut process).map_err(AgentError::internal)?),
        None => None,
    };
    // the container's resident executor (executor.rs) serves plain execs (no tty, user namespace,
    // seccomp filter, LSM label, own cwd): all else they get, the container's process spec gave it
    let plain = !p.tty && userns.is_none() && seccomp.is_none() && p.cwd.is_none()
        && process.get("apparmorProfile").is_none() && process.get("selinuxLabel").is_none();
    let base = if plain { Some(process.clone()) } else { None };
    let executor = (userns.is_some() || seccomp.is_some()).then(|| ExecExecutor { userns, seccomp });
    // host values override the container's by key
    let process = exec_process(&process, &p.args, p.tty, p.env.as_deref().unwrap_or_default(), p.cwd.as_deref());
    let ids = StdioIds { stdin: p.stdin, stdout: p.stdout, stderr: p.stderr, tty: p.tty, stdin_once: false };
    if let Some(base) = base {
        let t0 = std::time::Instant::now();
        let mut prepared = stdio::prepare(&containers.streams, &ids, &dir, &format!("exec-{}", p.exec_id))?;
        let served = match prepared.child.take() {
            Some(child) => crate::executor::run(YOUKI_ROOT, &p.container_id, &dir, &base, &process, &child)?,
            None => None,
        };
        if let Some(pid) = served {
            crate::log!("exec {}/{} started by the executor (pid {pid}) in {:?}", p.container_id, p.exec_id, t0.elapsed());
            return finish(containers, &p, ids, prepared, pid);
        }
    }
    let proc_path = dir.join(format!("exec-{}.json", p.exec_id));
    std::fs::write(&proc_path, serde_json::to_vec(&process).ctx("encode process")?).ctx("write exec process")?;

    let mut prepared = stdio::prepare(&containers.streams, &ids, &dir, &format!("exec-{}", p.exec_id))?;
    let mut b = ContainerBuilder::new(p.container_id.clone(), SyscallType::Linux)
        .with_root_path(YOUKI_ROOT)
        .map_err(|e| AgentError::internal(format!("youki root: {e}")))?;
    if let Some([i, o, e]) = prepared.child.take() {
        b = b.with_stdin(i).with_stdout(o).with_stderr(e);
    }
    if let Some((_, path)) = &prepared.console {
        b = b.with_console_socket(Some(path));
    }
    if let Some(x) = executor {
        b = b.with_executor(x);
    }
    let t0 = std::time::Instant::now();
    let res = b.as_tenant().with_process(Some(&proc_path)).with_detach(true).build();
    let _ = std::fs::remove_file(&proc_path);
    let pid = res.map_err(|e| AgentError::internal(format!("exec: {e}")))?.as_raw();
    crate::log!("exec {}/{} started (pid {pid}) in {:?}", p.container_id, p.exec_id, t0.elapsed());
    finish(containers, &p, ids, prepared, pid)
}

fn finish(containers: &Rc<Containers>, p: &ExecParams, ids: StdioIds, prepared: stdio::Prepared, pid: i32) -> Result<Value> {
    let rx = containers.reaper.watch(pid);
    let att = match stdio::attach(&containers.streams, &ids, prepared) {
        Ok(a) => a,
        Err(e) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(e);
        }
    };
    let master = att.master.clone();
    let (cid, eid) = (p.container_id.clone(), p.exec_id.clone());
    let table = containers.clone();
    stdio::spawn_waiter(&containers.streams, p.container_id.clone(), Some(p.exec_id.clone()), pid, rx, att, move |st| {
        let mut cs = table.table.borrow_mut();
        let Some(c) = cs.get_mut(&cid) else { return false };
        if let Some(e) = c.execs.get_mut(&eid) {
            if e.pid == pid {
                e.exit = Some(st);
                e.master = None;
            }
        }
        false
    });
    if let Some(c) = containers.table.borrow_mut().get_mut(&p.container_id) {
        // Keep finished execs for process.signal/resize races, but bounded.
        if c.execs.len() >= 256 {
            c.execs.retain(|_, e| e.exit.is_none());
        }
        c.execs.insert(p.exec_id.clone(), Proc { pid, exit: None, master });
    }
    Ok(json!({ "pid": pid }))
}

#[derive(Deserialize)]
struct ProcParams {
    container_id: String,
    #[serde(default)]
    exec_id: Option<String>,
    #[serde(default)]
    signal: i32,
    #[serde(default)]
    rows: u16,
    #[serde(default)]
    cols: u16,
}

/// (pid, pty master, exited) of the container's init or one of its execs.
fn lookup(containers: &Containers, p: &ProcParams) -> Result<(i32, Option<Rc<std::os::fd::OwnedFd>>, bool)> {
    check_id("container id", &p.container_id)?;
    let cs = containers.table.borrow();
    let c = cs.get(&p.container_id).ok_or_else(|| AgentError::not_found(format!("container {}", p.container_id)))?;
    match &p.exec_id {
        None => Ok((c.init.pid, c.init.master.clone(), c.status == Status::Stopped)),
        Some(e) => {
            check_id("exec id", e)?;
            let e = c.execs.get(e).ok_or_else(|| AgentError::not_found(format!("exec {e}")))?;
            Ok((e.pid, e.master.clone(), e.exit.is_some()))
        }
    }
}

pub fn signal(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: ProcParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("process.signal: {e}")))?;
    check_signal(p.signal)?;
    let (pid, _, exited) = lookup(containers, &p)?;
    if !exited && pid > 0 {
        unsafe { libc::kill(pid, p.signal) };
    }
    Ok(json!({}))
}

pub fn resize(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: ProcParams = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("process.resize: {e}")))?;
    let (_, master, exited) = lookup(containers, &p)?;
    if exited {
        return Ok(json!({}));
    }
    let m = master.ok_or_else(|| AgentError::precondition("process has no terminal"))?;
    stdio::resize(&m, p.rows, p.cols)?;
    Ok(json!({}))
}


/// What an exec process does last, in itself, before execve: join its container's user
/// namespace (taking the container's identity and capabilities there), then load its
/// container's seccomp filter.
#[derive(Clone)]
struct ExecExecutor {
    userns: Option<UsernsEntry>,
    seccomp: Option<SeccompExecutor>,
}

impl Executor for ExecExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        if let Some(u) = &self.userns {
            u.enter().map_err(|e| ExecutorError::Other(format!("joining the container's user namespace: {e}")))?;
        }
        if let Some(s) = &self.seccomp {
            s.load()?;
        }
        if let Some(u) = &self.userns {
            u.final_caps().map_err(|e| ExecutorError::Other(format!("capabilities in the container's user namespace: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

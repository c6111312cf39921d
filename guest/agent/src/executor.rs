//! A resident exec helper per container ("executor"): ExecSync (exec probes) at a fork's cost.
//!
//! An exec through libcontainer's tenant path costs the agent two forks of itself, a setns per
//! namespace, a cgroup move and the init's setup, every time: under TCG ~30–90 ms of a steady
//! exec (bench/README.md, issue 21). So the first plain exec into a container (no tty, no user
//! namespace, no seccomp filter, no LSM label, no cwd of its own: exec.rs decides) makes, through
//! that same tenant path, a process that has everything an exec process gets from the container
//! (namespaces, cgroup, uid/gid/groups, capabilities, rlimits, no_new_privs, umask, cwd) and
//! then, instead of the workload, executes a fresh image of the agent binary (`podvisor-exec`,
//! argv[0]) that holds nothing of the agent (no memory, no descriptor but its socket). It serves
//! requests over a SOCK_SEQPACKET socket: argv, envp, the PATH candidates of argv[0] and three
//! stdio descriptors (≤ 256 KiB, exactly 3 fds, one at a time), each one clone(CLONE_PARENT) +
//! setsid + execve, so the process is the agent's child as before (the reaper sees its exit,
//! the agent signals it by pid) and inherits the executor's identity exactly as libcontainer's
//! exec'd process does; execve transforms capabilities the same way twice over (no file caps
//! on the agent binary). Failures to execute are reported before the reply (a CLOEXEC pipe).
//!
//! Trade: the executor is a process of the container: `ps` in the container shows
//! `podvisor-exec`, and it counts in the cgroup's pids.current and memory (a few hundred KiB).
//! stats.rs leaves it out of the container's process, fd and pid counts. It is non-dumpable,
//! not under the container's seccomp filter (the exec'd process loads that itself; such
//! containers are not served here anyway), dies with the container's PID namespace, is killed
//! when the container's init exits or it is deleted, and when the agent goes (PDEATHSIG).
//! An executor that fails (killed from inside, socket closed) is dropped and the exec takes the
//! tenant path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{AgentError, Ctx, Result};
use crate::util;

const MAX_REQUEST: usize = 256 * 1024;
const REPLY_TIMEOUT_MS: i32 = 10_000;

thread_local! {
    /// container id → (our end of the executor's socket, the executor's pid)
    static EXECUTORS: RefCell<HashMap<String, (OwnedFd, i32)>> = RefCell::new(HashMap::new());
}

#[derive(Serialize, Deserialize)]
struct Request {
    argv: Vec<String>,
    envp: Vec<String>,
    candidates: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    #[serde(default)]
    err: Option<String>,
}

/// The pid of a container's executor, if it has one.
pub fn pid_of(container_id: &str) -> Option<i32> {
    EXECUTORS.with(|m| m.borrow().get(container_id).map(|(_, pid)| *pid))
}

/// Forgets (and kills) a container's executor.
pub fn forget(container_id: &str) {
    if let Some((_, pid)) = EXECUTORS.with(|m| m.borrow_mut().remove(container_id)) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Runs `process` (the exec process spec: args, env, cwd) through the container's executor,
/// starting one if there is none. Ok(None): not served here (the caller takes the old path).
pub fn run(youki_root: &str, container_id: &str, dir: &Path, base: &Value, process: &Value, stdio: &[OwnedFd; 3]) -> Result<Option<i32>> {
    let argv: Vec<String> = process["args"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
    let envp: Vec<String> = process["env"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
    if argv.is_empty() {
        return Ok(None);
    }
    let arg0 = &argv[0];
    let candidates: Vec<String> = if arg0.contains('/') {
        vec![arg0.clone()]
    } else {
        let path = envp.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/bin:/usr/bin");
        path.split(':').map(|d| if d.is_empty() { arg0.clone() } else { format!("{d}/{arg0}") }).collect()
    };
    let req = serde_json::to_vec(&Request { argv, envp, candidates }).ctx("encode exec request")?;
    if req.len() > MAX_REQUEST {
        return Ok(None);
    }
    let have = EXECUTORS.with(|m| m.borrow().contains_key(container_id));
    if !have {
        let (fd, pid) = spawn(youki_root, container_id, dir, base)?;
        EXECUTORS.with(|m| m.borrow_mut().insert(container_id.to_string(), (fd, pid)));
    }
    let sent = EXECUTORS.with(|m| {
        let m = m.borrow();
        let (fd, _) = m.get(container_id).unwrap();
        request(fd.as_raw_fd(), &req, stdio)
    });
    match sent {
        Ok(Ok(pid)) => Ok(Some(pid)),
        Ok(Err(msg)) => Err(AgentError::internal(format!("exec: {msg}"))),
        Err(e) => {
            crate::log!("executor of {container_id}: {e}; using the tenant path");
            forget(container_id);
            Ok(None)
        }
    }
}

fn request(fd: RawFd, req: &[u8], stdio: &[OwnedFd; 3]) -> std::io::Result<std::result::Result<i32, String>> {
    let fds = [stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()];
    send_with_fds(fd, req, &fds)?;
    // SIGCHLD (an exec'd process is our child) interrupts the wait: wait on for what is left
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(REPLY_TIMEOUT_MS as u64);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as i32;
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        match unsafe { libc::poll(&mut pfd, 1, left) } {
            n if n > 0 => break,
            0 => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply")),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    let mut buf = vec![0u8; 4096];
    let (n, got) = recv_with_fds(fd, &mut buf, 1)?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "executor gone"));
    }
    let reply: Reply = serde_json::from_slice(&buf[..n]).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if let Some(e) = reply.err {
        return Ok(Err(e));
    }
    let pidfd = got.into_iter().next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no pidfd"))?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse::<i32>().ok()).filter(|p| *p > 0);
    pid.map(Ok).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "pidfd without a pid"))
}

fn spawn(youki_root: &str, container_id: &str, dir: &Path, base: &Value) -> Result<(OwnedFd, i32)> {
    let mut sv = [0; 2];
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } < 0 {
        return Err(AgentError::internal(format!("socketpair: {}", std::io::Error::last_os_error())));
    }
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let exe: OwnedFd = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open("/proc/self/exe").ctx("agent binary")?.into();
    let mut p = base.clone();
    p["args"] = json!(["podvisor-exec"]);
    p["terminal"] = json!(false);
    let path = dir.join("executor.json");
    std::fs::write(&path, serde_json::to_vec(&p).ctx("encode executor process")?).ctx("write executor process")?;
    let b = ContainerBuilder::new(container_id.to_string(), SyscallType::Linux)
        .with_root_path(youki_root)
        .map_err(|e| AgentError::internal(format!("youki root: {e}")))?
        .with_stdin(util::dev_null()?)
        .with_stdout(util::dev_null()?)
        .with_stderr(util::dev_null()?)
        .with_executor(Serve { fd: theirs.as_raw_fd(), exe: exe.as_raw_fd() });
    let res = b.as_tenant().with_process(Some(&path)).with_detach(true).build();
    let _ = std::fs::remove_file(&path);
    let pid = res.map_err(|e| AgentError::internal(format!("executor: {e}")))?.as_raw();
    drop(theirs);
    Ok((ours, pid))
}

#[derive(Clone)]
struct Serve {
    fd: RawFd,
    /// the agent's binary (O_PATH), executed as the executor
    exe: RawFd,
}

impl Executor for Serve {
    /// In the tenant process libcontainer made (namespaces, cgroup, user, capabilities set):
    /// instead of the workload, a fresh image of the agent binary, so the executor holds none of
    /// the agent's memory or descriptors, only its socket (fd 3).
    fn exec(&self, _spec: &Spec) -> std::result::Result<(), ExecutorError> {
        unsafe {
            if self.fd != 3 && libc::dup2(self.fd, 3) < 0 {
                return Err(ExecutorError::Other(format!("executor socket: {}", std::io::Error::last_os_error())));
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            // everything else the agent had goes at execve (the binary's fd too, after use)
            libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            let argv = [ARGV0.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::syscall(libc::SYS_execveat, self.exe, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
        }
        Err(ExecutorError::Other(format!("executor: execveat: {}", std::io::Error::last_os_error())))
    }

    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        Ok(())
    }
}

const ARGV0: &std::ffi::CStr = c"podvisor-exec";

/// Whether this process was started as a container's executor (argv[0]).
pub fn is_executor(argv0: &str) -> bool {
    argv0 == "podvisor-exec"
}

/// The executor's main: serves its socket (fd 3) until the agent closes it.
pub fn main() -> ! {
    unsafe {
        // Rust's runtime ignores SIGPIPE; exec'd processes get it at its default, as before
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // its name in the container's `ps` (execveat of an fd named it after the fd)
        libc::prctl(libc::PR_SET_NAME, c"podvisor-exec".as_ptr(), 0, 0, 0);
        // the agent is our parent (libcontainer's CLONE_PARENT)
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    serve(3)
}

fn serve(fd: RawFd) -> ! {
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (n, fds) = match recv_with_fds(fd, &mut buf, 3) {
            Ok(x) => x,
            Err(_) => unsafe { libc::_exit(0) },
        };
        if n == 0 {
            unsafe { libc::_exit(0) };
        }
        let reply = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(req) if fds.len() == 3 => spawn_one(&req, &fds),
            _ => Err(None),
        };
        drop(fds);
        match reply {
            Ok(pidfd) => {
                let _ = send_with_fds(fd, br#"{}"#, &[pidfd.as_raw_fd()]);
            }
            Err(e) => {
                let msg = serde_json::to_vec(&Reply { err: Some(e.unwrap_or_else(|| "bad request".into())) }).unwrap_or_default();
                let _ = send_with_fds(fd, &msg, &[]);
            }
        }
    }
}

fn cstrings(v: &[String]) -> Option<Vec<CString>> {
    v.iter().map(|s| CString::new(s.as_bytes()).ok()).collect()
}

/// One clone(CLONE_PARENT) + execve; the pidfd of the new process, or why it did not start.
fn spawn_one(req: &Request, fds: &[OwnedFd]) -> std::result::Result<OwnedFd, Option<String>> {
    let argv = cstrings(&req.argv).ok_or(None)?;
    let envp = cstrings(&req.envp).ok_or(None)?;
    let cands = cstrings(&req.candidates).ok_or(None)?;
    if argv.is_empty() || cands.is_empty() {
        return Err(None);
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // per candidate: ["sh", candidate, argv[1..]] (prepared here: the child only execs)
    let sh_argvs: Vec<Vec<*const libc::c_char>> = cands
        .iter()
        .map(|c| [c"sh".as_ptr(), c.as_ptr()].into_iter().chain(argv.iter().skip(1).map(|a| a.as_ptr())).chain([std::ptr::null()]).collect())
        .collect();
    let (r, w) = util::pipe().map_err(|e| Some(e.to_string()))?;
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let pid = unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(Some(format!("clone: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        unsafe {
            libc::setsid();
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, i as i32) < 0 {
                    libc::_exit(126);
                }
            }
            let mut err = libc::ENOENT;
            for (c, sh_argv) in cands.iter().zip(&sh_argvs) {
                libc::execve(c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
                let e = *libc::__errno_location();
                if e == libc::ENOEXEC {
                    // what execvp does with a file it cannot execute: a script for /bin/sh
                    libc::execve(c"/bin/sh".as_ptr(), sh_argv.as_ptr(), envp_p.as_ptr());
                }
                if e != libc::ENOENT && e != libc::ENOTDIR {
                    err = e;
                }
            }
            libc::write(w.as_raw_fd(), (&err as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(w);
    let mut e = [0u8; 4];
    let n = unsafe { libc::read(r.as_raw_fd(), e.as_mut_ptr().cast(), 4) };
    if n == 4 {
        let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(e));
        return Err(Some(format!("executing {:?}: {err}", req.argv[0])));
    }
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if pidfd < 0 {
        return Err(Some(format!("pidfd_open: {}", std::io::Error::last_os_error())));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) })
}

fn send_with_fds(fd: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8).max(1)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    loop {
        if unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) } >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8], max_fds: usize) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let space = unsafe { libc::CMSG_SPACE((max_fds * 4) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let p = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..count {
                    out.push(OwnedFd::from_raw_fd(*p.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated message"));
    }
    Ok((n as usize, out))
}

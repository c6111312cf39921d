//! `podvisor-launch shim`: the process that holds one host container (conmon's job, plus the
//! OCI runtime's).
//!
//! ```text
//! podvisor-launch shim --id ID --bundle DIR --oci-root DIR --socket PATH --exit-file PATH
//!                      [--log PATH] [--tty] [--stdin] [--stdin-once]
//! ```
//!
//! It creates the container from `DIR/config.json` with youki's libcontainer linked in (no OCI
//! runtime binary is run), prints `{"pid":N}` (or `{"error":"…"}`) on stdout and from then on
//! serves the daemon on a unix socket (protocol: frame.rs) until the daemon deletes the
//! container: start, signals, exec (tty or not), attach, terminal resize, log reopen. It holds
//! the container's stdio, writes the CRI log itself (crilog.rs), reaps the init (it is a child
//! subreaper, so orphans of a container in the host's PID namespace are reaped too), and on the
//! init's exit writes `--exit-file` (`{"exit_code","signal","oom_killed","finished_at"}`; OOM
//! from the container's memory cgroup) and tells every connected client. It runs in a session of
//! its own and outlives the daemon: a restarted daemon connects to the socket again.
//!
//! Why libcontainer in process, measured on this machine (2 cores, cgroup v1 + a v2 hierarchy
//! holding hugetlb; busybox, seccomp deny list, memory and CPU limits, the same bundle; ms,
//! medians of 10 per round, the range over 2-3 alternating rounds; the machine was shared, load
//! average 5-15):
//!
//! | runtime | create | start | exec `true` | delete |
//! |---|---|---|---|---|
//! | libcontainer 0.7, in a test program | 26–41 | 1.2–2.8 | 13–41 | 8–16 |
//! | this shim (spawn, create, ready line; start, exec, delete requests on its socket) | 46–56 | 1.6–2.4 | 23–29 | 18–22 (kill + wait + delete) |
//! | Debian runc 1.1.5, exec'd per operation | 47–69 | 7–14 | 30–47 | 9–22 (after a kill) |
//! | Debian crun 1.8.1, exec'd | fails | | | |
//!
//! crun 1.8.1 refuses every container on a hybrid host whose v2 hierarchy holds a controller
//! ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"), even with
//! `--cgroup-manager=disabled`; runc works but costs two Go start-ups per create and one or two
//! per exec. libcontainer is already the guest agent's runtime (one set of OCI semantics for
//! both backends), handles cgroup v1 and hybrid hosts (controllers it cannot find are skipped),
//! loads seccomp through libseccomp, enforces device rules (v1 devices cgroup; v2 with eBPF),
//! and keeps the container's init a child of the shim, so exits are seen without polling. It
//! does not report OOM kills: the shim reads the cgroup's `oom_kill` counter at exit.

mod crilog;
mod fdio;
mod frame;
mod oci;
mod propagation;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sys::errno;
use crilog::{CriLog, Stream};
use frame::Decoder;
use oci::{Oci, Stdio};

const USAGE: &str = "usage: podvisor-launch shim --id ID --bundle DIR --oci-root DIR --socket PATH --exit-file PATH [--log PATH] [--tty] [--stdin] [--stdin-once]";
/// Bytes queued for one peer (a client socket, a process's stdin) before its source is paused.
const QUEUE_CAP: usize = 1 << 20;
const MAX_CLIENTS: usize = 64;
const MAX_EXECS: usize = 64;
/// How long output is still read after a process exited (a background child may keep the
/// pipe open forever).
const DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Default, PartialEq)]
pub struct ShimOpts {
    pub id: String,
    pub bundle: PathBuf,
    pub oci_root: PathBuf,
    pub socket: PathBuf,
    pub exit_file: PathBuf,
    pub log: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

pub fn parse(args: Vec<String>) -> Result<ShimOpts, String> {
    let mut o = ShimOpts::default();
    let mut it = args.into_iter();
    let abs = |flag: &str, v: Option<String>| -> Result<PathBuf, String> {
        let v = v.ok_or(format!("{flag} needs a path"))?;
        if !v.starts_with('/') {
            return Err(format!("{flag} {v:?}: must be an absolute path"));
        }
        Ok(PathBuf::from(v))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" => o.id = it.next().ok_or("--id needs a value")?,
            "--bundle" => o.bundle = abs("--bundle", it.next())?,
            "--oci-root" => o.oci_root = abs("--oci-root", it.next())?,
            "--socket" => o.socket = abs("--socket", it.next())?,
            "--exit-file" => o.exit_file = abs("--exit-file", it.next())?,
            "--log" => o.log = Some(abs("--log", it.next())?),
            "--tty" => o.tty = true,
            "--stdin" => o.stdin = true,
            "--stdin-once" => o.stdin_once = true,
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
    }
    if o.id.is_empty() || o.id.len() > 128 || !o.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') || o.id.starts_with('.') {
        return Err(format!("--id {:?}: 1-128 characters of [A-Za-z0-9._-]\n{USAGE}", o.id));
    }
    for (flag, p) in [("--bundle", &o.bundle), ("--oci-root", &o.oci_root), ("--socket", &o.socket), ("--exit-file", &o.exit_file)] {
        if p.as_os_str().is_empty() {
            return Err(format!("{flag} is required\n{USAGE}"));
        }
    }
    if o.socket.as_os_str().len() >= 108 {
        return Err(format!("--socket {}: longer than a unix socket path may be", o.socket.display()));
    }
    Ok(o)
}

// --- signals: a self-pipe (handlers are reset by execve, so children start with the defaults,
// which blocked or ignored signals would not) ------------------------------------------------

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = 1u8;
        unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) };
    }
}

extern "C" fn on_sigpipe(_: libc::c_int) {}

fn install_handlers() -> Result<OwnedFd, String> {
    let (r, w) = fdio::pipe()?;
    fdio::set_nonblocking(r.as_raw_fd());
    fdio::set_nonblocking(w.as_raw_fd());
    WAKE_FD.store(w.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(w); // written by the handler for the life of the process
    for (sig, h) in [(libc::SIGCHLD, on_sigchld as extern "C" fn(libc::c_int)), (libc::SIGPIPE, on_sigpipe)] {
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = h as usize;
        sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(format!("sigaction: {}", errno()));
        }
    }
    Ok(r)
}

/// Exit status as CRI reports it: the code, or 128 + the signal.
fn exit_code(status: i32) -> (i32, i32) {
    if libc::WIFSIGNALED(status) {
        let s = libc::WTERMSIG(status);
        (128 + s, s)
    } else {
        (libc::WEXITSTATUS(status), 0)
    }
}

fn now_ns() -> String {
    let (s, ns) = crilog::now();
    (s as i128 * 1_000_000_000 + ns as i128).to_string()
}

/// The container's memory cgroup file that counts OOM kills (v1 memory.oom_control, v2
/// memory.events), from the init's /proc/<pid>/cgroup.
fn oom_counter_file(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == "memory") {
            let f = PathBuf::from(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
            if f.exists() {
                return Some(f);
            }
        }
    }
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let f = PathBuf::from(format!("{base}{path}/memory.events"));
                if f.exists() {
                    return Some(f);
                }
            }
        }
    }
    None
}

fn oom_kills(file: &Option<PathBuf>) -> u64 {
    let Some(f) = file else { return 0 };
    let text = std::fs::read_to_string(f).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

struct Out {
    fd: OwnedFd,
    stream: Stream,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Control,
    Attach { stdin: bool, stdout: bool, stderr: bool },
    Exec(u64),
}

struct Client {
    id: u64,
    sock: OwnedFd,
    dec: Decoder,
    wbuf: Vec<u8>,
    mode: Mode,
    close_after_flush: bool,
}

impl Client {
    fn send(&mut self, kind: u8, payload: &[u8]) {
        frame::encode(kind, payload, &mut self.wbuf);
    }

    fn reply(&mut self, v: Value) {
        self.send(frame::REPLY, v.to_string().as_bytes());
    }
}

struct Exec {
    id: u64,
    client: u64,
    pid: i32,
    outs: Vec<Out>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_end: bool,
    master: Option<OwnedFd>,
    status: Option<i32>,
    deadline: Option<Instant>,
}

struct Shim {
    o: ShimOpts,
    oci: Oci,
    listener: UnixListener,
    wake: OwnedFd,
    pid: i32,
    /// the daemon started it (its init left libcontainer's wait)
    started: bool,
    status: Option<i32>,
    deadline: Option<Instant>,
    exit: Option<Value>,
    outs: Vec<Out>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_end: bool,
    master: Option<OwnedFd>,
    log: CriLog,
    clients: Vec<Client>,
    execs: Vec<Exec>,
    next_id: u64,
    process: Value,
    seccomp: Option<Value>,
    oom_file: Option<PathBuf>,
}

enum Tgt {
    Listener,
    Wake,
    Out(usize),
    In,
    Client(usize),
    ExecOut(usize, usize),
    ExecIn(usize),
}

/// A new process's stdio as the shim holds it: on a tty the pty master (output, and input with
/// stdin, both through it), else pipes; the host ends non-blocking for the poll loop.
struct ProcessIo {
    pid: i32,
    outs: Vec<Out>,
    stdin: Option<OwnedFd>,
    master: Option<OwnedFd>,
}

/// Starts a process (the container's own or an exec) with its stdio: `start` makes it with the
/// `Stdio` given. On a tty that is a console socket at `console`, where libcontainer sends the
/// pty master; if none comes, `undo(pid)` gets rid of the process that has no terminal.
fn start_with_io(console: PathBuf, tty: bool, want_stdin: bool, start: impl FnOnce(Stdio) -> Result<i32, String>, undo: impl FnOnce(i32)) -> Result<ProcessIo, String> {
    if tty {
        let _ = std::fs::remove_file(&console);
        let l = UnixListener::bind(&console).map_err(|e| format!("console socket: {e}"))?;
        let res = start(Stdio::Console(console.clone()));
        let res = res.and_then(|pid| match fdio::recv_master(&l, Duration::from_secs(10)) {
            Ok(m) => Ok((pid, m)),
            Err(e) => {
                undo(pid);
                Err(e)
            }
        });
        let _ = std::fs::remove_file(&console);
        let (pid, m) = res?;
        fdio::set_nonblocking(m.as_raw_fd());
        let outs = vec![Out { fd: fdio::dup(&m)?, stream: Stream::Stdout }];
        let stdin = if want_stdin { Some(fdio::dup(&m)?) } else { None };
        return Ok(ProcessIo { pid, outs, stdin, master: Some(m) });
    }
    let (cin, stdin) = if want_stdin {
        let (r, w) = fdio::pipe()?;
        (r, Some(w))
    } else {
        (fdio::dev_null()?, None)
    };
    let (hout, cout) = fdio::pipe()?;
    let (herr, cerr) = fdio::pipe()?;
    let pid = start(Stdio::Pipes([cin, cout, cerr]))?;
    let mut outs = Vec::new();
    for (fd, stream) in [(hout, Stream::Stdout), (herr, Stream::Stderr)] {
        fdio::set_nonblocking(fd.as_raw_fd());
        outs.push(Out { fd, stream });
    }
    if let Some(w) = &stdin {
        fdio::set_nonblocking(w.as_raw_fd());
    }
    Ok(ProcessIo { pid, outs, stdin, master: None })
}

/// Sets up and creates the container; Err before the container exists (or after removing it).
fn create(o: ShimOpts) -> Result<Shim, String> {
    let spec: Value = serde_json::from_slice(&std::fs::read(o.bundle.join("config.json")).map_err(|e| format!("reading config.json: {e}"))?)
        .map_err(|e| format!("config.json: {e}"))?;
    let process = spec.get("process").cloned().unwrap_or(json!({}));
    let seccomp = spec.get("linux").and_then(|l| l.get("seccomp")).cloned();
    let propagation = propagation::changes(&spec)?;
    let wake = install_handlers()?;
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let _ = std::fs::remove_file(&o.socket);
    let listener = UnixListener::bind(&o.socket).map_err(|e| format!("listening on {}: {e}", o.socket.display()))?;
    let _ = std::fs::set_permissions(&o.socket, std::fs::Permissions::from_mode(0o600));
    listener.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
    let log = CriLog::open(o.log.clone()).map_err(|e| format!("opening the log {}: {e}", o.log.as_ref().unwrap().display()))?;
    let oci = Oci { root: o.oci_root.clone(), id: o.id.clone() };

    let ProcessIo { pid, outs, stdin, master } = start_with_io(o.bundle.join("console.sock"), o.tty, o.stdin, |io| oci.create(&o.bundle, io), |_| {
        let _ = oci.delete();
    })?;
    // libcontainer leaves each mount's own propagation out: set before anything runs in it
    if let Err(e) = propagation::apply(pid, &propagation) {
        let _ = oci.delete();
        return Err(e);
    }
    let oom_file = oom_counter_file(pid);
    Ok(Shim {
        o,
        oci,
        listener,
        wake,
        pid,
        started: false,
        status: None,
        deadline: None,
        exit: None,
        outs,
        stdin,
        stdin_buf: Vec::new(),
        stdin_end: false,
        master,
        log,
        clients: Vec::new(),
        execs: Vec::new(),
        next_id: 1,
        process,
        seccomp,
        oom_file,
    })
}

pub fn main(o: ShimOpts) -> ! {
    let socket = o.socket.clone();
    let shim_log = o.bundle.join("shim.log");
    let mut shim = match create(o) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", json!({ "error": e }));
            let _ = std::fs::remove_file(&socket);
            std::process::exit(1);
        }
    };
    println!("{}", json!({ "pid": shim.pid }));
    // the daemon reads stdout/stderr to their end: from now on, /dev/null and the shim's own log
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        let logf = crate::sys::cstr(shim_log.as_os_str().as_encoded_bytes()).map(|p| libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, 0o600)).unwrap_or(-1);
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        libc::dup2(if logf >= 0 { logf } else { null }, 2);
        libc::close(null);
        if logf >= 0 {
            libc::close(logf);
        }
    }
    shim.reap();
    shim.run()
}

impl Shim {
    fn attached_full(&self) -> bool {
        self.clients.iter().any(|c| matches!(c.mode, Mode::Attach { stdout: true, .. } | Mode::Attach { stderr: true, .. }) && c.wbuf.len() > QUEUE_CAP)
    }

    fn client_idx(&self, id: u64) -> Option<usize> {
        self.clients.iter().position(|c| c.id == id)
    }

    fn run(&mut self) -> ! {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut tgts: Vec<Tgt> = Vec::new();
            let add = |fds: &mut Vec<libc::pollfd>, tgts: &mut Vec<Tgt>, fd: i32, ev: i16, t: Tgt| {
                fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                tgts.push(t);
            };
            add(&mut fds, &mut tgts, self.listener.as_raw_fd(), libc::POLLIN, Tgt::Listener);
            add(&mut fds, &mut tgts, self.wake.as_raw_fd(), libc::POLLIN, Tgt::Wake);
            if !self.attached_full() {
                for (i, o) in self.outs.iter().enumerate() {
                    add(&mut fds, &mut tgts, o.fd.as_raw_fd(), libc::POLLIN, Tgt::Out(i));
                }
            }
            if let Some(s) = &self.stdin {
                if !self.stdin_buf.is_empty() {
                    add(&mut fds, &mut tgts, s.as_raw_fd(), libc::POLLOUT, Tgt::In);
                }
            }
            for (i, c) in self.clients.iter().enumerate() {
                let target_full = match c.mode {
                    Mode::Attach { .. } => self.stdin_buf.len() > QUEUE_CAP,
                    Mode::Exec(id) => self.execs.iter().any(|e| e.id == id && e.stdin_buf.len() > QUEUE_CAP),
                    Mode::Control => false,
                };
                let mut ev = 0;
                if !target_full && c.wbuf.len() <= QUEUE_CAP && !c.close_after_flush {
                    ev |= libc::POLLIN;
                }
                if !c.wbuf.is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(&mut fds, &mut tgts, c.sock.as_raw_fd(), ev, Tgt::Client(i));
            }
            for (ei, e) in self.execs.iter().enumerate() {
                let owner_full = self.clients.iter().any(|c| c.id == e.client && c.wbuf.len() > QUEUE_CAP);
                if !owner_full {
                    for (oi, o) in e.outs.iter().enumerate() {
                        add(&mut fds, &mut tgts, o.fd.as_raw_fd(), libc::POLLIN, Tgt::ExecOut(ei, oi));
                    }
                }
                if let Some(s) = &e.stdin {
                    if !e.stdin_buf.is_empty() {
                        add(&mut fds, &mut tgts, s.as_raw_fd(), libc::POLLOUT, Tgt::ExecIn(ei));
                    }
                }
            }
            let now = Instant::now();
            let next = self.deadline.iter().chain(self.execs.iter().filter_map(|e| e.deadline.as_ref())).min().copied();
            let timeout = next.map(|d| d.saturating_duration_since(now).as_millis() as i32 + 1).unwrap_or(-1);
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                eprintln!("podvisor-launch shim: poll: {}", errno());
                std::process::exit(2);
            }
            // Events are handled in an order that keeps the indexes in `tgts` valid: reads and
            // writes first (they only mark things for removal), removals after.
            let mut dead_clients: Vec<u64> = Vec::new();
            let mut closed_outs: Vec<usize> = Vec::new();
            let mut closed_exec_outs: Vec<(usize, usize)> = Vec::new();
            let mut accept = false;
            for (pfd, t) in fds.iter().zip(tgts.iter()) {
                let re = pfd.revents;
                if re == 0 {
                    continue;
                }
                match *t {
                    Tgt::Listener => accept = true,
                    Tgt::Wake => {
                        while let fdio::Read::Data(_) = fdio::read(self.wake.as_raw_fd(), &mut buf) {}
                    }
                    Tgt::Out(i) => match fdio::read(self.outs[i].fd.as_raw_fd(), &mut buf) {
                        fdio::Read::Data(n) => self.container_output(self.outs[i].stream, &buf[..n]),
                        fdio::Read::Eof => closed_outs.push(i),
                        fdio::Read::WouldBlock => {}
                    },
                    Tgt::In => self.write_stdin(),
                    Tgt::Client(i) => {
                        if re & libc::POLLOUT != 0 && !self.flush_client(i) {
                            dead_clients.push(self.clients[i].id);
                            continue;
                        }
                        if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                            match fdio::read(self.clients[i].sock.as_raw_fd(), &mut buf) {
                                fdio::Read::Data(n) => {
                                    self.clients[i].dec.feed(&buf[..n]);
                                    if let Err(e) = self.client_frames(i) {
                                        eprintln!("podvisor-launch shim: client {}: {e}", self.clients[i].id);
                                        dead_clients.push(self.clients[i].id);
                                    }
                                }
                                fdio::Read::Eof => dead_clients.push(self.clients[i].id),
                                fdio::Read::WouldBlock => {}
                            }
                        }
                    }
                    Tgt::ExecOut(ei, oi) => match fdio::read(self.execs[ei].outs[oi].fd.as_raw_fd(), &mut buf) {
                        fdio::Read::Data(n) => {
                            let (client, stream) = (self.execs[ei].client, self.execs[ei].outs[oi].stream);
                            if let Some(ci) = self.client_idx(client) {
                                let kind = if stream == Stream::Stdout { frame::STDOUT } else { frame::STDERR };
                                self.clients[ci].send(kind, &buf[..n]);
                            }
                        }
                        fdio::Read::Eof => closed_exec_outs.push((ei, oi)),
                        fdio::Read::WouldBlock => {}
                    },
                    Tgt::ExecIn(ei) => {
                        let e = &mut self.execs[ei];
                        let tty = e.master.is_some();
                        write_queue(&mut e.stdin, &mut e.stdin_buf, e.stdin_end && !tty, !tty);
                    }
                }
            }
            closed_outs.sort_unstable();
            for i in closed_outs.into_iter().rev() {
                let o = self.outs.remove(i);
                self.log.end(o.stream);
            }
            closed_exec_outs.sort_unstable();
            for (ei, oi) in closed_exec_outs.into_iter().rev() {
                self.execs[ei].outs.remove(oi);
            }
            for id in dead_clients {
                self.drop_client(id);
            }
            if accept {
                self.accept();
            }
            self.reap();
            self.settle();
        }
    }

    fn accept(&mut self) {
        loop {
            let fd = unsafe { libc::accept4(self.listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
            if fd < 0 {
                return;
            }
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            if self.clients.len() >= MAX_CLIENTS {
                continue; // dropped: closes it
            }
            let id = self.next_id;
            self.next_id += 1;
            self.clients.push(Client { id, sock, dec: Decoder::default(), wbuf: Vec::new(), mode: Mode::Control, close_after_flush: false });
        }
    }

    /// Writes what the client's socket takes; false when it is gone or done.
    fn flush_client(&mut self, i: usize) -> bool {
        let c = &mut self.clients[i];
        while !c.wbuf.is_empty() {
            match fdio::write(c.sock.as_raw_fd(), &c.wbuf, true) {
                Ok(0) => break,
                Ok(n) => {
                    c.wbuf.drain(..n);
                }
                Err(()) => return false,
            }
        }
        !(c.wbuf.is_empty() && c.close_after_flush)
    }

    fn drop_client(&mut self, id: u64) {
        let Some(i) = self.client_idx(id) else { return };
        let c = self.clients.remove(i);
        match c.mode {
            Mode::Attach { stdin: true, .. } if self.o.stdin_once => self.stdin_end = true,
            Mode::Exec(eid) => {
                // the exec's caller left (ExecSync timed out, the stream was cut): it ends too
                if let Some(e) = self.execs.iter_mut().find(|e| e.id == eid) {
                    if e.status.is_none() {
                        unsafe { libc::kill(e.pid, libc::SIGKILL) };
                    }
                    e.client = 0;
                }
            }
            _ => {}
        }
        if self.stdin_end && self.stdin_buf.is_empty() && self.master.is_none() {
            self.stdin = None;
        }
    }

    fn container_output(&mut self, stream: Stream, data: &[u8]) {
        self.log.write(stream, data);
        let kind = if stream == Stream::Stdout { frame::STDOUT } else { frame::STDERR };
        for c in &mut self.clients {
            if let Mode::Attach { stdout, stderr, .. } = c.mode {
                if (stream == Stream::Stdout && stdout) || (stream == Stream::Stderr && stderr) {
                    c.send(kind, data);
                }
            }
        }
    }

    fn write_stdin(&mut self) {
        let tty = self.master.is_some();
        write_queue(&mut self.stdin, &mut self.stdin_buf, self.stdin_end && !tty, !tty);
    }

    fn client_frames(&mut self, i: usize) -> Result<(), String> {
        while let Some((kind, payload)) = self.clients[i].dec.next()? {
            match (kind, self.clients[i].mode) {
                (frame::REQUEST, _) => {
                    let req: Value = serde_json::from_slice(&payload).map_err(|e| format!("bad request: {e}"))?;
                    let rep = match self.request(i, &req) {
                        Ok(v) => {
                            let mut v = if v.is_object() { v } else { json!({}) };
                            v["ok"] = json!(true);
                            v
                        }
                        Err(e) => json!({ "ok": false, "error": e }),
                    };
                    self.clients[i].reply(rep);
                }
                (frame::STDIN, Mode::Attach { stdin: true, .. }) => {
                    if self.stdin.is_some() && !self.stdin_end {
                        self.stdin_buf.extend_from_slice(&payload);
                        self.write_stdin();
                    }
                }
                (frame::STDIN_END, Mode::Attach { stdin: true, .. }) => {
                    if self.o.stdin_once {
                        self.stdin_end = true;
                        self.write_stdin();
                    }
                }
                (frame::STDIN, Mode::Exec(id)) | (frame::STDIN_END, Mode::Exec(id)) => {
                    if let Some(e) = self.execs.iter_mut().find(|e| e.id == id) {
                        if kind == frame::STDIN && !e.stdin_end {
                            e.stdin_buf.extend_from_slice(&payload);
                        } else {
                            e.stdin_end = true;
                        }
                        let tty = e.master.is_some();
                        write_queue(&mut e.stdin, &mut e.stdin_buf, e.stdin_end && !tty, !tty);
                    }
                }
                _ => {} // stdin for a connection that has none: dropped
            }
        }
        Ok(())
    }

    fn request(&mut self, i: usize, req: &Value) -> Result<Value, String> {
        let op = req.get("op").and_then(Value::as_str).unwrap_or("");
        let mode = self.clients[i].mode;
        match op {
            "state" => Ok(json!({ "pid": self.pid, "started": self.started, "running": self.status.is_none(), "exit": self.exit })),
            "start" => {
                if self.status.is_some() {
                    return Err("the container's process has exited".into());
                }
                self.oci.start()?;
                self.started = true;
                Ok(json!({ "pid": self.pid }))
            }
            "signal" => {
                let sig = req.get("signal").and_then(Value::as_i64).filter(|s| (1..=64).contains(s)).ok_or("signal must be 1..64")? as i32;
                if let Mode::Exec(id) = mode {
                    // on an exec's connection: that process
                    if let Some(e) = self.execs.iter().find(|e| e.id == id && e.status.is_none()) {
                        unsafe { libc::kill(e.pid, sig) };
                    }
                    return Ok(json!({}));
                }
                if req.get("all").and_then(Value::as_bool).unwrap_or(false) {
                    self.oci.kill_all(sig).map(|_| json!({}))
                } else {
                    if self.status.is_none() {
                        unsafe { libc::kill(self.pid, sig) };
                    }
                    Ok(json!({}))
                }
            }
            "resize" => {
                let dim = |k: &str| req.get(k).and_then(Value::as_u64).filter(|n| *n <= u16::MAX as u64).map(|n| n as u16).ok_or(format!("{k} must be 0..65535"));
                let (rows, cols) = (dim("rows")?, dim("cols")?);
                let master = match mode {
                    Mode::Exec(id) => self.execs.iter().find(|e| e.id == id).and_then(|e| e.master.as_ref()),
                    _ => self.master.as_ref(),
                };
                let m = master.ok_or("the process has no terminal")?;
                fdio::resize(m.as_raw_fd(), rows, cols).map(|_| json!({}))
            }
            "reopen" => self.log.reopen().map(|_| json!({})).map_err(|e| format!("reopening the log: {e}")),
            "attach" => {
                if mode != Mode::Control {
                    return Err("this connection is already attached".into());
                }
                let f = |k: &str| req.get(k).and_then(Value::as_bool).unwrap_or(false);
                let tty = self.master.is_some();
                let m = Mode::Attach { stdin: f("stdin"), stdout: f("stdout"), stderr: f("stderr") && !tty };
                self.clients[i].mode = m;
                if self.status.is_some() {
                    self.clients[i].close_after_flush = true;
                }
                Ok(json!({}))
            }
            "exec" => {
                if mode != Mode::Control {
                    return Err("this connection is already attached".into());
                }
                let id = self.exec(i, req)?;
                let pid = self.execs.last().map(|e| e.pid).unwrap_or(0);
                self.clients[i].mode = Mode::Exec(id);
                Ok(json!({ "pid": pid }))
            }
            "delete" => self.delete(i),
            _ => Err(format!("unknown op {op:?}")),
        }
    }

    fn exec(&mut self, client: usize, req: &Value) -> Result<u64, String> {
        if self.status.is_some() {
            return Err("the container is not running".into());
        }
        if self.execs.len() >= MAX_EXECS {
            return Err(format!("at most {MAX_EXECS} execs at a time"));
        }
        let strings = |k: &str| -> Result<Vec<String>, String> {
            match req.get(k) {
                None | Some(Value::Null) => Ok(vec![]),
                Some(Value::Array(a)) if a.len() <= 4096 => a.iter().map(|v| v.as_str().filter(|s| !s.contains('\0') && s.len() <= 128 * 1024).map(String::from).ok_or(format!("{k}: strings without NUL"))).collect(),
                _ => Err(format!("{k} must be a list of at most 4096 strings")),
            }
        };
        let args = strings("args")?;
        if args.is_empty() {
            return Err("args must not be empty".into());
        }
        let env = strings("env")?;
        if env.iter().any(|e| !e.contains('=')) {
            return Err("env entries must be KEY=VALUE".into());
        }
        let cwd = req.get("cwd").and_then(Value::as_str);
        if cwd.map(|c| !c.starts_with('/')).unwrap_or(false) {
            return Err("cwd must be absolute".into());
        }
        let tty = req.get("tty").and_then(Value::as_bool).unwrap_or(false);
        let want_stdin = req.get("stdin").and_then(Value::as_bool).unwrap_or(false);
        let process = oci::exec_process(&self.process, &args, tty, &env, cwd);
        let id = self.next_id;
        self.next_id += 1;
        let (oci, bundle, seccomp) = (&self.oci, &self.o.bundle, self.seccomp.as_ref());
        let ProcessIo { pid, outs, stdin, master } = start_with_io(bundle.join(format!("exec-{id}.sock")), tty, want_stdin, |io| oci.exec(bundle, process, seccomp, io), |pid| {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })?;
        self.execs.push(Exec { id, client: self.clients[client].id, pid, outs, stdin, stdin_buf: vec![], stdin_end: false, master, status: None, deadline: None });
        Ok(id)
    }

    /// Kills what is left of the container, records its exit, removes it; the shim then exits.
    fn delete(&mut self, client: usize) -> Result<Value, String> {
        if self.status.is_none() {
            let _ = self.oci.kill_all(libc::SIGKILL);
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.status.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                self.reap();
            }
            if self.status.is_none() {
                return Err("the container's process did not exit after SIGKILL".into());
            }
        }
        self.deadline = Some(Instant::now());
        self.finish_container();
        for e in &self.execs {
            if e.status.is_none() {
                unsafe { libc::kill(e.pid, libc::SIGKILL) };
            }
        }
        self.oci.delete()?;
        // reply, flush it (bounded), and go
        self.clients[client].reply(json!({ "ok": true, "exit": self.exit }));
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.clients[client].wbuf.is_empty() && Instant::now() < deadline {
            if !self.flush_client(client) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = std::fs::remove_file(&self.o.socket);
        std::process::exit(0);
    }

    /// Collects every child that exited.
    fn reap(&mut self) {
        loop {
            let mut st = 0;
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if pid == self.pid && self.status.is_none() {
                self.status = Some(st);
                self.deadline = Some(Instant::now() + DRAIN);
            } else if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid && e.status.is_none()) {
                e.status = Some(st);
                e.deadline = Some(Instant::now() + DRAIN);
            }
        }
    }

    /// Finishes what exited and whose output is read (or whose drain time is over), and lets go
    /// of the clients that were told everything. Only between two rounds of the event loop: it
    /// removes execs and clients.
    fn settle(&mut self) {
        self.finish_container();
        let now = Instant::now();
        let mut done = Vec::new();
        for (i, e) in self.execs.iter().enumerate() {
            if e.status.is_some() && (e.outs.is_empty() || e.deadline.map(|d| now >= d).unwrap_or(false)) {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let e = self.execs.remove(i);
            let (code, signal) = exit_code(e.status.unwrap());
            if let Some(ci) = self.client_idx(e.client) {
                let c = &mut self.clients[ci];
                c.send(frame::EXIT, json!({ "exit_code": code, "signal": signal }).to_string().as_bytes());
                c.close_after_flush = true;
            }
        }
        let finished: Vec<u64> = self.clients.iter().filter(|c| c.close_after_flush && c.wbuf.is_empty()).map(|c| c.id).collect();
        for id in finished {
            self.drop_client(id);
        }
    }

    /// Records the container's exit once its output is read (or its drain time is over): the
    /// exit file, and an exit frame to every client; attach clients are done after it.
    fn finish_container(&mut self) {
        let now = Instant::now();
        if self.status.is_some() && self.exit.is_none() && (self.outs.is_empty() || self.deadline.map(|d| now >= d).unwrap_or(false)) {
            for o in std::mem::take(&mut self.outs) {
                self.log.end(o.stream);
            }
            self.stdin = None;
            let (code, signal) = exit_code(self.status.unwrap());
            let oom = oom_kills(&self.oom_file) > 0;
            let exit = json!({ "exit_code": code, "signal": signal, "oom_killed": oom, "finished_at": now_ns() });
            let tmp = self.o.exit_file.with_extension("tmp");
            if std::fs::write(&tmp, exit.to_string()).and_then(|_| std::fs::rename(&tmp, &self.o.exit_file)).is_err() {
                eprintln!("podvisor-launch shim: writing {}: {}", self.o.exit_file.display(), errno());
            }
            let payload = exit.to_string();
            for c in &mut self.clients {
                if !matches!(c.mode, Mode::Exec(_)) {
                    c.send(frame::EXIT, payload.as_bytes());
                }
                if matches!(c.mode, Mode::Attach { .. }) {
                    c.close_after_flush = true;
                }
            }
            self.exit = Some(exit);
        }
    }
}

/// Writes a process's queued stdin; closes it at the end (`close`) or when the reader is gone.
fn write_queue(fd: &mut Option<OwnedFd>, queue: &mut Vec<u8>, close: bool, pipe: bool) {
    let Some(f) = fd else {
        queue.clear();
        return;
    };
    while !queue.is_empty() {
        match fdio::write(f.as_raw_fd(), queue, false) {
            Ok(0) => return,
            Ok(n) => {
                queue.drain(..n);
            }
            Err(()) => {
                queue.clear();
                if pipe {
                    *fd = None;
                }
                return;
            }
        }
    }
    if close {
        *fd = None;
    }
}

/// `podvisor-launch delete --oci-root DIR --id ID`: removes a container whose shim is gone.
pub fn delete_main(args: Vec<String>) -> Result<(), String> {
    let usage = "usage: podvisor-launch delete --oci-root DIR --id ID";
    let (mut root, mut id) = (None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--oci-root" => root = it.next(),
            "--id" => id = it.next(),
            _ => return Err(usage.into()),
        }
    }
    let (root, id) = (root.ok_or(usage)?, id.ok_or(usage)?);
    if !root.starts_with('/') || id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(usage.into());
    }
    Oci { root: PathBuf::from(root), id }.delete()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_a_full_command_line() {
        let o = parse(args(&["--id", "abc", "--bundle", "/b", "--oci-root", "/r", "--socket", "/s.sock", "--exit-file", "/e", "--log", "/l/0.log", "--tty", "--stdin", "--stdin-once"])).unwrap();
        assert_eq!(o.id, "abc");
        assert_eq!(o.log, Some(PathBuf::from("/l/0.log")));
        assert!(o.tty && o.stdin && o.stdin_once);
    }

    #[test]
    fn refuses_bad_command_lines() {
        let base = ["--bundle", "/b", "--oci-root", "/r", "--socket", "/s", "--exit-file", "/e"];
        for bad in [vec!["--id", "../x"], vec!["--id", ""], vec!["--id", "a", "--log", "rel"], vec!["--id", "a", "--bogus"]] {
            let mut a = base.to_vec();
            a.extend(bad.iter());
            assert!(parse(args(&a)).is_err(), "{bad:?} accepted");
        }
        assert!(parse(args(&["--id", "a", "--bundle", "/b"])).is_err(), "missing paths");
        let long = format!("/{}", "s".repeat(120));
        assert!(parse(args(&["--id", "a", "--bundle", "/b", "--oci-root", "/r", "--socket", &long, "--exit-file", "/e"])).is_err());
    }

    #[test]
    fn exit_codes_as_cri_reports_them() {
        assert_eq!(exit_code(3 << 8), (3, 0));
        assert_eq!(exit_code(libc::SIGKILL), (137, 9));
    }

    #[test]
    fn write_queue_closes_a_finished_pipe() {
        let (r, w) = fdio::pipe().unwrap();
        let mut fd = Some(w);
        let mut q = b"hello".to_vec();
        write_queue(&mut fd, &mut q, true, true);
        assert!(q.is_empty() && fd.is_none());
        let mut buf = [0u8; 16];
        assert!(matches!(fdio::read(r.as_raw_fd(), &mut buf), fdio::Read::Data(5)));
        assert!(matches!(fdio::read(r.as_raw_fd(), &mut buf), fdio::Read::Eof));
    }
}

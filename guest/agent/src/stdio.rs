//! Wiring a container/exec process's stdio to protocol streams, and reporting its exit.
//!
//! Without a tty: three pipes; our ends become streams. With a tty: libcontainer creates the
//! pty inside the container and hands the master to us over a unix "console socket"; the
//! master is the stdout stream and stdin is written into it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{AgentError, Ctx, Result};
use crate::reaper::ExitStatus;
use crate::streams::{InKind, OutStream, Streams};
use crate::util;

const TTY_DIR: &str = "/run/podvisor/tty";
const GRACE_TICK: Duration = Duration::from_millis(100);
const GRACE_IDLE: Duration = Duration::from_secs(2);

#[derive(Deserialize, Clone, Copy, Default)]
pub struct StdioIds {
    #[serde(default)]
    pub stdin: u32,
    pub stdout: u32,
    #[serde(default)]
    pub stderr: u32,
    #[serde(default)]
    pub tty: bool,
    /// Close-stdin-after-first-attach is the host's business (it sends EOF); accepted here.
    #[serde(default)]
    #[allow(dead_code)]
    pub stdin_once: bool,
}

/// The child's ends (handed to libcontainer) and ours (become streams).
pub struct Prepared {
    pub child: Option<[OwnedFd; 3]>,
    host_in: Option<OwnedFd>,
    host_out: Option<OwnedFd>,
    host_err: Option<OwnedFd>,
    pub console: Option<(UnixListener, PathBuf)>,
}

pub fn prepare(streams: &Streams, ids: &StdioIds, dir: &Path, name: &str) -> Result<Prepared> {
    if ids.stdout == 0 {
        return Err(AgentError::invalid("stdout stream is required"));
    }
    if ids.tty && ids.stderr != 0 {
        return Err(AgentError::invalid("with tty, stderr must be 0 (the terminal carries both)"));
    }
    streams.check_new_ids(&[ids.stdin, ids.stdout, ids.stderr])?;
    if ids.tty {
        // A short path: sun_path holds 108 bytes and ids may be 128 characters long.
        let _ = (dir, name);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::create_dir_all(TTY_DIR).ctx("mkdir tty dir")?;
        let path = Path::new(TTY_DIR).join(format!("{n}.sock"));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).ctx("console socket")?;
        l.set_nonblocking(true).ctx("console socket")?;
        return Ok(Prepared { child: None, host_in: None, host_out: None, host_err: None, console: Some((l, path)) });
    }
    let (cin, hin) = if ids.stdin != 0 {
        let (r, w) = util::pipe()?;
        (r, Some(w))
    } else {
        (util::dev_null()?, None)
    };
    let (hout, cout) = util::pipe()?;
    let (cerr, herr) = if ids.stderr != 0 {
        let (r, w) = util::pipe()?;
        (w, Some(r))
    } else {
        (util::dev_null()?, None)
    };
    Ok(Prepared { child: Some([cin, cout, cerr]), host_in: hin, host_out: Some(hout), host_err: herr, console: None })
}

/// Receive the pty master libcontainer sent over the console socket.
fn recv_master(l: &UnixListener) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let deadline = Instant::now() + Duration::from_secs(5);
    let (conn, _) = loop {
        match l.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(AgentError::internal(format!("console socket accept: {e}"))),
        }
    };
    conn.set_nonblocking(false).ctx("console socket")?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).ctx("console socket recvmsg")?;
    for c in msg.cmsgs().ctx("console socket cmsgs")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(AgentError::internal("no pty master received on the console socket"))
}

pub struct Attached {
    pub pumps: Vec<(u32, JoinHandle<()>, Rc<OutStream>)>,
    pub stdin: u32,
    pub master: Option<Rc<OwnedFd>>,
}

/// After libcontainer created the process: start the stream pumps.
pub fn attach(streams: &Rc<Streams>, ids: &StdioIds, mut p: Prepared) -> Result<Attached> {
    let mut pumps = Vec::new();
    let mut master = None;
    if let Some((l, path)) = p.console.take() {
        let m = recv_master(&l);
        let _ = std::fs::remove_file(path);
        let m = m?;
        if ids.stdin != 0 {
            streams.spawn_in(ids.stdin, util::dup(&m)?, InKind::Tty);
        }
        let (h, st) = streams.spawn_out(ids.stdout, util::dup(&m)?);
        pumps.push((ids.stdout, h, st));
        master = Some(Rc::new(m));
    } else {
        if let Some(fd) = p.host_in.take() {
            streams.spawn_in(ids.stdin, fd, InKind::Pipe);
        }
        if let Some(fd) = p.host_out.take() {
            let (h, st) = streams.spawn_out(ids.stdout, fd);
            pumps.push((ids.stdout, h, st));
        }
        if let Some(fd) = p.host_err.take() {
            let (h, st) = streams.spawn_out(ids.stderr, fd);
            pumps.push((ids.stderr, h, st));
        }
    }
    Ok(Attached { pumps, stdin: ids.stdin, master })
}

/// TIOCSWINSZ on a pty master.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(AgentError::internal(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Wait for the process to exit, let its output drain (EOF on every stream), then report.
/// `on_exit` records the status and returns oom_killed. Events go out through the streams'
/// outbox, after the streams' EOF.
pub fn spawn_waiter(
    streams: &Rc<Streams>,
    container_id: String,
    exec_id: Option<String>,
    pid: i32,
    rx: oneshot::Receiver<ExitStatus>,
    att: Attached,
    on_exit: impl FnOnce(ExitStatus) -> bool + 'static,
) {
    let streams = streams.clone();
    tokio::task::spawn_local(async move {
        let st = rx.await.unwrap_or(ExitStatus { code: 255, signal: None });
        // The exit event must come after all output. Normally the pipes hit EOF as soon as the
        // process is gone; a background grandchild that keeps them open gets 2 s of idle
        // reading. Time spent waiting for window (slow or absent host) does not count: that
        // output must not be lost.
        let mut idle = Duration::ZERO;
        for (id, mut h, st) in att.pumps {
            loop {
                if tokio::time::timeout(GRACE_TICK, &mut h).await.is_ok() {
                    break;
                }
                if st.is_reading() {
                    idle += GRACE_TICK;
                }
                if idle >= GRACE_IDLE {
                    h.abort();
                    streams.force_eof(id);
                    break;
                }
            }
        }
        if att.stdin != 0 {
            streams.close_in(att.stdin);
        }
        let oom = on_exit(st);
        let outbox = streams.outbox();
        if oom && exec_id.is_none() {
            outbox.event(json!({ "type": "oom", "container_id": container_id }));
        }
        outbox.event(json!({
            "type": "exit",
            "container_id": container_id,
            "exec_id": exec_id,
            "pid": pid,
            "exit_code": st.code,
            "signal": st.signal,
            "oom_killed": oom,
            "finished_unix_ns": util::now_unix_ns().to_string(),
        }));
    });
}

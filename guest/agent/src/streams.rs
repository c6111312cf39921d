//! Multiplexed byte streams with per-stream, per-direction credit flow control
//! (PROTOCOL.md "Streams").
//!
//! guest → host ("out"): a pump task reads a pipe/pty/socket and sends DATA only while the
//! host's grant (window) is positive; CREDIT from the host refills it. Back-pressure reaches
//! the process because we stop reading its pipe.
//! host → guest ("in"): the host may send up to the window we granted; a pump task writes the
//! bytes to the process and only then grants CREDIT back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::error::{AgentError, Result};
use crate::frame::{self, INITIAL_WINDOW, MAX_DATA};
use crate::outbox::Outbox;
use crate::util;

pub struct OutStream {
    window: Cell<u64>,
    wake: Notify,
    stopped: Cell<bool>,
    /// DATA bytes handed to the port writer and not yet written (held while the host is away)
    unsent: Arc<AtomicU64>,
    /// waiting for the source to become readable (not for window): lets the exit waiter tell
    /// "a grandchild holds the pipe" from "the host is slow or away"
    reading: Cell<bool>,
}

impl OutStream {
    pub fn is_reading(&self) -> bool {
        self.reading.get()
    }
}

pub struct InStream {
    // Shared with the pump; the sender is only in the table, so removing the entry ends
    // the pump (and closes the fd).
    window: Rc<Cell<u32>>,
    tx: mpsc::UnboundedSender<InMsg>,
}

enum InMsg {
    /// bytes and the session they arrived in (CREDIT for them only goes to that host)
    Data(u64, Vec<u8>),
    Eof,
}

/// What closing the host→guest direction means for the fd.
#[derive(Clone, Copy)]
pub enum InKind {
    /// close our end: the process reads EOF
    Pipe,
    /// shutdown(SHUT_WR): the peer sees FIN, the other direction stays open
    Socket,
    /// a pty master: send ^D so the line discipline delivers EOF to the reader
    Tty,
}

#[derive(Default)]
struct Table {
    out: HashMap<u32, Rc<OutStream>>,
    inp: HashMap<u32, Rc<InStream>>,
}

/// The stream table and the outbox its pumps write to. Shared (`Rc`) by the connection (host
/// frames), the stdio of processes and port-forward; the runtime is single-threaded and no
/// borrow of the table is held across an `.await`.
pub struct Streams {
    outbox: Rc<Outbox>,
    table: RefCell<Table>,
}

impl Streams {
    pub fn new(outbox: Rc<Outbox>) -> Rc<Streams> {
        Rc::new(Streams { outbox, table: RefCell::new(Table::default()) })
    }

    pub fn outbox(&self) -> &Rc<Outbox> {
        &self.outbox
    }

    fn in_use(&self, id: u32) -> bool {
        let t = self.table.borrow();
        t.out.contains_key(&id) || t.inp.contains_key(&id)
    }

    /// A (re)connected host said hello: it re-adopts the open streams with fresh windows.
    /// Our DATA still held by the port writer will count against the new window.
    pub fn reset_windows(&self) {
        let t = self.table.borrow();
        for s in t.out.values() {
            let unsent = s.unsent.load(Ordering::SeqCst);
            s.window.set((INITIAL_WINDOW as u64).saturating_sub(unsent));
            crate::debug!("hello: stream window {} (unsent {unsent})", s.window.get());
            s.wake.notify_one();
        }
        for s in t.inp.values() {
            s.window.set(INITIAL_WINDOW);
        }
    }

    pub fn reset_all(&self) {
        let mut t = self.table.borrow_mut();
        for (_, s) in t.out.drain() {
            s.stopped.set(true);
            s.wake.notify_one();
        }
        t.inp.clear();
    }

    /// Host DATA. Err = protocol violation (window exceeded).
    pub fn on_data(&self, id: u32, data: Vec<u8>, session: u64) -> std::result::Result<(), String> {
        let t = self.table.borrow();
        let Some(s) = t.inp.get(&id) else {
            // Late data for a stream we already closed (process exited): not a violation.
            return Ok(());
        };
        let len = data.len() as u32;
        if len > s.window.get() {
            return Err(format!("stream {id}: DATA of {len} exceeds window {}", s.window.get()));
        }
        s.window.set(s.window.get() - len);
        let _ = s.tx.send(InMsg::Data(session, data));
        Ok(())
    }

    pub fn on_credit(&self, id: u32, n: u32) {
        if let Some(s) = self.table.borrow().out.get(&id) {
            s.window.set(s.window.get().saturating_add(n as u64).min(u32::MAX as u64 * 4));
            s.wake.notify_one();
        }
    }

    pub fn on_eof(&self, id: u32) {
        let removed = self.table.borrow_mut().inp.remove(&id);
        if let Some(s) = removed {
            let _ = s.tx.send(InMsg::Eof);
        }
    }

    pub fn on_reset(&self, id: u32) {
        let mut t = self.table.borrow_mut();
        t.inp.remove(&id);
        if let Some(s) = t.out.remove(&id) {
            s.stopped.set(true);
            s.wake.notify_one();
        }
    }

    /// Check that ids the host names for a new process/connection are usable.
    pub fn check_new_ids(&self, ids: &[u32]) -> Result<()> {
        for (i, id) in ids.iter().enumerate() {
            if *id == 0 {
                continue;
            }
            if self.in_use(*id) || ids[..i].contains(id) {
                return Err(AgentError::exists(format!("stream {id} already in use")));
            }
        }
        Ok(())
    }

    /// Start pumping `fd` to the host as stream `id`. The task ends after sending EOF (or on
    /// RESET / protocol violation, without EOF).
    pub fn spawn_out(self: &Rc<Self>, id: u32, fd: OwnedFd) -> (JoinHandle<()>, Rc<OutStream>) {
        let st = Rc::new(OutStream {
            window: Cell::new(INITIAL_WINDOW as u64),
            wake: Notify::new(),
            stopped: Cell::new(false),
            unsent: Arc::new(AtomicU64::new(0)),
            reading: Cell::new(false),
        });
        self.table.borrow_mut().out.insert(id, st.clone());
        let this = self.clone();
        let st2 = st.clone();
        let h = tokio::task::spawn_local(async move {
            let eof = pump_out(&this.outbox, id, &st, fd).await;
            if eof && !st.stopped.get() {
                this.outbox.send(frame::EOF, id, &[]);
            }
            let mut t = this.table.borrow_mut();
            if t.out.get(&id).map(|s| Rc::ptr_eq(s, &st)).unwrap_or(false) {
                t.out.remove(&id);
            }
        });
        (h, st2)
    }

    /// Used when a pump had to be abandoned (e.g. a grandchild keeps the pipe open after the
    /// process exited): close the stream properly.
    pub fn force_eof(&self, id: u32) {
        let removed = self.table.borrow_mut().out.remove(&id);
        if let Some(s) = removed {
            if !s.stopped.get() {
                self.outbox.send(frame::EOF, id, &[]);
            }
        }
    }

    /// Accept host DATA on stream `id` and write it to `fd`.
    pub fn spawn_in(&self, id: u32, fd: OwnedFd, kind: InKind) -> JoinHandle<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let window = Rc::new(Cell::new(INITIAL_WINDOW));
        self.table.borrow_mut().inp.insert(id, Rc::new(InStream { window: window.clone(), tx }));
        let outbox = self.outbox.clone();
        tokio::task::spawn_local(async move {
            util::set_nonblocking(fd.as_raw_fd());
            let afd = match AsyncFd::new(fd) {
                Ok(a) => a,
                Err(e) => {
                    crate::log!("stream {id}: {e}");
                    return;
                }
            };
            let mut broken = false;
            while let Some(msg) = rx.recv().await {
                match msg {
                    InMsg::Data(session, d) => {
                        if !broken && write_fd(&afd, &d).await.is_err() {
                            // The reader is gone; keep granting credit so the host is not stuck.
                            broken = true;
                        }
                        if outbox.session() == session {
                            window.set(window.get().saturating_add(d.len() as u32));
                            outbox.send(frame::CREDIT, id, &(d.len() as u32).to_be_bytes());
                        }
                    }
                    InMsg::Eof => {
                        match kind {
                            InKind::Pipe => {}
                            InKind::Socket => unsafe {
                                libc::shutdown(afd.get_ref().as_raw_fd(), libc::SHUT_WR);
                            },
                            InKind::Tty => {
                                let _ = write_fd(&afd, &[4]).await;
                            }
                        }
                        break;
                    }
                }
            }
            // Dropping afd closes our end.
        })
    }

    /// Remove a host→guest stream (the process is gone); later DATA on it is ignored.
    pub fn close_in(&self, id: u32) {
        self.table.borrow_mut().inp.remove(&id);
    }
}

/// Returns true when the source reached EOF (false when stopped by RESET / session loss).
async fn pump_out(outbox: &Outbox, id: u32, st: &OutStream, fd: OwnedFd) -> bool {
    util::set_nonblocking(fd.as_raw_fd());
    let afd = match AsyncFd::new(fd) {
        Ok(a) => a,
        Err(e) => {
            crate::log!("stream {id}: {e}");
            return true;
        }
    };
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        while st.window.get() == 0 && !st.stopped.get() {
            crate::debug!("stream {id}: window 0, unsent {}", st.unsent.load(Ordering::SeqCst));
            st.wake.notified().await;
        }
        if st.stopped.get() {
            return false;
        }
        let max = (st.window.get() as usize).min(MAX_DATA);
        st.reading.set(true);
        let n = tokio::select! {
            r = read_fd(&afd, &mut buf[..max]) => r,
            _ = st.wake.notified() => continue, // credit or stop: re-evaluate
        };
        st.reading.set(false);
        match n {
            Ok(0) => return true,
            Ok(n) => {
                // The window may have been reset (hello) while we were reading.
                st.window.set(st.window.get().saturating_sub(n as u64));
                outbox.send_data(id, &buf[..n], &st.unsent);
            }
            // EIO: pty master after the last slave closed = EOF.
            Err(_) => return true,
        }
    }
}

async fn read_fd(afd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut g = afd.readable().await?;
        match g.try_io(|fd| {
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(r) => return r,
            Err(_) => continue,
        }
    }
}

async fn write_fd(afd: &AsyncFd<OwnedFd>, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let mut g = afd.writable().await?;
        match g.try_io(|fd| {
            let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => continue,
        }
    }
    Ok(())
}

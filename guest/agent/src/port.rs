//! The virtio-serial port `podvisor.agent`: found by name in sysfs, opened once (reopening
//! loses data), and driven by two plain threads doing blocking I/O.
//!
//! Why threads and not tokio's epoll: while the host side is not connected the port reads 0
//! and polls as EPOLLHUP, which tokio treats as a sticky "closed" state, so an AsyncFd spins or
//! never wakes again after a reconnect. The threads poll(2) while the host is connected and
//! sleep-retry while it is away.
//!
//! Host reconnects (PROTOCOL.md "Handshake"): responses and CREDITs belong to one session and
//! are dropped once it ends; stream DATA/EOF and events are held by the writer from the moment
//! the host goes away until the next hello is answered, then written in order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub enum PortEvent {
    Data(Vec<u8>),
    /// read() returned 0 after data had flowed: the host closed its end. The reader has
    /// already bumped the session (so the writer stops at once).
    Disconnected,
}

pub enum Out {
    /// Bound to the session it was produced in (a response, a CREDIT): dropped if the session
    /// has changed, because the host that would understand it is gone.
    Session(u64, Vec<u8>),
    /// Stream DATA/EOF and events: survive a host change. Written only while the gate is open
    /// (a hello was answered in the current session), otherwise held and written after the
    /// next hello. `unsent` counts a stream's DATA bytes not yet on the wire (for the window
    /// reset at hello).
    Held(Held),
    /// hello answered in this session: write what was held, then keep the gate open.
    Open(u64),
    Flush(oneshot::Sender<()>),
}

pub struct Held {
    pub bytes: Vec<u8>,
    pub event: bool,
    pub unsent: Option<Arc<AtomicU64>>,
}

impl Held {
    fn done(&self) {
        if let Some(u) = &self.unsent {
            u.fetch_sub(self.bytes.len().saturating_sub(9) as u64, Ordering::SeqCst);
        }
    }
}

/// Events kept while no host is there: the last ones win (a long disconnect must not grow
/// the agent without bound; DATA is bounded by the stream windows anyway).
pub const MAX_HELD_EVENTS: usize = 1024;

/// Wait until the port named `name` shows up, return its /dev node.
pub async fn find(name: &str) -> PathBuf {
    let mut waited = 0u32;
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim_end() == name {
                    let dev = PathBuf::from("/dev").join(e.file_name());
                    if dev.exists() {
                        return dev;
                    }
                }
            }
        }
        waited += 1;
        if waited.is_multiple_of(500) {
            crate::log!("still waiting for virtio port {name}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Open the port and start the reader and writer threads.
pub fn start(
    path: &Path,
    session: Arc<AtomicU64>,
) -> std::io::Result<(mpsc::UnboundedReceiver<PortEvent>, std::sync::mpsc::Sender<Out>)> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a blocked write() would deliver the rest of an old frame to the next host
    // once it connects; with EAGAIN + poll the writer re-checks the session between chunks.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let w = f.try_clone()?;
    let (etx, erx) = mpsc::unbounded_channel();
    let (otx, orx) = std::sync::mpsc::channel();
    let departures = Arc::new(AtomicU64::new(0));
    let (s2, d2) = (session.clone(), departures.clone());
    std::thread::Builder::new().name("port-rd".into()).spawn(move || reader(f, etx, s2, d2))?;
    let mut wr = Writer { f: w, session, departures, open: None, held: VecDeque::new(), held_events: 0 };
    std::thread::Builder::new().name("port-wr".into()).spawn(move || wr.run(orx))?;
    Ok((erx, otx))
}

/// poll(2) one fd; returns revents (0 on timeout).
fn poll1(f: &File, events: libc::c_short, timeout_ms: i32) -> libc::c_short {
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events, revents: 0 };
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r > 0 {
        p.revents
    } else {
        0
    }
}

/// Whether the kernel believes the host end is open (the port polls HUP while it does not).
fn host_present(f: &File) -> bool {
    poll1(f, libc::POLLIN, 0) & libc::POLLHUP == 0
}

/// How long, and for how many reads, the host must stay away before the reader believes it
/// left (see HostWatch).
const GONE_AFTER: Duration = Duration::from_millis(200);
const GONE_READS: u32 = 4;

/// Tells a host that left from a stale "host closed" notice.
///
/// `connected` means the kernel has *said* the host is there, not merely that data arrived:
/// QEMU queues a connecting host's PORT_OPEN on the control queue and its first bytes on the
/// port's queue, and the guest may read the bytes first. A 0-byte read in that window is the
/// open not yet seen, not a host that left; taking it for a disconnect would drop the hello
/// just answered ("hello first" on the host's next request).
///
/// The same reordering works the other way after a daemon restart: the old host's close
/// (PORT_OPEN 0) and the new host's open (PORT_OPEN 1) wait on the control queue while the new
/// host's hello is already readable. The guest kernel handles control messages on a workqueue,
/// unordered with the data, so the agent can read and answer the hello first and only then see
/// "no host" for the instant between the two control messages. That close belongs to a
/// connection that is already over; taking it for the new host leaving would end the new
/// host's session (its responses dropped, "hello first" for its next request). So a host counts
/// as gone only when it stays away: at least GONE_READS reads in a row, GONE_AFTER apart from
/// the first, all finding no host. Each read is followed by a sleep, which lets the workqueue
/// run and deliver the open that follows a stale close; a host that really left is not back
/// that soon (a new daemon takes far longer to start and connect).
#[derive(Default)]
struct HostWatch {
    connected: bool,
    /// reads that found no host since it was last seen, and when the first of them was
    absent: Option<(std::time::Instant, u32)>,
}

impl HostWatch {
    /// A read returned bytes; `present` is whether the kernel says a host is there.
    fn bytes(&mut self, present: bool) {
        if present {
            self.seen();
        }
    }

    /// A read found nothing to read with the host there (EAGAIN).
    fn seen(&mut self) {
        self.connected = true;
        self.absent = None;
    }

    /// A read found no host (0 bytes). True when this makes the host gone: report a disconnect.
    fn nobody(&mut self, now: std::time::Instant) -> bool {
        if !self.connected {
            return false;
        }
        let (since, reads) = self.absent.unwrap_or((now, 0));
        let reads = reads + 1;
        if reads >= GONE_READS && now.duration_since(since) >= GONE_AFTER {
            self.connected = false;
            self.absent = None;
            return true;
        }
        self.absent = Some((since, reads));
        false
    }
}

/// `departures` counts the hosts seen leaving (the writer abandons a frame begun for one).
fn reader(mut f: File, tx: mpsc::UnboundedSender<PortEvent>, session: Arc<AtomicU64>, departures: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 128 * 1024];
    let mut host = HostWatch::default();
    loop {
        match f.read(&mut buf) {
            // No data and no host: virtio_console reads 0 (and polls HUP) until one connects.
            Ok(0) => {
                if host.nobody(std::time::Instant::now()) {
                    session.fetch_add(1, Ordering::SeqCst);
                    departures.fetch_add(1, Ordering::SeqCst);
                    if tx.send(PortEvent::Disconnected).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(n) => {
                host.bytes(host_present(&f));
                if tx.send(PortEvent::Data(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Host connected (EAGAIN only comes with host_connected), nothing to read:
                // sleep until data or a disconnect wakes us.
                host.seen();
                poll1(&f, libc::POLLIN, -1);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log!("port read: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

struct Writer {
    f: File,
    session: Arc<AtomicU64>,
    /// bumped by the reader when the host leaves
    departures: Arc<AtomicU64>,
    /// the session whose hello was answered (gate open for held frames)
    open: Option<u64>,
    held: VecDeque<Held>,
    held_events: usize,
}

impl Writer {
    fn run(&mut self, rx: std::sync::mpsc::Receiver<Out>) {
        while let Ok(out) = rx.recv() {
            match out {
                Out::Session(s, bytes) => {
                    let session = self.session.clone();
                    self.write(&bytes, || session.load(Ordering::SeqCst) == s);
                }
                Out::Held(h) => {
                    if self.is_open() && self.held.is_empty() {
                        if let Some(h) = self.write_held(h) {
                            self.hold(h);
                        }
                    } else {
                        self.hold(h);
                    }
                }
                Out::Open(s) => {
                    if s == self.session.load(Ordering::SeqCst) {
                        self.open = Some(s);
                        while self.is_open() {
                            let Some(h) = self.held.pop_front() else { break };
                            if h.event {
                                self.held_events -= 1;
                            }
                            if let Some(h) = self.write_held(h) {
                                if h.event {
                                    self.held_events += 1;
                                }
                                self.held.push_front(h);
                            }
                        }
                    }
                }
                Out::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn is_open(&self) -> bool {
        self.open == Some(self.session.load(Ordering::SeqCst))
    }

    fn hold(&mut self, h: Held) {
        if h.event {
            if self.held_events >= MAX_HELD_EVENTS {
                if let Some(i) = self.held.iter().position(|x| x.event) {
                    self.held.remove(i);
                    self.held_events -= 1;
                }
            }
            self.held_events += 1;
        }
        self.held.push_back(h);
    }

    /// Write a held-class frame; give it back if the gate closed before any byte went out.
    fn write_held(&mut self, h: Held) -> Option<Held> {
        let session = self.session.clone();
        let open = self.open;
        let written = self.write(&h.bytes, || open == Some(session.load(Ordering::SeqCst)));
        if written == 0 && !h.bytes.is_empty() {
            self.open = None;
            return Some(h);
        }
        // Fully written, or partly written to a host that went away (its tail is useless to
        // the next host, which must see whole frames): either way it is gone.
        h.done();
        None
    }

    /// Write `bytes` in as many write() calls as the port needs (it takes at most 32 KiB per
    /// call, all or nothing). A frame starts only while `valid()` holds; once started it is
    /// finished even if `valid()` stops holding (a new session of the same host, begun by its
    /// hello, must still get whole frames), unless the host leaves: its rest would reach the
    /// next host, which must see whole frames from the start. Returns the bytes written.
    fn write(&mut self, bytes: &[u8], valid: impl Fn() -> bool) -> usize {
        let departures = self.departures.load(Ordering::SeqCst);
        let mut done = 0;
        while done < bytes.len() {
            if (done == 0 && !valid()) || self.departures.load(Ordering::SeqCst) != departures {
                return done;
            }
            match self.f.write(&bytes[done..]) {
                Ok(0) => return done,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Queue full (host slow) or no host: POLLHUP means no host, back off.
                    let rev = poll1(&self.f, libc::POLLOUT, 100);
                    if rev & libc::POLLHUP != 0 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log!("port write: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    //! The reader against a unix socket pair: like the port, it reads 0 and polls HUP once the
    //! other end is gone, and EAGAIN while the other end is there with nothing to say.
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (File, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (File::from(std::os::fd::OwnedFd::from(ours)), host)
    }

    fn spawn_reader(f: File) -> (mpsc::UnboundedReceiver<PortEvent>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Arc::new(AtomicU64::new(1));
        let s2 = session.clone();
        std::thread::spawn(move || reader(f, tx, s2, Arc::new(AtomicU64::new(0))));
        (rx, session)
    }

    fn next(rx: &mut mpsc::UnboundedReceiver<PortEvent>, within: Duration) -> Option<PortEvent> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(ev) = rx.try_recv() {
                return Some(ev);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn bytes_read_before_the_open_is_seen_do_not_make_a_session() {
        let (f, mut host) = pair();
        // the bytes are there while the kernel still says "no host" (HUP)
        host.write_all(b"hello").unwrap();
        drop(host);
        let (mut rx, session) = spawn_reader(f);
        match next(&mut rx, Duration::from_secs(5)) {
            Some(PortEvent::Data(d)) => assert_eq!(d, b"hello"),
            _ => panic!("expected the bytes"),
        }
        // the 0-byte reads that follow are "not open yet", not "the host left"
        assert!(next(&mut rx, Duration::from_millis(400)).is_none(), "no Disconnected");
        assert_eq!(session.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_host_seen_and_then_gone_is_a_disconnect() {
        let (f, mut host) = pair();
        let (mut rx, session) = spawn_reader(f);
        host.write_all(b"req").unwrap();
        match next(&mut rx, Duration::from_secs(5)) {
            Some(PortEvent::Data(d)) => assert_eq!(d, b"req"),
            _ => panic!("expected the bytes"),
        }
        // the reader now sees EAGAIN (host there, nothing to read), then the host goes
        std::thread::sleep(Duration::from_millis(200));
        assert!(next(&mut rx, Duration::from_millis(10)).is_none());
        drop(host);
        assert!(matches!(next(&mut rx, Duration::from_secs(5)), Some(PortEvent::Disconnected)));
        assert_eq!(session.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_close_followed_by_an_open_within_the_grace_is_not_a_disconnect() {
        let t0 = std::time::Instant::now();
        let mut w = HostWatch::default();
        w.seen();
        // the stale close: no host for a few reads, then the open that was queued behind it
        for i in 0..GONE_READS + 2 {
            assert!(!w.nobody(t0 + Duration::from_millis(10 * i as u64)));
        }
        w.seen();
        // a new absence starts its own count and clock
        assert!(!w.nobody(t0 + GONE_AFTER * 3));
        assert!(w.connected);
    }

    #[test]
    fn the_host_is_gone_after_enough_reads_and_time_without_it() {
        let t0 = std::time::Instant::now();
        let mut w = HostWatch::default();
        w.bytes(true);
        // many reads in a short time are not enough, nor is a long time with one read
        for i in 0..10 {
            assert!(!w.nobody(t0 + Duration::from_millis(i)));
        }
        assert!(w.nobody(t0 + GONE_AFTER), "gone once both bounds are passed");
        assert!(!w.connected);
        // once gone, further empty reads report nothing more
        assert!(!w.nobody(t0 + GONE_AFTER * 2));
        let mut w = HostWatch::default();
        w.seen();
        assert!(!w.nobody(t0));
        assert!(!w.nobody(t0 + GONE_AFTER * 10), "two reads are not enough");
    }

    #[test]
    fn bytes_without_a_host_neither_connect_nor_end_an_absence() {
        let t0 = std::time::Instant::now();
        let mut w = HostWatch::default();
        w.bytes(false);
        assert!(!w.nobody(t0), "never connected: no disconnect");
        w.seen();
        assert!(!w.nobody(t0));
        w.bytes(false); // the same host's next bytes, read before its open was handled
        for i in 1..GONE_READS {
            let _ = w.nobody(t0 + GONE_AFTER * i);
        }
        assert!(!w.connected, "the absence went on: gone");
    }
}

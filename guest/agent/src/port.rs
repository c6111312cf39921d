//! The virtio-serial port `podvisor.agent`: found by name in sysfs, opened once (reopening
//! loses data), and driven by two plain threads doing blocking I/O.
//!
//! Why threads and not tokio's epoll: while the host side is not connected the port reads 0
//! and polls as EPOLLHUP, which tokio treats as a sticky "closed" state, so an AsyncFd spins or
//! never wakes again after a reconnect. Blocking read() simply waits for data while the host is
//! connected; when it returns 0 (host away) the reader sleeps 50 ms and tries again.
//! Blocking write() waits for the host to connect, which is exactly the back-pressure we want.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub enum PortEvent {
    Data(Vec<u8>),
    /// read() returned 0 after data had flowed: the host closed its end.
    Disconnected,
}

pub enum Out {
    /// A frame for the session it was produced in; dropped if the session has changed
    /// (the host that would understand it is gone).
    Frame(u64, Vec<u8>),
    Flush(oneshot::Sender<()>),
}

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
        if waited % 500 == 0 {
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
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let w = f.try_clone()?;
    let (etx, erx) = mpsc::unbounded_channel();
    let (otx, orx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("port-rd".into()).spawn(move || reader(f, etx))?;
    std::thread::Builder::new().name("port-wr".into()).spawn(move || writer(w, orx, session))?;
    Ok((erx, otx))
}

fn reader(mut f: File, tx: mpsc::UnboundedSender<PortEvent>) {
    let mut buf = vec![0u8; 128 * 1024];
    let mut connected = false;
    loop {
        match f.read(&mut buf) {
            Ok(0) => {
                if connected {
                    connected = false;
                    if tx.send(PortEvent::Disconnected).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(n) => {
                connected = true;
                if tx.send(PortEvent::Data(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log!("port read: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Write one frame, in as many write() calls as the port needs (it takes at most 32 KiB per
/// call). If the session changes between calls (host went away), drop the rest rather than
/// hand a new host the tail of a frame it never saw the start of.
fn write_frame(f: &mut File, mut bytes: &[u8], s: u64, session: &AtomicU64) {
    while !bytes.is_empty() {
        if s != session.load(Ordering::SeqCst) {
            return;
        }
        match f.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log!("port write: {e}");
                return;
            }
        }
    }
}

fn writer(mut f: File, rx: std::sync::mpsc::Receiver<Out>, session: Arc<AtomicU64>) {
    while let Ok(out) = rx.recv() {
        match out {
            Out::Frame(s, bytes) => {
                if s != session.load(Ordering::SeqCst) {
                    continue;
                }
                write_frame(&mut f, &bytes, s, &session);
            }
            Out::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

//! Shared agent state. The runtime is single-threaded (a LocalSet), so state lives in
//! Rc/RefCell; no RefCell borrow is ever held across an `.await`.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::containers::Container;
use crate::frame;
use crate::port::{Held, Out};
use crate::reaper::Reaper;
use crate::streams::Streams;

pub struct Agent {
    tx: std::sync::mpsc::Sender<Out>,
    /// Bumped when the host goes away; shared with the port writer thread.
    pub session: Arc<AtomicU64>,
    pub hello_done: Cell<bool>,
    pub streams: RefCell<Streams>,
    pub containers: RefCell<HashMap<String, Container>>,
    pub reaper: Reaper,
    pub boot_id: String,
}

impl Agent {
    pub fn new(tx: std::sync::mpsc::Sender<Out>, session: Arc<AtomicU64>) -> Rc<Agent> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Rc::new(Agent {
            tx,
            session,
            hello_done: Cell::new(false),
            streams: RefCell::new(Streams::default()),
            containers: RefCell::new(HashMap::new()),
            reaper: Reaper::default(),
            boot_id,
        })
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }

    /// RESP and CREDIT belong to this session; DATA, EOF and events outlive a host reconnect
    /// (held until the next hello, see port.rs).
    pub fn send(&self, kind: u8, id: u32, payload: &[u8]) {
        let bytes = frame::encode(kind, id, payload);
        let out = match kind {
            frame::RESP | frame::CREDIT => Out::Session(self.session(), bytes),
            _ => Out::Held(Held { bytes, event: kind == frame::EVENT, unsent: None }),
        };
        let _ = self.tx.send(out);
    }

    /// Stream DATA; `unsent` is the stream's count of bytes handed to the writer but not yet
    /// written (the writer decrements it).
    pub fn send_data(&self, id: u32, payload: &[u8], unsent: &Arc<AtomicU64>) {
        unsent.fetch_add(payload.len() as u64, Ordering::SeqCst);
        let bytes = frame::encode(frame::DATA, id, payload);
        let _ = self.tx.send(Out::Held(Held { bytes, event: false, unsent: Some(unsent.clone()) }));
    }

    /// hello answered: streams get fresh windows, the writer sends what it held.
    pub fn resume(&self) {
        self.streams.borrow_mut().reset_windows();
        let _ = self.tx.send(Out::Open(self.session()));
    }

    pub fn event(&self, v: Value) {
        self.send(frame::EVENT, 0, v.to_string().as_bytes());
    }

    /// Resolves once every frame queued before it has been written to the port.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Out::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The host went away (the port reader has already bumped the session): require a new
    /// hello. Streams and processes stay; their output is held until then.
    pub fn disconnected(&self) {
        self.hello_done.set(false);
    }

    /// The host broke the protocol: forget its streams too (it is expected to kill the VM).
    pub fn reset_session(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
        self.hello_done.set(false);
        self.streams.borrow_mut().reset_all();
    }
}

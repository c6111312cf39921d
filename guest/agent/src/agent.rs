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
use crate::port::Out;
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
        let agent = Rc::new(Agent {
            tx,
            session,
            hello_done: Cell::new(false),
            streams: RefCell::new(Streams::default()),
            containers: RefCell::new(HashMap::new()),
            reaper: Reaper::default(),
            boot_id,
        });
        agent
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }

    pub fn send(&self, kind: u8, id: u32, payload: &[u8]) {
        let _ = self.tx.send(Out::Frame(self.session(), frame::encode(kind, id, payload)));
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

    /// The host went away (or broke the protocol): forget its streams, require a new hello.
    pub fn reset_session(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
        self.hello_done.set(false);
        self.streams.borrow_mut().reset_all();
    }
}

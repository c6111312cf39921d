//! The outbox: everything the agent sends to the host goes through here, to the port writer
//! thread (port.rs). Leaf modules that produce output (stream pumps, exit waiters) hold an
//! `Rc<Outbox>` instead of the whole agent, so they depend on nothing above them.
//!
//! It also owns the session counter shared with the port threads: responses and CREDITs belong
//! to one session and are dropped when it ends; DATA, EOF and events outlive a host reconnect
//! (held by the writer until the next hello, see port.rs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::frame;
use crate::port::{Held, Out};

pub struct Outbox {
    tx: std::sync::mpsc::Sender<Out>,
    /// Bumped when the host goes away; shared with the port reader and writer threads.
    session: Arc<AtomicU64>,
}

impl Outbox {
    pub fn new(tx: std::sync::mpsc::Sender<Out>, session: Arc<AtomicU64>) -> Outbox {
        Outbox { tx, session }
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }

    /// End the session (a hello begins a new one, or the host broke the protocol): what was
    /// queued for it and not yet begun is dropped.
    pub fn end_session(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
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

    pub fn event(&self, v: Value) {
        self.send(frame::EVENT, 0, v.to_string().as_bytes());
    }

    /// hello answered in this session: the writer sends what it held, then keeps the gate open.
    pub fn open(&self) {
        let _ = self.tx.send(Out::Open(self.session()));
    }

    /// Resolves once every frame queued before it has been written to the port.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Out::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

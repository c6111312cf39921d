//! The agent's parts, wired once at start: the outbox to the host, the stream table, the
//! reaper and the containers. The connection (conn.rs) and the method table (rpc.rs) hold the
//! whole `Agent`; every handler below them receives only the parts it uses, so the modules form
//! a DAG (tests/module_graph.rs checks it).
//!
//! The runtime is single-threaded (a LocalSet), so state lives in Rc/RefCell/Cell; no RefCell
//! borrow is ever held across an `.await`.

use std::cell::Cell;
use std::rc::Rc;

use crate::containers::Containers;
use crate::outbox::Outbox;
use crate::reaper::Reaper;
use crate::streams::Streams;

pub struct Agent {
    pub outbox: Rc<Outbox>,
    pub hello_done: Cell<bool>,
    pub streams: Rc<Streams>,
    pub containers: Rc<Containers>,
    pub reaper: Rc<Reaper>,
    pub boot_id: String,
}

impl Agent {
    pub fn new(outbox: Outbox) -> Rc<Agent> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let outbox = Rc::new(outbox);
        let reaper = Rc::new(Reaper::default());
        let streams = Streams::new(outbox.clone());
        let containers = Containers::new(reaper.clone(), streams.clone());
        Rc::new(Agent { outbox, hello_done: Cell::new(false), streams, containers, reaper, boot_id })
    }

    pub fn session(&self) -> u64 {
        self.outbox.session()
    }

    /// hello answered: streams get fresh windows, the writer sends what it held.
    pub fn resume(&self) {
        self.streams.reset_windows();
        self.outbox.open();
    }

    /// The host went away (the port reader has already bumped the session): require a new
    /// hello. Streams and processes stay; their output is held until then.
    pub fn disconnected(&self) {
        self.hello_done.set(false);
    }

    /// The host broke the protocol: forget its streams too (it is expected to kill the VM).
    pub fn reset_session(&self) {
        self.outbox.end_session();
        self.hello_done.set(false);
        self.streams.reset_all();
    }
}

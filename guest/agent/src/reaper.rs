//! PID 1 reaps every child. Exit statuses of processes we started (container inits, execs)
//! are handed to whoever watches that pid; orphans reparented to us are just reaped.
//!
//! Children are only created synchronously inside request handlers (libcontainer), and the
//! watch is registered right after, before the next await: the reaper task cannot reap a pid
//! before its watcher exists.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug)]
pub struct ExitStatus {
    /// exit code; 128 + signal when killed by a signal (shell convention, what CRI expects)
    pub code: i32,
    pub signal: Option<i32>,
}

#[derive(Default)]
pub struct Reaper {
    watchers: RefCell<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.watchers.borrow_mut().insert(pid, tx);
        rx
    }

    pub fn reap_all(&self) {
        loop {
            let mut st: libc::c_int = 0;
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let status = if libc::WIFEXITED(st) {
                ExitStatus { code: libc::WEXITSTATUS(st), signal: None }
            } else if libc::WIFSIGNALED(st) {
                let s = libc::WTERMSIG(st);
                ExitStatus { code: 128 + s, signal: Some(s) }
            } else {
                continue;
            };
            if let Some(tx) = self.watchers.borrow_mut().remove(&pid) {
                let _ = tx.send(status);
            }
        }
    }
}

pub async fn run(reaper: Rc<Reaper>) {
    let mut sig = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            crate::log!("cannot watch SIGCHLD: {e}");
            return;
        }
    };
    reaper.reap_all();
    while sig.recv().await.is_some() {
        reaper.reap_all();
    }
}

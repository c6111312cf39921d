//! The connection: read frames from the port, enforce the per-kind rules, route stream frames
//! to the stream table and requests to handlers. A rule broken by the host ends the session
//! (streams dropped, a new hello required); the host is expected to drop the VM. A host that
//! merely disconnects keeps its streams: they resume after its next hello.

use std::rc::Rc;

use serde_json::{json, Value};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::frame::{self, Decoder, Frame, MAX_DATA};
use crate::log;
use crate::port::PortEvent;
use tokio::sync::mpsc;

pub async fn serve(agent: Rc<Agent>, mut events: mpsc::UnboundedReceiver<PortEvent>) {
    let mut dec = Decoder::default();
    while let Some(ev) = events.recv().await {
        let data = match ev {
            PortEvent::Data(d) => d,
            PortEvent::Disconnected => {
                log!("host disconnected; streams kept until the next hello");
                agent.disconnected();
                dec.clear();
                continue;
            }
        };
        crate::debug!("port read {}", data.len());
        dec.push(&data);
        loop {
            let res = match dec.next() {
                Ok(Some(f)) => handle_frame(&agent, f),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                log!("protocol violation: {e}; dropping the session");
                agent.reset_session();
                dec.clear();
                break;
            }
        }
    }
}

fn handle_frame(agent: &Rc<Agent>, f: Frame) -> Result<(), String> {
    crate::debug!("frame kind {} id {} len {}", f.kind, f.id, f.payload.len());
    match f.kind {
        frame::REQ => {
            if f.id == 0 {
                return Err("REQ with id 0".into());
            }
            handle_request(agent, f.id, &f.payload);
            Ok(())
        }
        frame::DATA => {
            if f.id == 0 || f.payload.is_empty() || f.payload.len() > MAX_DATA {
                return Err(format!("bad DATA frame (id {}, {} bytes)", f.id, f.payload.len()));
            }
            agent.streams.on_data(f.id, f.payload, agent.session())
        }
        frame::CREDIT => {
            if f.id == 0 || f.payload.len() != 4 {
                return Err("bad CREDIT frame".into());
            }
            let n = u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
            agent.streams.on_credit(f.id, n);
            Ok(())
        }
        frame::EOF | frame::RESET => {
            if f.id == 0 || !f.payload.is_empty() {
                return Err("bad EOF/RESET frame".into());
            }
            if f.kind == frame::EOF {
                agent.streams.on_eof(f.id)
            } else {
                agent.streams.on_reset(f.id)
            }
            Ok(())
        }
        k => Err(format!("frame kind {k} may not be sent by the host")),
    }
}

fn respond(agent: &Agent, id: u32, r: Result<Value, AgentError>) {
    let v = match r {
        Ok(v) => json!({ "result": v }),
        Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
    };
    let mut bytes = v.to_string().into_bytes();
    if bytes.len() > frame::MAX_PAYLOAD {
        bytes = json!({"error": {"code": "internal", "message": "response too large"}}).to_string().into_bytes();
    }
    agent.outbox.send(frame::RESP, id, &bytes);
}

fn handle_request(agent: &Rc<Agent>, id: u32, payload: &[u8]) {
    let req: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return respond(agent, id, Err(AgentError::invalid(format!("request is not JSON: {e}")))),
    };
    let method = match req.get("method").and_then(Value::as_str) {
        Some(m) => m.to_string(),
        None => return respond(agent, id, Err(AgentError::invalid("request has no method"))),
    };
    let params = match req.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return respond(agent, id, Err(AgentError::invalid("params must be an object"))),
    };
    // hello runs inline so that requests pipelined behind it see its effect.
    if method == "hello" {
        // A hello begins the host's session: answers to requests from before it are dropped,
        // never taken for answers to this host's own ids (its predecessor's, should a host come
        // back so soon that its leaving looked like a stale notice: port.rs HostWatch).
        agent.outbox.end_session();
        let r = crate::handshake::hello(&agent.boot_id, params);
        let ok = r.is_ok();
        agent.hello_done.set(ok);
        respond(agent, id, r);
        if ok {
            // After the response: the host learns of the new epoch before held frames arrive.
            agent.resume();
        }
        return;
    }
    if !agent.hello_done.get() {
        return respond(agent, id, Err(AgentError::precondition("hello first")));
    }
    let agent = agent.clone();
    let session = agent.session();
    tokio::task::spawn_local(async move {
        let r = crate::rpc::dispatch(&agent, &method, params).await;
        if agent.session() == session {
            respond(&agent, id, r);
        }
        if method == "shutdown" {
            agent.outbox.flush().await;
            crate::init::power_off();
        }
    });
}

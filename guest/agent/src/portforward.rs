//! `portforward.connect`: a TCP connection to a port in the pod (= this VM's network
//! namespace), carried both ways on one stream id.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Result};
use crate::streams::{InKind, Streams};
use crate::util;

#[derive(Deserialize)]
struct Params {
    port: u16,
    stream: u32,
}

pub async fn connect(streams: &Rc<Streams>, params: Value) -> Result<Value> {
    let p: Params = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("portforward.connect: {e}")))?;
    if p.port == 0 || p.stream == 0 {
        return Err(AgentError::invalid("port and stream must be non-zero"));
    }
    streams.check_new_ids(&[p.stream])?;
    let mut last = String::new();
    let mut sock = None;
    for addr in [format!("127.0.0.1:{}", p.port), format!("[::1]:{}", p.port)] {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => {
                sock = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timeout"),
        }
    }
    let sock = sock.ok_or_else(|| AgentError::new("failed_precondition", format!("connect to port {}: {last}", p.port)))?;
    // The id may have been taken while we were connecting.
    streams.check_new_ids(&[p.stream])?;
    let std = sock.into_std().map_err(|e| AgentError::internal(format!("socket: {e}")))?;
    let fd = OwnedFd::from(std);
    let fd2 = util::dup(&fd)?;
    streams.spawn_in(p.stream, fd2, InKind::Socket);
    streams.spawn_out(p.stream, fd);
    Ok(json!({}))
}

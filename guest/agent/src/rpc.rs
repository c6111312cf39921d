//! Method table (PROTOCOL.md "Methods").

use std::rc::Rc;

use serde_json::{json, Value};

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::{containers, cpus, disks, exec, network, nfs, portforward, sandbox, share, stats, tmpfs};

pub async fn dispatch(agent: &Rc<Agent>, method: &str, params: Value) -> Result<Value> {
    match method {
        "sandbox.setup" => sandbox::setup(params),
        "network.configure" => network::configure(params),
        "disk.mount" => disks::mount_disk(&agent.reaper, params).await,
        "disk.device" => disks::device(params).await,
        "disk.unmount" => disks::unmount_disk(params),
        "nfs.mount" => nfs::mount(&agent.reaper, params).await,
        "tmpfs.mount" => tmpfs::mount_tmpfs(params),
        "container.create" => containers::create(&agent.containers, params),
        "container.start" => containers::start(&agent.containers, params),
        "container.signal" => containers::signal(&agent.containers, params),
        "container.delete" => containers::delete(&agent.containers, params),
        "container.state" => containers::state(&agent.containers, params),
        "container.update" => containers::update(&agent.containers, params),
        "exec.start" => exec::start(&agent.containers, params),
        "process.signal" => exec::signal(&agent.containers, params),
        "process.resize" => exec::resize(&agent.containers, params),
        "portforward.connect" => portforward::connect(&agent.streams, params).await,
        "stats" => stats::stats(&agent.containers, params),
        "vm.cpus" => cpus::set_online(params),
        "share.release" => share::release(&agent.containers, params),
        "share.attach" => share::attach(params),
        "shutdown" => Ok(json!({})), // the caller powers off after the response is flushed
        _ => Err(AgentError::invalid(format!("unknown method {method:?}"))),
    }
}

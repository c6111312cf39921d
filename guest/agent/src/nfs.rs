//! `nfs.mount`: the guest kernel's NFS client, driven with mount(2) text options (no
//! mount.nfs in the guest: we pass `addr=`/`clientaddr=` ourselves, and for v3 the kernel
//! asks the server's rpcbind for mountd).
//!
//! A mount against a server that does not answer can block for minutes inside the kernel, so
//! mount(2) runs in a forked child: after 15 s we SIGKILL it (the NFS client's waits are
//! killable) and report `failed_precondition`.

use std::ffi::CString;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use nix::mount::MsFlags;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::disks::{is_mountpoint, parse_options};
use crate::error::{AgentError, Ctx, Result};
use crate::reaper::Reaper;
use crate::util::check_run_path;

const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);
/// Options we derive ourselves; the host may not override them.
const MANAGED: &[&str] = &["vers", "nfsvers", "addr", "clientaddr", "mountaddr", "mountvers", "proto", "mountproto"];

#[derive(Deserialize)]
struct Params {
    server: String,
    export: String,
    version: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    readonly: bool,
    target: String,
}

/// Our address on the route to the server: connect(2) a UDP socket (sends nothing).
fn local_addr_for(server: IpAddr) -> Result<IpAddr> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().unwrap_or_else(|_| unreachable!()) } else { "[::]:0".parse().unwrap_or_else(|_| unreachable!()) };
    let s = UdpSocket::bind(bind).ctx("udp socket")?;
    s.connect(SocketAddr::new(server, 2049))
        .map_err(|e| AgentError::precondition(format!("no route to NFS server {server}: {e}")))?;
    Ok(s.local_addr().ctx("getsockname")?.ip())
}

fn check_export(e: &str) -> Result<()> {
    let ok = e.starts_with('/') && e.len() <= 1024 && !e.contains(',') && !e.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid(format!("invalid export path {e:?}")))
    }
}

pub async fn mount(reaper: &Reaper, params: Value) -> Result<Value> {
    let p: Params = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("nfs.mount: {e}")))?;
    // No resolver in the guest: the host resolves names (it knows the pod's DNS too).
    let server: IpAddr = p.server.parse().map_err(|_| AgentError::invalid(format!("nfs.mount: server must be an IP address, not {:?}", p.server)))?;
    check_export(&p.export)?;
    let (fstype, base) = match p.version.as_str() {
        "4" | "4.0" | "4.1" | "4.2" => ("nfs4", format!("vers={}", p.version)),
        "3" => ("nfs", format!("vers=3,nolock,mountaddr={server},mountvers=3,proto=tcp,mountproto=tcp")),
        v => return Err(AgentError::invalid(format!("unsupported NFS version {v:?}"))),
    };
    let target = check_run_path("target", &p.target)?;
    let (mut flags, extra) = parse_options(&p.options)?;
    for o in extra.split(',').filter(|o| !o.is_empty()) {
        let key = o.split('=').next().unwrap_or("");
        if MANAGED.contains(&key) {
            return Err(AgentError::invalid(format!("option {key} is set by the agent")));
        }
    }
    if p.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let tstr = target.to_string_lossy().to_string();
    if is_mountpoint(&tstr) {
        return Err(AgentError::exists(format!("{tstr} is already mounted")));
    }
    let mut data = format!("{base},addr={server}");
    if fstype == "nfs4" {
        data.push_str(&format!(",clientaddr={}", local_addr_for(server)?));
    }
    if !extra.is_empty() {
        data.push(',');
        data.push_str(&extra);
    }
    let source = match server {
        IpAddr::V4(a) => format!("{a}:{}", p.export),
        IpAddr::V6(a) => format!("[{a}]:{}", p.export),
    };
    crate::modules::ensure("nfs").map_err(AgentError::internal)?;
    std::fs::create_dir_all(&target).ctx("mkdir target")?;
    let r = mount_in_child(reaper, &source, &tstr, fstype, flags, &data).await;
    if r.is_err() && !is_mountpoint(&tstr) {
        let _ = std::fs::remove_dir(&target);
    }
    r?;
    Ok(json!({}))
}

async fn mount_in_child(reaper: &Reaper, source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| AgentError::invalid("NUL in mount parameters"));
    let (src, tgt, fs, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let t0 = std::time::Instant::now();
    // Everything the child needs is allocated before fork: it only calls mount(2) and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(AgentError::internal(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        unsafe {
            let r = libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags.bits(), dat.as_ptr().cast());
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() & 0xff });
        }
    }
    // Registered before the next await (see reaper.rs).
    let mut rx = reaper.watch(pid);
    let st = match tokio::time::timeout(MOUNT_TIMEOUT, &mut rx).await {
        Ok(st) => st.map_err(|_| AgentError::internal("mount child lost"))?,
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            // It may have succeeded just as we gave up: do not leave a mount nobody knows of.
            if is_mountpoint(target) {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
            return Err(AgentError::precondition(format!(
                "NFS server {source} did not answer within {} s (mount -t {fstype} -o {data})",
                MOUNT_TIMEOUT.as_secs()
            )));
        }
    };
    crate::log!("nfs mount {source} on {target}: status {} in {:?}", st.code, t0.elapsed());
    if st.signal.is_some() {
        return Err(AgentError::internal(format!("mount child killed by signal {:?}", st.signal)));
    }
    match st.code {
        0 => Ok(()),
        e => {
            let err = std::io::Error::from_raw_os_error(e);
            let msg = format!("mount {source} on {target} ({fstype}, {data}): {err}");
            Err(match e {
                libc::EINVAL => AgentError::invalid(msg),
                libc::ENOENT => AgentError::not_found(msg),
                _ => AgentError::precondition(msg),
            })
        }
    }
}

//! `hello`: the first request of every connection. A VM cloned from a template runs it again
//! with new values, so this is where a clone takes its own identity: fresh RNG seed, clock,
//! hostname.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Ctx, Result};

pub const PROTOCOL: u64 = 1;

#[derive(Deserialize)]
struct Hello {
    protocol: u64,
    nonce: String,
    time_unix_ns: String,
    entropy: String,
    hostname: String,
}

/// The caller marks the session greeted when this succeeds.
pub fn hello(boot_id: &str, params: Value) -> Result<Value> {
    let p: Hello = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("hello: {e}")))?;
    if p.protocol != PROTOCOL {
        return Err(AgentError::new("unsupported_protocol", format!("agent speaks protocol {PROTOCOL}, not {}", p.protocol)));
    }
    if p.nonce.len() > 1024 {
        return Err(AgentError::invalid("nonce too long"));
    }
    let entropy = base64::engine::general_purpose::STANDARD
        .decode(p.entropy.as_bytes())
        .map_err(|e| AgentError::invalid(format!("entropy: {e}")))?;
    if entropy.len() < 32 || entropy.len() > 4096 {
        return Err(AgentError::invalid("entropy must be 32..4096 bytes"));
    }
    let ns: u128 = p.time_unix_ns.parse().map_err(|_| AgentError::invalid("time_unix_ns must be a decimal integer"))?;
    crate::sandbox::check_hostname(&p.hostname)?;

    add_entropy(&entropy)?;
    set_clock(ns)?;
    crate::sandbox::set_hostname(&p.hostname)?;
    Ok(json!({
        "protocol": PROTOCOL,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "nonce": p.nonce,
        "boot_id": boot_id,
    }))
}

/// RNDADDENTROPY on /dev/urandom, credited: a clone must not share the template's RNG state.
fn add_entropy(bytes: &[u8]) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().write(true).open("/dev/urandom").ctx("open /dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut v: Vec<u8> = Vec::with_capacity(8 + bytes.len());
    v.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    v.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    v.extend_from_slice(bytes);
    v.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // Vec<u8> has alignment 1; copy into a u32 buffer for the ioctl.
    let mut words = vec![0u32; v.len() / 4];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u32::from_ne_bytes([v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]]);
    }
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, words.as_ptr()) };
    if r < 0 {
        return Err(AgentError::internal(format!("RNDADDENTROPY: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

fn set_clock(ns: u128) -> Result<()> {
    let ts = libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(AgentError::internal(format!("clock_settime: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

//! `network.configure`: the pod's NICs, addresses and routes, over rtnetlink.
//!
//! The i-th interface of the request is the guest's i-th NIC (a netdev with a device behind
//! it, not loopback) in ifindex order. Not matched by MAC: a VM cloned from a template starts
//! with the template's MAC. Setting the MAC through netlink makes virtio_net tell QEMU over the
//! control queue, which updates QEMU's receive filter.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Result};
use crate::netlink::{self as nl, Msg, Netlink};

#[derive(Deserialize)]
struct Iface {
    mac: String,
    name: String,
    mtu: u32,
    #[serde(default)]
    addresses: Vec<String>,
    /// addresses this NIC had before (a pod restored from a checkpoint: the checkpointed pod's),
    /// removed before `addresses` are added; absent ones are no error
    #[serde(default)]
    remove_addresses: Vec<String>,
}

#[derive(Deserialize)]
struct Route {
    dest: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<String>,
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    interfaces: Vec<Iface>,
    #[serde(default)]
    routes: Vec<Route>,
}

struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn parse_cidr(s: &str) -> Result<Cidr> {
    let bad = || AgentError::invalid(format!("invalid CIDR {s:?}"));
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok(Cidr { addr, prefix })
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || AgentError::invalid(format!("invalid MAC {s:?}"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    // A NIC address must be unicast and non-zero.
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

fn check_ifname(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && n != "lo"
        && n.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::invalid(format!("invalid interface name {n:?}")))
    }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn sysfs(name: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{attr}")).ok().map(|s| s.trim().to_string())
}

/// (ifindex, name) of the NICs (netdevs backed by a device), in ifindex order.
fn nics() -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name == "lo" || !e.path().join("device").exists() {
                        return None;
                    }
                    Some((sysfs(&name, "ifindex")?.parse().ok()?, name))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn nl_err(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |e| AgentError::internal(format!("{what}: {e}"))
}

fn set_up(nl: &mut Netlink, index: u32, up: bool, name: &str) -> Result<()> {
    let flags = if up { libc::IFF_UP as u32 } else { 0 };
    nl.request(nl::RTM_NEWLINK, 0, Msg::link(index, flags, libc::IFF_UP as u32))
        .map_err(nl_err(format!("set {name} {}", if up { "up" } else { "down" })))
}

fn rename(nl: &mut Netlink, index: u32, from: &str, to: &str) -> Result<()> {
    set_up(nl, index, false, from)?;
    let mut n = to.as_bytes().to_vec();
    n.push(0);
    nl.request(nl::RTM_NEWLINK, 0, Msg::link(index, 0, 0).attr(nl::IFLA_IFNAME, &n))
        .map_err(nl_err(format!("rename {from} to {to}")))
}

fn configure_link(nl: &mut Netlink, index: u32, cur: &str, want: &Iface, mac: [u8; 6]) -> Result<()> {
    let name = want.name.as_str();
    if cur != name {
        // Another NIC may hold the name (e.g. host order differs from kernel naming): move it
        // out of the way; it gets its own name when its turn comes.
        if let Some(other) = sysfs(name, "ifindex").and_then(|i| i.parse::<u32>().ok()) {
            if other != index {
                rename(nl, other, name, &format!("pvtmp{other}"))?;
            }
        }
        rename(nl, index, cur, name)?;
    }
    let cur_mac = sysfs(name, "address").unwrap_or_default();
    let want_mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    if cur_mac != want_mac {
        set_up(nl, index, false, name)?;
        nl.request(nl::RTM_NEWLINK, 0, Msg::link(index, 0, 0).attr(nl::IFLA_ADDRESS, &mac))
            .map_err(nl_err(format!("set {name} address {want_mac}")))?;
    }
    if sysfs(name, "mtu").and_then(|m| m.parse::<u32>().ok()) != Some(want.mtu) {
        nl.request(nl::RTM_NEWLINK, 0, Msg::link(index, 0, 0).attr(nl::IFLA_MTU, &want.mtu.to_ne_bytes()))
            .map_err(nl_err(format!("set {name} mtu {}", want.mtu)))?;
    }
    // No duplicate address detection: the address must be usable as soon as we answer (the
    // pod's IPs are allocated by IPAM, a duplicate is not ours to detect). Absent without IPv6.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0");
    set_up(nl, index, true, name)
}

fn add_address(nl: &mut Netlink, index: u32, name: &str, c: &Cidr) -> Result<()> {
    let a = octets(&c.addr);
    let nodad = if c.addr.is_ipv6() { nl::IFA_F_NODAD } else { 0 };
    let m = Msg::addr(family(&c.addr), c.prefix, nodad as u8, index)
        .attr(nl::IFA_LOCAL, &a)
        .attr(nl::IFA_ADDRESS, &a)
        .attr(nl::IFA_FLAGS, &nodad.to_ne_bytes());
    nl.request(nl::RTM_NEWADDR, nl::NLM_F_CREATE | nl::NLM_F_REPLACE, m)
        .map_err(nl_err(format!("add address {}/{} to {name}", c.addr, c.prefix)))
}

/// Removes an address the NIC may still have; one it does not have is no error.
fn remove_address(nl: &mut Netlink, index: u32, name: &str, c: &Cidr) -> Result<()> {
    let a = octets(&c.addr);
    let m = Msg::addr(family(&c.addr), c.prefix, 0, index).attr(nl::IFA_LOCAL, &a).attr(nl::IFA_ADDRESS, &a);
    match nl.request(nl::RTM_DELADDR, 0, m) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) || e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map_err(nl_err(format!("remove address {}/{} from {name}", c.addr, c.prefix))),
    }
}

fn add_route(nl: &mut Netlink, dest: &Cidr, gw: Option<IpAddr>, oif: Option<u32>, what: &str) -> Result<()> {
    const RT_SCOPE_UNIVERSE: u8 = 0;
    const RT_SCOPE_LINK: u8 = 253;
    let build = |flags: u32| {
        let scope = if gw.is_none() && dest.addr.is_ipv4() { RT_SCOPE_LINK } else { RT_SCOPE_UNIVERSE };
        let mut m = Msg::route(family(&dest.addr), dest.prefix, scope, flags);
        if dest.prefix > 0 {
            m = m.attr(nl::RTA_DST, &octets(&dest.addr));
        }
        if let Some(g) = &gw {
            m = m.attr(nl::RTA_GATEWAY, &octets(g));
        }
        if let Some(i) = oif {
            m = m.attr(nl::RTA_OIF, &i.to_ne_bytes());
        }
        m
    };
    let flags = nl::NLM_F_CREATE | nl::NLM_F_REPLACE;
    match nl.request(nl::RTM_NEWROUTE, flags, build(0)) {
        // A gateway outside every subnet of the interface (e.g. a /32 pod address with
        // 169.254.1.1 as gateway): it is reachable on the link, say so.
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) && gw.is_some() && oif.is_some() => {
            nl.request(nl::RTM_NEWROUTE, flags, build(nl::RTNH_F_ONLINK)).map_err(nl_err(format!("add route {what}")))
        }
        r => r.map_err(nl_err(format!("add route {what}"))),
    }
}

pub fn configure(params: Value) -> Result<Value> {
    let p: Params = serde_json::from_value(params).map_err(|e| AgentError::invalid(format!("network.configure: {e}")))?;
    if p.interfaces.len() > 16 || p.routes.len() > 256 {
        return Err(AgentError::invalid("too many interfaces or routes"));
    }
    // Validate everything before touching the network.
    let mut macs = Vec::new();
    let mut addrs = Vec::new();
    let mut stale = Vec::new();
    for (i, f) in p.interfaces.iter().enumerate() {
        check_ifname(&f.name)?;
        if p.interfaces[..i].iter().any(|g| g.name == f.name) {
            return Err(AgentError::invalid(format!("interface name {} given twice", f.name)));
        }
        if !(68..=65535).contains(&f.mtu) {
            return Err(AgentError::invalid(format!("invalid mtu {}", f.mtu)));
        }
        if f.addresses.len() > 64 || f.remove_addresses.len() > 64 {
            return Err(AgentError::invalid("too many addresses"));
        }
        macs.push(parse_mac(&f.mac)?);
        addrs.push(f.addresses.iter().map(|a| parse_cidr(a)).collect::<Result<Vec<_>>>()?);
        stale.push(f.remove_addresses.iter().map(|a| parse_cidr(a)).collect::<Result<Vec<_>>>()?);
    }
    let mut routes = Vec::new();
    for r in &p.routes {
        let dest = parse_cidr(&r.dest)?;
        let gw = match &r.gateway {
            Some(g) => Some(g.parse::<IpAddr>().map_err(|_| AgentError::invalid(format!("invalid gateway {g:?}")))?),
            None => None,
        };
        if gw.map(|g| g.is_ipv4() != dest.addr.is_ipv4()).unwrap_or(false) {
            return Err(AgentError::invalid(format!("route {}: gateway family differs", r.dest)));
        }
        let iface = match &r.interface {
            Some(n) => Some(
                p.interfaces.iter().position(|f| &f.name == n).ok_or_else(|| AgentError::invalid(format!("route {}: unknown interface {n:?}", r.dest)))?,
            ),
            None => None,
        };
        if gw.is_none() && iface.is_none() {
            return Err(AgentError::invalid(format!("route {}: needs a gateway or an interface", r.dest)));
        }
        routes.push((dest, gw, iface));
    }
    let nics = nics();
    if p.interfaces.len() > nics.len() {
        return Err(AgentError::precondition(format!("{} interfaces requested, the VM has {} NICs", p.interfaces.len(), nics.len())));
    }

    let mut nl = Netlink::open().map_err(|e| AgentError::internal(format!("netlink: {e}")))?;
    set_up(&mut nl, 1, true, "lo")?;
    for (i, f) in p.interfaces.iter().enumerate() {
        let index = nics[i].0;
        // Re-read: an earlier rename may have moved this NIC to a temporary name.
        let cur = nics_name(index).unwrap_or_else(|| nics[i].1.clone());
        configure_link(&mut nl, index, &cur, f, macs[i])?;
        for c in &stale[i] {
            remove_address(&mut nl, index, &f.name, c)?;
        }
        for c in &addrs[i] {
            add_address(&mut nl, index, &f.name, c)?;
        }
    }
    for (r, (dest, gw, iface)) in p.routes.iter().zip(&routes) {
        let oif = iface.map(|i| nics[i].0);
        add_route(&mut nl, dest, *gw, oif, &r.dest)?;
    }
    Ok(json!({}))
}

fn nics_name(index: u32) -> Option<String> {
    nics().into_iter().find(|(i, _)| *i == index).map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse_mac("02:aa:bb:cc:dd:01").unwrap(), [2, 0xaa, 0xbb, 0xcc, 0xdd, 1]);
        assert!(parse_mac("03:aa:bb:cc:dd:01").is_err()); // multicast
        assert!(parse_mac("02:aa:bb:cc:dd").is_err());
        assert!(parse_mac("02:aa:bb:cc:dd:0g").is_err());
        assert_eq!(parse_cidr("10.0.0.2/24").unwrap().prefix, 24);
        assert!(parse_cidr("10.0.0.2/33").is_err());
        assert_eq!(parse_cidr("fd00::2/64").unwrap().prefix, 64);
        assert!(parse_cidr("fd00::2").is_err());
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("0123456789abcdef").is_err());
    }
}

//! Checks of what the provider asks an agent to do, before anything is
//! changed: a malformed goal is refused whole, never half-applied. Names
//! become paths (`/run/netns/<name>`) and interface names, so they are held
//! to what those may be; the agent only touches namespaces named `merak-…`.

use std::net::Ipv4Addr;

use merak_proto::agent::{EvmBatch, EvmSpec, FirewallGoal, OverlayGoal, PingRequest, SwitchGoal};

use crate::error::OverlayError;
use crate::netdev;
use crate::overlay::{parse_cidr, parse_mac_range};

/// Every namespace the agent makes or removes starts with this.
pub const NAMESPACE_PREFIX: &str = "merak-";
/// Linux interface names: at most 15 bytes.
const IFNAMSIZ: usize = 15;
/// EVMs in one batch, and probes in one ping request.
pub const MAX_BATCH: usize = 100_000;

fn invalid(what: String) -> OverlayError {
    OverlayError::Invalid(what)
}

/// A namespace name: a file name under /run/netns, and one of ours.
pub fn namespace(name: &str) -> Result<(), OverlayError> {
    let file_name = !name.is_empty() && name.len() <= 255 && !name.contains(['/', '\0']) && name != "." && name != "..";
    if file_name && name.starts_with(NAMESPACE_PREFIX) {
        Ok(())
    } else {
        Err(invalid(format!("{name:?} is not a namespace name this agent manages ({NAMESPACE_PREFIX}…, no '/')")))
    }
}

/// An interface name the kernel takes.
pub fn interface(name: &str) -> Result<(), OverlayError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ
        && !name.contains(['/', '\0', ' ', ':'])
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{name:?} is not an interface name (1 to {IFNAMSIZ} bytes, no '/', ':' or spaces)")))
    }
}

/// An EPM to host: a short name (it appears in logs and replies), the
/// namespace to serve it in and the socket to serve it on, both absolute
/// paths; the socket's must fit a unix socket address.
pub fn hosted(epm: &str, netns: &str, socket: &str, tcp: bool) -> Result<(), OverlayError> {
    const SUN_PATH: usize = 108;
    let name_ok = !epm.is_empty()
        && epm.len() <= 63
        && epm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !name_ok {
        return Err(invalid(format!("{epm:?} is not an EPM name (1 to 63 letters, digits, '-', '_' or '.')")));
    }
    let paths: &[(&str, &str)] =
        if tcp { &[("namespace", netns)] } else { &[("namespace", netns), ("socket", socket)] };
    for (what, path) in paths {
        if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
            return Err(invalid(format!("the {what} of {epm} must be an absolute path, not {path:?}")));
        }
    }
    if tcp {
        return match socket.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(invalid(format!("the TCP address of {epm} must be IP:PORT, not {socket:?}"))),
        };
    }
    if socket.len() >= SUN_PATH {
        return Err(invalid(format!(
            "the socket of {epm} ({} bytes) is longer than a unix socket path may be ({} bytes)",
            socket.len(),
            SUN_PATH - 1
        )));
    }
    Ok(())
}

fn mac(text: &str) -> Result<netdev::Mac, OverlayError> {
    netdev::parse_mac(text).ok_or_else(|| invalid(format!("bad MAC {text:?}")))
}

fn ipv4(text: &str) -> Result<Ipv4Addr, OverlayError> {
    text.parse().map_err(|_| invalid(format!("bad IPv4 address {text:?}")))
}

/// One EVM's spec, parsed: (address, prefix length, gateway, MAC, gateway MAC).
/// The gateway's MAC is `None` for an EVM left unattached (see
/// `EvmSpec.leave_unattached`): the system under test answers for it.
pub fn evm(spec: &EvmSpec) -> Result<(Ipv4Addr, u8, Ipv4Addr, netdev::Mac, Option<netdev::Mac>), OverlayError> {
    namespace(&spec.namespace)?;
    namespace(&spec.router_namespace)?;
    if !spec.leave_unattached {
        interface(&spec.bridge)?;
    }
    interface(&spec.host_port)?;
    if !matches!(spec.device_model.as_str(), "" | "veth" | "hybrid") {
        return Err(invalid(format!("unknown device model {:?}", spec.device_model)));
    }
    if spec.mtu != 0 && !(68..=65535).contains(&spec.mtu) {
        return Err(invalid(format!("MTU {} is outside 68 to 65535", spec.mtu)));
    }
    let (address, prefix_len) = parse_cidr(&spec.address)?;
    let gateway_mac = if spec.leave_unattached { None } else { Some(mac(&spec.gateway_mac)?) };
    Ok((address, prefix_len, ipv4(&spec.gateway)?, mac(&spec.mac)?, gateway_mac))
}

/// A batch: bounded, and every EVM in it well-formed.
pub fn batch(batch: &EvmBatch) -> Result<(), OverlayError> {
    if batch.create.len() + batch.delete.len() > MAX_BATCH {
        return Err(invalid(format!("a batch holds at most {MAX_BATCH} EVMs")));
    }
    batch.create.iter().chain(&batch.delete).try_for_each(|spec| evm(spec).map(drop))
}

/// An overlay goal, every field of it.
pub fn overlay(goal: &OverlayGoal) -> Result<(), OverlayError> {
    ipv4(&goal.underlay_ip)?;
    if !goal.router_prefix.is_empty() && !goal.router_prefix.starts_with(NAMESPACE_PREFIX) {
        return Err(invalid(format!("router prefix {:?} is not one of ours", goal.router_prefix)));
    }
    for vpc in &goal.vpcs {
        namespace(&vpc.namespace)?;
        for subnet in &vpc.subnets {
            if !(1..=0x00ff_ffff).contains(&subnet.vni) {
                return Err(invalid(format!("VNI {} is out of range", subnet.vni)));
            }
            interface(&subnet.bridge)?;
            interface(&subnet.vxlan)?;
            parse_cidr(&subnet.gateway)?;
            mac(&subnet.gateway_mac)?;
            subnet.flood.iter().try_for_each(|remote| ipv4(remote).map(drop))?;
            subnet.forget.iter().try_for_each(|range| parse_mac_range(range).map(drop))?;
        }
        if let Some(firewall) = &vpc.firewall {
            crate::firewall::render(firewall)?;
        }
    }
    Ok(())
}

/// A firewall-only goal: router namespaces of ours, each firewall renderable.
pub fn firewalls(goal: &FirewallGoal) -> Result<(), OverlayError> {
    for vpc in &goal.vpcs {
        namespace(&vpc.namespace)?;
        match &vpc.firewall {
            Some(firewall) => crate::firewall::render(firewall).map(drop)?,
            None => return Err(invalid(format!("{}: no firewall to apply", vpc.namespace))),
        }
    }
    Ok(())
}

/// A ping request: bounded, from namespaces of ours, to IPv4 addresses.
pub fn ping(request: &PingRequest) -> Result<(), OverlayError> {
    if request.probes.len() > MAX_BATCH {
        return Err(invalid(format!("a ping request holds at most {MAX_BATCH} probes")));
    }
    if request.payload_bytes > crate::ping::MAX_PAYLOAD {
        return Err(invalid(format!("a ping payload is at most {} bytes", crate::ping::MAX_PAYLOAD)));
    }
    request.probes.iter().try_for_each(|probe| {
        // Empty: from the agent's own namespace (the EPM, in a pod).
        if !probe.from_namespace.is_empty() {
            namespace(&probe.from_namespace)?;
        }
        ipv4(&probe.to).map(drop)
    })
}

/// A vswitch goal: interface names, at most one port per name, each a tunnel.
pub fn switch(goal: &SwitchGoal) -> Result<(), OverlayError> {
    interface(&goal.bridge)?;
    if goal.ports.len() > MAX_BATCH {
        return Err(invalid(format!("a vswitch holds at most {MAX_BATCH} ports")));
    }
    let mut names = std::collections::HashSet::new();
    for port in &goal.ports {
        interface(&port.name)?;
        if port.name == goal.bridge || !names.insert(port.name.as_str()) {
            return Err(invalid(format!("port {:?} is named twice", port.name)));
        }
        match &port.tunnel {
            Some(tunnel) => crate::underlay::wanted(tunnel).map(drop)?,
            None => return Err(invalid(format!("port {:?} has no tunnel", port.name))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_escape_or_not_fit_are_refused() {
        assert!(namespace("merak-lab.vm.web.0").is_ok());
        for bad in ["", "merak-../../etc", "..", "other", "merak-a/b", "merak-\0"] {
            assert!(namespace(bad).is_err(), "{bad:?}");
        }
        assert!(interface("b1.19").is_ok());
        for bad in ["", "sixteen-bytes-xx", "a/b", "a b", "a:b"] {
            assert!(interface(bad).is_err(), "{bad:?}");
        }
    }
}

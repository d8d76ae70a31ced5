//! Underlay links the agent builds itself: on the kubernetes runtime an EPM
//! and its top-of-rack vswitch are pods, and the link between them is a
//! point-to-point VXLAN tunnel over the pod network (any CNI carries UDP
//! between pod IPs). The EPM's data-plane NIC is its end of the tunnel; a
//! vswitch's ends are ports of its bridge.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use merak_proto::agent::{Shaping, SwitchGoal, Tunnel};

use crate::error::OverlayError;
use crate::netdev::{LinkState, Netlink, VxlanState};

/// The UDP port of underlay tunnels: not 4789, which the tenant overlay's
/// VXLAN devices bind in the EPM's namespace (their VNIs and the links'
/// may coincide).
pub const TUNNEL_PORT: u16 = 4790;
/// The EPM's data-plane NIC, which the tenant overlay runs over.
pub const DATA_NIC: &str = "eth1";

/// What a tunnel goal asks of a device, checked.
pub fn wanted(tunnel: &Tunnel) -> Result<(Ipv4Addr, VxlanState), OverlayError> {
    let remote: Ipv4Addr =
        tunnel.remote.parse().map_err(|_| OverlayError::Invalid(format!("bad tunnel remote {:?}", tunnel.remote)))?;
    if tunnel.vni == 0 || tunnel.vni >= 1 << 24 {
        return Err(OverlayError::Invalid(format!("tunnel VNI {} is outside 1..2^24", tunnel.vni)));
    }
    if !(576..=9000).contains(&tunnel.mtu) {
        return Err(OverlayError::Invalid(format!("tunnel MTU {} is outside 576..9000", tunnel.mtu)));
    }
    Ok((remote, VxlanState { vni: tunnel.vni, remote: Some(remote), port: TUNNEL_PORT }))
}

/// Makes `name` the tunnel `tunnel` (created down), replacing a device of
/// that name that is something else: another remote after the far pod was
/// made anew, another VNI or MTU. Returns the device and what it did.
pub async fn ensure_tunnel(
    netlink: &Netlink,
    name: &str,
    tunnel: &Tunnel,
) -> Result<(LinkState, Option<String>), OverlayError> {
    let (remote, goal) = wanted(tunnel)?;
    let existing = netlink.link(name).await?;
    if let Some(link) = &existing
        && link.vxlan == Some(goal)
        && link.mtu == tunnel.mtu
    {
        return Ok((link.clone(), None));
    }
    if let Some(link) = existing {
        netlink.delete_link(link.index).await?;
    }
    netlink.create_tunnel(name, tunnel.vni, remote, TUNNEL_PORT, tunnel.mtu).await?;
    let link = netlink
        .link(name)
        .await?
        .ok_or_else(|| OverlayError::Invalid(format!("tunnel {name} vanished right after creation")))?;
    netlink.disable_ipv6_addresses(link.index).await?;
    Ok((link, Some(format!("{name} tunnel to {remote} VNI {}", tunnel.vni))))
}

/// Converges a vswitch: its bridge up, every listed tunnel on it (up, or
/// down where a fault holds it, shaped as its goal says), and tunnel ports
/// it no longer has removed.
pub async fn apply_switch(netlink: &Netlink, goal: &SwitchGoal) -> Result<Vec<String>, OverlayError> {
    let mut actions = Vec::new();
    let bridge = match netlink.link(&goal.bridge).await? {
        Some(bridge) => {
            if !bridge.up {
                netlink.set_link(bridge.index, None, None).await?;
                actions.push(format!("{} up", goal.bridge));
            }
            bridge.index
        }
        None => {
            let index = netlink.create_bridge(&goal.bridge).await?;
            netlink.disable_ipv6_addresses(index).await?;
            actions.push(format!("bridge {}", goal.bridge));
            index
        }
    };
    if let Some(lo) = netlink.link("lo").await?
        && !lo.up
    {
        netlink.set_link(lo.index, None, None).await?;
    }
    let mut listed = HashSet::new();
    for port in &goal.ports {
        let tunnel =
            port.tunnel.as_ref().ok_or_else(|| OverlayError::Invalid(format!("port {} has no tunnel", port.name)))?;
        listed.insert(port.name.as_str());
        let (link, action) = ensure_tunnel(netlink, &port.name, tunnel).await?;
        actions.extend(action);
        let mut up = link.up;
        if link.controller != Some(bridge) || (!up && !port.held_down) {
            netlink.set_link(link.index, Some(bridge), None).await?;
            actions.push(format!("{} up on {}", port.name, goal.bridge));
            up = true;
        }
        if port.held_down && up {
            netlink.set_link_down(link.index).await?;
            actions.push(format!("{} held down", port.name));
        }
    }
    for stale in netlink.links().await? {
        let is_tunnel = stale.vxlan.is_some_and(|v| v.port == TUNNEL_PORT);
        if is_tunnel && !listed.contains(stale.name.as_str()) {
            netlink.delete_link(stale.index).await?;
            actions.push(format!("removed {}", stale.name));
        }
    }
    // Shaped last: a tunnel made anew above came without its qdiscs.
    let shaped: Vec<(&str, &Shaping)> =
        goal.ports.iter().filter_map(|p| Some((p.name.as_str(), p.shaping.as_ref()?))).collect();
    actions.extend(crate::shaping::apply(netlink, &shaped).await?);
    Ok(actions)
}

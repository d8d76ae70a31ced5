//! A fat tree's router on the kubernetes runtime: a pod forwarding between
//! tunnels to its neighbours' pods, each end with its address, by the ECMP
//! routes the provider computed (the same the local runtime's router
//! namespaces get). The pod keeps its own eth0 and default route: only
//! routes over the tunnel ports are the router's.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use merak_netdev::netns::{self, NetnsOptions};
use merak_netdev::routes::WantedRoute;
use merak_proto::agent::{RouterGoal, RouterPort, Shaping};

use crate::error::OverlayError;
use crate::netdev::Netlink;
use crate::overlay::parse_cidr;
use crate::underlay::{TUNNEL_PORT, ensure_tunnel};

/// Converges the router; what it changed. Forwarding, ECMP hashed on ports
/// with the goal's seed, and dead links skipped are set in the agent's own
/// network namespace (the pod's) first.
pub async fn apply_router(netlink: &Netlink, goal: &RouterGoal) -> Result<Vec<String>, OverlayError> {
    let ports: Vec<(&RouterPort, (Ipv4Addr, u8))> =
        goal.ports.iter().map(|p| Ok((p, parse_cidr(&p.address)?))).collect::<Result<_, OverlayError>>()?;
    let routes = wanted_routes(goal)?;
    let mut seen = HashSet::new();
    if let Some(twice) = goal.ports.iter().find(|p| !seen.insert(p.name.as_str())) {
        return Err(OverlayError::Invalid(format!("port {} is listed twice", twice.name)));
    }
    let options = NetnsOptions {
        forwarding: true,
        multipath_l4_hash: true,
        multipath_hash_seed: goal.multipath_hash_seed,
        skip_dead_links: true,
        ..NetnsOptions::default()
    };
    netns::configure_this_namespace("the router's pod", &options)?;
    let mut actions = Vec::new();
    if let Some(lo) = netlink.link("lo").await?
        && !lo.up
    {
        netlink.set_link(lo.index, None, None).await?;
    }
    for (port, (ip, prefix_len)) in &ports {
        let tunnel =
            port.tunnel.as_ref().ok_or_else(|| OverlayError::Invalid(format!("port {} has no tunnel", port.name)))?;
        let (link, action) = ensure_tunnel(netlink, &port.name, tunnel).await?;
        actions.extend(action);
        let present = netlink.addresses(link.index).await?;
        for (other, other_len) in present.iter().filter(|(a, _)| a.is_ipv4()) {
            if (*other, *other_len) != ((*ip).into(), *prefix_len) {
                netlink.delete_address(link.index, *other, *other_len).await?;
            }
        }
        if !present.contains(&((*ip).into(), *prefix_len)) {
            netlink.add_address(link.index, (*ip).into(), *prefix_len).await?;
            actions.push(format!("{} {}", port.name, port.address));
        }
        if !link.up && !port.held_down {
            netlink.set_link(link.index, None, None).await?;
            actions.push(format!("{} up", port.name));
        }
        if link.up && port.held_down {
            netlink.set_link_down(link.index).await?;
            actions.push(format!("{} held down", port.name));
        }
    }
    let listed: HashSet<String> = goal.ports.iter().map(|p| p.name.clone()).collect();
    for stale in netlink.links().await? {
        if stale.vxlan.is_some_and(|v| v.port == TUNNEL_PORT) && !listed.contains(&stale.name) {
            netlink.delete_link(stale.index).await?;
            actions.push(format!("removed {}", stale.name));
        }
    }
    let shaped: Vec<(&str, &Shaping)> =
        goal.ports.iter().filter_map(|p| Some((p.name.as_str(), p.shaping.as_ref()?))).collect();
    actions.extend(crate::shaping::apply(netlink, &shaped).await?);
    actions.extend(netlink.converge_routes(&routes, Some(&listed)).await?);
    Ok(actions)
}

/// The goal's routes, checked, without next hops over ports held down.
fn wanted_routes(goal: &RouterGoal) -> Result<Vec<WantedRoute>, OverlayError> {
    let held: HashSet<&str> = goal.ports.iter().filter(|p| p.held_down).map(|p| p.name.as_str()).collect();
    let mut wanted = Vec::new();
    for route in &goal.routes {
        let (destination, prefix_len) = parse_cidr(&route.prefix)?;
        let mut hops = Vec::new();
        for hop in route.next_hops.iter().filter(|h| !held.contains(h.device.as_str())) {
            let gateway = match hop.gateway.as_str() {
                "" => None,
                text => Some(
                    text.parse::<Ipv4Addr>()
                        .map_err(|_| OverlayError::Invalid(format!("bad next hop gateway {text:?}")))?,
                ),
            };
            hops.push((hop.device.clone(), gateway));
        }
        if !hops.is_empty() {
            wanted.push(WantedRoute { destination, prefix_len, hops });
        }
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use merak_proto::agent::{NextHop, Route};

    #[test]
    fn hops_over_held_ports_are_left_out_and_a_route_left_with_none_goes() {
        let hop = |device: &str| NextHop { device: device.into(), gateway: "100.64.0.1".into() };
        let goal = RouterGoal {
            ports: vec![
                RouterPort { name: "up0".into(), held_down: true, ..RouterPort::default() },
                RouterPort { name: "up1".into(), ..RouterPort::default() },
            ],
            routes: vec![
                Route { prefix: "10.0.0.0/16".into(), next_hops: vec![hop("up0"), hop("up1")] },
                Route { prefix: "10.1.0.0/24".into(), next_hops: vec![hop("up0")] },
            ],
            multipath_hash_seed: 7,
        };
        let wanted = wanted_routes(&goal).unwrap();
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].hops, [("up1".to_string(), Some(Ipv4Addr::new(100, 64, 0, 1)))]);
        let bad = RouterGoal { routes: vec![Route { prefix: "10.0.0.0".into(), next_hops: vec![] }], ..goal };
        assert!(matches!(wanted_routes(&bad), Err(OverlayError::Invalid(_))));
    }
}

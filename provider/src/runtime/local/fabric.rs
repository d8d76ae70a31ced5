//! A fat tree on the local runtime: a namespace per switch that routes
//! (forwarding on, ECMP hashed on ports, next hops over dead links
//! skipped), a veth per link with a /31 at each end, and every switch's
//! routes as `model::fat_tree` computes them. An EPM's `eth1` plugs into its
//! edge switch's `h<port>`, which holds the EPM's gateway and a route to it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::StreamExt;
use merak_netdev::netdev::Netlink;
use merak_netdev::netns::{self, NetnsOptions};
use merak_netdev::routes::{Hop, WantedRoute};

use super::LocalRuntime;
use crate::model::fat_tree::{FatTree, HostPort, Route, Switch};
use crate::model::naming::{self, EPM_DATA_NIC};
use crate::runtime::held::HeldEnds;
use crate::runtime::{Failure, RuntimeError};

/// Switches and links wired at once.
const PARALLEL: usize = 16;

/// A switch's namespace: a router whose ECMP hash is seeded by its name,
/// so that routers in series spread flows independently.
fn router_options(switch: &Switch) -> NetnsOptions {
    NetnsOptions {
        disable_ipv6: true,
        forwarding: true,
        multipath_l4_hash: true,
        multipath_hash_seed: switch.hash_seed(),
        skip_dead_links: true,
        ..NetnsOptions::default()
    }
}

pub(super) fn switch_namespace(topology: &str, switch: &Switch) -> String {
    naming::namespace(topology, &switch.name())
}

/// A veth between two namespaces, each end up with its address: made when
/// an end is missing (the other, if left, goes first), else repaired.
async fn ensure_link(
    near: &Netlink,
    near_name: &str,
    near_ip: (Ipv4Addr, u8),
    far: &Netlink,
    far_namespace: &str,
    far_name: &str,
    far_ip: (Ipv4Addr, u8),
) -> Result<(), RuntimeError> {
    let (near_link, far_link) = (near.link(near_name).await?, far.link(far_name).await?);
    if near_link.is_none() || far_link.is_none() {
        for (netlink, stale) in [(near, near_link), (far, far_link)] {
            if let Some(stale) = stale {
                netlink.delete_link(stale.index).await?;
            }
        }
        near.create_veth(near_name, far_name, &netns::open_fd(far_namespace)?).await?;
    }
    for (netlink, name, (ip, prefix_len)) in [(near, near_name, near_ip), (far, far_name, far_ip)] {
        let link = netlink
            .link(name)
            .await?
            .ok_or_else(|| RuntimeError::Unavailable(format!("port {name} vanished right after creation")))?;
        if !netlink.addresses(link.index).await?.contains(&(IpAddr::V4(ip), prefix_len)) {
            netlink.add_address(link.index, IpAddr::V4(ip), prefix_len).await?;
        }
        if !link.up {
            netlink.set_link(link.index, None, None).await?;
        }
    }
    Ok(())
}

/// Makes a switch's routes what the model computes (see
/// Netlink::converge_routes).
async fn ensure_routes(netlink: &Netlink, fabric: &FatTree, switch: Switch) -> Result<(), RuntimeError> {
    netlink.converge_routes(&wanted_routes(fabric.routes(switch)), None).await?;
    Ok(())
}

/// The model's routes as netlink converges them.
fn wanted_routes(routes: Vec<Route>) -> Vec<WantedRoute> {
    routes
        .into_iter()
        .map(|route| WantedRoute {
            destination: route.prefix.network(),
            prefix_len: route.prefix.prefix_len(),
            hops: route.next_hops.into_iter().map(|hop| (hop.device, hop.gateway)).collect(),
        })
        .collect()
}

impl LocalRuntime {
    /// Builds or repairs every switch, link and route of the fabric; per
    /// switch or link that failed, why.
    pub(super) async fn ensure_fabric(&self, topology: &str, fabric: &FatTree) -> Vec<Failure> {
        let mut failures = Vec::new();
        let opened: Vec<(Switch, Result<Netlink, RuntimeError>)> = futures::stream::iter(fabric.switches())
            .map(|switch| async move {
                let namespace = switch_namespace(topology, &switch);
                let netlink = if netns::exists(&namespace) {
                    netns::open(&namespace).await
                } else {
                    netns::create(&namespace, router_options(&switch)).await
                };
                (switch, netlink.map_err(RuntimeError::from))
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut routers = HashMap::new();
        for (switch, netlink) in opened {
            match netlink {
                Ok(netlink) => {
                    routers.insert(switch, netlink);
                }
                Err(e) => failures.push(Failure { object: switch.name(), error: e.to_string() }),
            }
        }
        let routers = &routers;
        let links: Vec<Failure> = futures::stream::iter(fabric.fabric_links())
            .map(|link| async move {
                if !routers.contains_key(&link.lower) || !routers.contains_key(&link.upper) {
                    return None;
                }
                // Connections of its own: a switch's links are wired at once,
                // and one netlink socket serves one dump at a time (EBUSY).
                let (lower_namespace, upper_namespace) =
                    (switch_namespace(topology, &link.lower), switch_namespace(topology, &link.upper));
                let wired = async {
                    let (lower, upper) = (netns::open(&lower_namespace).await?, netns::open(&upper_namespace).await?);
                    ensure_link(
                        &lower,
                        &link.lower_device,
                        (link.lower_ip, 31),
                        &upper,
                        &upper_namespace,
                        &link.upper_device,
                        (link.upper_ip, 31),
                    )
                    .await
                };
                wired.await.err().map(|e| Failure {
                    object: format!("{} {}", link.lower.name(), link.lower_device),
                    error: e.to_string(),
                })
            })
            .buffer_unordered(PARALLEL)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        failures.extend(links);
        // Owned items: borrowing ones trip the higher-ranked lifetime check
        // of futures streams inside async-trait methods.
        let owned: Vec<(Switch, Netlink)> =
            routers.iter().map(|(switch, netlink)| (*switch, netlink.clone())).collect();
        let routed: Vec<Failure> = futures::stream::iter(owned)
            .map(|(switch, netlink): (Switch, Netlink)| async move {
                ensure_routes(&netlink, fabric, switch)
                    .await
                    .err()
                    .map(|e| Failure { object: switch.name(), error: format!("routes: {e}") })
            })
            .buffer_unordered(PARALLEL)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        failures.extend(routed);
        failures
    }

    /// An EPM's `eth1` wired to its edge switch's port, which holds the
    /// EPM's gateway (a /32) and the route to the EPM.
    pub(super) async fn wire_routed_epm(
        &self,
        topology: &str,
        epm_netlink: &Netlink,
        epm_ip: Ipv4Addr,
        port: &HostPort,
    ) -> Result<(), RuntimeError> {
        let edge_namespace = switch_namespace(topology, &port.edge);
        let edge = netns::open(&edge_namespace).await?;
        let (near, far) = (epm_netlink.link(EPM_DATA_NIC).await?, edge.link(&port.device).await?);
        if near.is_none() || far.is_none() {
            for (netlink, stale) in [(epm_netlink, near), (&edge, far)] {
                if let Some(stale) = stale {
                    netlink.delete_link(stale.index).await?;
                }
            }
            epm_netlink.create_veth(EPM_DATA_NIC, &port.device, &netns::open_fd(&edge_namespace)?).await?;
        }
        let link = edge
            .link(&port.device)
            .await?
            .ok_or_else(|| RuntimeError::Unavailable(format!("port {} vanished right after creation", port.device)))?;
        edge.disable_ipv6_addresses(link.index).await?;
        if !edge.addresses(link.index).await?.contains(&(IpAddr::V4(port.gateway), 32)) {
            edge.add_address(link.index, IpAddr::V4(port.gateway), 32).await?;
        }
        if !link.up {
            edge.set_link(link.index, None, None).await?;
        }
        // The NIC's agent brings it up with its address and default route.
        edge.replace_route(epm_ip, 32, &[Hop { index: link.index, gateway: None }]).await?;
        Ok(())
    }

    /// Whether an EPM's edge port is up and its edge has an uplink up;
    /// ends a fault holds down count as up (they are as declared).
    pub(super) async fn edge_serves(&self, topology: &str, port: &HostPort, held: &HeldEnds) -> bool {
        let Ok(edge) = netns::open(&switch_namespace(topology, &port.edge)).await else { return false };
        let Ok(links) = edge.links().await else { return false };
        let edge_name = port.edge.name();
        let carries = |l: &merak_netdev::netdev::LinkState| l.up || held.contains(&(edge_name.clone(), l.name.clone()));
        links.iter().any(|l| l.name == port.device && carries(l))
            && links.iter().any(|l| l.name.starts_with("up") && carries(l))
    }
}

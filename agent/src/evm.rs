//! Emulated VMs (device model "veth"): per EVM a network namespace whose
//! `eth0` holds the EVM's address, MAC and default route via its subnet's
//! gateway, wired by a veth pair into the subnet's bridge in the VPC's router
//! namespace. No process spawns; many EVMs in flight at once.
//!
//! Eight netlink requests per EVM, in three round trips: create the veth
//! (eth0 at a fixed index, its peer straight into the router namespace);
//! then, sent together, IPv6 address generation off, address, eth0 up, lo
//! up, the gateway's static neighbour entry, the default route; last, the
//! peer joins its bridge and goes up. An EVM is whole exactly when its peer
//! is up on a bridge ([`is_whole`]): that request is sent only after all the
//! others succeeded, so an agent killed mid-way leaves an EVM that is seen
//! as half-built, and rebuilt.
//!
//! An EVM of an external controller's VPC is left unattached
//! (`EvmSpec.leave_unattached`): its peer stays in the EPM's own namespace,
//! up on no bridge, for the system under test to attach; there is no static
//! neighbour for the gateway, its eth0 computes its own checksums (no tx
//! offload, which a userspace switch would not complete), and it is whole
//! once that peer is up.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;

use futures::StreamExt;
use merak_proto::agent::{EvmBatch, EvmFailure, EvmReply, EvmSpec};

use crate::bridges;
use crate::error::OverlayError;
use crate::netdev::{LinkState, Netlink};
use crate::netns::{self, NetnsOptions};

/// EVMs worked on at once. The kernel serializes the work under RTNL; a few
/// in flight hide the round trips.
const IN_FLIGHT: usize = 32;
/// In a fresh namespace `lo` is link 1, so `eth0` can be asked to be link 2.
const LOOPBACK_INDEX: u32 = 1;
const ETH0_INDEX: u32 = 2;
/// How long the kernel may go without removing any port of a batch being
/// deleted before the deletion counts as stuck.
const STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// A link dump slower than this waited for the kernel's teardown (RTNL).
const KERNEL_BUSY: std::time::Duration = std::time::Duration::from_millis(500);

/// A router namespace, opened once per batch.
struct Router {
    netlink: Netlink,
    fd: OwnedFd,
}

/// Deletes, then creates, the batch's EVMs. `mtu`: what the EVMs' links
/// get (the overlay's: the EPM's underlay NIC less the VXLAN header), so a
/// full-size packet with DF set fits every hop; `None` leaves the kernel's.
pub async fn apply(batch: &EvmBatch, mtu: Option<u32>) -> EvmReply {
    let mut reply = EvmReply::default();
    let mut routers: HashMap<String, Router> = HashMap::new();
    for spec in batch.create.iter().chain(&batch.delete) {
        if routers.contains_key(&spec.router_namespace) {
            continue;
        }
        match open_router(&spec.router_namespace).await {
            Ok(router) => {
                routers.insert(spec.router_namespace.clone(), router);
            }
            // Deleting needs no router: without one there is no port to wait for.
            Err(_)
                if !netns::exists(&spec.router_namespace)
                    && batch.delete.iter().any(|d| d.namespace == spec.namespace) => {}
            Err(e) => reply.failures.push(EvmFailure { namespace: spec.namespace.clone(), error: e.to_string() }),
        }
    }

    // Deletions first, so a batch that replaces EVMs frees names and addresses.
    let mut leaving: HashMap<&str, Vec<&EvmSpec>> = HashMap::new();
    for spec in &batch.delete {
        if spec.device_model == "hybrid"
            && let Some(router) = routers.get(&spec.router_namespace)
            && let Err(e) = remove_hybrid_plug(&router.netlink, &spec.host_port).await
        {
            reply.failures.push(EvmFailure { namespace: spec.namespace.clone(), error: e.to_string() });
            continue;
        }
        match netns::delete(&spec.namespace) {
            Ok(()) if routers.contains_key(&spec.router_namespace) => {
                leaving.entry(&spec.router_namespace).or_default().push(spec)
            }
            Ok(()) => reply.deleted += 1,
            Err(e) => reply.failures.push(EvmFailure { namespace: spec.namespace.clone(), error: e.to_string() }),
        }
    }
    // The kernel frees namespaces in the background; an EVM is gone when its
    // host port has left the router. One dump per router per round, with a
    // growing pause: polling hard would compete with the teardown for RTNL.
    // Slow progress is fine (50,000 EVMs take the kernel minutes); only a
    // round of STALL with no port leaving at all is a failure. The kernel
    // tears namespaces down in batches, under RTNL, and the ports of a batch
    // leave together at its end: while it works, a dump waits for RTNL, and
    // a slow answer counts as progress too.
    let mut pause = std::time::Duration::from_millis(20);
    let mut progress = std::time::Instant::now();
    while !leaving.is_empty() {
        let mut still = HashMap::new();
        for (router_namespace, specs) in leaving.drain() {
            let Some(router) = routers.get(router_namespace) else { continue };
            let asked = std::time::Instant::now();
            let links = router.netlink.links().await;
            if asked.elapsed() > KERNEL_BUSY {
                progress = std::time::Instant::now();
            }
            match links {
                Ok(links) => {
                    let present: std::collections::HashSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
                    let (gone, left): (Vec<&EvmSpec>, Vec<&EvmSpec>) =
                        specs.into_iter().partition(|s| !present.contains(eth0_peer(s).as_str()));
                    reply.deleted += gone.len() as u32;
                    if !gone.is_empty() {
                        progress = std::time::Instant::now();
                    }
                    if !left.is_empty() {
                        still.insert(router_namespace, left);
                    }
                }
                Err(e) => reply
                    .failures
                    .extend(specs.iter().map(|s| EvmFailure { namespace: s.namespace.clone(), error: e.to_string() })),
            }
        }
        leaving = still;
        if leaving.is_empty() {
            break;
        }
        if progress.elapsed() > STALL {
            for spec in leaving.values().flatten() {
                let error = format!(
                    "its port was still present after deletion, and no port of this batch left for {} s",
                    STALL.as_secs()
                );
                reply.failures.push(EvmFailure { namespace: spec.namespace.clone(), error });
            }
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }

    let bridges = choose_bridges(&routers, &batch.create, &mut reply).await;
    let (routers, bridges) = (&routers, &bridges);
    // Owned specs: a stream of borrowing futures trips the compiler's
    // higher-ranked lifetime check inside async-trait methods.
    let results: Vec<(EvmSpec, Result<bool, String>)> = futures::stream::iter(batch.create.iter().cloned())
        .map(|spec: EvmSpec| async move {
            let bridge =
                if spec.leave_unattached { Some(None) } else { bridges.get(&spec.namespace).map(|b| Some(*b)) };
            let result = match (routers.get(&spec.router_namespace), bridge) {
                (Some(router), Some(bridge)) => {
                    let mtu = if spec.mtu > 0 { Some(spec.mtu) } else { mtu };
                    ensure(&spec, router, bridge, mtu).await.map_err(|e| e.to_string())
                }
                _ => Err(format!("router namespace {} unavailable", spec.router_namespace)),
            };
            (spec, result)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for (spec, result) in results {
        match result {
            Ok(true) => reply.created += 1,
            Ok(false) => reply.existing += 1,
            Err(error) if reply.failures.iter().any(|f| f.namespace == spec.namespace) => drop(error),
            Err(error) => reply.failures.push(EvmFailure { namespace: spec.namespace.clone(), error }),
        }
    }
    // Leaves the deletions emptied, or failed creations left empty.
    let mut trunks: Vec<(&str, &str)> = batch
        .create
        .iter()
        .chain(&batch.delete)
        .filter(|s| !s.leave_unattached)
        .map(|s| (s.router_namespace.as_str(), s.bridge.as_str()))
        .collect();
    trunks.sort_unstable();
    trunks.dedup();
    for (router_namespace, trunk) in trunks {
        if let Some(router) = routers.get(router_namespace)
            && let Err(e) = bridges::prune(&router.netlink, trunk).await
        {
            tracing::warn!(router = router_namespace, trunk, error = %e, "could not remove empty leaf bridges");
        }
    }
    reply
}

/// The bridge each EVM's port joins, by EVM namespace. An EVM whose port
/// exists keeps its bridge; new ports are placed per subnet in one go (see
/// [`bridges::place`]), before the EVMs are built in parallel.
async fn choose_bridges(
    routers: &HashMap<String, Router>,
    create: &[EvmSpec],
    reply: &mut EvmReply,
) -> HashMap<String, u32> {
    let mut chosen = HashMap::with_capacity(create.len());
    for (router_namespace, router) in routers {
        let specs: Vec<&EvmSpec> =
            create.iter().filter(|s| &s.router_namespace == router_namespace && !s.leave_unattached).collect();
        if specs.is_empty() {
            continue;
        }
        let links = match router.netlink.links().await {
            Ok(links) => links,
            Err(e) => {
                reply
                    .failures
                    .extend(specs.iter().map(|s| EvmFailure { namespace: s.namespace.clone(), error: e.to_string() }));
                continue;
            }
        };
        let bridge_of_port: HashMap<&str, u32> =
            links.iter().filter_map(|l| Some((l.name.as_str(), l.controller?))).collect();
        let mut new_ports: BTreeMap<&str, Vec<&EvmSpec>> = BTreeMap::new();
        for spec in specs {
            match bridge_of_port.get(spec.host_port.as_str()) {
                Some(bridge) => {
                    chosen.insert(spec.namespace.clone(), *bridge);
                }
                None => new_ports.entry(spec.bridge.as_str()).or_default().push(spec),
            }
        }
        for (trunk, specs) in new_ports {
            match bridges::place(&router.netlink, &router.fd, &links, trunk, specs.len()).await {
                Ok(indexes) => chosen.extend(specs.iter().map(|s| s.namespace.clone()).zip(indexes)),
                Err(e) => reply
                    .failures
                    .extend(specs.iter().map(|s| EvmFailure { namespace: s.namespace.clone(), error: e.to_string() })),
            }
        }
    }
    chosen
}

async fn open_router(namespace: &str) -> Result<Router, OverlayError> {
    let netlink = netns::open(namespace).await?;
    let fd = netns::open_fd(namespace)?;
    Ok(Router { netlink, fd })
}

/// Creates the EVM unless it is already whole, its port joining `bridge`
/// (`None`: left unattached); true when it was created.
async fn ensure(spec: &EvmSpec, router: &Router, bridge: Option<u32>, mtu: Option<u32>) -> Result<bool, OverlayError> {
    if netns::exists(&spec.namespace) {
        if router.netlink.link(&eth0_peer(spec)).await?.as_ref().is_some_and(|peer| is_whole(spec, peer)) {
            return Ok(false);
        }
        // Half-made (an agent or provider killed mid-creation): start over.
        netns::delete(&spec.namespace)?;
        wait_gone(&router.netlink, &eth0_peer(spec)).await.map_err(OverlayError::Invalid)?;
    }
    let (address, prefix_len, gateway, mac, gateway_mac) = crate::goal::evm(spec)?;

    let hybrid = spec.device_model == "hybrid";
    // Hybrid: the per-EVM bridge (with its tap, and its veth pair to the
    // subnet's bridge) is what eth0's peer joins.
    let eth0_peer_bridge = if hybrid { Some(build_hybrid_plug(spec, router, bridge, mtu).await?) } else { bridge };
    let eth0_peer = eth0_peer(spec);
    let evm = netns::create(&spec.namespace, NetnsOptions::default()).await?;
    let built = async {
        evm.create_veth_at("eth0", ETH0_INDEX, Some(mac), mtu, &eth0_peer, &router.fd).await?;
        // A userspace switch reading the port through a packet socket does
        // not fill in checksums the kernel left to offload: ping would pass
        // and TCP fail. The EVM computes its own.
        if spec.leave_unattached {
            netns::set_tx_checksum(&spec.namespace, "eth0", false).await?;
        }
        // Pipelined, not one round trip each (measured: apply of 10,000
        // EVMs 29.5 s -> 26.2 s). `biased` polls, and so sends, the requests
        // in this order, and the kernel handles one socket's requests in the
        // order they arrive (the route needs the address and link up first).
        let neighbour = async {
            match gateway_mac {
                Some(gateway_mac) => evm.add_neighbour(ETH0_INDEX, gateway, gateway_mac).await,
                None => Ok(()),
            }
        };
        tokio::try_join!(
            biased;
            evm.disable_ipv6_addresses(ETH0_INDEX),
            evm.add_address(ETH0_INDEX, address.into(), prefix_len),
            evm.set_link(ETH0_INDEX, None, None),
            evm.set_link(LOOPBACK_INDEX, None, None),
            neighbour,
            evm.add_default_route(gateway),
        )?;
        // Last, on the router's own socket: the mark of a whole EVM.
        router.netlink.set_link_by_name(&eth0_peer, eth0_peer_bridge).await?;
        Ok::<_, OverlayError>(())
    }
    .await;
    if let Err(e) = built {
        let _ = netns::delete(&spec.namespace);
        return Err(e);
    }
    Ok(true)
}

/// Of these EVMs, whose namespaces exist, the ones (by namespace) that are
/// whole: the EVM's port is up on a bridge in its router namespace, the
/// last step of building one. A namespace alone may be a half-built EVM
/// left by a kill. One link dump per router namespace.
pub async fn whole(evms: &[&EvmSpec]) -> std::collections::HashSet<String> {
    // Owned items: borrowed ones trip the higher-ranked lifetime check of
    // futures streams inside async-trait methods.
    let mut by_router: BTreeMap<String, Vec<(EvmSpec, String)>> = BTreeMap::new();
    for evm in evms {
        by_router.entry(evm.router_namespace.clone()).or_default().push(((*evm).clone(), eth0_peer(evm)));
    }
    let whole: Vec<Vec<String>> = futures::stream::iter(by_router)
        .map(|(router, evms): (String, Vec<(EvmSpec, String)>)| async move {
            // A router that is gone or unreadable holds no whole EVM.
            let Ok(netlink) = netns::open(&router).await else { return Vec::new() };
            let Ok(links) = netlink.links().await else { return Vec::new() };
            let ports: HashMap<&str, &LinkState> = links.iter().map(|l| (l.name.as_str(), l)).collect();
            evms.into_iter()
                .filter(|(spec, port)| ports.get(port.as_str()).is_some_and(|l| is_whole(spec, l)))
                .map(|(spec, _)| spec.namespace)
                .collect()
        })
        .buffer_unordered(ROUTERS_IN_FLIGHT)
        .collect()
        .await;
    whole.into_iter().flatten().collect()
}

/// Router namespaces read at once by [`whole`].
const ROUTERS_IN_FLIGHT: usize = 16;

/// Whether an EVM whose eth0 peer is `peer` is whole: the peer is up on a
/// bridge, the last step of building it. Left unattached, up is enough:
/// the system under test may put it on a bridge of its own, or on none (a
/// userspace switch reads it through a packet socket).
pub fn is_whole(spec: &EvmSpec, peer: &LinkState) -> bool {
    peer.up && (spec.leave_unattached || peer.controller.is_some())
}

/// The router-side end of the EVM's eth0: it leaves when the kernel has torn
/// the EVM's namespace down, and is up on a bridge once the EVM is whole.
pub fn eth0_peer(spec: &EvmSpec) -> String {
    if spec.device_model == "hybrid" { hybrid_name('v', &spec.host_port) } else { spec.host_port.clone() }
}

/// The name of a hybrid plug's device: `host_port` (`o<group>.<k>`) with
/// another first letter: `q` per-EVM bridge, `t` tap, `i` the pair's end on
/// the per-EVM bridge, `v` eth0's peer.
fn hybrid_name(kind: char, host_port: &str) -> String {
    let mut name = String::with_capacity(host_port.len());
    name.push(kind);
    name.push_str(host_port.get(1..).unwrap_or_default());
    name
}

/// Builds the router side of a hybrid plug; returns the per-EVM bridge's index.
async fn build_hybrid_plug(
    spec: &EvmSpec,
    router: &Router,
    subnet_bridge: Option<u32>,
    mtu: Option<u32>,
) -> Result<u32, OverlayError> {
    let netlink = &router.netlink;
    let qbr = hybrid_name('q', &spec.host_port);
    let tap = hybrid_name('t', &spec.host_port);
    let inner = hybrid_name('i', &spec.host_port);
    // A half-made plug from an interrupted run is rebuilt from scratch.
    remove_hybrid_plug(netlink, &spec.host_port).await?;
    let qbr_index = netlink.create_bridge(&qbr).await?;
    netns::create_tap(&spec.router_namespace, &tap).await?;
    if let Some(mtu) = mtu
        && let Some(tap) = netlink.link(&tap).await?
    {
        netlink.set_mtu(tap.index, mtu).await?;
    }
    netlink.set_link_by_name(&tap, Some(qbr_index)).await?;
    netlink.create_veth_at(&spec.host_port, 0, None, mtu, &inner, &router.fd).await?;
    netlink.set_link_by_name(&spec.host_port, subnet_bridge).await?;
    netlink.set_link_by_name(&inner, Some(qbr_index)).await?;
    Ok(qbr_index)
}

/// Removes the router side of a hybrid plug (what deleting the EVM's
/// namespace does not take with it). Missing devices are fine.
async fn remove_hybrid_plug(netlink: &Netlink, host_port: &str) -> Result<(), OverlayError> {
    for name in [hybrid_name('q', host_port), hybrid_name('t', host_port), host_port.to_string()] {
        if let Some(link) = netlink.link(&name).await? {
            netlink.delete_link(link.index).await?;
        }
    }
    Ok(())
}

async fn wait_gone(router: &Netlink, port: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + STALL;
    loop {
        match router.link(port).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Ok(Some(_)) => {
                return Err(format!("port {port} still present {} s after its EVM was deleted", STALL.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

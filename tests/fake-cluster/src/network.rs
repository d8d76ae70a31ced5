//! The cluster network the fake stands up, laid out as kubenet or flannel's
//! host-gw lay it out: one namespace standing for the nodes and the network
//! between them, holding a bridge per node (node i: `cbr<i>`, 10.244.<i+1>.1/24,
//! the node's pod CIDR that its Node object advertises as `spec.podCIDR`).
//! Every pod's `eth0` is a veth whose other end is a port of its node's
//! bridge; the pod's default route is via that bridge's address. The cluster
//! namespace forwards between the node bridges (their /24s are connected
//! routes there), so pods on different nodes reach each other routed, as on
//! a host-gw network, and no bridge holds more than one node's pods (a Linux
//! bridge takes at most 1,024 ports; a node at most 253 pods). Every bridge
//! and veth has the configured MTU, below 1500 as on an overlay CNI. Nothing
//! of it is in the host's root namespace: the API server reaches pods by
//! opening its sockets in the cluster namespace, which reaches every node's
//! pod CIDR.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use merak_netdev::host_limits::Limits;
use merak_netdev::netns::{self, NetnsOptions};

/// The length of a node's pod CIDR.
const PREFIX_LEN: u8 = 24;

/// The most nodes the fake's addressing has room for (10.244.1.0/24 to
/// 10.244.250.0/24).
pub const MAX_NODES: usize = 250;

/// The most pods a node takes: the pod IPs of its /24 but the network, the
/// gateway and the broadcast address (.2 to .254).
pub const MAX_PODS_PER_NODE: usize = 253;

/// Neighbour entries the host's table is sized for, per pod the cluster holds.
const NEIGHBOURS_PER_POD: u64 = 16;
/// The kernel keeps `gc_thresh3` in an `int`.
const MAX_ARP_ENTRIES: u64 = 1 << 30;

/// What a cluster of `pods` pods needs of this host. Every node's pods run
/// in this one kernel, whose neighbour table is global (on a real cluster
/// each node has its own): each pod resolves the pods it talks to (an EPM
/// its top-of-rack pod, a switch its parent and children, the gateway every
/// agent and every agent the gateway), and the cluster namespace the pods
/// it routes between nodes, about five entries a pod in all; sized at 16,
/// with the host's default 1,024 on top. Measured: 2,000 EPM pods
/// overflowed the default table (`neighbor table overflow`, a gateway that
/// could not reach 1,135 agents) and ran with it raised by hand to 65,536.
pub fn host_limits(pods: usize) -> Limits {
    let pods = u64::try_from(pods).unwrap_or(u64::MAX);
    let entries = NEIGHBOURS_PER_POD.saturating_mul(pods).saturating_add(1024).min(MAX_ARP_ENTRIES);
    Limits { arp_entries: entries.next_power_of_two(), backlog: 0 }
}

/// The bridge of node `node` (0-based) in the cluster namespace.
pub fn bridge_name(node: usize) -> String {
    format!("cbr{node}")
}

/// Node `node`'s gateway: its bridge's address, 10.244.<node+1>.1.
pub fn gateway(node: usize) -> Option<Ipv4Addr> {
    let third = u8::try_from(node + 1).ok().filter(|t| *t < 255)?;
    Some(Ipv4Addr::new(10, 244, third, 1))
}

/// Node `node`'s pod CIDR, as its Node object advertises it.
pub fn pod_cidr(node: usize) -> String {
    format!("10.244.{}.0/{PREFIX_LEN}", node + 1)
}

pub struct Network {
    /// Prefix of every namespace the fake makes (unique per instance).
    pub prefix: String,
    pub mtu: u32,
    /// Each node's bridge (interface index in the cluster namespace).
    bridges: Vec<u32>,
    cluster: merak_netdev::netdev::Netlink,
}

impl Network {
    pub fn namespace(&self) -> String {
        format!("{}-net", self.prefix)
    }

    pub async fn create(prefix: &str, mtu: u32, nodes: usize) -> anyhow::Result<Network> {
        anyhow::ensure!(nodes <= MAX_NODES, "the fake's pod network has room for {MAX_NODES} nodes, not {nodes}");
        let name = format!("{prefix}-net");
        let cluster =
            netns::create(&name, NetnsOptions { disable_ipv6: true, forwarding: true, ..NetnsOptions::default() })
                .await
                .with_context(|| format!("creating the cluster network namespace {name}"))?;
        cluster.set_link_by_name("lo", None).await?;
        let mut bridges = Vec::with_capacity(nodes);
        for node in 0..nodes {
            let bridge_name = bridge_name(node);
            let bridge = cluster
                .create_bridge(&bridge_name)
                .await
                .with_context(|| format!("creating the bridge of node {}", node + 1))?;
            cluster.set_mtu(bridge, mtu).await?;
            // A bridge whose MAC is not set takes the lowest of its ports',
            // and changes it when that pod goes: every other pod of the node
            // would keep sending to the gateway's old MAC until its ARP entry
            // went stale. Set, it stays (0a:58 and the gateway's IPv4, as
            // CNIs derive MACs from addresses).
            let gateway = gateway(node).context("no gateway for this node")?;
            let [a, b, c, d] = gateway.octets();
            cluster
                .set_link(bridge, None, Some([0x0a, 0x58, a, b, c, d]))
                .await
                .with_context(|| format!("setting the MAC of {bridge_name}"))?;
            cluster
                .add_address(bridge, gateway.into(), PREFIX_LEN)
                .await
                .with_context(|| format!("addressing {bridge_name}"))?;
            bridges.push(bridge);
        }
        Ok(Network { prefix: prefix.to_string(), mtu, bridges, cluster })
    }

    /// The pod sandbox: a namespace with `lo` up and `eth0` at `ip` on
    /// node `node`'s bridge, routed through that bridge's address.
    pub async fn add_pod(&self, sandbox: &str, host_end: &str, node: usize, ip: Ipv4Addr) -> anyhow::Result<()> {
        let bridge = *self.bridges.get(node).with_context(|| format!("node {node} has no bridge"))?;
        let gateway = gateway(node).context("no gateway for this node")?;
        let pod =
            netns::create(sandbox, NetnsOptions { disable_ipv6: true, announce: true, ..NetnsOptions::default() })
                .await
                .with_context(|| format!("creating the pod sandbox {sandbox}"))?;
        let pod_fd = netns::open_fd(sandbox)?;
        self.cluster.create_veth(host_end, "eth0", &pod_fd).await?;
        let host = self.cluster.link(host_end).await?.context("the pod's veth vanished")?;
        self.cluster.set_mtu(host.index, self.mtu).await?;
        self.cluster.set_link(host.index, Some(bridge), None).await?;
        let eth0 = pod.link("eth0").await?.context("the pod's eth0 vanished")?;
        pod.set_mtu(eth0.index, self.mtu).await?;
        pod.add_address(eth0.index, ip.into(), PREFIX_LEN).await?;
        pod.set_link(eth0.index, None, None).await?;
        pod.set_link_by_name("lo", None).await?;
        pod.add_default_route(gateway).await?;
        Ok(())
    }

    /// A TCP connection to a pod, made from the cluster network.
    pub async fn connect(&self, address: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let stream = netns::connect_in(&self.namespace(), address, Duration::from_secs(5))
            .await
            .map_err(std::io::Error::other)?;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// Removes the cluster namespace (with the bridges and every veth end in it).
    pub fn remove(&self) {
        if let Err(e) = netns::delete(&self.namespace()) {
            tracing::warn!("removing the cluster network: {e}");
        }
    }
}

/// The i-th pod IP of node `node` (0-based): 10.244.<node+1>.<i+2>, so
/// slots 0 to 252 (the kubelet's) are .2 to .254.
pub fn pod_ip(node: usize, index: usize) -> Option<Ipv4Addr> {
    let gateway = gateway(node)?;
    let fourth = u8::try_from(index + 2).ok().filter(|f| *f < 255)?;
    let [a, b, c, _] = gateway.octets();
    Some(Ipv4Addr::new(a, b, c, fourth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_per_node_and_bounded() {
        assert_eq!(pod_ip(0, 0), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(pod_ip(2, 252), Some(Ipv4Addr::new(10, 244, 3, 254)));
        assert_eq!(pod_ip(0, 253), None);
        assert_eq!(pod_ip(255, 0), None);
        assert_eq!(pod_ip(254, 0), None, "10.244.255.0/24 is no node's");
    }

    #[test]
    fn the_hosts_neighbour_table_is_sized_for_every_pod_the_cluster_holds() {
        assert_eq!(host_limits(0).arp_entries, 1024, "the host's default is enough for no pods");
        assert_eq!(host_limits(2000).arp_entries, 65536, "what 2,000 pods were measured to run with");
        assert_eq!(host_limits(3 * 110).backlog, 0, "pods broadcast no more than hosts: the backlog stays");
        assert_eq!(host_limits(usize::MAX).arp_entries, 1 << 30, "within what the kernel takes, however many pods");
    }

    #[test]
    fn every_node_has_its_bridge_gateway_and_cidr() {
        assert_eq!(bridge_name(0), "cbr0");
        assert_eq!(gateway(0), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(gateway(9), Some(Ipv4Addr::new(10, 244, 10, 1)));
        assert_eq!(pod_cidr(9), "10.244.10.0/24");
        // The benchmark's 253 pods per node on 10 nodes: every slot has an IP.
        for node in 0..10 {
            for slot in 0..MAX_PODS_PER_NODE {
                let ip = pod_ip(node, slot).expect("an IP for every slot");
                assert_eq!(ip.octets()[2] as usize, node + 1);
                assert_ne!(Some(ip), gateway(node));
            }
        }
        for node in 0..MAX_NODES {
            assert!(gateway(node).is_some() && pod_ip(node, MAX_PODS_PER_NODE - 1).is_some(), "node {node}");
        }
        // Interface names fit IFNAMSIZ.
        assert!(bridge_name(MAX_NODES - 1).len() < 16);
    }
}

//! The cluster network the fake stands up: one namespace holding a bridge
//! (`cni0`, 10.244.0.1/16) that every pod's `eth0` is plugged into, each
//! node with its own /24 of pod IPs (node i: 10.244.<i+1>.0/24), and an MTU
//! below 1500 as on an overlay CNI. Nothing of it is in the host's root
//! namespace: the API server reaches pods by opening its sockets in the
//! cluster namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use merak_netdev::netns::{self, NetnsOptions};

pub const BRIDGE: &str = "cni0";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const PREFIX_LEN: u8 = 16;

pub struct Network {
    /// Prefix of every namespace the fake makes (unique per instance).
    pub prefix: String,
    pub mtu: u32,
    bridge: u32,
    cluster: merak_netdev::netdev::Netlink,
}

impl Network {
    pub fn namespace(&self) -> String {
        format!("{}-net", self.prefix)
    }

    pub async fn create(prefix: &str, mtu: u32) -> anyhow::Result<Network> {
        let name = format!("{prefix}-net");
        let cluster = netns::create(&name, NetnsOptions { disable_ipv6: true, forwarding: true }).await.with_context(|| format!("creating the cluster network namespace {name}"))?;
        let bridge = cluster.create_bridge(BRIDGE).await.context("creating the cluster bridge")?;
        cluster.set_mtu(bridge, mtu).await?;
        cluster.add_address(bridge, GATEWAY.into(), PREFIX_LEN).await?;
        cluster.set_link_by_name("lo", None).await?;
        Ok(Network { prefix: prefix.to_string(), mtu, bridge, cluster })
    }

    /// The pod sandbox: a namespace with `lo` up and `eth0` on the bridge
    /// at `ip`, routed through the bridge.
    pub async fn add_pod(&self, sandbox: &str, host_end: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        let pod = netns::create(sandbox, NetnsOptions { disable_ipv6: true, forwarding: false }).await.with_context(|| format!("creating the pod sandbox {sandbox}"))?;
        let pod_fd = netns::open_fd(sandbox)?;
        self.cluster.create_veth(host_end, "eth0", &pod_fd).await?;
        let host = self.cluster.link(host_end).await?.context("the pod's veth vanished")?;
        self.cluster.set_mtu(host.index, self.mtu).await?;
        self.cluster.set_link(host.index, Some(self.bridge), None).await?;
        let eth0 = pod.link("eth0").await?.context("the pod's eth0 vanished")?;
        pod.set_mtu(eth0.index, self.mtu).await?;
        pod.add_address(eth0.index, ip.into(), PREFIX_LEN).await?;
        pod.set_link(eth0.index, None, None).await?;
        pod.set_link_by_name("lo", None).await?;
        pod.add_default_route(GATEWAY).await?;
        Ok(())
    }

    /// A TCP connection to a pod, made from the cluster network.
    pub async fn connect(&self, address: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let stream = netns::connect_in(&self.namespace(), address, Duration::from_secs(5)).await.map_err(std::io::Error::other)?;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// Removes the cluster namespace (with the bridge and every veth end in it).
    pub fn remove(&self) {
        if let Err(e) = netns::delete(&self.namespace()) {
            tracing::warn!("removing the cluster network: {e}");
        }
    }
}

/// The i-th pod IP of node `node` (0-based): 10.244.<node+1>.<i+2>.
pub fn pod_ip(node: usize, index: usize) -> Option<Ipv4Addr> {
    let third = u8::try_from(node + 1).ok()?;
    let fourth = u8::try_from(index + 2).ok().filter(|f| *f < 255)?;
    Some(Ipv4Addr::new(10, 244, third, fourth))
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
    }
}

//! The underlay on this host: a namespace per EPM and vswitch, each link a
//! veth pair created straight into its two namespaces, repaired when a kill
//! left it half-made, and an EPM counted ready only with its path whole.

use merak_netdev::netdev::Netlink;
use merak_netdev::netns::NetnsOptions;
use merak_netdev::{netdev, netns};
use merak_proto::agent::{GetInfoRequest, UnderlayGoal};

use super::LocalRuntime;
use super::agent_host::{HostClient, serve};
use crate::model::naming::{BRIDGE, EPM_DATA_NIC, UPLINK};
use crate::model::{Epm, TreeSpec, Vswitch, naming};
use crate::runtime::{RuntimeError, process};

/// An EPM's `eth1` address: in the data plane's prefix on a tree's shared
/// segment; a /32 behind its edge switch in a fat tree.
pub(super) fn epm_address(spec: &TreeSpec, epm: &Epm) -> String {
    let prefix_len = if spec.fabric.is_some() { 32 } else { spec.data_plane.prefix_len() };
    format!("{}/{prefix_len}", epm.ip)
}

/// The bridge of a vswitch namespace, created or brought up if needed.
pub(super) async fn ensure_bridge(netlink: &Netlink) -> Result<u32, RuntimeError> {
    match netlink.link(BRIDGE).await? {
        Some(bridge) if bridge.up => Ok(bridge.index),
        Some(bridge) => {
            netlink.set_link(bridge.index, None, None).await?;
            Ok(bridge.index)
        }
        None => {
            // Up but without ports, so without carrier: no IPv6 address yet.
            let index = netlink.create_bridge(BRIDGE).await?;
            netlink.disable_ipv6_addresses(index).await?;
            Ok(index)
        }
    }
}

/// Ensures the veth pair `near_name` (in `near`) — `far_name` (in
/// `far_namespace`): the far end up on `far_bridge`, the near end up on
/// `near_bridge` when given (an EPM's NIC has none: its agent brings it up
/// with its address), IPv6 address generation off on each end before it goes
/// up. Repairs what a kill mid-way leaves: a lone end (deleting one end of a
/// veth takes the other, so a lone one is stale), or an end down or off its
/// bridge — a pair that exists but carries nothing would pass for wired.
pub(super) async fn ensure_pair(
    near: &Netlink,
    near_name: &str,
    near_bridge: Option<u32>,
    far: &Netlink,
    far_namespace: &str,
    far_name: &str,
    far_bridge: u32,
) -> Result<(), RuntimeError> {
    let (mut near_link, mut far_link) = (near.link(near_name).await?, far.link(far_name).await?);
    if near_link.is_none() || far_link.is_none() {
        for (netlink, stale) in [(near, near_link.take()), (far, far_link.take())] {
            if let Some(stale) = stale {
                netlink.delete_link(stale.index).await?;
            }
        }
        near.create_veth(near_name, far_name, &netns::open_fd(far_namespace)?).await?;
        (near_link, far_link) = (near.link(near_name).await?, far.link(far_name).await?);
    }
    let vanished = |name: &str| RuntimeError::Unavailable(format!("port {name} vanished right after creation"));
    let near_link = near_link.ok_or_else(|| vanished(near_name))?;
    let far_link = far_link.ok_or_else(|| vanished(far_name))?;
    if !on_bridge(&far_link, far_bridge) {
        far.disable_ipv6_addresses(far_link.index).await?;
        far.set_link(far_link.index, Some(far_bridge), None).await?;
    }
    match near_bridge {
        Some(bridge) if !on_bridge(&near_link, bridge) => {
            near.disable_ipv6_addresses(near_link.index).await?;
            near.set_link(near_link.index, Some(bridge), None).await?;
        }
        None if !near_link.up => near.disable_ipv6_addresses(near_link.index).await?,
        _ => {}
    }
    Ok(())
}

/// Whether a port is up on `bridge`: the last step of wiring it.
pub(super) fn on_bridge(port: &netdev::LinkState, bridge: u32) -> bool {
    port.up && port.controller == Some(bridge)
}

impl LocalRuntime {
    /// Opens (or creates) a namespace; `created` tells which.
    pub(super) async fn ensure_namespace(&self, name: &str) -> Result<(Netlink, bool), RuntimeError> {
        if netns::exists(name) {
            return Ok((netns::open(name).await?, false));
        }
        // IPv6 stays on in the namespace; each device gets address
        // generation off instead (see `ensure_pair`): writing the namespace's
        // disable_ipv6 sysctl costs a /proc/sys path walk whose dentry
        // chains hold one entry per namespace, quadratic at 10,000 EPMs.
        Ok((netns::create(name, NetnsOptions::default()).await?, true))
    }

    pub(super) async fn ensure_vswitch(
        &self,
        topology: &str,
        switch: &Vswitch,
        parent: Option<&Netlink>,
    ) -> Result<Netlink, RuntimeError> {
        let namespace = naming::namespace(topology, &switch.name());
        let (netlink, _) = self.ensure_namespace(&namespace).await?;
        let bridge = ensure_bridge(&netlink).await?;
        if let (Some(parent), Some(parent_name)) = (parent, switch.parent_name()) {
            let parent_namespace = naming::namespace(topology, &parent_name);
            let downlink = naming::downlink_port(switch.index);
            let parent_bridge = parent
                .link(BRIDGE)
                .await?
                .ok_or_else(|| RuntimeError::Unavailable(format!("bridge missing in {parent_namespace}")))?;
            ensure_pair(&netlink, UPLINK, Some(bridge), parent, &parent_namespace, &downlink, parent_bridge.index)
                .await?;
        }
        Ok(netlink)
    }

    /// Builds or repairs one EPM: namespace, data-plane NIC wired to its
    /// top-of-rack switch, its agent served by the host, and the agent's
    /// underlay config (its NIC kept down where a fault holds it: `nic_held`).
    /// Returns the pid serving the agent, and where it listens.
    pub(super) async fn ensure_epm(
        &self,
        spec: &TreeSpec,
        epm: &Epm,
        tor: Option<&Netlink>,
        host: &Result<(u32, HostClient), String>,
        known_agent: Option<u32>,
        nic_held: bool,
    ) -> Result<(u32, String), RuntimeError> {
        let topology = &spec.name;
        let namespace = naming::namespace(topology, &epm.name);
        let socket = self.agent_socket(topology, &epm.name);
        let (netlink, _) = self.ensure_namespace(&namespace).await?;
        let gateway = match (&spec.fabric, tor) {
            (Some(fabric), _) => {
                let port = fabric.host_port(epm.index);
                self.wire_routed_epm(topology, &netlink, epm.ip, &port).await?;
                Some(port.gateway)
            }
            (None, Some(tor)) => {
                let tor_namespace = naming::namespace(topology, &naming::vswitch_name(0, epm.rack));
                let tor_bridge = tor
                    .link(BRIDGE)
                    .await?
                    .ok_or_else(|| RuntimeError::Unavailable(format!("bridge missing in {tor_namespace}")))?;
                // The NIC's agent brings it up with its address; its port goes up on the ToR's bridge.
                ensure_pair(
                    &netlink,
                    EPM_DATA_NIC,
                    None,
                    tor,
                    &tor_namespace,
                    &naming::host_port(epm.index),
                    tor_bridge.index,
                )
                .await?;
                None
            }
            (None, None) => return Err(RuntimeError::Unavailable("its top-of-rack vswitch failed".into())),
        };

        // An agent process of its own (an older version's way) gives way
        // to the host, which serves the same socket.
        let (host_pid, host) = host.as_ref().map_err(|e| RuntimeError::Unavailable(e.clone()))?;
        if let Some(pid) = known_agent.filter(|pid| pid != host_pid && process::is_agent(*pid, &socket)) {
            process::stop_agent(pid, &socket).await;
        }
        // Serving is idempotent: the host keeps an agent that serves this
        // very namespace, and serves one whose namespace was made anew.
        let mut host = host.clone();
        let served = serve(&mut host, vec![self.hosted_epm(topology, &epm.name)]).await?;
        let (error, address) = served.into_iter().next().unwrap_or_default();
        if !error.is_empty() {
            return Err(RuntimeError::Unavailable(format!("agent of {}: {error}", epm.name)));
        }
        self.note_addresses(topology, &[(epm.name.clone(), address.clone())]);

        let mut agent = self.agent(topology, &epm.name).await?;
        let goal = UnderlayGoal {
            interface: EPM_DATA_NIC.to_string(),
            address: epm_address(spec, epm),
            mac: netdev::format_mac(&epm.mac),
            tunnel: None,
            gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
            held_down: nic_held,
            // The runtime shapes the veth it made (see `shaping`).
            shaping: None,
            // An EPM's namespace has no other way out.
            routed_prefix: String::new(),
        };
        agent
            .apply_underlay(goal)
            .await
            .map_err(|status| RuntimeError::Unavailable(format!("agent of {}: {}", epm.name, status.message())))?;
        Ok((*host_pid, address))
    }

    /// Whether an EPM is fully up: namespace, an agent served by a host
    /// of the installed build (`served`: after an upgrade, the next apply
    /// restarts the old host), and its NIC up with the goal address (or
    /// down with it, where a fault holds the NIC down: `nic_held`).
    pub(super) async fn epm_ready(&self, spec: &TreeSpec, epm: &Epm, served: bool, nic_held: bool) -> bool {
        if !served || !netns::exists(&naming::namespace(&spec.name, &epm.name)) {
            return false;
        }
        let Ok(mut agent) = self.agent(&spec.name, &epm.name).await else {
            return false;
        };
        let Ok(info) = agent.get_info(GetInfoRequest {}).await else {
            return false;
        };
        // The NIC up, and the address on it, or on a device a system under
        // test made of it (see the agent's underlay convergence).
        let address = epm_address(spec, epm);
        let interfaces = info.into_inner().interfaces;
        let carries = |i: &merak_proto::agent::Interface| i.up || (nic_held && i.name == EPM_DATA_NIC);
        interfaces.iter().any(|i| i.name == EPM_DATA_NIC && carries(i))
            && interfaces.iter().any(|i| carries(i) && i.addresses.contains(&address))
    }
}

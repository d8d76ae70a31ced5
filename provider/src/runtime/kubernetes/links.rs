//! The underlay on kubernetes: each link a VXLAN tunnel between two pods,
//! sized to the pod network's MTU. The goals are pure (computed from the
//! pods' addresses and the agents' reports, tested below; a fat tree's in
//! `fabric`); pushing them and counting the EPMs whose links are whole use
//! the agents.

use std::collections::HashMap;

use futures::StreamExt;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::{Interface, RouterGoal, SwitchGoal, SwitchPort, Tunnel, UnderlayGoal};

use super::pods::PodState;
use super::{IN_FLIGHT, Infos, KubernetesRuntime, fabric, objects};
use crate::model::link_profile::{LinkProfileSpec, shaped_links};
use crate::model::naming::{BRIDGE, EPM_DATA_NIC, UPLINK};
use crate::model::{Epm, TreeSpec, naming};
use crate::runtime::capability::Faults;
use crate::runtime::held::{self, HeldEnds};
use crate::runtime::{Failure, RuntimeError, link_profiles};
use merak_netdev::shaping::Shaping;

/// What VXLAN over IPv4 adds to a frame.
pub(super) const VXLAN_OVERHEAD: u32 = merak_netdev::netdev::VXLAN_OVERHEAD;

/// The underlay's goals: per vswitch pod its ports, per router pod (a fat
/// tree's) its ports and routes, per EPM its data-plane NIC.
#[derive(Debug, Default)]
pub(super) struct UnderlayGoals {
    pub(super) switches: Vec<(String, SwitchGoal)>,
    pub(super) routers: Vec<(String, RouterGoal)>,
    pub(super) epms: Vec<(Epm, UnderlayGoal)>,
}

/// What the topology's records ask of its link ends beyond being wired:
/// the ends faults hold down, and per end (node, device) the shaping of
/// its role's profile (an end not listed carries none of merak's).
#[derive(Debug, Default)]
pub(super) struct EndGoals {
    pub(super) held: HeldEnds,
    pub(super) shaped: HashMap<(String, String), Shaping>,
}

impl EndGoals {
    pub(super) fn new(spec: &TreeSpec, faults: &Faults, profiles: &[LinkProfileSpec]) -> Self {
        let shaped = shaped_links(spec, profiles)
            .into_iter()
            .filter_map(|(ends, shaping)| Some((ends, shaping?)))
            .flat_map(|(ends, shaping)| ends.map(|end| ((end.object, end.device), shaping)))
            .collect();
        EndGoals { held: held::ends(spec, faults), shaped }
    }

    pub(super) fn is_held(&self, node: &str, device: &str) -> bool {
        self.held.contains(&(node.to_string(), device.to_string()))
    }

    pub(super) fn shaping(&self, node: &str, device: &str) -> merak_proto::agent::Shaping {
        merak_agent::shaping::to_goal(self.shaped.get(&(node.to_string(), device.to_string())))
    }
}

/// The pods as last listed and their agents' reports: where a link's far
/// end is, and what each end reports.
pub(super) struct PodNetwork<'a> {
    pods: &'a HashMap<String, PodState>,
    infos: &'a Infos,
}

impl<'a> PodNetwork<'a> {
    pub(super) fn new(pods: &'a HashMap<String, PodState>, infos: &'a Infos) -> Self {
        PodNetwork { pods, infos }
    }

    /// A running pod's IP.
    pub(super) fn ip(&self, name: &str) -> Option<String> {
        self.pods.get(name).filter(|s| s.ready).and_then(|s| s.ip.clone())
    }

    /// A pod's devices, as its agent last reported them.
    pub(super) fn interfaces(&self, name: &str) -> Option<&'a Vec<Interface>> {
        self.infos.get(name).and_then(|i| i.as_ref().ok()).map(|info| &info.interfaces)
    }

    /// `a`'s end of the tunnel to `b`: `b`'s pod IP, the link's VNI, and
    /// the smaller pod MTU of the two less VXLAN's header. `None` until
    /// both pods run and report.
    pub(super) fn tunnel(&self, a: &str, b: &str, vni: u32) -> Option<Tunnel> {
        let pod_mtu = |name: &str| self.interfaces(name)?.iter().find(|i| i.name == "eth0").map(|i| i.mtu);
        let mtu = pod_mtu(a)?.min(pod_mtu(b)?).checked_sub(VXLAN_OVERHEAD)?;
        Some(Tunnel { remote: self.ip(b)?, vni, mtu })
    }
}

/// Whether an end is as declared: up, or down where a fault holds it.
pub(super) fn carries(held: &HeldEnds, node: &str, interface: &Interface) -> bool {
    interface.up || held.contains(&(node.to_string(), interface.name.clone()))
}

impl KubernetesRuntime {
    /// The end goals of the topology's recorded faults and link profiles.
    pub(super) async fn recorded_end_goals(&self, spec: &TreeSpec) -> Result<EndGoals, RuntimeError> {
        let faults = held::load(self.store.as_ref(), &spec.name).await?;
        let profiles = link_profiles::load(self.store.as_ref(), &spec.name).await?;
        Ok(EndGoals::new(spec, &faults, &profiles))
    }

    /// The underlay's goals from the pods' IPs and MTUs: per vswitch its
    /// ports (a fat tree: per router, see `fabric`), per EPM its data-plane
    /// NIC, each end a fault holds kept down and each end shaped as its
    /// role's profile says. A link whose far end has no running pod is left
    /// out (its port removed) until it has.
    pub(super) fn underlay_goals(
        spec: &TreeSpec,
        pods: &HashMap<String, PodState>,
        infos: &Infos,
        ends: &EndGoals,
    ) -> UnderlayGoals {
        let network = PodNetwork::new(pods, infos);
        if let Some(fabric) = &spec.fabric {
            return fabric::goals(spec, fabric, &network, ends);
        }
        let port = |switch: &str, name: String, tunnel: Tunnel| SwitchPort {
            held_down: ends.is_held(switch, &name),
            shaping: Some(ends.shaping(switch, &name)),
            name,
            tunnel: Some(tunnel),
        };
        let switches = spec.vswitches();
        let epms: Vec<Epm> = spec.epms().collect();
        let mut switch_goals = Vec::new();
        for switch in &switches {
            let name = switch.name();
            let mut ports = Vec::new();
            if let Some(parent) = switch.parent_name()
                && let Some(tunnel) = network.tunnel(&name, &parent, objects::uplink_vni(switch))
            {
                ports.push(port(&name, UPLINK.into(), tunnel));
            }
            for child in switches.iter().filter(|c| c.level + 1 == switch.level && c.parent == Some(switch.index)) {
                if let Some(tunnel) = network.tunnel(&name, &child.name(), objects::uplink_vni(child)) {
                    ports.push(port(&name, naming::downlink_port(child.index), tunnel));
                }
            }
            if switch.level == 0 {
                for epm in epms.iter().filter(|e| e.rack == switch.index) {
                    if let Some(tunnel) = network.tunnel(&name, &epm.name, objects::epm_link_vni(epm.index)) {
                        ports.push(port(&name, naming::host_port(epm.index), tunnel));
                    }
                }
            }
            switch_goals.push((name, SwitchGoal { bridge: BRIDGE.into(), ports }));
        }
        let mut epm_goals = Vec::new();
        for epm in epms {
            let tor = naming::vswitch_name(0, epm.rack);
            if let Some(tunnel) = network.tunnel(&epm.name, &tor, objects::epm_link_vni(epm.index)) {
                let goal = UnderlayGoal {
                    interface: EPM_DATA_NIC.into(),
                    address: format!("{}/{}", epm.ip, spec.data_plane.prefix_len()),
                    mac: merak_netdev::netdev::format_mac(&epm.mac),
                    tunnel: Some(tunnel),
                    held_down: ends.is_held(&epm.name, EPM_DATA_NIC),
                    shaping: Some(ends.shaping(&epm.name, EPM_DATA_NIC)),
                    ..UnderlayGoal::default()
                };
                epm_goals.push((epm, goal));
            }
        }
        UnderlayGoals { switches: switch_goals, epms: epm_goals, ..UnderlayGoals::default() }
    }

    /// Pushes the underlay goals to the agents; failures by object.
    pub(super) async fn push_underlay(&self, topology: &str, goals: UnderlayGoals) -> Vec<Failure> {
        let failed = |name: String, status: tonic::Status| {
            Some(Failure { object: name.clone(), error: format!("agent of {name}: {}", status.message()) })
        };
        let unreachable = |name: String, e: RuntimeError| Some(Failure { object: name, error: e.to_string() });
        let switches = futures::stream::iter(goals.switches).map(|(name, goal): (String, SwitchGoal)| async move {
            match self.channel(topology, &name).await {
                Ok(channel) => AgentClient::new(channel).apply_switch(goal).await.err().and_then(|s| failed(name, s)),
                Err(e) => unreachable(name, e),
            }
        });
        let routers = futures::stream::iter(goals.routers).map(|(name, goal): (String, RouterGoal)| async move {
            match self.channel(topology, &name).await {
                Ok(channel) => AgentClient::new(channel).apply_router(goal).await.err().and_then(|s| failed(name, s)),
                Err(e) => unreachable(name, e),
            }
        });
        let switch_failures: Vec<Option<Failure>> = switches.buffer_unordered(IN_FLIGHT).collect().await;
        let router_failures: Vec<Option<Failure>> = routers.buffer_unordered(IN_FLIGHT).collect().await;
        let epm_failures: Vec<Option<Failure>> = futures::stream::iter(goals.epms)
            .map(|(epm, goal): (Epm, UnderlayGoal)| async move {
                match self.channel(topology, &epm.name).await {
                    Ok(channel) => {
                        AgentClient::new(channel).apply_underlay(goal).await.err().and_then(|s| failed(epm.name, s))
                    }
                    Err(e) => unreachable(epm.name, e),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        switch_failures.into_iter().chain(router_failures).chain(epm_failures).flatten().collect()
    }

    /// How many EPMs are up: pod running, agent answering, NIC up with its
    /// address and tunnelled to its top-of-rack pod, and every vswitch on
    /// the way to the root holding the ports of the path, tunnelled to the
    /// pods there are now (a fat tree: see `fabric`). An end a fault holds
    /// counts as up when it is down.
    pub(super) fn ready_epms(spec: &TreeSpec, pods: &HashMap<String, PodState>, infos: &Infos, held: &HeldEnds) -> u32 {
        let network = PodNetwork::new(pods, infos);
        if let Some(fabric) = &spec.fabric {
            return fabric::ready_epms(spec, fabric, &network, held);
        }
        // A port of a vswitch: up on its bridge, tunnelled to `far`'s pod.
        let port_to = |switch: &str, port: &str, far: &str| {
            let (Some(interfaces), Some(far_ip)) = (network.interfaces(switch), network.ip(far)) else { return false };
            let Some(bridge) = interfaces.iter().find(|i| i.name == BRIDGE && i.up) else { return false };
            interfaces.iter().any(|i| {
                i.name == port && carries(held, switch, i) && i.controller == bridge.index && i.tunnel_remote == far_ip
            })
        };
        let switches = spec.vswitches();
        let mut reachable: HashMap<(u32, u32), bool> = HashMap::new();
        let mut ordered = switches.clone();
        ordered.sort_by_key(|s| std::cmp::Reverse(s.level));
        for switch in &ordered {
            let name = switch.name();
            let linked = match switch.parent_name() {
                None => network.interfaces(&name).is_some_and(|i| i.iter().any(|i| i.name == BRIDGE && i.up)),
                Some(parent) => {
                    reachable.get(&(switch.level + 1, switch.parent.unwrap_or_default())).copied().unwrap_or(false)
                        && port_to(&name, UPLINK, &parent)
                        && port_to(&parent, &naming::downlink_port(switch.index), &name)
                }
            };
            reachable.insert((switch.level, switch.index), linked);
        }
        spec.epms()
            .filter(|epm| {
                let tor = naming::vswitch_name(0, epm.rack);
                let address = format!("{}/{}", epm.ip, spec.data_plane.prefix_len());
                let nic_up = network.interfaces(&epm.name).is_some_and(|i| {
                    i.iter().any(|i| {
                        i.name == EPM_DATA_NIC
                            && carries(held, &epm.name, i)
                            && i.addresses.contains(&address)
                            && Some(&i.tunnel_remote) == network.ip(&tor).as_ref()
                    })
                });
                nic_up
                    && reachable.get(&(0, epm.rack)).copied().unwrap_or(false)
                    && port_to(&tor, &naming::host_port(epm.index), &epm.name)
            })
            .count() as u32
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::TreeInput;
    use merak_proto::agent::{EpmInfo, Interface};
    use objects::PodObject;

    pub(in crate::runtime::kubernetes) fn lab() -> TreeSpec {
        TreeSpec::validate(&TreeInput {
            name: "lab",
            racks: 2,
            hosts_per_rack: 2,
            hosts: Some(4),
            ports_per_vswitch: 2,
            data_plane_cidr: "10.100.0.0/16",
        })
        .unwrap()
    }

    fn running(ip: &str) -> PodState {
        PodState {
            ip: Some(ip.into()),
            node: Some("node-1".into()),
            ready: true,
            stale: false,
            waiting: None,
            hopeless: false,
        }
    }

    fn pod_ip(name: &str) -> String {
        let n = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 250;
        format!("10.244.1.{}", n + 2)
    }

    /// The root qdisc an agent makes for a goal's shaping (merak's handle).
    fn root_made_for(shaping: Option<&merak_proto::agent::Shaping>) -> Option<merak_proto::agent::RootQdisc> {
        let shaping = merak_agent::shaping::from_goal(shaping?)?;
        let kind = if shaping.rate_bytes_per_s.is_some() { "tbf" } else { "netem" };
        Some(merak_proto::agent::RootQdisc {
            kind: kind.into(),
            handle: merak_netdev::shaping::ROOT_HANDLE,
            rate_bytes_per_s: shaping.rate_bytes_per_s.unwrap_or(0),
            netem_below: kind == "tbf" && shaping.needs_netem(),
        })
    }

    /// Every pod of `spec` running, its agent reporting the pod network's MTU.
    pub(in crate::runtime::kubernetes) fn all_running(
        spec: &TreeSpec,
    ) -> (HashMap<String, PodState>, HashMap<String, Result<EpmInfo, RuntimeError>>) {
        let names: Vec<String> = objects::pod_objects(spec).iter().map(PodObject::name).collect();
        let pods = names.iter().map(|n| (n.clone(), running(&pod_ip(n)))).collect();
        let eth0 = Interface { name: "eth0".into(), mtu: 1450, ..Interface::default() };
        let infos = names
            .iter()
            .map(|n| (n.clone(), Ok(EpmInfo { epm: String::new(), interfaces: vec![eth0.clone()] })))
            .collect();
        (pods, infos)
    }

    /// What each agent would report after its goal was applied.
    pub(in crate::runtime::kubernetes) fn applied(
        spec: &TreeSpec,
        pods: &HashMap<String, PodState>,
        mtus: &HashMap<String, Result<EpmInfo, RuntimeError>>,
        ends: &EndGoals,
    ) -> HashMap<String, Result<EpmInfo, RuntimeError>> {
        let UnderlayGoals { switches, routers, epms } = KubernetesRuntime::underlay_goals(spec, pods, mtus, ends);
        let mut infos = HashMap::new();
        for (name, goal) in switches {
            let mut interfaces = vec![Interface { name: BRIDGE.into(), index: 1, up: true, ..Interface::default() }];
            interfaces.extend(goal.ports.iter().map(|p| Interface {
                name: p.name.clone(),
                up: !p.held_down,
                controller: 1,
                tunnel_remote: p.tunnel.clone().unwrap().remote,
                root_qdisc: root_made_for(p.shaping.as_ref()),
                ..Interface::default()
            }));
            infos.insert(name, Ok(EpmInfo { epm: String::new(), interfaces }));
        }
        for (name, goal) in routers {
            let interfaces = goal
                .ports
                .iter()
                .map(|p| Interface {
                    name: p.name.clone(),
                    up: !p.held_down,
                    addresses: vec![p.address.clone()],
                    tunnel_remote: p.tunnel.clone().unwrap().remote,
                    root_qdisc: root_made_for(p.shaping.as_ref()),
                    ..Interface::default()
                })
                .collect();
            infos.insert(name, Ok(EpmInfo { epm: String::new(), interfaces }));
        }
        for (epm, goal) in epms {
            let tunnel = goal.tunnel.unwrap();
            let nic = Interface {
                name: EPM_DATA_NIC.into(),
                up: !goal.held_down,
                mtu: tunnel.mtu,
                addresses: vec![goal.address],
                tunnel_remote: tunnel.remote,
                root_qdisc: root_made_for(goal.shaping.as_ref()),
                ..Interface::default()
            };
            infos.insert(epm.name, Ok(EpmInfo { epm: String::new(), interfaces: vec![nic] }));
        }
        infos
    }

    #[test]
    fn goals_wire_every_link_with_the_pod_networks_mtu_and_count_ready_epms() {
        let spec = lab();
        let names: Vec<String> = objects::pod_objects(&spec).iter().map(PodObject::name).collect();
        let pods: HashMap<String, PodState> = names.iter().map(|n| (n.clone(), running(&pod_ip(n)))).collect();
        let eth0 = |mtu| {
            Ok(EpmInfo {
                epm: String::new(),
                interfaces: vec![Interface { name: "eth0".into(), mtu, ..Interface::default() }],
            })
        };
        let mtus: HashMap<String, Result<EpmInfo, RuntimeError>> =
            names.iter().map(|n| (n.clone(), eth0(if n == "epm-3" { 1400 } else { 1450 }))).collect();
        let none = EndGoals::default();
        let UnderlayGoals { switches, epms, .. } = KubernetesRuntime::underlay_goals(&spec, &pods, &mtus, &none);
        let tor0 = &switches.iter().find(|(n, _)| n == "s0-0").unwrap().1;
        let port_names: Vec<&str> = tor0.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(port_names, ["up", "e0", "e1"]);
        let e1 = tor0.ports.iter().find(|p| p.name == "e1").unwrap().tunnel.clone().unwrap();
        assert_eq!((e1.remote, e1.vni, e1.mtu), (pod_ip("epm-1"), objects::epm_link_vni(1), 1400));
        let epm3 = &epms.iter().find(|(e, _)| e.name == "epm-3").unwrap().1;
        assert_eq!(epm3.tunnel.as_ref().unwrap().mtu, 1350, "the smaller pod MTU of the link's two ends");
        assert_eq!(epm3.tunnel.as_ref().unwrap().remote, pod_ip("s0-1"));

        let infos = applied(&spec, &pods, &mtus, &none);
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &infos, &none.held), 4);

        // A fault on s0-1--epm-3 holds both its ends down, and they count as built.
        let cut = EndGoals {
            held: [("epm-3", EPM_DATA_NIC), ("s0-1", "e3")].map(|(n, d)| (n.into(), d.into())).into(),
            ..EndGoals::default()
        };
        let UnderlayGoals { switches, epms, .. } = KubernetesRuntime::underlay_goals(&spec, &pods, &mtus, &cut);
        let held_ports: Vec<(&str, &str)> = switches
            .iter()
            .flat_map(|(n, g)| g.ports.iter().filter(|p| p.held_down).map(move |p| (n.as_str(), p.name.as_str())))
            .collect();
        assert_eq!(held_ports, [("s0-1", "e3")]);
        let held_nics: Vec<&str> = epms.iter().filter(|(_, g)| g.held_down).map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(held_nics, ["epm-3"]);
        let with_cut = applied(&spec, &pods, &mtus, &cut);
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &with_cut, &cut.held), 4, "held as declared");
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &with_cut, &none.held), 3, "down without a fault");

        // A pod made anew elsewhere: its links point at its old IP until the next apply.
        let mut moved = pods.clone();
        moved.insert("epm-2".into(), running("10.244.9.9"));
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &moved, &infos, &none.held), 3);
        // A vswitch pod gone cuts off its rack.
        let mut without_tor = pods.clone();
        without_tor.remove("s0-0");
        let UnderlayGoals { switches, epms, .. } = KubernetesRuntime::underlay_goals(&spec, &without_tor, &mtus, &none);
        assert!(epms.iter().all(|(e, _)| e.rack == 1), "no goal for EPMs whose top-of-rack pod is missing");
        assert!(switches.iter().find(|(n, _)| n == "s1-0").unwrap().1.ports.iter().all(|p| p.name != "d0"));
        let infos = applied(&spec, &without_tor, &mtus, &none);
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &without_tor, &infos, &none.held), 2);
    }
}

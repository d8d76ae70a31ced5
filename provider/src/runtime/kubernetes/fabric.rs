//! A fat tree on kubernetes: every router a pod, every link (router to
//! router, edge router to EPM) a tunnel between two pods with the model's
//! addresses at its ends, and the model's routes in every router's goal
//! (see merak_agent::router). A pod keeps its own default route (the pod
//! network, which the agents and the tunnels use), so the routers' catch-all
//! and each EPM's way out cover the data plane only. Pure, like `links`.

use merak_proto::agent::{NextHop, Route, RouterGoal, RouterPort, Tunnel, UnderlayGoal};

use super::links::{EndGoals, PodNetwork, UnderlayGoals, carries};
use super::objects;
use crate::model::fat_tree::FatTree;
use crate::model::naming::EPM_DATA_NIC;
use crate::model::{Epm, Ipv4Cidr, TreeSpec};
use crate::runtime::held::HeldEnds;

/// Every router's ports and routes and every EPM's NIC, for the pods there
/// are: a link whose far end has no running pod is left out until it has.
pub(super) fn goals(spec: &TreeSpec, fabric: &FatTree, network: &PodNetwork<'_>, ends: &EndGoals) -> UnderlayGoals {
    let links = fabric.fabric_links();
    let epms: Vec<Epm> = spec.epms().collect();
    let mut routers = Vec::new();
    for switch in fabric.switches() {
        let name = switch.name();
        let port = |device: &str, tunnel: Tunnel, address: String| RouterPort {
            name: device.into(),
            tunnel: Some(tunnel),
            address,
            held_down: ends.is_held(&name, device),
            shaping: Some(ends.shaping(&name, device)),
        };
        let mut ports = Vec::new();
        for (index, link) in links.iter().enumerate() {
            let (far, device, ip) = match (link.lower == switch, link.upper == switch) {
                (true, _) => (link.upper, &link.lower_device, link.lower_ip),
                (_, true) => (link.lower, &link.upper_device, link.upper_ip),
                _ => continue,
            };
            if let Some(tunnel) = network.tunnel(&name, &far.name(), objects::fabric_link_vni(index)) {
                ports.push(port(device, tunnel, format!("{ip}/31")));
            }
        }
        for epm in &epms {
            let host = fabric.host_port(epm.index);
            if host.edge == switch
                && let Some(tunnel) = network.tunnel(&name, &epm.name, objects::epm_link_vni(epm.index))
            {
                ports.push(port(&host.device, tunnel, format!("{}/32", host.gateway)));
            }
        }
        let routes = fabric
            .routes(switch)
            .into_iter()
            .map(|route| Route {
                prefix: if route.prefix == Ipv4Cidr::ANY { spec.data_plane } else { route.prefix }.to_string(),
                next_hops: route
                    .next_hops
                    .into_iter()
                    .map(|hop| NextHop {
                        device: hop.device,
                        gateway: hop.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        routers.push((name, RouterGoal { ports, routes, multipath_hash_seed: switch.hash_seed() }));
    }
    let mut epm_goals = Vec::new();
    for epm in epms {
        let host = fabric.host_port(epm.index);
        if let Some(tunnel) = network.tunnel(&epm.name, &host.edge.name(), objects::epm_link_vni(epm.index)) {
            let goal = UnderlayGoal {
                interface: EPM_DATA_NIC.into(),
                address: format!("{}/32", epm.ip),
                mac: merak_netdev::netdev::format_mac(&epm.mac),
                tunnel: Some(tunnel),
                gateway: host.gateway.to_string(),
                held_down: ends.is_held(&epm.name, EPM_DATA_NIC),
                shaping: Some(ends.shaping(&epm.name, EPM_DATA_NIC)),
                routed_prefix: spec.data_plane.to_string(),
            };
            epm_goals.push((epm, goal));
        }
    }
    UnderlayGoals { routers, epms: epm_goals, ..UnderlayGoals::default() }
}

/// How many EPMs are up: NIC carrying its /32, tunnelled to its edge
/// router's pod, the edge's port to it tunnelled back, and the edge with an
/// uplink (as the local runtime counts them; ECMP takes any). Ends a fault
/// holds count as up.
pub(super) fn ready_epms(spec: &TreeSpec, fabric: &FatTree, network: &PodNetwork<'_>, held: &HeldEnds) -> u32 {
    spec.epms()
        .filter(|epm| {
            let host = fabric.host_port(epm.index);
            let edge = host.edge.name();
            let address = format!("{}/32", epm.ip);
            let nic = network.interfaces(&epm.name).is_some_and(|all| {
                all.iter().any(|i| {
                    i.name == EPM_DATA_NIC
                        && carries(held, &epm.name, i)
                        && i.addresses.contains(&address)
                        && Some(&i.tunnel_remote) == network.ip(&edge).as_ref()
                })
            });
            let edge_ports = network.interfaces(&edge);
            let port = edge_ports.is_some_and(|all| {
                all.iter().any(|i| {
                    i.name == host.device
                        && carries(held, &edge, i)
                        && Some(&i.tunnel_remote) == network.ip(&epm.name).as_ref()
                })
            });
            let uplink =
                edge_ports.is_some_and(|all| all.iter().any(|i| i.name.starts_with("up") && carries(held, &edge, i)));
            nic && port && uplink
        })
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::capability::Faults;
    use crate::runtime::kubernetes::KubernetesRuntime;
    use crate::runtime::kubernetes::links::tests::{all_running, applied};

    fn k4() -> TreeSpec {
        let data_plane = "10.251.0.0/16".parse().expect("a prefix");
        TreeSpec::fat_tree("ft", FatTree::validate(4, None, data_plane, None).expect("a valid fat tree"))
    }

    #[test]
    fn routers_get_their_links_addresses_and_routes_and_epms_their_gateway() {
        let spec = k4();
        let (pods, infos) = all_running(&spec);
        let goals = KubernetesRuntime::underlay_goals(&spec, &pods, &infos, &EndGoals::default());
        assert!(goals.switches.is_empty());
        assert_eq!((goals.routers.len(), goals.epms.len()), (20, 16));
        let router = |name: &str| &goals.routers.iter().find(|(n, _)| n == name).expect(name).1;
        let names = |goal: &RouterGoal| goal.ports.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(router("edge-0-0")), ["up0", "up1", "h0", "h1"]);
        assert_eq!(names(router("agg-1-0")), ["dn0", "dn1", "up0", "up1"]);
        assert_eq!(names(router("core-3")), ["dn0", "dn1", "dn2", "dn3"]);
        // Every link's two ends: one VNI, the two addresses of its /31, each
        // tunnelled to the other's pod.
        let (edge, aggregation) = (router("edge-0-0"), router("agg-0-1"));
        let (up1, dn0) = (&edge.ports[1], &aggregation.ports[0]);
        let (up1_tunnel, dn0_tunnel) = (up1.tunnel.clone().unwrap(), dn0.tunnel.clone().unwrap());
        assert_eq!(up1_tunnel.vni, dn0_tunnel.vni);
        assert_eq!(
            (up1_tunnel.remote, dn0_tunnel.remote),
            (pods["agg-0-1"].ip.clone().unwrap(), pods["edge-0-0"].ip.clone().unwrap())
        );
        assert!(up1.address.ends_with("/31") && dn0.address.ends_with("/31") && up1.address != dn0.address);
        // The catch-all is the data plane: each pod keeps its default route.
        let catch_all = edge.routes.iter().find(|r| r.next_hops.len() == 2).expect("up over both aggregation routers");
        assert_eq!(catch_all.prefix, "10.251.0.0/16");
        assert!(goals.routers.iter().all(|(_, g)| g.routes.iter().all(|r| r.prefix != "0.0.0.0/0")));
        let (epm, nic) = &goals.epms[5];
        assert_eq!(
            (nic.address.as_str(), nic.routed_prefix.as_str()),
            (format!("{}/32", epm.ip).as_str(), "10.251.0.0/16")
        );
        let edge_of_5 = router("edge-1-0");
        let host = edge_of_5.ports.iter().find(|p| p.name == "h1").expect("epm-5's port");
        assert_eq!(host.address, format!("{}/32", nic.gateway));
        assert_eq!(nic.tunnel.as_ref().unwrap().vni, host.tunnel.as_ref().unwrap().vni);

        let reported = applied(&spec, &pods, &infos, &EndGoals::default());
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &reported, &HeldEnds::new()), 16);

        // core-0 held down: its four ports down, the aggregation routers'
        // ends too, every EPM still counted (as declared).
        let core_links = crate::model::fault::all_links(&spec)
            .into_iter()
            .filter(|l| l.ends.iter().any(|e| e.object == "core-0"))
            .map(|l| l.name)
            .collect();
        let cut: Faults = [("core".to_string(), core_links)].into();
        let ends = EndGoals::new(&spec, &cut, &[]);
        let goals = KubernetesRuntime::underlay_goals(&spec, &pods, &infos, &ends);
        let held: Vec<String> = goals
            .routers
            .iter()
            .flat_map(|(n, g)| g.ports.iter().filter(|p| p.held_down).map(move |p| format!("{n}:{}", p.name)))
            .collect();
        assert_eq!(held.len(), 8, "{held:?}");
        let reported = applied(&spec, &pods, &infos, &ends);
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &reported, &ends.held), 16);
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &reported, &HeldEnds::new()), 16, "ECMP: other uplinks");

        // An edge router's pod gone: its EPMs wait for it.
        let mut without_edge = pods.clone();
        without_edge.remove("edge-0-0");
        let reported = applied(&spec, &without_edge, &infos, &EndGoals::default());
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &without_edge, &reported, &HeldEnds::new()), 14);
    }
}

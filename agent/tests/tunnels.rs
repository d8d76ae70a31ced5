//! Underlay links as tunnels between pods (the kubernetes runtime's way),
//! on the real kernel: three namespaces stand for pods on a pod network
//! whose MTU is 1450 (a bridge, like a CNI's); the vswitch pod's agent
//! makes its bridge and a tunnel port per EPM, each EPM's agent makes its
//! data-plane NIC the other end, and EVMs on the two EPMs reach each other
//! with full-size packets that carry DF, and not one byte more.

use merak_agent::netdev::Netlink;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::server::{AgentService, OverlayService};
use merak_proto::agent::agent_server::Agent;
use merak_proto::agent::overlay_server::Overlay;
use merak_proto::agent::{
    EpmInfo, EvmBatch, EvmSpec, GetInfoRequest, OverlayGoal, PingProbe, PingRequest, ProbeNetemRequest, Shaping,
    SubnetGoal, SwitchGoal, SwitchPort, Tunnel, UnderlayGoal, VpcGoal,
};
use tonic::Request;

const POD_MTU: u32 = 1450;
const LINK_MTU: u32 = POD_MTU - 50;
const EVM_MTU: u32 = LINK_MTU - 50;

/// Removes every namespace of this test, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in netns::list_with_prefix(&self.0).unwrap_or_default() {
            let _ = netns::delete(&name);
        }
    }
}

/// A pod: a namespace whose eth0 (MTU 1450) is on the pod network's bridge.
async fn pod(prefix: &str, network: &Netlink, bridge: u32, name: &str, ip: &str) -> Netlink {
    let namespace = format!("{prefix}{name}");
    let options = NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() };
    let inside = netns::create(&namespace, options).await.expect("create the pod's namespace");
    let host_end = format!("v{name}");
    let pod_fd = netns::open_fd(&namespace).expect("open the pod's namespace");
    network.create_veth(&host_end, "eth0", &pod_fd).await.expect("create the pod's veth");
    let host_end = network.link(&host_end).await.expect("read the host end").expect("the host end exists");
    network.set_mtu(host_end.index, POD_MTU).await.expect("host end MTU");
    network.set_link(host_end.index, Some(bridge), None).await.expect("host end on the bridge, up");
    let eth0 = inside.link("eth0").await.expect("read eth0").expect("eth0 exists");
    inside.set_mtu(eth0.index, POD_MTU).await.expect("eth0 MTU");
    inside.add_address(eth0.index, ip.parse().expect("an IPv4 address"), 24).await.expect("address eth0");
    inside.set_link(eth0.index, None, None).await.expect("eth0 up");
    inside
}

fn tunnel(remote: &str, vni: u32) -> Option<Tunnel> {
    Some(Tunnel { remote: remote.into(), vni, mtu: LINK_MTU })
}

fn switch_goal(ports: &[(&str, &str, u32)]) -> SwitchGoal {
    SwitchGoal {
        bridge: "br0".into(),
        ports: ports
            .iter()
            .map(|(name, remote, vni)| SwitchPort {
                name: (*name).into(),
                tunnel: tunnel(remote, *vni),
                held_down: false,
                shaping: None,
            })
            .collect(),
    }
}

fn underlay(address: &str, mac: &str, tor: &str, vni: u32) -> UnderlayGoal {
    UnderlayGoal {
        interface: "eth1".into(),
        address: address.into(),
        mac: mac.into(),
        tunnel: tunnel(tor, vni),
        gateway: String::new(),
        held_down: false,
        shaping: None,
        routed_prefix: String::new(),
    }
}

fn overlay(prefix: &str, epm: &str, own: &str, other: &str) -> OverlayGoal {
    let subnet = SubnetGoal {
        vni: 1, // the same number as a link's VNI: tunnels use another UDP port
        bridge: "b1".into(),
        vxlan: "x1".into(),
        gateway: "10.0.0.1/24".into(),
        gateway_mac: format!("0a:01:00:00:00:0{}", if epm == "a" { 'a' } else { 'b' }),
        flood: vec![other.into()],
        forget: vec![],
    };
    OverlayGoal {
        router_prefix: format!("{prefix}{epm}.vpc"),
        underlay_ip: own.into(),
        vpcs: vec![VpcGoal { namespace: format!("{prefix}{epm}.vpc1"), subnets: vec![subnet], firewall: None }],
    }
}

fn evm(prefix: &str, epm: &str, address: &str, last: u8) -> EvmSpec {
    EvmSpec {
        namespace: format!("{prefix}{epm}.e{last}"),
        router_namespace: format!("{prefix}{epm}.vpc1"),
        bridge: "b1".into(),
        host_port: format!("ve{last}"),
        address: address.into(),
        mac: format!("0a:00:00:00:00:{last:02x}"),
        gateway: "10.0.0.1".into(),
        gateway_mac: format!("0a:01:00:00:00:0{}", if epm == "a" { 'a' } else { 'b' }),
        device_model: "veth".into(),
        leave_unattached: false,
        mtu: 0,
    }
}

async fn ping(agent: &OverlayService, from: &EvmSpec, to: &str, payload_bytes: u32) -> bool {
    let probes = vec![PingProbe { from_namespace: from.namespace.clone(), to: to.into() }];
    let reply = agent
        .ping(Request::new(PingRequest { probes, timeout_ms: 1500, payload_bytes, full_size: false }))
        .await
        .expect("ping")
        .into_inner();
    reply.reached[0]
}

#[tokio::test]
async fn tunnels_over_a_pod_network_carry_full_size_packets() {
    let prefix = format!("merak-test-tun-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let network =
        netns::create(&format!("{prefix}net"), NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() })
            .await
            .unwrap();
    let cni = network.create_bridge("cni0").await.unwrap();
    let tor = pod(&prefix, &network, cni, "tor", "10.250.0.10").await;
    let in_a = pod(&prefix, &network, cni, "a", "10.250.0.11").await;
    let in_b = pod(&prefix, &network, cni, "b", "10.250.0.12").await;

    let tor_agent = AgentService::new("s0-0".into(), tor.clone());
    let goal = switch_goal(&[("h0", "10.250.0.11", 1), ("h1", "10.250.0.12", 2)]);
    assert!(tor_agent.apply_switch(Request::new(goal.clone())).await.unwrap().into_inner().changed);
    let again = tor_agent.apply_switch(Request::new(goal.clone())).await.unwrap().into_inner();
    assert!(!again.changed, "a vswitch goal in place changes nothing: {:?}", again.actions);

    let (agent_a, agent_b) = (AgentService::new("a".into(), in_a.clone()), AgentService::new("b".into(), in_b.clone()));
    let goal_a = underlay("192.168.60.1/24", "02:4d:00:00:00:01", "10.250.0.10", 1);
    assert!(agent_a.apply_underlay(Request::new(goal_a.clone())).await.unwrap().into_inner().changed);
    agent_b
        .apply_underlay(Request::new(underlay("192.168.60.2/24", "02:4d:00:00:00:02", "10.250.0.10", 2)))
        .await
        .unwrap();
    let again = agent_a.apply_underlay(Request::new(goal_a)).await.unwrap().into_inner();
    assert!(!again.changed, "an underlay goal in place changes nothing: {:?}", again.actions);
    let eth1 = in_a.link("eth1").await.unwrap().unwrap();
    assert_eq!((eth1.mtu, eth1.vxlan.map(|v| (v.vni, v.port))), (LINK_MTU, Some((1, 4790))));

    let (overlay_a, overlay_b) =
        (OverlayService::new("a".into(), in_a.clone()), OverlayService::new("b".into(), in_b.clone()));
    overlay_a.apply_overlay(Request::new(overlay(&prefix, "a", "192.168.60.1", "192.168.60.2"))).await.unwrap();
    overlay_b.apply_overlay(Request::new(overlay(&prefix, "b", "192.168.60.2", "192.168.60.1"))).await.unwrap();
    let (on_a, on_b) = (evm(&prefix, "a", "10.0.0.10/24", 10), evm(&prefix, "b", "10.0.0.11/24", 11));
    for (agent, spec) in [(&overlay_a, &on_a), (&overlay_b, &on_b)] {
        let reply = agent
            .apply_evms(Request::new(EvmBatch { create: vec![spec.clone()], delete: vec![] }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.created, reply.failures), (1, vec![]));
    }
    let inside = netns::open(&on_a.namespace).await.unwrap();
    assert_eq!(inside.link("eth0").await.unwrap().unwrap().mtu, EVM_MTU, "an EVM's MTU is the overlay's");

    // IP and ICMP headers take 28 bytes of the EVM's MTU.
    let full = EVM_MTU - 28;
    assert!(ping(&overlay_a, &on_a, "10.0.0.11", 0).await, "a small ping across the tunnels");
    assert!(ping(&overlay_a, &on_a, "10.0.0.11", full).await, "a full-size ping with DF across the tunnels");
    assert!(!ping(&overlay_a, &on_a, "10.0.0.11", full + 1).await, "one byte more does not fit, and is not fragmented");
    assert!(ping(&overlay_b, &on_b, "10.0.0.10", full).await, "and back");

    // A fault holds the link of a down at both ends: the port stays on the
    // bridge, the NIC keeps its address, nothing crosses; let go, it is back.
    let mut held = goal.clone();
    held.ports[0].held_down = true;
    let reply = tor_agent.apply_switch(Request::new(held.clone())).await.unwrap().into_inner();
    assert_eq!(reply.actions, ["h0 held down"]);
    let held_nic =
        UnderlayGoal { held_down: true, ..underlay("192.168.60.1/24", "02:4d:00:00:00:01", "10.250.0.10", 1) };
    let reply = agent_a.apply_underlay(Request::new(held_nic.clone())).await.unwrap().into_inner();
    assert_eq!(reply.actions, ["eth1 held down"]);
    let again = agent_a.apply_underlay(Request::new(held_nic)).await.unwrap().into_inner();
    assert!(!again.changed && !tor_agent.apply_switch(Request::new(held)).await.unwrap().into_inner().changed);
    let (port, nic) = (tor.link("h0").await.unwrap().unwrap(), in_a.link("eth1").await.unwrap().unwrap());
    assert!(!port.up && port.controller.is_some() && !nic.up, "{port:?} {nic:?}");
    assert!(!ping(&overlay_a, &on_a, "10.0.0.11", 0).await, "nothing crosses a link held down");
    tor_agent.apply_switch(Request::new(goal.clone())).await.unwrap();
    let reply = agent_a
        .apply_underlay(Request::new(underlay("192.168.60.1/24", "02:4d:00:00:00:01", "10.250.0.10", 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.actions, ["eth1 up"]);
    assert!(ping(&overlay_a, &on_a, "10.0.0.11", full).await, "the link let go carries again");
    let probes = vec![PingProbe { from_namespace: on_a.namespace.clone(), to: "10.0.0.11".into() }];
    let reply = overlay_a
        .ping(Request::new(PingRequest { probes, timeout_ms: 1500, payload_bytes: 0, full_size: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.reached, [true], "a full-size probe sized by the agent from the EVM's MTU");

    // A link profile shapes both ends of the link (a tbf of merak's, as the
    // agents report it); the same goal again changes nothing; all zero
    // takes merak's shaping off, and an unset shaping leaves it alone.
    let rate = Shaping { rate_bytes_per_s: 1_000_000, ..Shaping::default() };
    let mut shaped = goal.clone();
    shaped.ports[0].shaping = Some(rate);
    let reply = tor_agent.apply_switch(Request::new(shaped.clone())).await.unwrap().into_inner();
    assert!(reply.actions.iter().any(|a| a.starts_with("h0 shaped")), "{:?}", reply.actions);
    assert!(!tor_agent.apply_switch(Request::new(shaped)).await.unwrap().into_inner().changed);
    let shaped_nic =
        UnderlayGoal { shaping: Some(rate), ..underlay("192.168.60.1/24", "02:4d:00:00:00:01", "10.250.0.10", 1) };
    let reply = agent_a.apply_underlay(Request::new(shaped_nic.clone())).await.unwrap().into_inner();
    assert!(reply.actions.iter().any(|a| a.starts_with("eth1 shaped")), "{:?}", reply.actions);
    assert!(!agent_a.apply_underlay(Request::new(shaped_nic)).await.unwrap().into_inner().changed);
    let root = |info: &EpmInfo, device: &str| {
        info.interfaces.iter().find(|i| i.name == device).and_then(|i| i.root_qdisc.clone())
    };
    let tor_info = tor_agent.get_info(Request::new(GetInfoRequest {})).await.unwrap().into_inner();
    let a_info = agent_a.get_info(Request::new(GetInfoRequest {})).await.unwrap().into_inner();
    for reported in [root(&tor_info, "h0"), root(&a_info, "eth1")] {
        let reported = reported.expect("a root qdisc of merak's");
        assert_eq!(
            (reported.kind.as_str(), reported.handle, reported.rate_bytes_per_s),
            ("tbf", 0x6d72_0000, 1_000_000)
        );
    }
    assert_eq!(root(&tor_info, "h1"), None, "an unshaped port has the kernel's default");
    assert!(ping(&overlay_a, &on_a, "10.0.0.11", full).await, "a shaped link carries");
    let mut unshaped = goal.clone();
    unshaped.ports[0].shaping = Some(Shaping::default());
    let reply = tor_agent.apply_switch(Request::new(unshaped)).await.unwrap().into_inner();
    assert_eq!(reply.actions, ["h0 unshaped"]);
    let untouched = agent_a
        .apply_underlay(Request::new(underlay("192.168.60.1/24", "02:4d:00:00:00:01", "10.250.0.10", 1)))
        .await
        .unwrap()
        .into_inner();
    assert!(!untouched.changed, "no shaping in the goal leaves the NIC's as it is");
    let a_info = agent_a.get_info(Request::new(GetInfoRequest {})).await.unwrap().into_inner();
    assert!(root(&a_info, "eth1").is_some());
    let reply = agent_a
        .apply_underlay(Request::new(UnderlayGoal {
            shaping: Some(Shaping::default()),
            ..underlay("192.168.60.1/24", "02:4d:00:00:00:01", "10.250.0.10", 1)
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.actions, ["eth1 unshaped"]);

    // Whether the kernel has netem, tried on a scratch device that is gone after.
    let probed = agent_a.probe_netem(Request::new(ProbeNetemRequest {})).await.unwrap().into_inner();
    let has_netem = std::path::Path::new("/sys/module/sch_netem").exists();
    assert_eq!(probed.available, has_netem, "{probed:?}");
    assert!(has_netem || probed.why.contains("sch_netem"), "{probed:?}");
    assert!(in_a.link("netem-probe").await.unwrap().is_none(), "the probe's device is removed");

    // The EPM b pod made anew elsewhere (another pod IP): the vswitch's
    // port follows it, and traffic flows again.
    let eth0 = in_b.link("eth0").await.unwrap().unwrap();
    in_b.delete_address(eth0.index, "10.250.0.12".parse().unwrap(), 24).await.unwrap();
    in_b.add_address(eth0.index, "10.250.0.22".parse().unwrap(), 24).await.unwrap();
    let moved = switch_goal(&[("h0", "10.250.0.11", 1), ("h1", "10.250.0.22", 2)]);
    let reply = tor_agent.apply_switch(Request::new(moved)).await.unwrap().into_inner();
    assert!(reply.actions.iter().any(|a| a.contains("h1 tunnel to 10.250.0.22")), "{:?}", reply.actions);
    assert!(ping(&overlay_a, &on_a, "10.0.0.11", full).await, "after the pod moved");

    // An EPM that leaves takes its port with it.
    let reply =
        tor_agent.apply_switch(Request::new(switch_goal(&[("h0", "10.250.0.11", 1)]))).await.unwrap().into_inner();
    assert!(reply.actions.contains(&"removed h1".to_string()), "{:?}", reply.actions);
    assert!(tor.link("h1").await.unwrap().is_none());

    // Malformed goals are refused whole.
    let bad =
        tor_agent.apply_switch(Request::new(switch_goal(&[("h0", "10.250.0.11", 1), ("h0", "10.250.0.12", 2)]))).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    let bad = tor_agent.apply_switch(Request::new(switch_goal(&[("h9", "not-an-ip", 9)]))).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert!(tor.link("h9").await.unwrap().is_none(), "nothing of a refused goal is built");
}

//! Tenant networks between two EPMs on the real kernel: VXLAN subnets with a
//! distributed gateway, EVMs in namespaces, pings from inside them, and VPCs
//! with overlapping CIDRs that stay isolated.

use std::time::Duration;

use merak_agent::bridges;
use merak_agent::netdev::Netlink;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::server::OverlayService;
use merak_proto::agent::overlay_server::Overlay;
use merak_proto::agent::{EvmBatch, EvmSpec, OverlayGoal, PingProbe, PingRequest, SubnetGoal, VpcGoal};
use tonic::Request;

/// Removes every namespace of this test, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in netns::list_with_prefix(&self.0).unwrap_or_default() {
            let _ = netns::delete(&name);
        }
    }
}

/// Each EPM's gateway has its own MAC (see the architecture notes).
fn gateway_mac(epm: &str) -> String {
    format!("0a:01:00:00:00:{}", if epm == "a" { "0a" } else { "0b" })
}

fn subnet(epm: &str, vni: u32, gateway: &str, flood: &str) -> SubnetGoal {
    SubnetGoal {
        vni,
        bridge: format!("b{vni}"),
        vxlan: format!("x{vni}"),
        gateway: gateway.into(),
        gateway_mac: gateway_mac(epm),
        flood: vec![flood.into()],
        forget: vec![],
    }
}

fn evm(prefix: &str, epm: &str, vpc: &str, name: &str, vni: u32, address: &str, gateway: &str) -> EvmSpec {
    let octets: Vec<u8> = address.split(['.', '/']).take(4).map(|o| o.parse().unwrap_or(0)).collect();
    EvmSpec {
        namespace: format!("{prefix}{epm}.{name}"),
        router_namespace: format!("{prefix}{epm}.{vpc}"),
        bridge: format!("b{vni}"),
        host_port: format!("v{name}"),
        address: address.into(),
        mac: format!("0a:00:00:{:02x}:{:02x}:{:02x}", vni & 0xff, octets[2], octets[3]),
        gateway: gateway.into(),
        gateway_mac: gateway_mac(epm),
        device_model: "veth".into(),
        leave_unattached: false,
        mtu: 0,
    }
}

/// EPMs `a` (192.168.50.1) and `b` (.2), their eth1s joined by a veth pair.
async fn two_epms(prefix: &str) -> (Netlink, Netlink) {
    let options = NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() };
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let in_a = netns::create(&a, options).await.expect("create EPM a");
    let in_b = netns::create(&b, options).await.expect("create EPM b");
    let b_fd = netns::open_fd(&b).expect("open EPM b");
    in_a.create_veth("eth1", "eth1", &b_fd).await.expect("link the EPMs");
    for (netlink, ip) in [(&in_a, "192.168.50.1"), (&in_b, "192.168.50.2")] {
        let eth1 = netlink.link("eth1").await.expect("read eth1").expect("eth1 exists");
        let ip = ip.parse().expect("an IPv4 address");
        netlink.add_address(eth1.index, ip, 24).await.expect("address eth1");
        netlink.set_link(eth1.index, None, None).await.expect("eth1 up");
    }
    (in_a, in_b)
}

fn one_subnet_goal(prefix: &str, epm: &str, own: &str, other: &str, forget: Vec<String>) -> OverlayGoal {
    let mut subnet = subnet(epm, 101, "10.0.0.1/22", other);
    subnet.forget = forget;
    OverlayGoal {
        // Not just "{prefix}{epm}.": that would cover the EVMs' namespaces.
        router_prefix: format!("{prefix}{epm}.vpc"),
        underlay_ip: own.into(),
        vpcs: vec![VpcGoal { namespace: format!("{prefix}{epm}.vpc1"), subnets: vec![subnet], firewall: None }],
    }
}

fn ping(from: &EvmSpec, to: &str) -> PingProbe {
    PingProbe { from_namespace: from.namespace.clone(), to: to.into() }
}

async fn reached(agent: &OverlayService, probes: Vec<PingProbe>) -> Vec<bool> {
    agent
        .ping(Request::new(PingRequest { probes, timeout_ms: 2000, payload_bytes: 0, full_size: false }))
        .await
        .expect("ping")
        .into_inner()
        .reached
}

#[tokio::test]
async fn subnets_route_and_vpcs_stay_apart() {
    let prefix = format!("merak-test-ov-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let (in_a, in_b) = two_epms(&prefix).await;

    let goal = |epm: &str, own: &str, other: &str| OverlayGoal {
        router_prefix: format!("{prefix}{epm}."),
        underlay_ip: own.into(),
        vpcs: vec![
            VpcGoal {
                namespace: format!("{prefix}{epm}.vpc1"),
                subnets: vec![subnet(epm, 101, "10.0.1.1/24", other), subnet(epm, 102, "10.0.2.1/24", other)],
                firewall: None,
            },
            VpcGoal {
                namespace: format!("{prefix}{epm}.vpc2"),
                subnets: vec![subnet(epm, 201, "10.0.1.1/24", other)],
                firewall: None,
            },
        ],
    };
    let agent_a = OverlayService::new("a".into(), in_a.clone());
    let agent_b = OverlayService::new("b".into(), in_b.clone());
    let goal_a = goal("a", "192.168.50.1", "192.168.50.2");
    let goal_b = goal("b", "192.168.50.2", "192.168.50.1");
    assert!(agent_a.apply_overlay(Request::new(goal_a.clone())).await.unwrap().into_inner().changed);
    assert!(agent_b.apply_overlay(Request::new(goal_b.clone())).await.unwrap().into_inner().changed);
    let again = agent_a.apply_overlay(Request::new(goal_a)).await.unwrap().into_inner();
    assert!(!again.changed, "overlay not idempotent: {:?}", again.actions);

    let on_a = vec![
        evm(&prefix, "a", "vpc1", "e1", 101, "10.0.1.10/24", "10.0.1.1"),
        evm(&prefix, "a", "vpc2", "e3", 201, "10.0.1.10/24", "10.0.1.1"),
    ];
    let on_b = vec![
        evm(&prefix, "b", "vpc1", "e2", 101, "10.0.1.11/24", "10.0.1.1"),
        evm(&prefix, "b", "vpc1", "e4", 102, "10.0.2.10/24", "10.0.2.1"),
        evm(&prefix, "b", "vpc2", "e5", 201, "10.0.1.11/24", "10.0.1.1"),
    ];
    let created_a =
        agent_a.apply_evms(Request::new(EvmBatch { create: on_a.clone(), delete: vec![] })).await.unwrap().into_inner();
    assert_eq!((created_a.created, created_a.failures.len()), (2, 0), "{created_a:?}");
    let created_b =
        agent_b.apply_evms(Request::new(EvmBatch { create: on_b.clone(), delete: vec![] })).await.unwrap().into_inner();
    assert_eq!((created_b.created, created_b.failures.len()), (3, 0), "{created_b:?}");
    let again =
        agent_a.apply_evms(Request::new(EvmBatch { create: on_a.clone(), delete: vec![] })).await.unwrap().into_inner();
    assert_eq!((again.created, again.existing), (0, 2));

    let probes = vec![
        ping(&on_a[0], "10.0.1.11"), // same subnet, other EPM
        ping(&on_a[0], "10.0.2.10"), // other subnet of the VPC, other EPM
        ping(&on_b[1], "10.0.1.10"), // and back
        ping(&on_a[1], "10.0.1.11"), // within the second VPC
        ping(&on_a[1], "10.0.2.10"), // across VPCs: must fail
    ];
    assert_eq!(reached(&agent_a, probes).await, vec![true, true, true, true, false]);
    // A probe from an EVM that is gone fails alone, saying why.
    let mut gone = on_a[0].clone();
    gone.namespace = format!("{prefix}a.missing");
    let request = PingRequest {
        probes: vec![ping(&gone, "10.0.1.11"), ping(&on_a[0], "10.0.1.11")],
        timeout_ms: 2000,
        payload_bytes: 0,
        full_size: false,
    };
    let reply = agent_a.ping(Request::new(request)).await.unwrap().into_inner();
    assert_eq!(reply.reached, vec![false, true]);
    assert!(reply.errors[0].contains("missing") && reply.errors[1].is_empty(), "{:?}", reply.errors);

    let gone =
        agent_b.apply_evms(Request::new(EvmBatch { create: vec![], delete: on_b.clone() })).await.unwrap().into_inner();
    assert_eq!((gone.deleted, gone.failures.len()), (3, 0), "{gone:?}");
    for spec in &on_b {
        assert!(!netns::exists(&spec.namespace));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// More EVMs of one subnet on one EPM than a bridge can hold: a leaf bridge
/// joins the trunk, its EVMs reach the trunk's, the gateway and the other
/// EPM, and it goes away when its last EVM does.
#[tokio::test]
async fn a_crowded_subnet_grows_leaf_bridges() {
    let prefix = format!("merak-test-leaf-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let (in_a, in_b) = two_epms(&prefix).await;
    let (agent_a, agent_b) = (OverlayService::new("a".into(), in_a), OverlayService::new("b".into(), in_b));
    agent_a
        .apply_overlay(Request::new(one_subnet_goal(&prefix, "a", "192.168.50.1", "192.168.50.2", vec![])))
        .await
        .unwrap();
    agent_b
        .apply_overlay(Request::new(one_subnet_goal(&prefix, "b", "192.168.50.2", "192.168.50.1", vec![])))
        .await
        .unwrap();

    let crowd: Vec<EvmSpec> = (0..bridges::EVM_PORTS_PER_BRIDGE + 2)
        .map(|i| {
            evm(
                &prefix,
                "a",
                "vpc1",
                &format!("c{i}"),
                101,
                &format!("10.0.{}.{}/22", (i + 2) / 256, (i + 2) % 256),
                "10.0.0.1",
            )
        })
        .collect();
    let remote = evm(&prefix, "b", "vpc1", "r", 101, "10.0.3.250/22", "10.0.0.1");
    let made = agent_a
        .apply_evms(Request::new(EvmBatch { create: crowd.clone(), delete: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((made.created as usize, made.failures.len()), (crowd.len(), 0), "{:?}", made.failures.first());
    agent_b.apply_evms(Request::new(EvmBatch { create: vec![remote.clone()], delete: vec![] })).await.unwrap();

    let router = netns::open(&format!("{prefix}a.vpc1")).await.unwrap();
    let leaf = router.link("b101.1").await.unwrap().expect("a leaf bridge");
    let links = router.links().await.unwrap();
    let on_leaf: Vec<&str> =
        links.iter().filter(|l| l.controller == Some(leaf.index)).map(|l| l.name.as_str()).collect();
    assert_eq!(on_leaf.len(), 3, "two EVM ports and the downlink: {on_leaf:?}");
    let newest = &crowd[crowd.len() - 1];
    assert!(on_leaf.contains(&newest.host_port.as_str()));

    let probes = vec![ping(newest, "10.0.0.2"), ping(newest, "10.0.0.1"), ping(newest, "10.0.3.250")];
    assert_eq!(reached(&agent_a, probes).await, vec![true, true, true], "leaf EVM to trunk EVM, gateway, other EPM");

    // A leaf that lost its link to the trunk (an interrupted run) gets it
    // back before another EVM joins it.
    let uplink = router.link(&bridges::uplink("b101", 1)).await.unwrap().unwrap();
    router.delete_link(uplink.index).await.unwrap();
    let latecomer = evm(&prefix, "a", "vpc1", "late", 101, "10.0.3.240/22", "10.0.0.1");
    let made = agent_a
        .apply_evms(Request::new(EvmBatch { create: vec![latecomer.clone()], delete: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((made.created, made.failures.len()), (1, 0));
    assert_eq!(reached(&agent_a, vec![ping(&latecomer, "10.0.0.2"), ping(newest, "10.0.0.1")]).await, vec![true, true]);

    // Emptying the leaf removes it and its uplink.
    let mut leaving = crowd[crowd.len() - 2..].to_vec();
    leaving.push(latecomer);
    let gone =
        agent_a.apply_evms(Request::new(EvmBatch { create: vec![], delete: leaving })).await.unwrap().into_inner();
    assert_eq!((gone.deleted, gone.failures.len()), (3, 0));
    assert!(router.link("b101.1").await.unwrap().is_none());
    assert!(router.link(&bridges::uplink("b101", 1)).await.unwrap().is_none());
    let rest = agent_a
        .apply_evms(Request::new(EvmBatch { create: vec![], delete: crowd.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.failures.len(), 0);
}

/// An address that moves to another EPM (a group shrinks on one and grows on
/// another) is reachable at once where it went: the overlay goal tells the
/// EPMs to forget where they learned it was.
#[tokio::test]
async fn a_moved_address_is_forgotten_where_it_was_learned() {
    let prefix = format!("merak-test-move-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let (in_a, in_b) = two_epms(&prefix).await;
    let (agent_a, agent_b) = (OverlayService::new("a".into(), in_a), OverlayService::new("b".into(), in_b.clone()));
    agent_a
        .apply_overlay(Request::new(one_subnet_goal(&prefix, "a", "192.168.50.1", "192.168.50.2", vec![])))
        .await
        .unwrap();
    agent_b
        .apply_overlay(Request::new(one_subnet_goal(&prefix, "b", "192.168.50.2", "192.168.50.1", vec![])))
        .await
        .unwrap();
    let mover_on_a = evm(&prefix, "a", "vpc1", "m", 101, "10.0.0.10/22", "10.0.0.1");
    let stayer = evm(&prefix, "b", "vpc1", "s", 101, "10.0.0.11/22", "10.0.0.1");
    agent_a.apply_evms(Request::new(EvmBatch { create: vec![mover_on_a.clone()], delete: vec![] })).await.unwrap();
    let made = agent_b
        .apply_evms(Request::new(EvmBatch { create: vec![stayer.clone()], delete: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((made.created, made.failures), (1, vec![]));
    assert_eq!(reached(&agent_b, vec![ping(&stayer, "10.0.0.10")]).await, vec![true]);

    // b has learned that the mover's MAC is behind a.
    let router_b = netns::open(&format!("{prefix}b.vpc1")).await.unwrap();
    let vxlan_b = router_b.link("x101").await.unwrap().unwrap().index;
    let mac = merak_agent::netdev::parse_mac(&mover_on_a.mac).unwrap();
    let learned =
        |entries: Vec<merak_agent::netdev::FdbEntry>| entries.iter().any(|e| e.mac == mac && e.index == vxlan_b);
    assert!(learned(router_b.learned_fdb_entries().await.unwrap()));

    // The mover leaves a and comes back on b with the same address and MAC.
    agent_a.apply_evms(Request::new(EvmBatch { create: vec![], delete: vec![mover_on_a.clone()] })).await.unwrap();
    let forget = vec![format!("{}-{}", mover_on_a.mac, mover_on_a.mac)];
    agent_b
        .apply_overlay(Request::new(one_subnet_goal(&prefix, "b", "192.168.50.2", "192.168.50.1", forget)))
        .await
        .unwrap();
    assert!(!learned(router_b.learned_fdb_entries().await.unwrap()));
    let mover_on_b = evm(&prefix, "b", "vpc1", "m", 101, "10.0.0.10/22", "10.0.0.1");
    agent_b.apply_evms(Request::new(EvmBatch { create: vec![mover_on_b.clone()], delete: vec![] })).await.unwrap();
    // The stayer first: a ping from the mover would teach the bridges anyway.
    assert_eq!(reached(&agent_b, vec![ping(&stayer, "10.0.0.10")]).await, vec![true]);
    assert_eq!(reached(&agent_b, vec![ping(&mover_on_b, "10.0.0.11")]).await, vec![true]);
}

/// EVMs of an external controller's VPC: their EPM ends wait, up and on no
/// bridge, in the EPM's own namespace, for the system under test; here a
/// bridge made by the test stands for it. Both device models.
#[tokio::test]
async fn unattached_evms_wait_in_the_epm_for_the_system_under_test() {
    let prefix = format!("merak-test-ext-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let (in_a, _in_b) = two_epms(&prefix).await;
    let agent = OverlayService::new("a".into(), in_a.clone());
    let unattached = |name: &str, address: &str, model: &str, port: &str| EvmSpec {
        router_namespace: format!("{prefix}a"),
        bridge: String::new(),
        gateway_mac: String::new(),
        host_port: port.into(),
        device_model: model.into(),
        leave_unattached: true,
        ..evm(&prefix, "a", "vpc", name, 301, address, "10.3.0.1")
    };
    let evms = vec![unattached("u1", "10.3.0.10/24", "veth", "ou1"), unattached("u2", "10.3.0.11/24", "hybrid", "ou2")];
    let batch = EvmBatch { create: evms.clone(), delete: vec![] };
    let created = agent.apply_evms(Request::new(batch.clone())).await.unwrap().into_inner();
    assert_eq!((created.created, created.failures.len()), (2, 0), "{created:?}");
    for port in ["ou1", "ou2"] {
        let link = in_a.link(port).await.unwrap().unwrap_or_else(|| panic!("{port} is not in the EPM's namespace"));
        assert!(link.up && link.controller.is_none(), "{port}: {link:?}");
    }
    let whole = agent.whole_evms(Request::new(batch.clone())).await.unwrap().into_inner().namespaces;
    assert_eq!(whole.len(), 2, "{whole:?}");
    let again = agent.apply_evms(Request::new(batch.clone())).await.unwrap().into_inner();
    assert_eq!((again.created, again.existing), (0, 2));
    // No static neighbour: the gateway is the system under test's to answer for.
    let neighbours = std::process::Command::new("ip")
        .args(["-n", &evms[0].namespace, "neigh", "show", "permanent"])
        .output()
        .unwrap();
    assert!(neighbours.stdout.is_empty(), "{}", String::from_utf8_lossy(&neighbours.stdout));
    // eth0 computes its checksums: a userspace switch would not.
    let features = std::process::Command::new("ip")
        .args(["netns", "exec", &evms[0].namespace, "ethtool", "-k", "eth0"])
        .output()
        .unwrap();
    let features = String::from_utf8_lossy(&features.stdout);
    assert!(features.lines().any(|l| l.trim() == "tx-checksumming: off"), "{features}");

    // The "system under test" attaches both ends to a switch of its own.
    let switch = in_a.create_bridge("sut").await.unwrap();
    in_a.add_address(switch, "10.3.0.1".parse().unwrap(), 24).await.unwrap();
    for port in ["ou1", "ou2"] {
        in_a.set_link_by_name(port, Some(switch)).await.unwrap();
    }
    assert_eq!(reached(&agent, vec![ping(&evms[0], "10.3.0.11"), ping(&evms[1], "10.3.0.1")]).await, vec![true, true]);

    let gone =
        agent.apply_evms(Request::new(EvmBatch { create: vec![], delete: evms.clone() })).await.unwrap().into_inner();
    assert_eq!((gone.deleted, gone.failures.len()), (2, 0), "{gone:?}");
    for port in ["ou1", "ou2", "qu2", "tu2"] {
        assert!(in_a.link(port).await.unwrap().is_none(), "{port} outlived its EVM");
    }
}

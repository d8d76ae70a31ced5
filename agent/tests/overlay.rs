//! Tenant networks between two EPMs on the real kernel: VXLAN subnets with a
//! distributed gateway, EVMs in namespaces, pings from inside them, and VPCs
//! with overlapping CIDRs that stay isolated.

use std::time::Duration;

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
    }
}

fn evm(prefix: &str, epm: &str, vpc: &str, name: &str, vni: u32, address: &str, gateway: &str) -> EvmSpec {
    let last = address.split(['.', '/']).nth(3).unwrap_or("0");
    EvmSpec {
        namespace: format!("{prefix}{epm}.{name}"),
        router_namespace: format!("{prefix}{epm}.{vpc}"),
        bridge: format!("b{vni}"),
        host_port: format!("v{name}"),
        address: address.into(),
        mac: format!("0a:00:00:{:02x}:00:{:02x}", vni & 0xff, last.parse::<u8>().unwrap_or(0)),
        gateway: gateway.into(),
        gateway_mac: gateway_mac(epm),
        device_model: "veth".into(),
    }
}

#[tokio::test]
async fn subnets_route_and_vpcs_stay_apart() {
    let prefix = format!("merak-test-ov-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let options = NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() };
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let in_a = netns::create(&a, options).await.unwrap();
    let in_b = netns::create(&b, options).await.unwrap();
    // The underlay: a's eth1 to b's eth1.
    in_a.create_veth("eth1", "eth1", &netns::open_fd(&b).unwrap()).await.unwrap();
    for (netlink, ip) in [(&in_a, "192.168.50.1"), (&in_b, "192.168.50.2")] {
        let eth1 = netlink.link("eth1").await.unwrap().unwrap();
        netlink.add_address(eth1.index, ip.parse().unwrap(), 24).await.unwrap();
        netlink.set_link(eth1.index, None, None).await.unwrap();
    }

    let goal = |epm: &str, own: &str, other: &str| OverlayGoal {
        router_prefix: format!("{prefix}{epm}."),
        underlay_ip: own.into(),
        vpcs: vec![
            VpcGoal { namespace: format!("{prefix}{epm}.vpc1"), subnets: vec![subnet(epm, 101, "10.0.1.1/24", other), subnet(epm, 102, "10.0.2.1/24", other)] },
            VpcGoal { namespace: format!("{prefix}{epm}.vpc2"), subnets: vec![subnet(epm, 201, "10.0.1.1/24", other)] },
        ],
    };
    let agent_a = OverlayService::new(in_a.clone());
    let agent_b = OverlayService::new(in_b.clone());
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
    let created_a = agent_a.apply_evms(Request::new(EvmBatch { create: on_a.clone(), delete: vec![] })).await.unwrap().into_inner();
    assert_eq!((created_a.created, created_a.failures.len()), (2, 0), "{created_a:?}");
    let created_b = agent_b.apply_evms(Request::new(EvmBatch { create: on_b.clone(), delete: vec![] })).await.unwrap().into_inner();
    assert_eq!((created_b.created, created_b.failures.len()), (3, 0), "{created_b:?}");
    let again = agent_a.apply_evms(Request::new(EvmBatch { create: on_a.clone(), delete: vec![] })).await.unwrap().into_inner();
    assert_eq!((again.created, again.existing), (0, 2));

    let probe = |from: &EvmSpec, to: &str| PingProbe { from_namespace: from.namespace.clone(), to: to.into() };
    let probes = vec![
        probe(&on_a[0], "10.0.1.11"), // same subnet, other EPM
        probe(&on_a[0], "10.0.2.10"), // other subnet of the VPC, other EPM
        probe(&on_b[1], "10.0.1.10"), // and back
        probe(&on_a[1], "10.0.1.11"), // within the second VPC
        probe(&on_a[1], "10.0.2.10"), // across VPCs: must fail
    ];
    let reply = agent_a
        .ping(Request::new(PingRequest { probes, timeout_ms: 2000 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.reached, vec![true, true, true, true, false]);

    let gone = agent_b.apply_evms(Request::new(EvmBatch { create: vec![], delete: on_b.clone() })).await.unwrap().into_inner();
    assert_eq!((gone.deleted, gone.failures.len()), (3, 0), "{gone:?}");
    for spec in &on_b {
        assert!(!netns::exists(&spec.namespace));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

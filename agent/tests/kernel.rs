//! The netlink library and the agent service against the real kernel (needs
//! root). Every namespace is named per test and removed by a guard, also
//! when the test fails.

use merak_agent::netdev;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::server::AgentService;
use merak_proto::agent::agent_server::Agent;
use merak_proto::agent::{GetInfoRequest, UnderlayGoal};
use tonic::Request;

/// Deletes the named namespaces when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(test: &str, count: usize) -> Self {
        Namespaces((0..count).map(|i| format!("merak-test-{test}-{}.{i}", std::process::id())).collect())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = netns::delete(name);
        }
    }
}

#[tokio::test]
async fn veth_between_namespaces_into_a_bridge_and_back_out() {
    let names = Namespaces::new("veth", 2);
    let (a, b) = (&names.0[0], &names.0[1]);
    let in_a = netns::create(a, NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() }).await.unwrap();
    let in_b = netns::create(b, NetnsOptions::default()).await.unwrap();
    assert!(matches!(netns::create(a, NetnsOptions::default()).await, Err(netns::NetnsError::AlreadyExists { .. })));

    in_b.create_bridge("br0").await.unwrap();
    let bridge = in_b.link("br0").await.unwrap().unwrap();
    assert!(bridge.up);

    let b_fd = netns::open_fd(b).unwrap();
    in_a.create_veth("eth1", "p0", &b_fd).await.unwrap();
    let port = in_b.link("p0").await.unwrap().expect("peer created straight in b");
    assert!(in_a.link("p0").await.unwrap().is_none());
    in_b.set_link(port.index, Some(bridge.index), None).await.unwrap();
    let port = in_b.link("p0").await.unwrap().unwrap();
    assert!(port.up);
    assert_eq!(port.controller, Some(bridge.index));

    let eth1 = in_a.link("eth1").await.unwrap().unwrap();
    let mac = [0x02, 0, 0, 0, 0, 0x42];
    in_a.set_link(eth1.index, None, Some(mac)).await.unwrap();
    assert_eq!(in_a.link("eth1").await.unwrap().unwrap().mac, Some(mac));
    let ip = "192.0.2.7".parse().unwrap();
    in_a.add_address(eth1.index, ip, 24).await.unwrap();
    assert_eq!(in_a.addresses(eth1.index).await.unwrap(), vec![(ip, 24)], "no IPv6 link-local with IPv6 off");
    in_a.delete_address(eth1.index, ip, 24).await.unwrap();
    assert!(in_a.addresses(eth1.index).await.unwrap().is_empty());

    // Deleting a's namespace tears the pair down; its peer leaves b.
    drop(in_a);
    netns::delete(a).unwrap();
    assert!(!netns::exists(a));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_b.link("p0").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "peer survived its namespace");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    netns::delete(b).unwrap();
    assert!(netns::list_with_prefix(&format!("merak-test-veth-{}.", std::process::id())).unwrap().is_empty());
}

#[tokio::test]
async fn underlay_goal_is_idempotent() {
    let names = Namespaces::new("agent", 2);
    let (epm, tor) = (&names.0[0], &names.0[1]);
    let in_epm = netns::create(epm, NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() }).await.unwrap();
    let _in_tor = netns::create(tor, NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() }).await.unwrap();
    in_epm.create_veth("eth1", "e0", &netns::open_fd(tor).unwrap()).await.unwrap();

    let agent = AgentService::new("epm-0".into(), netns::open(epm).await.unwrap());
    let goal = UnderlayGoal {
        interface: "eth1".into(),
        address: "10.9.0.1/24".into(),
        mac: "02:4d:00:00:00:01".into(),
        tunnel: None,
        gateway: String::new(),
        held_down: false,
        shaping: None,
        routed_prefix: String::new(),
    };
    let first = agent.apply_underlay(Request::new(goal.clone())).await.unwrap().into_inner();
    assert!(first.changed, "{first:?}");
    let second = agent.apply_underlay(Request::new(goal.clone())).await.unwrap().into_inner();
    assert!(!second.changed, "second apply changed {:?}", second.actions);

    // Drift: a stray address goes, the goal address comes back.
    let eth1 = in_epm.link("eth1").await.unwrap().unwrap();
    in_epm.delete_address(eth1.index, "10.9.0.1".parse().unwrap(), 24).await.unwrap();
    in_epm.add_address(eth1.index, "10.9.0.99".parse().unwrap(), 24).await.unwrap();
    let repaired = agent.apply_underlay(Request::new(goal)).await.unwrap().into_inner();
    assert_eq!(repaired.actions.len(), 2, "{:?}", repaired.actions);

    let info = agent.get_info(Request::new(GetInfoRequest {})).await.unwrap().into_inner();
    let eth1 = info.interfaces.iter().find(|i| i.name == "eth1").unwrap();
    assert_eq!(eth1.addresses, vec!["10.9.0.1/24"]);
    assert_eq!(eth1.mac, "02:4d:00:00:00:01");
    let lo = info.interfaces.iter().find(|i| i.name == "lo").unwrap();
    assert!(lo.up);

    let bad = UnderlayGoal { interface: "eth9".into(), ..UnderlayGoal::default() };
    assert!(agent.apply_underlay(Request::new(bad)).await.is_err());
}

/// A routed fabric's EPM: a /32 on eth1 and its default route on-link via
/// the edge switch's port, made once, and made again when it goes.
#[tokio::test]
async fn a_routed_epm_gets_its_host_address_and_a_default_route_via_its_edge() {
    let names = Namespaces::new("agent-routed", 2);
    let (epm, edge) = (&names.0[0], &names.0[1]);
    let in_epm = netns::create(epm, NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() }).await.unwrap();
    let in_edge = netns::create(edge, NetnsOptions { disable_ipv6: true, forwarding: true, ..NetnsOptions::default() })
        .await
        .unwrap();
    in_epm.create_veth("eth1", "h0", &netns::open_fd(edge).unwrap()).await.unwrap();
    let port = in_edge.link("h0").await.unwrap().unwrap();
    in_edge.add_address(port.index, "100.64.0.96".parse().unwrap(), 31).await.unwrap();
    in_edge.set_link(port.index, None, None).await.unwrap();
    in_edge
        .replace_route(
            "10.9.0.1".parse().unwrap(),
            32,
            &[merak_netdev::routes::Hop { index: port.index, gateway: None }],
        )
        .await
        .unwrap();

    let agent = AgentService::new("epm-0".into(), netns::open(epm).await.unwrap());
    let goal = UnderlayGoal {
        interface: "eth1".into(),
        address: "10.9.0.1/32".into(),
        mac: "02:4d:00:00:00:01".into(),
        tunnel: None,
        gateway: "100.64.0.96".into(),
        held_down: false,
        shaping: None,
        routed_prefix: String::new(),
    };
    let first = agent.apply_underlay(Request::new(goal.clone())).await.unwrap().into_inner();
    assert!(first.actions.iter().any(|a| a == "default via 100.64.0.96 dev eth1"), "{first:?}");
    assert!(!agent.apply_underlay(Request::new(goal.clone())).await.unwrap().into_inner().changed);
    let routes = in_epm.routes_v4().await.unwrap();
    assert!(routes.iter().any(|r| r.prefix_len == 0 && r.hops.len() == 1), "{routes:?}");
    // The edge's port answers across the on-link route.
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", epm, "ping", "-c", "1", "-W", "2", "100.64.0.96"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));

    let eth1 = in_epm.link("eth1").await.unwrap().unwrap();
    in_epm.set_link_down(eth1.index).await.unwrap();
    let repaired = agent.apply_underlay(Request::new(goal)).await.unwrap().into_inner();
    assert!(
        repaired.actions.iter().any(|a| a.starts_with("default via")),
        "the route went with the link: {repaired:?}"
    );
}

/// A creation killed between making the mount point and mounting on it
/// leaves a plain file: it is no namespace, and creating one replaces it.
#[tokio::test]
async fn a_mount_point_left_unmounted_is_no_namespace_and_is_replaced() {
    let names = Namespaces::new("agent-stale", 1);
    let name = &names.0[0];
    netns::prepare_run_dir().unwrap();
    std::fs::write(netns::path_of(name), b"").unwrap();
    assert!(!netns::exists(name), "a plain file is not a namespace");
    let netlink = netns::create(name, NetnsOptions::default()).await.expect("created over the leftover");
    assert!(netns::exists(name));
    assert!(netlink.link("lo").await.unwrap().is_some());
}

#[test]
fn macs_format_and_parse() {
    let mac = [0x02, 0xab, 0, 1, 0xfe, 0xff];
    assert_eq!(netdev::format_mac(&mac), "02:ab:00:01:fe:ff");
    assert_eq!(netdev::parse_mac("02:ab:00:01:fe:ff"), Some(mac));
    assert_eq!(netdev::parse_mac("02:ab:00:01:fe"), None);
    assert_eq!(netdev::parse_mac("02:ab:00:01:fe:ff:00"), None);
    assert_eq!(netdev::parse_mac("zz:ab:00:01:fe:ff"), None);
}

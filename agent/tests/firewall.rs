//! Security groups on the real kernel: two EPMs, a VPC of two subnets, EVMs
//! in three groups, and pings that pass or are refused as the groups say,
//! bridged (same subnet, across EPMs) and routed (across subnets, on one
//! EPM); replies pass where new traffic is refused; lifting enforcement
//! opens everything, a table removed by hand comes back with the next push,
//! and the firewall pushed alone (a rule changed) is enforced.

use merak_agent::netdev::Netlink;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::server::OverlayService;
use merak_proto::agent::overlay_server::Overlay;
use merak_proto::agent::{
    EvmBatch, EvmSpec, Firewall, FirewallGoal, OverlayGoal, PingProbe, PingRequest, PortSet, SecurityGroup,
    SecurityRule, SubnetGoal, VpcFirewall, VpcGoal,
};
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

fn evm(prefix: &str, epm: &str, name: &str, vni: u32, address: &str) -> EvmSpec {
    let octets: Vec<u8> = address.split('.').map(|o| o.parse().unwrap_or(0)).collect();
    EvmSpec {
        namespace: format!("{prefix}{epm}.{name}"),
        router_namespace: format!("{prefix}{epm}.vpc1"),
        bridge: format!("b{vni}"),
        host_port: format!("v{name}"),
        address: format!("{address}/24"),
        mac: format!("0a:00:00:{:02x}:{:02x}:{:02x}", vni & 0xff, octets[2], octets[3]),
        gateway: format!("10.0.{}.1", octets[2]),
        gateway_mac: gateway_mac(epm),
        device_model: "veth".into(),
        leave_unattached: false,
        mtu: 0,
    }
}

async fn two_epms(prefix: &str) -> (Netlink, Netlink) {
    let options = NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() };
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let in_a = netns::create(&a, options).await.expect("create EPM a");
    let in_b = netns::create(&b, options).await.expect("create EPM b");
    in_a.create_veth("eth1", "eth1", &netns::open_fd(&b).expect("open EPM b")).await.expect("link the EPMs");
    for (netlink, ip) in [(&in_a, "192.168.51.1"), (&in_b, "192.168.51.2")] {
        let eth1 = netlink.link("eth1").await.expect("read eth1").expect("eth1 exists");
        netlink.add_address(eth1.index, ip.parse().expect("an address"), 24).await.expect("address eth1");
        netlink.set_link(eth1.index, None, None).await.expect("eth1 up");
    }
    (in_a, in_b)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn icmp_from(groups: &[&str]) -> SecurityRule {
    SecurityRule { protocol: 1, from_port: 0, to_port: 0, cidrs: vec![], groups: strings(groups) }
}

fn anywhere() -> SecurityRule {
    SecurityRule { protocol: 0, from_port: 0, to_port: 0, cidrs: strings(&["0.0.0.0/0"]), groups: vec![] }
}

/// `web` pings `web`; `db` answers `web` only; EVMs in no group are in the
/// VPC's default group (they answer each other only).
fn firewall(enforce: bool) -> Firewall {
    let group = |name: &str, ingress: SecurityRule, members: &[&str]| SecurityGroup {
        name: name.into(),
        ingress: vec![ingress],
        egress: vec![anywhere()],
        members: strings(members),
    };
    Firewall {
        enforce,
        groups: vec![
            group("web", icmp_from(&["web"]), &["10.0.1.10-10.0.1.11"]),
            group("db", icmp_from(&["web"]), &["10.0.2.10"]),
            group("default", SecurityRule { protocol: 0, ..icmp_from(&["default"]) }, &["10.0.2.11"]),
        ],
        ports: vec![
            PortSet { name: "webs".into(), addresses: strings(&["10.0.1.10-10.0.1.11"]), groups: strings(&["web"]) },
            PortSet { name: "dbs".into(), addresses: strings(&["10.0.2.10"]), groups: strings(&["db"]) },
            PortSet { name: "others".into(), addresses: strings(&["10.0.2.11"]), groups: strings(&["default"]) },
        ],
    }
}

fn goal(prefix: &str, epm: &str, own: &str, other: &str, firewall: &Firewall) -> OverlayGoal {
    OverlayGoal {
        router_prefix: format!("{prefix}{epm}.vpc"),
        underlay_ip: own.into(),
        vpcs: vec![VpcGoal {
            namespace: format!("{prefix}{epm}.vpc1"),
            subnets: vec![subnet(epm, 101, "10.0.1.1/24", other), subnet(epm, 102, "10.0.2.1/24", other)],
            firewall: Some(firewall.clone()),
        }],
    }
}

async fn reached(agent: &OverlayService, probes: &[(&EvmSpec, &str)]) -> Vec<bool> {
    let probes =
        probes.iter().map(|(from, to)| PingProbe { from_namespace: from.namespace.clone(), to: to.to_string() });
    let request = PingRequest { probes: probes.collect(), timeout_ms: 1000, payload_bytes: 0, full_size: false };
    agent.ping(Request::new(request)).await.expect("ping").into_inner().reached
}

/// The tables of the router namespace, as nft lists them.
fn tables(namespace: &str) -> String {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "list", "tables"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn groups_decide_what_passes_bridged_or_routed_and_replies_pass() {
    let prefix = format!("merak-test-fw-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let (in_a, in_b) = two_epms(&prefix).await;
    let agent_a = OverlayService::new("a".into(), in_a);
    let agent_b = OverlayService::new("b".into(), in_b);
    let push = |enforce: bool| {
        let firewall = firewall(enforce);
        (
            goal(&prefix, "a", "192.168.51.1", "192.168.51.2", &firewall),
            goal(&prefix, "b", "192.168.51.2", "192.168.51.1", &firewall),
        )
    };
    let (goal_a, goal_b) = push(true);
    agent_a.apply_overlay(Request::new(goal_a.clone())).await.expect("overlay a");
    agent_b.apply_overlay(Request::new(goal_b.clone())).await.expect("overlay b");

    let web1 = evm(&prefix, "a", "web1", 101, "10.0.1.10");
    let db = evm(&prefix, "a", "db", 102, "10.0.2.10");
    let web2 = evm(&prefix, "b", "web2", 101, "10.0.1.11");
    let other = evm(&prefix, "b", "other", 102, "10.0.2.11");
    for (agent, create) in [(&agent_a, vec![web1.clone(), db.clone()]), (&agent_b, vec![web2.clone(), other.clone()])] {
        let reply =
            agent.apply_evms(Request::new(EvmBatch { create, delete: vec![] })).await.expect("EVMs").into_inner();
        assert!(reply.failures.is_empty(), "{reply:?}");
    }

    let probes = [
        (&web1, "10.0.1.11"),  // web to web, bridged across EPMs
        (&web1, "10.0.2.10"),  // web to db, routed on one EPM; the reply passes web's ingress
        (&web2, "10.0.2.10"),  // web to db, across EPMs
        (&db, "10.0.1.10"),    // db to web: web answers web only
        (&other, "10.0.2.10"), // default to db
        (&db, "10.0.2.11"),    // db to default
        (&web2, "10.0.2.11"),  // web to default
    ];
    let enforced = [true, true, true, false, false, false, false];
    assert_eq!(reached(&agent_a, &probes).await, enforced);

    // Removed by hand: the next push puts it back.
    let router_a = format!("{prefix}a.vpc1");
    assert!(tables(&router_a).contains("table inet merak"), "{}", tables(&router_a));
    let deleted = std::process::Command::new("ip")
        .args(["netns", "exec", &router_a, "nft", "delete", "table", "inet", "merak"])
        .status()
        .expect("run nft");
    assert!(deleted.success());
    assert_eq!(reached(&agent_a, &[(&db, "10.0.1.10")]).await, [true], "no table, no filtering");
    agent_a.apply_overlay(Request::new(goal_a)).await.expect("overlay a again");
    assert_eq!(reached(&agent_a, &probes).await, enforced);

    // Enforcement lifted: every pair passes, no table is left.
    let (goal_a, goal_b) = push(false);
    agent_a.apply_overlay(Request::new(goal_a)).await.expect("overlay a");
    agent_b.apply_overlay(Request::new(goal_b)).await.expect("overlay b");
    assert_eq!(reached(&agent_a, &probes).await, [true; 7]);
    assert!(!tables(&router_a).contains("merak"), "{}", tables(&router_a));

    // The firewall alone, into namespaces already made (a rule changed):
    // enforced again; a namespace not made yet is refused as such.
    let alone =
        |namespace: String| FirewallGoal { vpcs: vec![VpcFirewall { namespace, firewall: Some(firewall(true)) }] };
    agent_a.apply_firewalls(Request::new(alone(router_a.clone()))).await.expect("firewall a");
    agent_b.apply_firewalls(Request::new(alone(format!("{prefix}b.vpc1")))).await.expect("firewall b");
    assert_eq!(reached(&agent_a, &probes).await, enforced);
    let missing = agent_a.apply_firewalls(Request::new(alone(format!("{prefix}a.vpc9")))).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::FailedPrecondition, "{missing:?}");

    // A malformed firewall is refused before anything changes.
    let (mut bad, _) = push(true);
    if let Some(firewall) = bad.vpcs[0].firewall.as_mut() {
        firewall.groups[0].name = "web; flush ruleset".into();
    }
    assert!(agent_a.apply_overlay(Request::new(bad)).await.is_err());

    // The VPC removed, then made again: its router namespace went whole,
    // not held by the agent's nftables context (a namespace held keeps its
    // VXLAN devices, whose VNIs a new one could then not take).
    let (again, _) = push(true);
    let empty = OverlayGoal { vpcs: Vec::new(), ..again.clone() };
    agent_a.apply_overlay(Request::new(empty)).await.expect("VPC removed");
    assert!(!netns::exists(&router_a));
    let started = std::time::Instant::now();
    agent_a.apply_overlay(Request::new(again)).await.expect("VPC made again");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "made again after {:?}", started.elapsed());
    assert!(tables(&router_a).contains("table inet merak"), "{}", tables(&router_a));
}

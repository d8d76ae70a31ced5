//! Routes on the real kernel, as a routed fabric uses them: between two
//! namespaces, two routers; the source's route to the destination has both
//! as equal-cost next hops, read back as such; with flows hashed on their
//! ports, many TCP connections take both routers (their counters say so);
//! with one router's link down, the connections still get through.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use merak_agent::netdev::Netlink;
use merak_agent::netns::{self, NetnsOptions};
use merak_netdev::routes::Hop;

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in netns::list_with_prefix(&self.0).unwrap_or_default() {
            let _ = netns::delete(&name);
        }
    }
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an address")
}

/// A veth from `near` (in namespace `near_ns`) to `far` in `far_ns`, both
/// up and addressed; the link index at each end.
async fn wire(
    near_ns: &Netlink,
    near: &str,
    near_ip: &str,
    far_ns: (&Netlink, &str),
    far: &str,
    far_ip: &str,
) -> (u32, u32) {
    near_ns.create_veth(near, far, &netns::open_fd(far_ns.1).expect("fd")).await.expect("veth");
    let a = near_ns.link(near).await.expect("read").expect("near end").index;
    let b = far_ns.0.link(far).await.expect("read").expect("far end").index;
    near_ns.add_address(a, IpAddr::V4(ip(near_ip)), 31).await.expect("address");
    far_ns.0.add_address(b, IpAddr::V4(ip(far_ip)), 31).await.expect("address");
    near_ns.set_link(a, None, None).await.expect("up");
    far_ns.0.set_link(b, None, None).await.expect("up");
    (a, b)
}

fn in_namespace<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let fd = netns::open_fd(name).expect("namespace");
    std::thread::spawn(move || {
        netns::enter(&fd).expect("enter");
        work()
    })
    .join()
    .expect("the thread")
}

/// Packets a device received, from the namespace's own /proc/net/dev
/// (read by a thread inside it: /proc/thread-self follows the thread).
fn rx_packets(namespace: &str, device: &str) -> u64 {
    let device = format!("{device}:");
    in_namespace(namespace, move || {
        let table = std::fs::read_to_string("/proc/thread-self/net/dev").expect("/proc/net/dev");
        let line = table.lines().find(|l| l.trim_start().starts_with(&device)).map(str::to_string).unwrap_or_default();
        line.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or(0)
    })
}

#[tokio::test]
async fn ecmp_routes_spread_flows_over_both_routers_and_survive_one() {
    let prefix = format!("merak-route-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let name = |n: &str| format!("{prefix}{n}");
    let plain = NetnsOptions { disable_ipv6: true, multipath_l4_hash: true, ..NetnsOptions::default() };
    let router = NetnsOptions { forwarding: true, ..plain };
    let a = netns::create(&name("a"), plain).await.expect("a");
    let b = netns::create(&name("b"), plain).await.expect("b");
    let r1 = netns::create(&name("r1"), router).await.expect("r1");
    let r2 = netns::create(&name("r2"), router).await.expect("r2");
    let (a1, _) = wire(&a, "up0", "100.64.0.0", (&r1, &name("r1")), "dn0", "100.64.0.1").await;
    let (a2, _) = wire(&a, "up1", "100.64.0.2", (&r2, &name("r2")), "dn0", "100.64.0.3").await;
    let (b1, r1b) = wire(&b, "up0", "100.64.0.4", (&r1, &name("r1")), "dn1", "100.64.0.5").await;
    let (b2, r2b) = wire(&b, "up1", "100.64.0.6", (&r2, &name("r2")), "dn1", "100.64.0.7").await;
    // b's host address, a /32 on its first uplink.
    b.add_address(b1, IpAddr::V4(ip("10.9.0.2")), 32).await.expect("b's address");
    let both = |first: (u32, &str), second: (u32, &str)| {
        vec![Hop { index: first.0, gateway: Some(ip(first.1)) }, Hop { index: second.0, gateway: Some(ip(second.1)) }]
    };
    a.replace_route(ip("10.9.0.2"), 32, &both((a1, "100.64.0.1"), (a2, "100.64.0.3"))).await.expect("a's ECMP route");
    // The routers reach a's uplinks directly (their /31s); b over their uplinks.
    for (router, up, toward_b) in [(&r1, r1b, "100.64.0.4"), (&r2, r2b, "100.64.0.6")] {
        router.replace_route(ip("10.9.0.2"), 32, &[Hop { index: up, gateway: Some(ip(toward_b)) }]).await.expect("up");
    }
    // A connection from a leaves from the address of the uplink its flow
    // hashed to: b answers each uplink's /31 over the router on its path.
    b.replace_route(ip("100.64.0.0"), 31, &[Hop { index: b1, gateway: Some(ip("100.64.0.5")) }])
        .await
        .expect("back over r1");
    b.replace_route(ip("100.64.0.2"), 31, &[Hop { index: b2, gateway: Some(ip("100.64.0.7")) }])
        .await
        .expect("back over r2");
    // Replacing is idempotent, and the route reads back with both hops.
    a.replace_route(ip("10.9.0.2"), 32, &both((a1, "100.64.0.1"), (a2, "100.64.0.3"))).await.expect("again");
    let routes = a.routes_v4().await.expect("routes");
    let ecmp = routes.iter().find(|r| r.destination == ip("10.9.0.2")).expect("the route");
    assert_eq!((ecmp.prefix_len, ecmp.hops.len()), (32, 2), "{routes:?}");

    let listener = in_namespace(&name("b"), || TcpListener::bind("10.9.0.2:7000").expect("listen"));
    listener.set_nonblocking(false).expect("blocking");
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(48) {
            drop(stream);
        }
    });
    let before = (rx_packets(&name("r1"), "dn0"), rx_packets(&name("r2"), "dn0"));
    let source = name("a");
    let connected = in_namespace(&source, || {
        (0..48)
            .filter(|_| {
                TcpStream::connect_timeout(&SocketAddr::from((ip("10.9.0.2"), 7000)), Duration::from_secs(3)).is_ok()
            })
            .count()
    });
    assert_eq!(connected, 48);
    server.join().expect("server");
    let after = (rx_packets(&name("r1"), "dn0"), rx_packets(&name("r2"), "dn0"));
    assert!(
        after.0 > before.0 + 10 && after.1 > before.1 + 10,
        "both routers carried flows: r1 {before:?} -> {after:?}"
    );

    // One router's link down: the kernel skips the dead next hop.
    a.set_link_down(a2).await.expect("down");
    let listener = in_namespace(&name("b"), || TcpListener::bind("10.9.0.2:7001").expect("listen"));
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            drop(stream);
        }
    });
    let connected = in_namespace(&source, || {
        (0..16)
            .filter(|_| {
                TcpStream::connect_timeout(&SocketAddr::from((ip("10.9.0.2"), 7001)), Duration::from_secs(3)).is_ok()
            })
            .count()
    });
    assert_eq!(connected, 16, "every connection took the router that is left");
    server.join().expect("server");
}

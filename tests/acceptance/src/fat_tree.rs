//! The k = 4 fat tree of examples/terraform/scenarios/fat-tree as a user
//! runs it, on either runtime: 16 EPMs behind 20 routers, every EPM
//! reaching every other over the routed fabric (12 of them, then 16 as
//! hosts grows in place), flows between two pods spread over all four core
//! switches (their ports' counters), the core links shaped by a
//! link_profile in place, the pods still reaching each other with one core
//! switch held down by a `merak_fault` (and its links and routes back when
//! the fault goes), EVMs pinging over it all, and an empty plan. Every
//! router's and EPM's network namespace is on this host (a pod's too, on
//! the stand-in and the real node), so counters and commands are read
//! there directly.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::{Workspace, repo_root};

/// The scenario's main.tf; `provider`: a provider block to use instead of
/// its own (the local runtime's).
pub fn example(provider: Option<&str>) -> String {
    let example = std::fs::read_to_string(repo_root().join("examples/terraform/scenarios/fat-tree/main.tf"))
        .expect("the scenario");
    let local = "provider \"merak\" {\n  local {\n    state_dir = var.state_dir\n  }\n}\n";
    assert!(example.contains(local), "the scenario's provider block moved");
    match provider {
        Some(block) => example.replace(local, block),
        None => example,
    }
}

/// Runs `work` on a thread inside a namespace (its sockets are made there).
fn in_namespace<T: Send + 'static>(namespace: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let fd = merak_netdev::netns::open_fd(namespace).expect("the namespace");
    std::thread::spawn(move || {
        merak_netdev::netns::enter(&fd).expect("enter it");
        work()
    })
    .join()
    .expect("the thread")
}

/// Packets a device of a namespace received (its own /proc/net/dev).
fn rx_packets(namespace: &str, device: &str) -> u64 {
    let device = format!("{device}:");
    in_namespace(namespace, move || {
        let table = std::fs::read_to_string("/proc/thread-self/net/dev").expect("/proc/net/dev");
        let line = table.lines().find(|l| l.trim_start().starts_with(&device)).map(str::to_string).unwrap_or_default();
        line.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or(0)
    })
}

/// A command's output in a namespace.
fn run_in(namespace: &str, command: &[&str]) -> String {
    let output = Command::new("ip").args(["netns", "exec", namespace]).args(command).output().expect("ip netns exec");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn output(ws: &Workspace, name: &str) -> String {
    ws.ok(&["output", "-raw", name])
}

/// The scenario in `ws` (initialized, [`example`] written) with `vars`
/// (`name=...` and what the runtime needs); `namespace_of` names a router's
/// or EPM's network namespace once applied. The caller destroys and checks
/// that nothing is left.
pub fn routes_over_every_core_and_survives_one(ws: &Workspace, vars: &[String], namespace_of: &dyn Fn(&str) -> String) {
    let with = |command: &[&str]| -> Vec<String> {
        command.iter().map(|c| c.to_string()).chain(vars.iter().flat_map(|v| ["-var".to_string(), v.clone()])).collect()
    };
    let run = |command: &[&str]| {
        let args = with(command);
        ws.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // 12 of the 16 EPM ports first, then all: hosts grows in place.
    run(&["apply", "-auto-approve", "-var", "hosts=12"]);
    assert_eq!(output(ws, "underlay"), "132/132", "every EPM reaches every other");
    let plan = run(&["plan"]);
    assert!(plan.contains("updated in-place") && !plan.contains("must be replaced"), "{plan}");
    let plan = run(&["plan", "-var", "k=6"]);
    assert!(plan.contains("must be replaced"), "another k is another fabric: {plan}");
    run(&["apply", "-auto-approve"]);
    let fabric = output(ws, "fabric");
    assert!(fabric.starts_with("16 EPMs ready, 20 switches, 48 links, fabric 100.64.0.0/25"), "{fabric}");
    assert_eq!(output(ws, "underlay"), "240/240", "every EPM reaches every other");
    let overlay = output(ws, "overlay");
    let (got, of) = overlay.split_once('/').expect("a fraction");
    assert!(got == of && got != "0", "EVMs over the fabric: {overlay}");
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(plan.status.code(), Some(0), "{}", String::from_utf8_lossy(&plan.stdout));

    // Flows from pod 0 to pod 3 take every core: each core's port toward
    // pod 0 carries their replies... and toward pod 3 their requests.
    let namespace = namespace_of;
    let to = Ipv4Addr::new(10, 251, 0, 16);
    let listener = in_namespace(&namespace("epm-15"), move || {
        TcpListener::bind(SocketAddr::from((to, 7100))).expect("listen on epm-15")
    });
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            drop(stream);
        }
    });
    let cores: Vec<String> = (0..4).map(|c| namespace(&format!("core-{c}"))).collect();
    let before: Vec<u64> = cores.iter().map(|core| rx_packets(core, "dn0")).collect();
    let connected = in_namespace(&namespace("epm-0"), move || {
        (0..64)
            .filter(|_| TcpStream::connect_timeout(&SocketAddr::from((to, 7100)), Duration::from_secs(3)).is_ok())
            .count()
    });
    assert_eq!(connected, 64);
    server.join().expect("the server");
    let after: Vec<u64> = cores.iter().map(|core| rx_packets(core, "dn0")).collect();
    for (core, (b, a)) in before.iter().zip(&after).enumerate() {
        // What pod 0's aggregation routers and the core hold, to tell a
        // route without the hop from a link that does not carry.
        let seen = || {
            ["agg-0-0", "agg-0-1", &format!("core-{core}")]
                .map(|node| {
                    let namespace = namespace(node);
                    let links = run_in(&namespace, &["ip", "-s", "-d", "link", "show"]);
                    format!("{node} routes:\n{}{node} links:\n{links}", run_in(&namespace, &["ip", "route"]))
                })
                .join("\n")
        };
        assert!(a > b, "core-{core} carried none of 64 flows between pods: {before:?} -> {after:?}\n{}", seen());
    }

    // The core links shaped, in place: all 16 carry it, pings still pass.
    run(&["apply", "-auto-approve", "-var", "core_rate_mbit=100"]);
    assert_eq!(output(ws, "impaired"), "16", "every aggregation-to-core link");
    assert_eq!(output(ws, "underlay"), "240/240");
    let shaped = run_in(&namespace("core-2"), &["tc", "qdisc", "show", "dev", "dn1"]);
    assert!(shaped.contains("tbf 6d72: root"), "{shaped}");

    // core-0 held down by a fault: the aggregation switches skip it.
    let core_down = ["-var", "core_rate_mbit=100", "-var", "cut_core=true"];
    run(&[&["apply", "-auto-approve"][..], &core_down].concat());
    assert_eq!(output(ws, "down_links"), "4", "core-0's link to each pod");
    assert_eq!(output(ws, "underlay"), "240/240", "the pods reach each other over the other three cores");
    let core_links = run_in(&namespace("core-0"), &["ip", "-o", "link", "show"]);
    let downlinks: Vec<&str> = core_links.lines().filter(|l| l.contains(": dn")).collect();
    assert_eq!(downlinks.len(), 4, "{core_links}");
    assert!(downlinks.iter().all(|l| !l.contains(",UP")), "every link of core-0 down: {core_links}");
    let plan = ws.terraform(
        &with(&[&["plan", "-detailed-exitcode"][..], &core_down].concat())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(plan.status.code(), Some(0), "held as declared: {}", String::from_utf8_lossy(&plan.stdout));
    // The fault gone, core-0 carries flows again, with its routes back.
    run(&["apply", "-auto-approve", "-var", "core_rate_mbit=100"]);
    let core_links = run_in(&namespace("core-0"), &["ip", "-o", "link", "show"]);
    assert!(core_links.lines().filter(|l| l.contains(": dn")).all(|l| l.contains(",UP")), "{core_links}");
    let routes = run_in(&namespace("core-0"), &["ip", "route"]);
    assert!(routes.lines().filter(|l| l.contains(" dev dn")).count() >= 4, "a route to every pod: {routes}");
    run(&["apply", "-refresh-only", "-auto-approve", "-var", "core_rate_mbit=100"]);
    assert_eq!(output(ws, "underlay"), "240/240");
}

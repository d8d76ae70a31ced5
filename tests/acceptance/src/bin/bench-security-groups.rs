//! Benchmark: security groups at scale, through real terraform.
//!
//! usage: bench-security-groups [EVMS] [EPMS] [ROUNDS]   (default 10000 100 2)
//!
//! Two EVM groups of EVMS/2 each over EPMS EPMs, every EVM in two security
//! groups of ten rules (TCP ports, prefixes, another group, self). Prints,
//! per round, the apply of the EVM groups without security groups (the
//! floor of this benchmark: the same EVMs, no firewall) and with them,
//! alternating so that a busy host weighs on both alike, and their ratio
//! (best of the rounds); then, on the topology with groups, the apply that
//! changes one rule (every EPM's table replaced), and the nftables objects
//! one EPM holds (chains, rules, set and map elements: they grow with EVM
//! groups and rules, not with EVMs).

use std::time::{Duration, Instant};

use merak_acceptance::Workspace;
use merak_acceptance::host::settle;

/// The topology alone.
fn topology(epms: u32) -> String {
    let racks = epms.div_ceil(10);
    format!(
        "resource \"merak_topology\" \"dc\" {{\n  name = \"{{name}}\"\n  racks = {racks}\n  hosts_per_rack = 10\n  hosts = {epms}\n  data_plane_cidr = \"10.99.0.0/16\"\n}}\n"
    )
}

/// Ten ingress rules of a group, and egress anywhere; `peer`: another
/// group's id (none: the group itself), `port`: the first rule's port (the
/// one the benchmark edits).
fn security_group(name: &str, peer: Option<&str>, port: u32) -> String {
    let peer = match peer {
        Some(id) => format!("source_security_group_ids = [{id}]"),
        None => "self = true".to_string(),
    };
    let mut rules = format!(
        "  ingress {{\n    protocol = \"tcp\"\n    from_port = {port}\n    {peer}\n  }}\n\
         \x20 ingress {{\n    protocol = \"icmp\"\n    self = true\n  }}\n"
    );
    for k in 0..8 {
        rules += &format!(
            "  ingress {{\n    protocol = \"{}\"\n    from_port = {}\n    to_port = {}\n    cidr_blocks = [\"172.{k}.0.0/16\", \"192.168.{k}.0/24\"]\n  }}\n",
            if k % 2 == 0 { "tcp" } else { "udp" },
            8000 + 10 * k,
            8005 + 10 * k
        );
    }
    format!(
        "resource \"merak_security_group\" \"{name}\" {{\n  vpc_id = merak_vpc.v.id\n  name = \"{name}\"\n{rules}  egress {{\n    protocol = \"all\"\n    cidr_blocks = [\"0.0.0.0/0\"]\n  }}\n}}\n"
    )
}

fn config(epms: u32, evms: u32, groups: bool, ssh_port: u32) -> String {
    let subnet_prefix = 32 - (u64::from(evms) + 3).next_power_of_two().trailing_zeros().max(2);
    let mut text = topology(epms);
    text += &format!(
        "resource \"merak_vpc\" \"v\" {{\n  topology_id = merak_topology.dc.id\n  name = \"bench\"\n  cidr = \"10.0.0.0/8\"\n}}\n\
         resource \"merak_subnet\" \"s\" {{\n  vpc_id = merak_vpc.v.id\n  name = \"s\"\n  cidr = \"10.0.0.0/{subnet_prefix}\"\n}}\n"
    );
    if groups {
        text += &security_group("ssh", None, ssh_port);
        text += &security_group("web", Some("merak_security_group.ssh.id"), 80);
        text += &security_group("db", Some("merak_security_group.web.id"), 5432);
    }
    for (name, second) in [("front", "web"), ("back", "db")] {
        let ids = match groups {
            true => format!("  security_group_ids = [merak_security_group.ssh.id, merak_security_group.{second}.id]\n"),
            false => String::new(),
        };
        text += &format!(
            "resource \"merak_evm_group\" \"{name}\" {{\n  subnet_id = merak_subnet.s.id\n  name = \"{name}\"\n  evm_count = {}\n{ids}}}\n",
            evms / 2
        );
    }
    text
}

fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let result = work();
    (result, started.elapsed())
}

/// nftables objects in one router namespace's table: (chains, rules, set
/// elements, verdict map elements).
fn objects(namespace: &str) -> (usize, usize, usize, usize) {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "list", "table", "inet", "merak"])
        .output()
        .expect("run nft");
    let text = String::from_utf8_lossy(&output.stdout);
    let (mut chains, mut rules, mut elements, mut map_elements) = (0, 0, 0, 0);
    let mut in_set = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("chain ") {
            chains += 1;
            in_set = false;
        } else if line.starts_with("set ") {
            in_set = true;
        } else if let Some(list) = line.strip_prefix("elements = {") {
            elements += list.split(',').filter(|e| !e.trim().trim_end_matches('}').is_empty()).count();
        } else if in_set && !line.is_empty() && line != "}" && !line.starts_with("type") && !line.starts_with("flags") {
            // Continuation lines of a long element list.
            elements += line.split(',').filter(|e| !e.trim().trim_end_matches('}').is_empty()).count();
        } else if !in_set
            && !line.is_empty()
            && line != "}"
            && !line.starts_with("type ")
            && !line.starts_with("table ")
        {
            rules += 1;
            if let Some(map) = line.split_once("vmap {") {
                map_elements += map.1.matches("goto").count();
            }
        }
    }
    (chains, rules, elements, map_elements)
}

fn main() {
    let numbers: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let evms = numbers.first().copied().unwrap_or(10_000);
    let epms = numbers.get(1).copied().unwrap_or(100);
    let rounds = numbers.get(2).copied().unwrap_or(2).max(1);

    println!("== security groups: {evms} EVMs over {epms} EPMs, each EVM in 2 groups of 10 rules");
    let ws = Workspace::new("benchsg");
    ws.write_config(&topology(epms));
    ws.init();
    let (_, took) = timed(|| ws.apply());
    println!("topology apply ({epms} EPMs): {:.2} s", took.as_secs_f64());

    let mut without = Duration::MAX;
    let mut with = Duration::MAX;
    for round in 1..=rounds {
        for groups in [false, true] {
            settle();
            ws.write_config(&config(epms, evms, groups, 22));
            let (_, took) = timed(|| ws.apply());
            let ready: u64 = ["front", "back"]
                .iter()
                .map(|g| ws.resource_values(&format!("merak_evm_group.{g}"))["ready_count"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(ready, u64::from(evms / 2 * 2), "every EVM ready");
            let slot = if groups { &mut with } else { &mut without };
            *slot = (*slot).min(took);
            println!(
                "round {round}: EVM apply {} groups {:>8.2} s",
                if groups { "with   " } else { "without" },
                took.as_secs_f64()
            );
            if groups && round == rounds {
                break;
            }
            ws.write_config(&topology(epms));
            ws.apply();
        }
    }
    println!(
        "EVM apply with groups {:.2} s, without {:.2} s: {:.3}x (goal: at most 1.15x)",
        with.as_secs_f64(),
        without.as_secs_f64(),
        with.as_secs_f64() / without.as_secs_f64()
    );

    settle();
    let ((code, _), noop) = timed(|| ws.plan());
    assert_eq!(code, 0, "the plan after apply is not empty");
    // Terraform refreshes every resource before it plans; the edit itself is
    // the apply without that (-refresh=false), timed apart.
    ws.write_config(&config(epms, evms, true, 2222));
    let (_, edit) = timed(|| ws.ok(&["apply", "-auto-approve", "-refresh=false"]));
    ws.write_config(&config(epms, evms, true, 2223));
    let (_, whole) = timed(|| ws.apply());
    println!(
        "one rule changed (every EPM's table replaced): {:.2} s without Terraform's refresh (goal: under 2 s); {:.2} s with it (a no-op plan: {:.2} s)",
        edit.as_secs_f64(),
        whole.as_secs_f64(),
        noop.as_secs_f64()
    );
    let (code, _) = ws.plan();
    assert_eq!(code, 0, "the plan after the edit is not empty");

    let namespace = format!("merak-{}.epm-0.r.bench", ws.name);
    let (chains, rules, elements, map_elements) = objects(&namespace);
    println!(
        "nftables objects on epm-0: {chains} chains, {rules} rules, {elements} set elements, {map_elements} map elements ({} EVMs there)",
        evms / epms
    );
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

//! The security-groups scenario of examples/terraform/scenarios as a user
//! runs it, on either runtime: SSH-like TCP reaching the web tier from the
//! bastion group and refused from the database tier, ICMP only within a
//! group, a reply passing where a new connection the other way is refused,
//! the SSH rule following the bastion group as it scales in place, the rule
//! edited in place moving SSH to another port without rebuilding an EVM,
//! and pingall checking the whole policy both ways. Traffic is sent from
//! inside the EVMs with `merak exec` (busybox `nc` and `ping`), so it
//! crosses the EPMs' rulesets exactly as an EVM's own would.
//!
//! TCP is probed against closed ports: a port that answers with a reset
//! was reached (the SYN passed the receiver's ingress and the reset its
//! sender's), one that stays silent was filtered (the rules drop).

use crate::operate::{Merak, said};
use crate::{Workspace, repo_root};

/// The scenario's main.tf; `provider`: a provider block to use instead of
/// its own (the local runtime's).
pub fn example(provider: Option<&str>) -> String {
    let example = std::fs::read_to_string(repo_root().join("examples/terraform/scenarios/security-groups/main.tf"))
        .expect("the scenario");
    let local = "provider \"merak\" {\n  local {\n    state_dir = var.state_dir\n  }\n}\n";
    assert!(example.contains(local), "the scenario's provider block moved");
    match provider {
        Some(block) => example.replace(local, block),
        None => example,
    }
}

/// Whether a TCP connection from EVM `from` to `ip:port` reaches it: true
/// when the EVM's kernel answered (refused: nothing listens), false when
/// nothing came back (dropped on the way).
pub fn tcp_reaches(merak: &Merak, from: &str, ip: &str, port: u16) -> bool {
    let output = merak.exec(from, &["busybox", "nc", "-w", "2", ip, &port.to_string()]);
    let said = said(&output);
    if said.contains("refused") {
        true
    } else if said.contains("timed out") {
        false
    } else {
        panic!("{from} -> {ip}:{port}: neither refused nor timed out: {said}")
    }
}

/// Whether EVM `from` gets an echo reply from `ip` (two tries).
pub fn pings(merak: &Merak, from: &str, ip: &str) -> bool {
    merak.exec(from, &["ping", "-c", "2", "-W", "1", ip]).status.success()
}

/// The scenario in `ws` (initialized, [`example`] written) with `vars`
/// (`name=...` and what the runtime needs), `merak` pointed at the
/// topology. The caller destroys and checks that nothing is left.
pub fn enforced_as_declared(ws: &Workspace, vars: &[String], merak: &Merak) {
    let run = |extra: &[&str]| {
        let args: Vec<String> = extra
            .iter()
            .map(|c| c.to_string())
            .chain(vars.iter().flat_map(|v| ["-var".to_string(), v.clone()]))
            .collect();
        ws.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&["apply", "-auto-approve"]);
    let pingall = ws.ok(&["output", "-raw", "pingall"]);
    assert!(pingall.ends_with(", 0 unexpected"), "{pingall}: {}", ws.ok(&["output", "failures"]));
    assert!(!pingall.starts_with("0/") && !pingall.contains(" 0/0 blocked"), "probes both ways: {pingall}");
    let ip = |evm: &str| merak.eth0_address(evm);
    let (web0, web1, db0, db1) = (ip("web-0"), ip("web-1"), ip("db-0"), ip("db-1"));

    // SSH-like TCP: from the bastions, not from the database tier; other
    // ports of the web tier stay closed to the bastions too.
    assert!(tcp_reaches(merak, "bastion-0", &web0, 22), "bastion -> web:22");
    assert!(!tcp_reaches(merak, "db-0", &web0, 22), "db -> web:22 is refused");
    assert!(!tcp_reaches(merak, "bastion-0", &web0, 80), "bastion -> web:80 is refused");
    // Stateful: the web host's reply came back to the bastion above, but a
    // connection the web host opens to the bastion is refused.
    let bastion0 = ip("bastion-0");
    assert!(!tcp_reaches(merak, "web-0", &bastion0, 22), "web -> bastion:22 is refused");
    // ICMP within a group only; the default group answers its own.
    assert!(pings(merak, "web-1", &web0), "web -> web");
    assert!(!pings(merak, "bastion-0", &web1), "bastion -> web ping is refused");
    assert!(pings(merak, "db-0", &db1), "db -> db (default group)");
    assert!(!pings(merak, "web-0", &db0), "web -> db is refused by the default group");

    // The bastion group scales in place; the web tier's rule follows it.
    let plan = run(&["plan", "-var", "bastions=2"]);
    assert!(plan.contains("1 to change, 0 to destroy"), "{plan}");
    run(&["apply", "-auto-approve", "-var", "bastions=2"]);
    assert!(tcp_reaches(merak, "bastion-1", &web1, 22), "the new bastion -> web:22");

    // The rule edited in place: SSH moves to 2222; no EVM is rebuilt.
    let plan = run(&["plan", "-var", "bastions=2", "-var", "ssh_port=2222"]);
    assert!(plan.contains("merak_security_group.web will be updated in-place"), "{plan}");
    assert!(plan.contains("1 to change, 0 to destroy") && !plan.contains("merak_evm_group.web will"), "{plan}");
    run(&["apply", "-auto-approve", "-var", "bastions=2", "-var", "ssh_port=2222"]);
    assert!(!tcp_reaches(merak, "bastion-0", &web0, 22), "port 22 closed by the edit");
    assert!(tcp_reaches(merak, "bastion-0", &web0, 2222), "port 2222 opened by the edit");
    assert_eq!(ip("web-0"), web0, "the same EVM");
    let pingall = ws.ok(&["output", "-raw", "pingall"]);
    assert!(pingall.ends_with(", 0 unexpected"), "{pingall}");
    let plan = run(&["plan", "-var", "bastions=2", "-var", "ssh_port=2222"]);
    assert!(plan.contains("No changes"), "{plan}");
}

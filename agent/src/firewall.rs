//! Security groups in a VPC's router namespace: the [`Firewall`] of the
//! overlay goal as one nftables table, `inet merak`, replaced whole in one
//! transaction (through libnftables, as `nft -f` would: the old table and
//! the new one never both apply, and a failure leaves the old one).
//!
//! Every packet the namespace forwards passes two base chains on the
//! forward hook (bridged ones too: `br_netfilter` hands bridged IPv4 to the
//! inet hooks, and this kernel's bridge family has no conntrack):
//!
//! ```text
//! egress   (priority filter)      ct state established,related accept
//!                                 ip saddr vmap { <ports of group g> : goto ports-g-out, ... }
//! ingress  (priority filter + 1)  ct state established,related accept
//!                                 ip daddr vmap { <ports of group g> : goto ports-g-in, ... }
//! ports-g-out: jump sg-a-out; jump sg-b-out; drop      (one chain per EVM group)
//! sg-a-out:    <a's egress rules, each ending in accept>
//! set members-a: <a's member addresses>                 (peers of rules naming a)
//! ```
//!
//! A port is known by its address (unique in the VPC), so a packet between
//! two ports is checked against the sender's egress and the receiver's
//! ingress on each EPM it crosses, with the same verdict. What the ruleset
//! holds grows with ports plus rules: a group's rules are written once,
//! the ports of an EVM group are a few address ranges, and membership is a
//! set that a rule names. `accept` in a chain jumped to ends the base
//! chain, so one allowing group suffices; the other base chain still runs.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use merak_proto::agent::{Firewall, SecurityRule};

use crate::error::OverlayError;
use crate::netns;

/// The table's name, in the inet family.
pub const TABLE: &str = "merak";
/// Rules, groups and addresses a goal may hold: far above any real VPC,
/// well below what would make the ruleset text unreasonable.
const MAX_ITEMS: usize = 1_000_000;

fn invalid(what: String) -> OverlayError {
    OverlayError::Invalid(what)
}

/// A group or EVM group name: it becomes part of chain and set names.
fn name(kind: &str, name: &str) -> Result<(), OverlayError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(invalid(format!("{name:?} is not a {kind} name (lowercase letters, digits, '-')"))) }
}

/// Addresses as sorted, disjoint, non-adjacent inclusive intervals.
fn intervals<'a>(
    texts: impl IntoIterator<Item = &'a String>,
    parse: fn(&str) -> Option<(u32, u32)>,
) -> Result<Vec<(u32, u32)>, OverlayError> {
    let mut spans = Vec::new();
    for text in texts {
        spans.push(parse(text).ok_or_else(|| invalid(format!("{text:?} is not an IPv4 address, range or prefix")))?);
        if spans.len() > MAX_ITEMS {
            return Err(invalid(format!("more than {MAX_ITEMS} addresses in one set")));
        }
    }
    spans.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(spans.len());
    for (first, last) in spans {
        match merged.last_mut() {
            Some((_, end)) if u64::from(*end) + 1 >= u64::from(first) => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    Ok(merged)
}

/// "a.b.c.d" or "a.b.c.d-e.f.g.h".
fn parse_range(text: &str) -> Option<(u32, u32)> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let (first, last) = (u32::from(first.parse::<Ipv4Addr>().ok()?), u32::from(last.parse::<Ipv4Addr>().ok()?));
    (first <= last).then_some((first, last))
}

/// "a.b.c.d/n".
fn parse_prefix(text: &str) -> Option<(u32, u32)> {
    let (address, length) = text.split_once('/')?;
    let address = u32::from(address.parse::<Ipv4Addr>().ok()?);
    let length: u32 = length.parse().ok().filter(|l| *l <= 32)?;
    let host_bits = u32::MAX.checked_shr(length).unwrap_or(0);
    let first = address & !host_bits;
    Some((first, first | host_bits))
}

/// Set elements in nft's syntax, e.g. `10.0.1.2-10.0.1.101, 10.0.2.7`.
fn elements(spans: &[(u32, u32)]) -> String {
    let element = |&(first, last): &(u32, u32)| match first == last {
        true => Ipv4Addr::from(first).to_string(),
        false => format!("{}-{}", Ipv4Addr::from(first), Ipv4Addr::from(last)),
    };
    spans.iter().map(element).collect::<Vec<_>>().join(", ")
}

/// The match on a rule's protocol and destination ports, e.g.
/// `meta l4proto tcp th dport 22` (empty: everything).
fn protocol_match(rule: &SecurityRule) -> Result<String, OverlayError> {
    let protocol =
        u8::try_from(rule.protocol).map_err(|_| invalid(format!("protocol {} is not 0 to 255", rule.protocol)))?;
    let ports = (rule.from_port, rule.to_port);
    if ports != (0, 0) {
        if !matches!(protocol, 6 | 17) {
            return Err(invalid(format!("ports are only for TCP (6) and UDP (17), not protocol {protocol}")));
        }
        if ports.0 > ports.1 || ports.1 > 65535 {
            return Err(invalid(format!("port range {}-{} is not within 0 to 65535, low to high", ports.0, ports.1)));
        }
    }
    let named = match protocol {
        0 => return Ok(String::new()),
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        other => other.to_string(),
    };
    Ok(match ports {
        (0, 0) => format!("meta l4proto {named}"),
        (from, to) if from == to => format!("meta l4proto {named} th dport {from}"),
        (from, to) => format!("meta l4proto {named} th dport {from}-{to}"),
    })
}

/// The nft script that makes the namespace's firewall what `firewall` says:
/// the table removed (when not enforced) or replaced whole. Refuses a
/// malformed goal before anything is changed.
pub fn render(firewall: &Firewall) -> Result<String, OverlayError> {
    // Creating the table first makes the delete valid when there is none.
    let mut script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if !firewall.enforce {
        return Ok(script);
    }
    if firewall.groups.len() + firewall.ports.len() > MAX_ITEMS {
        return Err(invalid(format!("more than {MAX_ITEMS} groups")));
    }
    let mut known = HashSet::new();
    for group in &firewall.groups {
        name("security group", &group.name)?;
        if !known.insert(group.name.as_str()) {
            return Err(invalid(format!("security group {:?} is given twice", group.name)));
        }
    }
    // Sets only for groups some rule names as its peer.
    let mut peers: Vec<&str> = Vec::new();
    for rule in firewall.groups.iter().flat_map(|g| g.ingress.iter().chain(&g.egress)) {
        for peer in &rule.groups {
            if !known.contains(peer.as_str()) {
                return Err(invalid(format!("a rule names security group {peer:?}, which the goal does not hold")));
            }
            peers.push(peer);
        }
    }
    peers.sort_unstable();
    peers.dedup();

    let w = &mut script;
    let _ = writeln!(w, "table inet {TABLE} {{");
    for group in &firewall.groups {
        let members = intervals(&group.members, parse_range)?;
        if peers.binary_search(&group.name.as_str()).is_err() {
            continue;
        }
        let _ = writeln!(w, "  set members-{} {{\n    type ipv4_addr\n    flags interval", group.name);
        if !members.is_empty() {
            let _ = writeln!(w, "    elements = {{ {} }}", elements(&members));
        }
        let _ = writeln!(w, "  }}");
    }
    let mut port_names = HashSet::new();
    let mut dispatch: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for ports in &firewall.ports {
        name("EVM group", &ports.name)?;
        if !port_names.insert(ports.name.as_str()) {
            return Err(invalid(format!("EVM group {:?} is given twice", ports.name)));
        }
        if let Some(unknown) = ports.groups.iter().find(|g| !known.contains(g.as_str())) {
            return Err(invalid(format!(
                "EVM group {} is in security group {unknown:?}, which the goal does not hold",
                ports.name
            )));
        }
        let addresses = intervals(&ports.addresses, parse_range)?;
        for (direction, suffix) in [(0, "out"), (1, "in")] {
            let _ = writeln!(w, "  chain ports-{}-{suffix} {{", ports.name);
            for group in &ports.groups {
                let _ = writeln!(w, "    jump sg-{group}-{suffix}");
            }
            let _ = writeln!(w, "    drop\n  }}");
            dispatch[direction].extend(
                addresses.iter().map(|span| {
                    format!("{} : goto ports-{}-{suffix}", elements(std::slice::from_ref(span)), ports.name)
                }),
            );
        }
    }
    for group in &firewall.groups {
        for (rules, suffix, peer) in [(&group.egress, "out", "daddr"), (&group.ingress, "in", "saddr")] {
            let _ = writeln!(w, "  chain sg-{}-{suffix} {{", group.name);
            for rule in rules {
                let protocol = protocol_match(rule)?;
                let cidrs = intervals(&rule.cidrs, parse_prefix)?;
                let mut write_rule = |peer_match: String| {
                    let parts: Vec<&str> = [peer_match.as_str(), protocol.as_str(), "accept"]
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .collect();
                    let _ = writeln!(w, "    {}", parts.join(" "));
                };
                match cidrs.as_slice() {
                    [] => {}
                    [(0, u32::MAX)] => write_rule(String::new()),
                    spans => write_rule(format!("ip {peer} {{ {} }}", elements(spans))),
                }
                for peer_group in &rule.groups {
                    write_rule(format!("ip {peer} @members-{peer_group}"));
                }
            }
            let _ = writeln!(w, "  }}");
        }
    }
    for (direction, (chain, priority, address)) in
        [("egress", "filter", "saddr"), ("ingress", "filter + 1", "daddr")].into_iter().enumerate()
    {
        let _ = writeln!(w, "  chain {chain} {{\n    type filter hook forward priority {priority}; policy accept;");
        let _ = writeln!(w, "    ct state established,related accept\n    ct state invalid drop");
        if !dispatch[direction].is_empty() {
            let _ = writeln!(w, "    ip {address} vmap {{ {} }}", dispatch[direction].join(", "));
        }
        let _ = writeln!(w, "  }}");
    }
    let _ = writeln!(w, "}}");
    Ok(script)
}

/// Makes the router namespace's firewall what `firewall` says. Run on
/// every push of the goal, so a table changed or removed by hand is put
/// back by the next apply (a VPC that never had a security group carries no
/// firewall and costs nothing).
pub async fn apply(namespace: &str, firewall: &Firewall) -> Result<(), OverlayError> {
    let started = std::time::Instant::now();
    let script = render(firewall)?;
    let bytes = script.len();
    let result = run_nft(namespace, script).await;
    tracing::debug!(namespace, bytes, elapsed = ?started.elapsed(), "security groups applied");
    result
}

/// Runs `script` inside the namespace, through libnftables: one kernel
/// transaction.
async fn run_nft(namespace: &str, script: String) -> Result<(), OverlayError> {
    let netns = netns::open_fd(namespace)?;
    let name = namespace.to_string();
    let outcome = tokio::task::spawn_blocking(move || crate::nftables::run_in(&name, netns, &script))
        .await
        .map_err(|e| invalid(format!("the nftables task of {namespace} failed: {e}")))?;
    outcome.map_err(|e| invalid(format!("nftables refused the security groups of {namespace}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use merak_proto::agent::{PortSet, SecurityGroup};

    fn rule(protocol: u32, ports: (u32, u32), cidrs: &[&str], groups: &[&str]) -> SecurityRule {
        SecurityRule {
            protocol,
            from_port: ports.0,
            to_port: ports.1,
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn firewall() -> Firewall {
        Firewall {
            enforce: true,
            groups: vec![
                SecurityGroup {
                    name: "ssh".into(),
                    ingress: vec![rule(6, (22, 22), &[], &["bastion"])],
                    egress: vec![rule(0, (0, 0), &["0.0.0.0/0"], &[])],
                    members: strings(&["10.0.1.2-10.0.1.11"]),
                },
                SecurityGroup {
                    name: "bastion".into(),
                    ingress: vec![rule(1, (0, 0), &["10.0.0.0/8", "10.9.0.0/16", "192.168.1.7/24"], &[])],
                    egress: vec![],
                    members: strings(&["10.0.2.3", "10.0.2.2", "10.0.2.4-10.0.2.9"]),
                },
            ],
            ports: vec![
                PortSet { name: "web".into(), addresses: strings(&["10.0.1.2-10.0.1.11"]), groups: strings(&["ssh"]) },
                PortSet {
                    name: "jump".into(),
                    addresses: strings(&["10.0.2.2-10.0.2.9"]),
                    groups: strings(&["bastion"]),
                },
            ],
        }
    }

    #[test]
    fn renders_each_group_once_and_dispatches_by_address() {
        let script = render(&firewall()).unwrap();
        assert!(script.starts_with("table inet merak\ndelete table inet merak\ntable inet merak {\n"), "{script}");
        // Only the group a rule names gets a set, its members merged.
        assert!(
            script.contains(
                "set members-bastion {\n    type ipv4_addr\n    flags interval\n    elements = { 10.0.2.2-10.0.2.9 }"
            ),
            "{script}"
        );
        assert!(!script.contains("set members-ssh"), "{script}");
        assert!(script.contains("ip saddr @members-bastion meta l4proto tcp th dport 22 accept"), "{script}");
        // Anywhere needs no address match; nested prefixes merge.
        assert!(script.contains("chain sg-ssh-out {\n    accept\n  }"), "{script}");
        assert!(
            script.contains("ip saddr { 10.0.0.0-10.255.255.255, 192.168.1.0-192.168.1.255 } meta l4proto icmp accept"),
            "{script}"
        );
        assert!(script.contains("chain ports-web-in {\n    jump sg-ssh-in\n    drop\n  }"), "{script}");
        assert!(
            script.contains(
                "ip daddr vmap { 10.0.1.2-10.0.1.11 : goto ports-web-in, 10.0.2.2-10.0.2.9 : goto ports-jump-in }"
            ),
            "{script}"
        );
        assert!(script.contains("type filter hook forward priority filter + 1; policy accept;"), "{script}");
    }

    #[test]
    fn not_enforced_removes_the_table() {
        let script = render(&Firewall { enforce: false, ..firewall() }).unwrap();
        assert_eq!(script, "table inet merak\ndelete table inet merak\n");
    }

    #[test]
    fn malformed_goals_are_refused_before_anything_changes() {
        let refused = |change: fn(&mut Firewall)| {
            let mut goal = firewall();
            change(&mut goal);
            render(&goal).unwrap_err().to_string()
        };
        assert!(refused(|f| f.groups[0].name = "ssh; flush ruleset".into()).contains("not a security group name"));
        assert!(refused(|f| f.groups[1].name = "ssh".into()).contains("given twice"));
        assert!(refused(|f| f.groups[0].ingress[0].groups = strings(&["nobody"])).contains("does not hold"));
        assert!(refused(|f| f.ports[0].groups = strings(&["nobody"])).contains("does not hold"));
        assert!(refused(|f| f.groups[0].members = strings(&["10.0.1.9-10.0.1.2"])).contains("not an IPv4"));
        assert!(refused(|f| f.groups[1].ingress[0].cidrs = strings(&["10.0.0.0/33"])).contains("not an IPv4"));
        assert!(refused(|f| f.groups[1].ingress[0].from_port = 7).contains("only for TCP"));
        assert!(refused(|f| f.groups[0].ingress[0].from_port = 80).contains("low to high"));
        assert!(refused(|f| f.groups[0].ingress[0].protocol = 256).contains("0 to 255"));
    }

    #[test]
    fn a_rule_of_another_protocol_is_by_number() {
        let rule = rule(132, (0, 0), &["10.0.0.0/8"], &[]);
        assert_eq!(protocol_match(&rule).unwrap(), "meta l4proto 132");
    }
}

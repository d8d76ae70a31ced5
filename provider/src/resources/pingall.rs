//! `merak_pingall`: connectivity checked from inside the EVMs (the overlay:
//! pairs in each subnet, pairs across subnets of each VPC, which must
//! answer, and pairs across VPCs, which must not), or between the EPMs
//! themselves over the data plane (the underlay, `scope = "underlay"`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use crate::controller::{Controller, EvmInfo, PingSource, Probe};
use crate::model::security_group::{End, VpcPolicy};
use merak_tfplugin::cty::{Type, Value};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, Schema};

use super::{known_str, runtime_error};
use merak_tfplugin::provider::DataSource;

pub struct Pingall;

const DEFAULT_SAMPLES: i64 = 10;
const MAX_SAMPLES: i64 = 10_000;
/// Long enough for a first ping to resolve ARP even if one request is lost.
const DEFAULT_TIMEOUT_MS: i64 = 2000;
/// Subnets with at most this many EVMs are checked pair by pair.
const ALL_PAIRS_UP_TO: usize = 6;
const FAILURES_SHOWN: usize = 10;
/// Underlays with at most this many EPMs are checked pair by pair.
const ALL_EPM_PAIRS_UP_TO: usize = 32;
const OVERLAY: &str = "overlay";
const UNDERLAY: &str = "underlay";

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    version: 0,
    block: Block {
        description: "Pings and reports what answered. With `scope = \"overlay\"` (the default), from \
            inside EVM namespaces: every pair in small subnets and `samples` pairs in larger ones, \
            `samples` pairs between each two subnets of a VPC (all must answer), and one pair between \
            each two VPCs (must not answer); read it after the EVMs exist, e.g. with `depends_on` on \
            the groups. With `scope = \"underlay\"`, from each EPM to others' data-plane addresses: \
            every pair up to 32 EPMs; above, each EPM to the next and to the one half-way round, and \
            `samples` pairs more. All must answer. A pair that must answer and does not is pinged once \
            more before it counts (one lost packet is not a broken path).",
        attributes: vec![
            Attribute::computed("id", Type::String, "The topology."),
            Attribute::required("topology_id", Type::String, "The `id` of the `merak_topology`."),
            Attribute::optional(
                "scope",
                Type::String,
                "`overlay` (default): between EVMs. `underlay`: between EPMs, over the data plane.",
            ),
            Attribute::optional(
                "samples",
                Type::Number,
                "Pairs per subnet (and per pair of subnets), or more EPM pairs in a large underlay, when there are too many to try all; default 10.",
            ),
            Attribute::optional(
                "timeout_ms",
                Type::Number,
                "How long each ping waits for its reply; default 2000 (a first ping also waits for ARP).",
            ),
            Attribute::optional(
                "full_size",
                Type::Bool,
                "Pings carry the largest payload the sending EVM's MTU allows, with DF set, so a reply proves that \
                 full-size packets cross the overlay unfragmented (EVMs' MTU is the underlay's less the VXLAN \
                 header; on the kubernetes runtime the pod network's less two). Default false: small pings.",
            ),
            Attribute::computed(
                "sent",
                Type::Number,
                "Probes tried: `expected_replies` plus `denied_probes` plus `isolation_probes`.",
            ),
            Attribute::computed(
                "expected_replies",
                Type::Number,
                "Probes within a VPC that its security groups (if it has any) allow, each of which must get a reply (reachable as declared).",
            ),
            Attribute::computed(
                "replies",
                Type::Number,
                "Of those, the probes that got their reply. Equal to `expected_replies` when every EVM reaches every other its VPC lets it.",
            ),
            Attribute::computed(
                "denied_probes",
                Type::Number,
                "Probes within a VPC that its security groups deny (no ICMP rule lets the sender's egress or the receiver's ingress pass it), each of which must get no reply. In a VPC with security groups, one probe per ordered pair of EVM groups comes on top of the samples, so every relation the groups declare is tried.",
            ),
            Attribute::computed(
                "denied_kept",
                Type::Number,
                "Of those, the probes that got no reply, as declared. Equal to `denied_probes` when the groups are enforced as declared.",
            ),
            Attribute::computed(
                "isolation_probes",
                Type::Number,
                "Probes from one VPC to an address of another, each of which must get no reply (isolation).",
            ),
            Attribute::computed(
                "isolation_kept",
                Type::Number,
                "Of those, the probes that got no reply, as they must. Equal to `isolation_probes` when VPCs are isolated.",
            ),
            Attribute::computed(
                "unexpected",
                Type::Number,
                "Probes whose outcome was wrong: no reply where one is due, a reply that security groups deny, a reply across VPCs, or a ping that could not be sent (its EVM is gone: the group's `ready_count` shows it too). 0 means the network is right.",
            ),
            Attribute::computed("failures", Type::list(Type::String), "The first unexpected outcomes, described."),
        ],
        blocks: Vec::new(),
    },
});

/// How to ping, as configured and checked.
struct Settings {
    samples: usize,
    timeout_ms: u32,
    underlay: bool,
}

/// `samples` and `timeout_ms`, each a whole number in its range (or its
/// default when left out), and the scope.
fn settings(config: &Value) -> Result<Settings, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let underlay = match config.attr("scope") {
        Value::Null | Value::Unknown => false,
        value => match value.as_str() {
            Some(OVERLAY) => false,
            Some(UNDERLAY) => true,
            _ => {
                let detail = format!(
                    "scope is {}; use \"{OVERLAY}\" (between EVMs) or \"{UNDERLAY}\" (between EPMs).",
                    value.describe()
                );
                diagnostics.push(Diagnostic::attribute_error(&["scope"], "Invalid scope", detail));
                false
            }
        },
    };
    if underlay && config.attr("full_size").as_bool() == Some(true) {
        let detail = "full_size sizes pings by an EVM's MTU; between EPMs it does not apply. Leave it out with scope = \"underlay\".";
        diagnostics.push(Diagnostic::attribute_error(&["full_size"], "full_size is for the overlay", detail));
    }
    let mut bounded = |name: &str, default: i64, range: std::ops::RangeInclusive<i64>| match config.attr(name) {
        Value::Null | Value::Unknown => default,
        value => match value.as_i64().filter(|n| range.contains(n)) {
            Some(n) => n,
            None => {
                let detail = format!(
                    "{name} is {}; it must be a whole number from {} to {}.",
                    value.describe(),
                    range.start(),
                    range.end()
                );
                diagnostics.push(Diagnostic::attribute_error(&[name], format!("Invalid {name}"), detail));
                default
            }
        },
    };
    let samples = bounded("samples", DEFAULT_SAMPLES, 1..=MAX_SAMPLES);
    let timeout = bounded("timeout_ms", DEFAULT_TIMEOUT_MS, 10..=10_000);
    if diagnostics.has_errors() {
        return Err(diagnostics);
    }
    // In range, so the conversions are exact.
    Ok(Settings { samples: samples as usize, timeout_ms: timeout as u32, underlay })
}

/// The EPM pairs (i, j) to ping among `n`: all up to
/// [`ALL_EPM_PAIRS_UP_TO`]; above, each EPM to the next and to the one
/// half-way round (so every EPM sends and answers), and `samples` more.
fn underlay_pairs(n: usize, samples: usize) -> Vec<(usize, usize)> {
    if n <= ALL_EPM_PAIRS_UP_TO {
        return (0..n).flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j))).collect();
    }
    let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| [(i, (i + 1) % n), (i, (i + n / 2) % n)]).collect();
    pairs.extend(sample_pairs(n, samples));
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Every EPM pinging others across the underlay.
async fn underlay_probes(controller: &Controller, topology: &str, samples: usize) -> Result<Vec<Probe>, Diagnostics> {
    let tree = controller.topology_spec(topology).await.map_err(|e| runtime_error("Could not read the topology", e))?;
    let tree = tree.ok_or_else(|| {
        Diagnostic::attribute_error(
            &["topology_id"],
            "No such topology",
            format!("Topology {topology:?} does not exist."),
        )
    })?;
    let epms: Vec<crate::model::Epm> = tree.epms().collect();
    Ok(underlay_pairs(epms.len(), samples)
        .into_iter()
        .map(|(i, j)| Probe {
            from: controller.epm_ping_source(topology, &tree, &epms[i]),
            to: epms[j].ip,
            to_name: epms[j].name.clone(),
            expect_reply: true,
        })
        .collect())
}

/// A deterministic spread of `samples` (i, j) pairs, i ≠ j, over n items.
fn sample_pairs(n: usize, samples: usize) -> Vec<(usize, usize)> {
    if n < 2 {
        return Vec::new();
    }
    if n <= ALL_PAIRS_UP_TO {
        return (0..n).flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j))).collect();
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..samples)
        .map(|_| {
            loop {
                let (i, j) = (next(), next());
                if i != j {
                    break (i, j);
                }
            }
        })
        .collect()
}

/// What a probe must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Within a VPC, allowed by its security groups (if any): a reply.
    Reachable,
    /// Within a VPC, denied by its security groups: no reply.
    Denied,
    /// Across VPCs: no reply.
    Isolated,
}

/// The probes to run over `evms`, each with what it must show. In a VPC
/// with security groups, ICMP is judged by them, and one probe more per
/// ordered pair of EVM groups covers every relation the groups declare,
/// allowed and denied, without trying every pair.
pub fn probes(evms: &[EvmInfo], samples: usize, policies: &HashMap<String, VpcPolicy>) -> Vec<(Probe, Kind)> {
    const ICMP: u8 = 1;
    let mut by_subnet: BTreeMap<(&str, &str), Vec<&EvmInfo>> = BTreeMap::new();
    for evm in evms {
        by_subnet.entry((&evm.vpc, &evm.subnet)).or_default().push(evm);
    }
    let within = |from: &EvmInfo, to: &EvmInfo| {
        let allowed = policies.get(&from.vpc).is_none_or(|policy| {
            let (sender, receiver) = (End { group: &from.group, ip: from.ip }, End { group: &to.group, ip: to.ip });
            policy.allows(sender, receiver, ICMP, None)
        });
        probe(from, to, if allowed { Kind::Reachable } else { Kind::Denied })
    };
    let mut probes = Vec::new();
    for members in by_subnet.values() {
        probes.extend(sample_pairs(members.len(), samples).into_iter().map(|(i, j)| within(members[i], members[j])));
    }
    let subnets: Vec<(&(&str, &str), &Vec<&EvmInfo>)> = by_subnet.iter().collect();
    for (a, (key_a, members_a)) in subnets.iter().enumerate() {
        for (key_b, members_b) in subnets.iter().skip(a + 1) {
            if key_a.0 == key_b.0 {
                for k in 0..samples.min(members_a.len() * members_b.len()) {
                    probes.push(within(members_a[k % members_a.len()], members_b[(k * 7 + 3) % members_b.len()]));
                }
            }
        }
    }
    // Every ordered pair of EVM groups of a VPC with security groups.
    let mut by_group: BTreeMap<(&str, &str), Vec<&EvmInfo>> = BTreeMap::new();
    for evm in evms.iter().filter(|e| policies.contains_key(&e.vpc)) {
        by_group.entry((&evm.vpc, &evm.group)).or_default().push(evm);
    }
    for ((vpc_a, _), members_a) in &by_group {
        for ((vpc_b, _), members_b) in &by_group {
            let pair =
                members_a.iter().flat_map(|a| members_b.iter().map(move |b| (*a, *b))).find(|(a, b)| a.ip != b.ip);
            if let (true, Some((a, b))) = (vpc_a == vpc_b, pair) {
                probes.push(within(a, b));
            }
        }
    }
    // Across VPCs: a target whose address does not exist in the source's VPC,
    // so a reply could only come from the other VPC.
    let mut vpc_addresses: BTreeMap<&str, HashSet<std::net::Ipv4Addr>> = BTreeMap::new();
    for evm in evms {
        vpc_addresses.entry(&evm.vpc).or_default().insert(evm.ip);
    }
    for vpc_a in vpc_addresses.keys() {
        for vpc_b in vpc_addresses.keys() {
            if vpc_a == vpc_b {
                continue;
            }
            let from = evms.iter().find(|e| e.vpc == *vpc_a);
            let to = evms.iter().find(|e| e.vpc == *vpc_b && !vpc_addresses[vpc_a].contains(&e.ip));
            if let (Some(from), Some(to)) = (from, to) {
                probes.push(probe(from, to, Kind::Isolated));
            }
        }
    }
    probes
}

fn probe(from: &EvmInfo, to: &EvmInfo, kind: Kind) -> (Probe, Kind) {
    let probe = Probe {
        from: PingSource::from(from),
        to: to.ip,
        to_name: to.name.clone(),
        expect_reply: kind == Kind::Reachable,
    };
    (probe, kind)
}

#[tonic::async_trait]
impl DataSource<Controller> for Pingall {
    fn type_name(&self) -> &'static str {
        "merak_pingall"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        settings(config).err().unwrap_or_default()
    }

    async fn read(&self, controller: &Controller, config: &Value) -> Result<Value, Diagnostics> {
        let topology = known_str(config, "topology_id").unwrap_or_default();
        // Checked again here: a client may skip validation.
        let settings = settings(config)?;
        let (probes, kinds): (Vec<Probe>, Vec<Kind>) = if settings.underlay {
            let probes = underlay_probes(controller, topology, settings.samples).await?;
            let kinds = vec![Kind::Reachable; probes.len()];
            (probes, kinds)
        } else {
            let evms = controller
                .list_evms(topology, None, None)
                .await
                .map_err(|e| runtime_error("Could not list EVMs", e))?;
            let policies = controller
                .security_policies(topology)
                .await
                .map_err(|e| runtime_error("Could not read the security groups", e))?;
            probes(&evms, settings.samples, &policies).into_iter().unzip()
        };
        let full_size = config.attr("full_size").as_bool().unwrap_or(false);
        let outcomes = controller
            .ping(topology, &probes, settings.timeout_ms, full_size)
            .await
            .map_err(|e| runtime_error("Could not ping", e))?;
        let mut failures = Vec::new();
        let mut unexpected = 0;
        for ((probe, kind), outcome) in probes.iter().zip(&kinds).zip(&outcomes) {
            // A probe that could not be sent proves nothing either way.
            let what = match (outcome, kind) {
                (Ok(reached), _) if *reached == probe.expect_reply => continue,
                (Ok(_), Kind::Reachable) => "no reply".to_string(),
                (Ok(_), Kind::Denied) => "replied, though its security groups deny it".to_string(),
                (Ok(_), Kind::Isolated) => "replied across VPCs".to_string(),
                (Err(why), _) => format!("not sent: {why}"),
            };
            unexpected += 1;
            if failures.len() < FAILURES_SHOWN {
                failures.push(Value::string(format!(
                    "{} ({}) -> {} ({}): {what}",
                    probe.from.name, probe.from.ip, probe.to_name, probe.to
                )));
            }
        }
        let mut state = config.clone();
        if let Value::Map(attributes) = &mut state {
            attributes.insert("id".into(), Value::string(topology));
            let of_kind = |wanted: Kind| kinds.iter().filter(|k| **k == wanted).count() as i64;
            let as_declared = |wanted: Kind| {
                kinds
                    .iter()
                    .zip(&outcomes)
                    .filter(|(k, o)| **k == wanted && matches!(o, Ok(got) if *got == (wanted == Kind::Reachable)))
                    .count() as i64
            };
            attributes.insert("sent".into(), Value::int(probes.len() as i64));
            attributes.insert("expected_replies".into(), Value::int(of_kind(Kind::Reachable)));
            attributes.insert("replies".into(), Value::int(as_declared(Kind::Reachable)));
            attributes.insert("denied_probes".into(), Value::int(of_kind(Kind::Denied)));
            attributes.insert("denied_kept".into(), Value::int(as_declared(Kind::Denied)));
            attributes.insert("isolation_probes".into(), Value::int(of_kind(Kind::Isolated)));
            attributes.insert("isolation_kept".into(), Value::int(as_declared(Kind::Isolated)));
            attributes.insert("unexpected".into(), Value::int(unexpected));
            attributes.insert("failures".into(), Value::List(failures));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evm(vpc: &str, subnet: &str, k: u8, ip: [u8; 4]) -> EvmInfo {
        EvmInfo {
            name: format!("{subnet}-{k}"),
            group: subnet.into(),
            vpc: vpc.into(),
            subnet: subnet.into(),
            epm: format!("epm-{}", k % 2),
            ip: ip.into(),
            mac: [0; 6],
            namespace: format!("ns-{vpc}-{subnet}-{k}"),
        }
    }

    #[test]
    fn small_underlays_are_pinged_pair_by_pair_and_large_ones_through_every_epm() {
        assert_eq!(underlay_pairs(3, 10).len(), 6);
        assert!(underlay_pairs(1, 10).is_empty());
        let large = underlay_pairs(1000, 10);
        assert!(large.len() >= 2000 && large.len() <= 2010, "{}", large.len());
        for epm in 0..1000 {
            assert!(
                large.iter().any(|(i, _)| *i == epm) && large.iter().any(|(_, j)| *j == epm),
                "epm-{epm} sends and answers"
            );
        }
        assert!(large.iter().all(|(i, j)| i != j));
    }

    #[test]
    fn probes_cover_subnets_vpcs_and_isolation() {
        let evms = vec![
            evm("blue", "web", 0, [10, 0, 1, 2]),
            evm("blue", "web", 1, [10, 0, 1, 3]),
            evm("blue", "db", 0, [10, 0, 2, 2]),
            evm("red", "web", 0, [10, 0, 1, 2]),
            evm("red", "web", 1, [10, 0, 1, 9]),
        ];
        let probes: Vec<Probe> = probes(&evms, 3, &HashMap::new()).into_iter().map(|(probe, _)| probe).collect();
        let source = |p: &Probe| {
            evms.iter().find(|e| e.namespace == p.from.namespace).expect("a probe's source is an EVM").clone()
        };
        let within =
            probes.iter().filter(|p| p.expect_reply && source(p).subnet == "web" && source(p).vpc == "blue").count();
        assert!(within >= 2);
        assert!(probes.iter().any(|p| p.expect_reply
            && source(p).vpc == "blue"
            && source(p).subnet
                != evms.iter().find(|e| e.ip == p.to && e.vpc == "blue").map(|e| e.subnet.as_str()).unwrap_or("")));
        let across: Vec<_> = probes.iter().filter(|p| !p.expect_reply).collect();
        assert_eq!(across.len(), 2);
        // red -> blue must target an address red does not have itself.
        let red_to_blue = across.iter().find(|p| source(p).vpc == "red").unwrap();
        assert!(![[10, 0, 1, 2], [10, 0, 1, 9]].map(std::net::Ipv4Addr::from).contains(&red_to_blue.to));
        assert!(probes.iter().all(|p| p.from.ip != p.to || source(p).vpc != "blue"));
    }

    #[test]
    fn security_groups_decide_which_probes_must_answer() {
        use crate::model::security_group::{Protocol, Rule};
        let evms = vec![
            evm("blue", "web", 0, [10, 0, 1, 2]),
            evm("blue", "web", 1, [10, 0, 1, 3]),
            evm("blue", "db", 0, [10, 0, 2, 2]),
            evm("red", "web", 0, [10, 0, 1, 2]),
        ];
        let rule = |groups: &[&str], include_self: bool, cidrs: &[&str]| Rule {
            protocol: Protocol::Icmp,
            from_port: None,
            to_port: None,
            cidr_blocks: cidrs.iter().map(|c| c.to_string()).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            include_self,
        };
        // front answers its own; back answers front; both send anywhere.
        let anywhere = rule(&[], false, &["0.0.0.0/0"]);
        let policy = VpcPolicy {
            rules: HashMap::from([
                ("front".into(), (vec![rule(&[], true, &[])], vec![anywhere.clone()])),
                ("back".into(), (vec![rule(&["front"], false, &[])], vec![anywhere])),
            ]),
            membership: HashMap::from([("web".into(), vec!["front".into()]), ("db".into(), vec!["back".into()])]),
        };
        let probes = probes(&evms, 3, &HashMap::from([("blue".to_string(), policy)]));
        let group_of = |ip: std::net::Ipv4Addr, vpc: &str| {
            evms.iter().find(|e| e.ip == ip && e.vpc == vpc).map(|e| e.group.clone()).unwrap_or_default()
        };
        let kinds: HashSet<(String, String, Kind)> = probes
            .iter()
            .filter(|(p, _)| evms.iter().any(|e| e.namespace == p.from.namespace && e.vpc == "blue"))
            .map(|(p, kind)| (group_of(p.from.ip, "blue"), group_of(p.to, "blue"), *kind))
            .collect();
        // Every ordered pair of EVM groups is tried, with its verdict.
        for expected in [("web", "web", Kind::Reachable), ("web", "db", Kind::Reachable), ("db", "web", Kind::Denied)] {
            assert!(kinds.contains(&(expected.0.into(), expected.1.into(), expected.2)), "{expected:?} in {kinds:?}");
        }
        // Red has no groups: everything in it must answer.
        assert!(probes.iter().all(|(p, kind)| *kind != Kind::Denied || p.from.namespace.contains("blue")));
    }

    /// A client may send ReadDataSource without validating first: the
    /// settings are checked again before anything is sized by them.
    #[tokio::test]
    async fn read_refuses_settings_that_validation_would_have() {
        let controller = crate::config::local_controller(
            std::env::temp_dir().join("merak-pingall-test-none"),
            "/nonexistent".into(),
            crate::runtime::local::AgentTransport::Unix,
        );
        let config = |samples: Value, timeout: Value| {
            merak_tfplugin::cty::object([
                ("id", Value::Null),
                ("topology_id", Value::string("lab")),
                ("samples", samples),
                ("timeout_ms", timeout),
                ("sent", Value::Null),
                ("expected_replies", Value::Null),
                ("replies", Value::Null),
                ("isolation_probes", Value::Null),
                ("isolation_kept", Value::Null),
                ("unexpected", Value::Null),
                ("failures", Value::Null),
            ])
        };
        for (samples, timeout, attribute) in [
            (Value::int(1 << 40), Value::Null, "samples"),
            (Value::int(-1), Value::Null, "samples"),
            (Value::Null, Value::Number(merak_tfplugin::cty::Number::Decimal("1e30".into())), "timeout_ms"),
            (Value::Null, Value::Number(merak_tfplugin::cty::Number::Float(5.5)), "timeout_ms"),
        ] {
            let error = Pingall.read(&controller, &config(samples, timeout)).await.expect_err("refused");
            let text = format!("{error:?}");
            assert!(text.contains(&format!("Invalid {attribute}")), "{text}");
        }
    }

    #[test]
    fn large_subnets_are_sampled() {
        assert_eq!(sample_pairs(100, 10).len(), 10);
        assert!(sample_pairs(100, 10).iter().all(|(i, j)| i != j && *i < 100 && *j < 100));
        assert_eq!(sample_pairs(3, 10).len(), 6);
        assert!(sample_pairs(1, 10).is_empty());
    }
}

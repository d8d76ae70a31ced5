//! Security groups: a VPC's stateful per-port firewalls, as configured and
//! checked. Semantics as in the clouds: traffic to a port passes when one of
//! its groups' ingress rules allows it, traffic from a port when one of its
//! egress rules does, and replies to allowed traffic always pass. A port
//! in no group is in the VPC's implicit group `default` (egress anywhere,
//! ingress from its own members). How the agents enforce them is
//! `merak_agent::firewall`.

use serde::{Deserialize, Serialize};

use super::cidr::parse_attribute as parse_cidr;
use super::{BlockError, SpecError, naming};

/// The VPC's implicit group: no configuration names it.
pub const DEFAULT_GROUP: &str = "default";
/// Group names are DNS labels of at most this many characters.
pub const MAX_NAME: usize = 32;
/// Rules per direction of one group (a cloud's are tens).
pub const MAX_RULES: usize = 1000;
const MAX_DESCRIPTION: usize = 255;

/// A rule's IP protocol, as configured (`"6"` stays `"6"`, so the state
/// echoes the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
    Number(u8),
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "all" | "-1" => Some(Protocol::All),
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            digits if !digits.is_empty() && digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u8>().ok().filter(|n| *n > 0).map(Protocol::Number)
            }
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Protocol::All => "all".into(),
            Protocol::Tcp => "tcp".into(),
            Protocol::Udp => "udp".into(),
            Protocol::Icmp => "icmp".into(),
            Protocol::Number(n) => n.to_string(),
        }
    }

    /// The IP protocol number; 0 for every protocol.
    pub fn number(&self) -> u8 {
        match self {
            Protocol::All => 0,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::Number(n) => *n,
        }
    }

    /// Whether rules of it may name ports (TCP and UDP).
    pub fn has_ports(&self) -> bool {
        matches!(self.number(), 6 | 17)
    }
}

/// Which way a rule looks: traffic to the group's ports, or from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The block that holds such rules.
    pub fn block(&self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The attribute that names peer groups.
    pub fn peer_groups(&self) -> &'static str {
        match self {
            Direction::Ingress => "source_security_group_ids",
            Direction::Egress => "destination_security_group_ids",
        }
    }
}

/// A rule block as configured, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct RuleInput {
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub cidr_blocks: Vec<String>,
    pub group_ids: Vec<String>,
    pub include_self: bool,
}

/// A checked rule: peers in `cidr_blocks`, in `groups` (names of groups of
/// the same VPC) or, with `include_self`, in the rule's own group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidr_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_self: bool,
}

impl Rule {
    /// The destination ports it allows, inclusive; `None`: every port.
    pub fn ports(&self) -> Option<(u16, u16)> {
        let from = self.from_port?;
        Some((from, self.to_port.unwrap_or(from)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupSpec {
    pub topology: String,
    pub vpc: String,
    pub name: String,
    pub description: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// What is wrong with a group: an attribute of its own, or of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    Group(SpecError),
    Rule { direction: Direction, error: BlockError },
}

/// A group's id: `<topology>/<vpc>/<name>`.
pub fn id(topology: &str, vpc: &str, name: &str) -> String {
    format!("{topology}/{vpc}/{name}")
}

impl SecurityGroupSpec {
    /// Checks a group as configured. Peer groups are ids that must name a
    /// group of the same VPC (whether it exists is for the caller to know).
    pub fn validate(
        topology: &str,
        vpc: &str,
        name: &str,
        description: &str,
        ingress: &[RuleInput],
        egress: &[RuleInput],
    ) -> Result<Self, Vec<GroupError>> {
        let mut errors = Vec::new();
        if let Err(error) = check_name(name) {
            errors.push(GroupError::Group(error));
        }
        if description.chars().count() > MAX_DESCRIPTION {
            errors.push(GroupError::Group(SpecError::new(
                "description",
                "Description too long",
                format!("description holds {} characters; at most {MAX_DESCRIPTION}.", description.chars().count()),
            )));
        }
        let mut rules = |direction: Direction, inputs: &[RuleInput]| -> Vec<Rule> {
            if inputs.len() > MAX_RULES {
                let error = BlockError {
                    index: MAX_RULES,
                    attribute: "protocol",
                    summary: format!("Too many {} rules", direction.block()),
                    detail: format!("A group holds at most {MAX_RULES} {} rules.", direction.block()),
                };
                errors.push(GroupError::Rule { direction, error });
                return Vec::new();
            }
            let mut rules = Vec::with_capacity(inputs.len());
            for (index, input) in inputs.iter().enumerate() {
                match check_rule(topology, vpc, direction, index, input) {
                    Ok(rule) => rules.push(rule),
                    Err(found) => errors.extend(found.into_iter().map(|error| GroupError::Rule { direction, error })),
                }
            }
            rules
        };
        let (ingress, egress) = (rules(Direction::Ingress, ingress), rules(Direction::Egress, egress));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SecurityGroupSpec {
            topology: topology.into(),
            vpc: vpc.into(),
            name: name.into(),
            description: description.into(),
            ingress,
            egress,
        })
    }

    /// Names of the groups its rules name as peers (itself included, for
    /// rules with `self`).
    pub fn peer_groups(&self) -> impl Iterator<Item = &str> {
        self.ingress.iter().chain(&self.egress).flat_map(|rule| {
            rule.groups.iter().map(String::as_str).chain(rule.include_self.then_some(self.name.as_str()))
        })
    }
}

pub fn check_name(name: &str) -> Result<(), SpecError> {
    if !naming::is_dns_label(name) || name.len() > MAX_NAME {
        return Err(SpecError::new(
            "name",
            "Invalid security group name",
            format!(
                "{name:?} is not a DNS label of at most {MAX_NAME} characters: use lowercase letters, digits and '-', starting and ending with a letter or digit."
            ),
        ));
    }
    if name == DEFAULT_GROUP {
        return Err(SpecError::new(
            "name",
            "Reserved security group name",
            "\"default\" is the VPC's implicit group (ports in no group are in it); choose another name.",
        ));
    }
    Ok(())
}

fn rule_error(index: usize, attribute: &'static str, summary: &str, detail: String) -> BlockError {
    BlockError { index, attribute, summary: summary.into(), detail }
}

fn check_rule(
    topology: &str,
    vpc: &str,
    direction: Direction,
    index: usize,
    input: &RuleInput,
) -> Result<Rule, Vec<BlockError>> {
    let mut errors = Vec::new();
    let protocol = Protocol::parse(&input.protocol);
    if protocol.is_none() {
        errors.push(rule_error(
            index,
            "protocol",
            "Invalid protocol",
            format!(
                "protocol is {:?}; use \"tcp\", \"udp\", \"icmp\", \"all\", or an IP protocol number from 1 to 255.",
                input.protocol
            ),
        ));
    }
    let port = |attribute: &'static str, value: Option<i64>, errors: &mut Vec<BlockError>| match value {
        None => None,
        Some(port) => match u16::try_from(port) {
            Ok(port) => Some(port),
            Err(_) => {
                let detail = format!("{attribute} is {port}; a port is a whole number from 0 to 65535.");
                errors.push(rule_error(index, attribute, "Invalid port", detail));
                None
            }
        },
    };
    let from_port = port("from_port", input.from_port, &mut errors);
    let to_port = port("to_port", input.to_port, &mut errors);
    let ports_given = input.from_port.is_some() || input.to_port.is_some();
    match protocol {
        Some(protocol) if ports_given && !protocol.has_ports() => {
            let attribute = if input.from_port.is_some() { "from_port" } else { "to_port" };
            let detail = format!(
                "protocol {:?} has no ports; leave from_port and to_port out (they are for \"tcp\" and \"udp\").",
                input.protocol
            );
            errors.push(rule_error(index, attribute, "Ports with a protocol that has none", detail));
        }
        _ => {}
    }
    if input.to_port.is_some() && input.from_port.is_none() {
        let detail = "to_port ends a range that from_port starts; set from_port too (alone, from_port is one port).";
        errors.push(rule_error(index, "from_port", "to_port without from_port", detail.into()));
    }
    if let (Some(from), Some(to)) = (from_port, to_port)
        && from > to
    {
        let detail = format!("from_port ({from}) is above to_port ({to}); a range runs from the lower port.");
        errors.push(rule_error(index, "from_port", "Port range reversed", detail));
    }
    let mut cidr_blocks = Vec::with_capacity(input.cidr_blocks.len());
    for text in &input.cidr_blocks {
        match parse_cidr("cidr_blocks", text) {
            Ok(cidr) => cidr_blocks.push(cidr.to_string()),
            Err(error) => errors.push(rule_error(index, "cidr_blocks", &error.summary, error.detail)),
        }
    }
    let attribute = direction.peer_groups();
    let mut groups = Vec::with_capacity(input.group_ids.len());
    for group_id in &input.group_ids {
        let parts: Vec<&str> = group_id.split('/').collect();
        match parts.as_slice() {
            [t, v, name] if *t == topology && *v == vpc && check_name(name).is_ok() => groups.push(name.to_string()),
            [t, v, name] if !name.is_empty() && (*t != topology || *v != vpc) => errors.push(rule_error(
                index,
                attribute,
                "Security group of another VPC",
                format!(
                    "{group_id:?} is a group of VPC {t}/{v}; a rule names groups of its own VPC ({topology}/{vpc}). Use cidr_blocks for traffic from elsewhere."
                ),
            )),
            _ => errors.push(rule_error(
                index,
                attribute,
                "Invalid security group id",
                format!("{group_id:?} is not a security group id; use merak_security_group.<name>.id."),
            )),
        }
    }
    if input.cidr_blocks.is_empty() && input.group_ids.is_empty() && !input.include_self {
        let detail = format!(
            "The rule names no peer, so it allows nothing; set cidr_blocks (\"0.0.0.0/0\": anywhere), {attribute}, or self = true."
        );
        errors.push(rule_error(index, "cidr_blocks", "Rule without peers", detail));
    }
    match protocol {
        Some(protocol) if errors.is_empty() => {
            Ok(Rule { protocol, from_port, to_port, cidr_blocks, groups, include_self: input.include_self })
        }
        _ => Err(errors),
    }
}

/// The rules of the VPC's implicit group: egress anywhere, ingress from
/// its own members.
pub fn default_rules() -> (Vec<Rule>, Vec<Rule>) {
    let everything = Rule {
        protocol: Protocol::All,
        from_port: None,
        to_port: None,
        cidr_blocks: Vec::new(),
        groups: Vec::new(),
        include_self: false,
    };
    let ingress = Rule { include_self: true, ..everything.clone() };
    let egress = Rule { cidr_blocks: vec!["0.0.0.0/0".into()], ..everything };
    (vec![ingress], vec![egress])
}

/// One end of a packet: a port's address and the EVM group it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub group: &'a str,
    pub ip: std::net::Ipv4Addr,
}

/// What a VPC's security groups allow, as a function of a packet: the
/// same semantics the agents enforce, computed independently, so that
/// pingall can say which probes must pass and which must be blocked.
#[derive(Debug, Clone, Default)]
pub struct VpcPolicy {
    /// Security group name → (ingress, egress) rules; `default` included.
    pub rules: std::collections::HashMap<String, (Vec<Rule>, Vec<Rule>)>,
    /// EVM group name → the security groups its ports are in (`default`
    /// for groups naming none).
    pub membership: std::collections::HashMap<String, Vec<String>>,
}

impl VpcPolicy {
    /// Whether a new flow of `protocol` (to destination `port`, for TCP and
    /// UDP) from `from` to `to` passes: an egress rule of one of the
    /// sender's groups and an ingress rule of one of the receiver's allow it.
    pub fn allows(&self, from: End, to: End, protocol: u8, port: Option<u16>) -> bool {
        let in_group =
            |end: End, group: &str| self.membership.get(end.group).is_some_and(|g| g.iter().any(|n| n == group));
        let matches = |rule: &Rule, own: &str, peer: End| {
            let protocol_ok = rule.protocol == Protocol::All || rule.protocol.number() == protocol;
            let port_ok = match (rule.ports(), port) {
                (None, _) => true,
                (Some((low, high)), Some(port)) => (low..=high).contains(&port),
                (Some(_), None) => false,
            };
            let peer_ok = rule.cidr_blocks.iter().any(|cidr| {
                cidr.parse::<super::Ipv4Cidr>()
                    .is_ok_and(|c| super::Ipv4Cidr::new(peer.ip, 32).is_some_and(|host| c.contains(&host)))
            }) || rule.groups.iter().any(|g| in_group(peer, g))
                || (rule.include_self && in_group(peer, own));
            protocol_ok && port_ok && peer_ok
        };
        let allowed = |end: End, peer: End, egress: bool| {
            self.membership.get(end.group).into_iter().flatten().any(|group| {
                self.rules.get(group).is_some_and(|(ingress, egress_rules)| {
                    let rules = if egress { egress_rules } else { ingress };
                    rules.iter().any(|rule| matches(rule, group, peer))
                })
            })
        };
        allowed(from, to, true) && allowed(to, from, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(from: i64, to: Option<i64>) -> RuleInput {
        RuleInput {
            protocol: "tcp".into(),
            from_port: Some(from),
            to_port: to,
            cidr_blocks: vec!["10.0.0.0/8".into()],
            ..RuleInput::default()
        }
    }

    fn validate(ingress: &[RuleInput]) -> Result<SecurityGroupSpec, Vec<GroupError>> {
        SecurityGroupSpec::validate("lab", "blue", "web", "", ingress, &[])
    }

    /// The one error of a rule, as (attribute, summary).
    fn rule_error(input: RuleInput) -> (&'static str, String) {
        match validate(&[input]).unwrap_err().as_slice() {
            [GroupError::Rule { direction: Direction::Ingress, error }] => (error.attribute, error.summary.clone()),
            other => panic!("not one rule error: {other:?}"),
        }
    }

    #[test]
    fn protocols_by_name_or_number() {
        assert_eq!(Protocol::parse("tcp").map(|p| p.number()), Some(6));
        assert_eq!(Protocol::parse("-1"), Some(Protocol::All));
        assert_eq!(Protocol::parse("132"), Some(Protocol::Number(132)));
        assert_eq!(Protocol::parse("6").map(|p| p.has_ports()), Some(true));
        for bad in ["TCP", "0", "256", "+6", "", "sctp"] {
            assert_eq!(Protocol::parse(bad), None, "{bad}");
        }
        assert_eq!(Protocol::Number(6).name(), "6");
    }

    #[test]
    fn a_port_alone_is_one_port_and_a_range_runs_upward() {
        let spec = validate(&[tcp(22, None), tcp(8000, Some(8080))]).unwrap();
        assert_eq!(spec.ingress[0].ports(), Some((22, 22)));
        assert_eq!(spec.ingress[1].ports(), Some((8000, 8080)));
        assert_eq!(rule_error(tcp(90, Some(80))), ("from_port", "Port range reversed".into()));
        assert_eq!(rule_error(tcp(70000, None)), ("from_port", "Invalid port".into()));
        let to_alone = RuleInput { from_port: None, to_port: Some(80), ..tcp(0, None) };
        assert_eq!(rule_error(to_alone), ("from_port", "to_port without from_port".into()));
    }

    #[test]
    fn ports_only_with_tcp_and_udp() {
        let icmp = RuleInput { protocol: "icmp".into(), ..tcp(22, None) };
        assert_eq!(rule_error(icmp), ("from_port", "Ports with a protocol that has none".into()));
        let all = RuleInput { protocol: "all".into(), from_port: None, ..tcp(0, Some(80)) };
        let (attribute, _) = match validate(&[all]).unwrap_err().first() {
            Some(GroupError::Rule { error, .. }) => (error.attribute, ()),
            other => panic!("{other:?}"),
        };
        assert_eq!(attribute, "to_port");
    }

    #[test]
    fn peers_are_prefixes_or_groups_of_the_same_vpc() {
        let bad_cidr = RuleInput { cidr_blocks: vec!["10.0.0.1/8".into()], ..tcp(22, None) };
        let (attribute, summary) = rule_error(bad_cidr);
        assert_eq!((attribute, summary.as_str()), ("cidr_blocks", "Invalid cidr_blocks"));
        let other_vpc = RuleInput { cidr_blocks: vec![], group_ids: vec!["lab/red/db".into()], ..tcp(22, None) };
        assert_eq!(rule_error(other_vpc), ("source_security_group_ids", "Security group of another VPC".into()));
        let not_an_id = RuleInput { cidr_blocks: vec![], group_ids: vec!["db".into()], ..tcp(22, None) };
        assert_eq!(rule_error(not_an_id), ("source_security_group_ids", "Invalid security group id".into()));
        let nobody = RuleInput { cidr_blocks: vec![], ..tcp(22, None) };
        assert_eq!(rule_error(nobody), ("cidr_blocks", "Rule without peers".into()));
        let ok = RuleInput { cidr_blocks: vec![], group_ids: vec!["lab/blue/db".into()], ..tcp(22, None) };
        let spec = validate(&[ok, RuleInput { include_self: true, ..tcp(80, None) }]).unwrap();
        assert_eq!(spec.peer_groups().collect::<Vec<_>>(), ["db", "web"]);
    }

    #[test]
    fn names_are_labels_and_default_is_taken() {
        assert!(SecurityGroupSpec::validate("lab", "blue", "Web", "", &[], &[]).is_err());
        let errors = SecurityGroupSpec::validate("lab", "blue", "default", "", &[], &[]).unwrap_err();
        assert!(matches!(&errors[..], [GroupError::Group(e)] if e.summary == "Reserved security group name"));
    }
}

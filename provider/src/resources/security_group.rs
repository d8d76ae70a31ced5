//! `merak_security_group`: a stateful firewall for the ports of a VPC's EVM
//! groups, in the shape cloud providers give it (`ingress` and `egress`
//! blocks). Rules change in place; the EPMs enforce them (see
//! [`crate::model::security_group`] and `docs/guides/security-groups.md`).

use std::sync::LazyLock;

use crate::controller::Controller;
use crate::model::security_group::{self, Direction, GroupError, Rule, RuleInput, SecurityGroupSpec};
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::provider::Resource;
use merak_tfplugin::schema::{Attribute, Block, NestedBlock, Schema};

use super::{any_unknown, known_str, runtime_error, split_id};

pub struct SecurityGroup;

fn rule_block(direction: Direction) -> Block {
    let (description, peers, peers_description) = match direction {
        Direction::Ingress => (
            "Allows traffic to the group's ports from the peers named (and its replies back).",
            "source_security_group_ids",
            "Peers: the ports of these groups (`merak_security_group.<name>.id`, of the same VPC).",
        ),
        Direction::Egress => (
            "Allows traffic from the group's ports to the peers named (and its replies back).",
            "destination_security_group_ids",
            "Peers: the ports of these groups (`merak_security_group.<name>.id`, of the same VPC).",
        ),
    };
    Block {
        description,
        attributes: vec![
            Attribute::required(
                "protocol",
                Type::String,
                "`tcp`, `udp`, `icmp`, `all` (or `-1`), or an IP protocol number from 1 to 255.",
            ),
            Attribute::optional(
                "from_port",
                Type::Number,
                "TCP and UDP only: the first destination port allowed (alone: the only one). Left out: every port.",
            ),
            Attribute::optional("to_port", Type::Number, "TCP and UDP only: the last destination port allowed."),
            Attribute::optional(
                "cidr_blocks",
                Type::list(Type::String),
                "Peers: IPv4 prefixes, e.g. `10.1.0.0/16`; `0.0.0.0/0` is anywhere.",
            ),
            Attribute::optional(peers, Type::list(Type::String), peers_description),
            Attribute::optional("self", Type::Bool, "Peers: the ports of this group itself."),
        ],
        blocks: Vec::new(),
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    version: 0,
    block: Block {
        description: "A security group: a stateful firewall for the ports of the EVM groups that name it \
            (`merak_evm_group.security_group_ids`), enforced by each EPM's agent in the VPC's router \
            namespace, where a hypervisor enforces it and not inside the EVM. Traffic to a port passes \
            when an `ingress` rule of one of its groups allows it, traffic from a port when an `egress` \
            rule does; replies to allowed traffic always pass. Once a VPC has a security group, EVM groups \
            naming none are in its implicit `default` group (egress anywhere, ingress from the other ports \
            in it). Changing rules updates in place, without rebuilding EVMs. In a VPC with `controller = \
            \"external\"` the user's controller enforces it: merak sends it the group and each port's groups \
            (see the external controller API), and pingall judges what the controller did.",
        attributes: vec![
            Attribute::computed("id", Type::String, "`<topology>/<vpc>/<name>`."),
            Attribute::required("vpc_id", Type::String, "The `id` of the `merak_vpc`.").forces_replacement(),
            Attribute::required(
                "name",
                Type::String,
                "Name of the group, unique in its VPC: a DNS label of at most 32 characters, not `default`.",
            )
            .forces_replacement(),
            Attribute::optional("description", Type::String, "What the group is for (at most 255 characters)."),
        ],
        blocks: vec![
            NestedBlock::list("ingress", rule_block(Direction::Ingress)),
            NestedBlock::list("egress", rule_block(Direction::Egress)),
        ],
    },
});

const INPUTS: &[&str] = &["vpc_id", "name", "description", "ingress", "egress"];

fn rules_of(config: &Value, direction: Direction) -> Vec<RuleInput> {
    let strings = |value: &Value| -> Vec<String> {
        value.as_list().unwrap_or_default().iter().filter_map(|v| v.as_str().map(String::from)).collect()
    };
    let number = |value: &Value| match value {
        Value::Null => None,
        // A fraction or a number too large for i64 is refused as a port.
        value => Some(value.as_i64().unwrap_or(-1)),
    };
    config
        .attr(direction.block())
        .as_list()
        .unwrap_or_default()
        .iter()
        .map(|block| RuleInput {
            protocol: block.attr("protocol").as_str().unwrap_or_default().into(),
            from_port: number(block.attr("from_port")),
            to_port: number(block.attr("to_port")),
            cidr_blocks: strings(block.attr("cidr_blocks")),
            group_ids: strings(block.attr(direction.peer_groups())),
            include_self: block.attr("self").as_bool().unwrap_or(false),
        })
        .collect()
}

fn diagnostics(errors: Vec<GroupError>) -> Diagnostics {
    let diagnostic = |error: GroupError| match error {
        GroupError::Group(error) => Diagnostic::from(error),
        GroupError::Rule { direction, error } => Diagnostic::attribute_error(
            &[direction.block(), &format!("[{}]", error.index), error.attribute],
            error.summary,
            error.detail,
        ),
    };
    Diagnostics(errors.into_iter().map(diagnostic).collect())
}

/// The group a configuration (or plan) asks for; `Ok(None)` while part of
/// it is unknown.
fn spec_of(config: &Value) -> Result<Option<SecurityGroupSpec>, Diagnostics> {
    if any_unknown(config, INPUTS) {
        return Ok(None);
    }
    let vpc_id = known_str(config, "vpc_id").unwrap_or_default();
    let Some(vpc) = split_id(vpc_id, 2) else {
        let detail = format!("{vpc_id:?} is not a VPC id; use merak_vpc.<name>.id.");
        return Err(Diagnostic::attribute_error(&["vpc_id"], "Invalid vpc_id", detail).into());
    };
    SecurityGroupSpec::validate(
        vpc[0],
        vpc[1],
        known_str(config, "name").unwrap_or_default(),
        known_str(config, "description").unwrap_or_default(),
        &rules_of(config, Direction::Ingress),
        &rules_of(config, Direction::Egress),
    )
    .map(Some)
    .map_err(diagnostics)
}

fn rule_state(spec: &SecurityGroupSpec, direction: Direction, rule: &Rule) -> Value {
    let list = |items: Vec<Value>| if items.is_empty() { Value::Null } else { Value::List(items) };
    let groups = rule.groups.iter().map(|g| Value::string(security_group::id(&spec.topology, &spec.vpc, g)));
    object([
        ("protocol", Value::string(rule.protocol.name())),
        ("from_port", rule.from_port.map_or(Value::Null, |p| Value::int(i64::from(p)))),
        ("to_port", rule.to_port.map_or(Value::Null, |p| Value::int(i64::from(p)))),
        ("cidr_blocks", list(rule.cidr_blocks.iter().map(Value::string).collect())),
        (direction.peer_groups(), list(groups.collect())),
        ("self", if rule.include_self { Value::Bool(true) } else { Value::Null }),
    ])
}

fn state_of(spec: &SecurityGroupSpec) -> Value {
    let rules = |direction: Direction, rules: &[Rule]| {
        Value::List(rules.iter().map(|rule| rule_state(spec, direction, rule)).collect())
    };
    object([
        ("id", Value::string(security_group::id(&spec.topology, &spec.vpc, &spec.name))),
        ("vpc_id", Value::string(format!("{}/{}", spec.topology, spec.vpc))),
        ("name", Value::string(&spec.name)),
        ("description", if spec.description.is_empty() { Value::Null } else { Value::string(&spec.description) }),
        ("ingress", rules(Direction::Ingress, &spec.ingress)),
        ("egress", rules(Direction::Egress, &spec.egress)),
    ])
}

/// `config` with its id filled in: the blocks as written (empty lists and
/// explicit `false`s stay as they are).
fn planned_state(spec: &SecurityGroupSpec, config: &Value) -> Value {
    let mut planned = config.clone();
    if let Value::Map(attributes) = &mut planned {
        attributes.insert("id".into(), Value::string(security_group::id(&spec.topology, &spec.vpc, &spec.name)));
    }
    planned
}

#[tonic::async_trait]
impl Resource<Controller> for SecurityGroup {
    fn type_name(&self) -> &'static str {
        "merak_security_group"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        spec_of(config).err().unwrap_or_default()
    }

    async fn plan(
        &self,
        controller: Option<&Controller>,
        _prior: &Value,
        config: &Value,
    ) -> Result<Value, Diagnostics> {
        let Some(spec) = spec_of(config)? else { return Ok(super::unknown_computed(&SCHEMA, config)) };
        let Some(controller) = controller else { return Ok(planned_state(&spec, config)) };
        let vpc = match controller.planned().vpc(&spec.topology, &spec.vpc) {
            Some(vpc) => Some(vpc),
            None => controller
                .read_vpc(&spec.topology, &spec.vpc)
                .await
                .map_err(|e| runtime_error("Could not read the VPC", e))?,
        };
        if vpc.is_none() {
            let detail = format!(
                "No VPC {} exists in topology {:?} or is planned by this configuration; use merak_vpc.<name>.id.",
                spec.vpc, spec.topology
            );
            return Err(Diagnostic::attribute_error(&["vpc_id"], "No such VPC", detail).into());
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            let rules = if direction == Direction::Ingress { &spec.ingress } else { &spec.egress };
            for (index, rule) in rules.iter().enumerate() {
                for peer in rule.groups.iter().filter(|peer| **peer != spec.name) {
                    let known = controller
                        .security_group_known(&spec.topology, &spec.vpc, peer)
                        .await
                        .map_err(|e| runtime_error("Could not read the security groups", e))?;
                    if !known {
                        let detail = format!(
                            "No security group {peer} exists in VPC {} or is planned by this configuration; use merak_security_group.<name>.id (or self = true for this group).",
                            spec.vpc
                        );
                        let path = [direction.block(), &format!("[{index}]"), direction.peer_groups()];
                        return Err(Diagnostic::attribute_error(&path, "No such security group", detail).into());
                    }
                }
            }
        }
        controller.planned().plan_security_group(&spec.topology, &spec.vpc, &spec.name);
        Ok(planned_state(&spec, config))
    }

    async fn apply(&self, controller: &Controller, prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics) {
        let spec = match spec_of(planned) {
            Ok(Some(spec)) => spec,
            Ok(None) => return (None, super::unknown_at_apply()),
            Err(diagnostics) => return (None, diagnostics),
        };
        match controller.apply_security_group(&spec).await {
            Ok(()) => (Some(planned.clone()), Diagnostics::default()),
            // The record may hold the new rules while some EPM does not:
            // an update keeps the prior state, so the next plan shows the
            // change again and the next apply pushes it.
            Err(error) => {
                let state = if prior.is_null() { None } else { Some(prior.clone()) };
                (state, runtime_error(format!("Could not apply security group {}", spec.name), error))
            }
        }
    }

    async fn destroy(&self, controller: &Controller, prior: &Value) -> Diagnostics {
        let Some(parts) = known_str(prior, "id").and_then(|id| split_id(id, 3)) else { return Diagnostics::default() };
        controller
            .delete_security_group(parts[0], parts[1], parts[2])
            .await
            .err()
            .map(|e| runtime_error(format!("Could not delete security group {}", parts[2]), e))
            .unwrap_or_default()
    }

    async fn import(&self, controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
        let Some(parts) = split_id(id, 3) else { return Ok(None) };
        let group = controller
            .read_security_group(parts[0], parts[1], parts[2])
            .await
            .map_err(|e| runtime_error(format!("Could not read security group {id}"), e))?;
        Ok(group.as_ref().map(state_of))
    }

    /// The group as recorded; the state as it was when it says the same
    /// (so `[]`, `false` and omitted stay as written).
    async fn read(&self, controller: &Controller, current: &Value) -> Result<Option<Value>, Diagnostics> {
        let Some(id) = known_str(current, "id") else { return Ok(None) };
        let Some(recorded) = self.import(controller, id).await? else { return Ok(None) };
        let unchanged = matches!(spec_of(current), Ok(Some(spec)) if Some(state_of(&spec)) == Some(recorded.clone()));
        Ok(Some(if unchanged { current.clone() } else { recorded }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use merak_tfplugin::cty::object;

    fn rule(protocol: &str, from_port: Option<i64>, peers: &[(&str, Value)]) -> Value {
        let mut attributes = vec![
            ("protocol", Value::string(protocol)),
            ("from_port", from_port.map_or(Value::Null, Value::int)),
            ("to_port", Value::Null),
            ("cidr_blocks", Value::Null),
            ("source_security_group_ids", Value::Null),
            ("self", Value::Null),
        ];
        for (name, value) in peers {
            attributes.retain(|(n, _)| n != name);
            attributes.push((name, value.clone()));
        }
        object(attributes)
    }

    fn config(ingress: Vec<Value>) -> Value {
        object([
            ("id", Value::Null),
            ("vpc_id", Value::string("lab/blue")),
            ("name", Value::string("web")),
            ("description", Value::Null),
            ("ingress", Value::List(ingress)),
            ("egress", Value::List(vec![])),
        ])
    }

    fn paths(diagnostics: Diagnostics) -> Vec<String> {
        diagnostics.0.iter().map(|d| format!("{:?}: {}", d.attribute, d.summary)).collect()
    }

    #[test]
    fn rule_errors_name_their_block_and_attribute() {
        let ssh = rule("tcp", Some(22), &[("cidr_blocks", Value::List(vec![Value::string("10.0.0.0/8")]))]);
        let ping = rule("icmp", Some(8), &[("self", Value::Bool(true))]);
        let errors = paths(spec_of(&config(vec![ssh, ping])).unwrap_err());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("ingress") && errors[0].contains("[1]") && errors[0].contains("from_port"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_recorded_group_reads_back_as_configured() {
        let peers = [
            ("source_security_group_ids", Value::List(vec![Value::string("lab/blue/db")])),
            ("self", Value::Bool(true)),
        ];
        let given = config(vec![
            rule("tcp", Some(22), &peers),
            rule("6", None, &[("cidr_blocks", Value::List(vec![Value::string("0.0.0.0/0")]))]),
        ]);
        let spec = spec_of(&given).unwrap().unwrap();
        assert_eq!(spec.ingress[1].protocol.name(), "6");
        let state = state_of(&spec);
        assert_eq!(spec_of(&state).unwrap().unwrap(), spec);
        assert_eq!(state.attr("ingress"), given.attr("ingress"));
        assert_eq!(state.attr("id"), &Value::string("lab/blue/web"));
    }
}

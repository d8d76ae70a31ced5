//! `merak_evm_group`: N emulated VMs of one subnet, placed on EPMs. State
//! stays small (ranges and per-EPM counts, not a list of EVMs); scaling
//! creates or removes only the difference and keeps every remaining EVM's
//! name, address and MAC.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::controller::{Controller, GroupStatus, Intent};
use crate::model::TreeSpec;
use crate::model::overlay::{GroupInput, GroupSpec, Placement, SubnetSpec};
use crate::model::ranges::Ranges;
use crate::model::security_group;
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, Schema};

use super::{any_unknown, known_str, runtime_error, spec_errors, split_id};
use merak_tfplugin::provider::Resource;

pub struct EvmGroup;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema {
    version: 0,
    block: Block {
        description: "A group of Emulated VMs (EVMs) in one subnet. Each EVM is a network namespace \
            whose `eth0` holds its address, MAC and default route via the subnet's gateway. Changing \
            `evm_count` or `epm_counts` scales in place: only the difference is created or removed.",
        attributes: vec![
            Attribute::computed("id", Type::String, "`<topology>/<vpc>/<subnet>/<name>`."),
            Attribute::required("subnet_id", Type::String, "The `id` of the `merak_subnet`.").forces_replacement(),
            Attribute::required("name", Type::String, "Name of the group, unique in its topology (it names the EVMs: `<name>-<k>`): a DNS label of at most 24 characters.").forces_replacement(),
            Attribute::optional_computed(
                "evm_count",
                Type::Number,
                "Number of EVMs; required unless `epm_counts` is set (then it is their sum). (Not `count`: that name is Terraform's meta-argument.)",
            ),
            Attribute::optional_computed(
                "placement",
                Type::String,
                "`spread` (default): EVM *k* on EPM *k* mod N, so EVMs never move when the group scales; `pack`: fill an EPM (1000 EVMs) before the next; `counts`: as `epm_counts` says (set when `epm_counts` is).",
            )
            .forces_replacement(),
            Attribute::optional("epms", Type::list(Type::String), "Names of the EPMs to place on with `spread` or `pack` (default: all of the topology's).").forces_replacement(),
            Attribute::optional_computed(
                "device_model",
                Type::String,
                "`veth` (default): a veth pair per EVM. `hybrid`: the devices of an OpenStack hybrid plug, for agents that must cope with them: the EVM's veth ends on a per-EVM bridge that also holds a persistent tap, joined to the subnet's bridge by a second veth pair.",
            )
            .forces_replacement(),
            Attribute::computed("ready_count", Type::Number, "EVMs that exist on the host (in an external VPC: whose ports the controller also accepted). Drops when one is deleted behind Terraform's back; the next apply recreates it."),
            Attribute::computed("address_ranges", Type::list(Type::String), "The address ranges the group holds in its subnet, e.g. `10.0.1.2-10.0.1.101`."),
            Attribute::optional_computed(
                "epm_counts",
                Type::map(Type::Number),
                "EVMs per EPM, by EPM name. Set it to choose how many EVMs each EPM holds (placement `counts`): changing a count adds or removes EVMs on that EPM only, and an EPM that shrinks loses the EVMs it gained last. Left out, it is computed from `placement`. One EPM holds at most 20,000 EVMs of a subnet.",
            ),
            Attribute::optional(
                "security_group_ids",
                Type::list(Type::String),
                "The `id`s of the `merak_security_group`s (of the group's VPC) its EVMs' ports are in: traffic to a port passes when one of them allows it, and so does traffic from it. Left out: the VPC's implicit `default` group (egress anywhere, ingress from the other ports in it), which only applies once the VPC has a security group. Changing it updates in place: no EVM is rebuilt.",
            ),
        ],
        blocks: Vec::new(),
    },
}
});

const INPUTS: &[&str] =
    &["subnet_id", "name", "evm_count", "placement", "epms", "epm_counts", "device_model", "security_group_ids"];

struct Config {
    topology: String,
    vpc: String,
    subnet: String,
    input: GroupInput,
}

/// Where a value comes from: the configuration, or a plan this provider
/// made (in which the computed `epm_counts` of a spread group is not a
/// placement by counts).
#[derive(PartialEq)]
enum Source {
    Config,
    Plan,
}

fn config_of(config: &Value, source: Source) -> Result<Config, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let subnet_id = known_str(config, "subnet_id").unwrap_or_default();
    let parts = split_id(subnet_id, 3);
    if parts.is_none() {
        diagnostics.push(Diagnostic::attribute_error(
            &["subnet_id"],
            "Invalid subnet_id",
            format!("{subnet_id:?} is not a subnet id; use merak_subnet.<name>.id."),
        ));
    }
    let count = config.attr("evm_count");
    if !count.is_null() && count.as_i64().is_none() {
        diagnostics.push(Diagnostic::attribute_error(
            &["evm_count"],
            "Invalid evm_count",
            "evm_count must be a whole number.",
        ));
    }
    let placement = known_str(config, "placement").map(String::from);
    let by_counts = match source {
        Source::Config => true,
        Source::Plan => placement.as_deref() == Some("counts"),
    };
    let epm_counts = match config.attr("epm_counts") {
        Value::Map(counts) if by_counts => {
            let whole: Option<BTreeMap<String, i64>> =
                counts.iter().map(|(epm, n)| Some((epm.clone(), n.as_i64()?))).collect();
            if whole.is_none() {
                diagnostics.push(Diagnostic::attribute_error(
                    &["epm_counts"],
                    "Invalid epm_counts",
                    "Each count in epm_counts must be a whole number.",
                ));
            }
            whole
        }
        _ => None,
    };
    if diagnostics.has_errors() {
        return Err(diagnostics);
    }
    let parts = parts.unwrap_or_default();
    Ok(Config {
        topology: parts[0].into(),
        vpc: parts[1].into(),
        subnet: parts[2].into(),
        input: GroupInput {
            name: known_str(config, "name").unwrap_or_default().into(),
            evm_count: count.as_i64(),
            placement,
            epms: strings(config.attr("epms")),
            epm_counts,
            device_model: known_str(config, "device_model").unwrap_or("veth").into(),
            security_group_ids: strings(config.attr("security_group_ids")),
        },
    })
}

fn strings(list: &Value) -> Vec<String> {
    list.as_list().unwrap_or_default().iter().filter_map(|v| v.as_str().map(String::from)).collect()
}

fn spec_of(config: &Config, subnet: &SubnetSpec) -> Result<GroupSpec, Diagnostics> {
    GroupSpec::validate(subnet, config.input.clone()).map_err(spec_errors)
}

fn format_ranges(subnet: Option<&SubnetSpec>, ranges: &Ranges) -> Value {
    let Some(subnet) = subnet else { return Value::Unknown };
    let text = ranges.0.iter().filter_map(|&(start, len)| {
        let first = subnet.cidr.host(start)?;
        let last = subnet.cidr.host(start + len - 1)?;
        Some(Value::string(if len == 1 { first.to_string() } else { format!("{first}-{last}") }))
    });
    Value::List(text.collect())
}

/// Refuses, on `attribute`, an EPM name the topology does not have.
fn epms_exist<'a>(
    tree: &TreeSpec,
    attribute: &str,
    mut names: impl Iterator<Item = &'a String>,
) -> Result<(), Diagnostics> {
    match names.find(|name| tree.epms().all(|e| &e.name != *name)) {
        None => Ok(()),
        Some(unknown) => {
            let detail = format!(
                "{unknown:?} is not an EPM of topology {}; EPMs are named epm-0 to epm-{}.",
                tree.name,
                tree.hosts.saturating_sub(1)
            );
            Err(Diagnostic::attribute_error(&[attribute], "No such EPM", detail).into())
        }
    }
}

/// Whether a state's `epm_counts` says `per_epm` (numbers compared as numbers).
fn same_counts(state: &Value, per_epm: &BTreeMap<String, u32>) -> bool {
    match state {
        Value::Map(counts) => {
            counts.len() == per_epm.len()
                && per_epm.iter().all(|(epm, n)| counts.get(epm).and_then(Value::as_i64) == Some(i64::from(*n)))
        }
        _ => false,
    }
}

fn counts_value(per_epm: &BTreeMap<String, u32>) -> Value {
    Value::Map(per_epm.iter().map(|(epm, n)| (epm.clone(), Value::int(i64::from(*n)))).collect())
}

fn state_of(spec: &GroupSpec, subnet: Option<&SubnetSpec>, status: &GroupStatus) -> Value {
    let epms =
        if spec.epms.is_empty() { Value::Null } else { Value::List(spec.epms.iter().map(Value::string).collect()) };
    object([
        ("id", Value::string(format!("{}/{}/{}/{}", spec.topology, spec.vpc, spec.subnet, spec.name))),
        ("subnet_id", Value::string(format!("{}/{}/{}", spec.topology, spec.vpc, spec.subnet))),
        ("name", Value::string(&spec.name)),
        ("evm_count", Value::int(i64::from(spec.count))),
        ("placement", Value::string(spec.placement.name())),
        ("epms", epms),
        ("device_model", Value::string(spec.device_model.name())),
        ("ready_count", Value::int(i64::from(status.ready))),
        ("address_ranges", format_ranges(subnet, &status.ranges)),
        ("epm_counts", counts_value(&status.per_epm)),
        ("security_group_ids", security_group_ids(spec)),
    ])
}

fn security_group_ids(spec: &GroupSpec) -> Value {
    match spec.security_groups.is_empty() {
        true => Value::Null,
        false => Value::List(
            spec.security_groups
                .iter()
                .map(|name| Value::string(security_group::id(&spec.topology, &spec.vpc, name)))
                .collect(),
        ),
    }
}

#[tonic::async_trait]
impl Resource<Controller> for EvmGroup {
    fn type_name(&self) -> &'static str {
        "merak_evm_group"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        if any_unknown(config, INPUTS) {
            return Diagnostics::default();
        }
        config_of(config, Source::Config).err().unwrap_or_default()
    }

    async fn plan(&self, controller: Option<&Controller>, prior: &Value, config: &Value) -> Result<Value, Diagnostics> {
        if any_unknown(config, INPUTS) {
            return Ok(super::unknown_computed(&SCHEMA, config));
        }
        let group = config_of(config, Source::Config)?;
        let controller =
            controller.ok_or_else(|| Diagnostics::from(Diagnostic::error("Provider not configured", "")))?;
        // The subnet and topology planned by this same plan, or on record.
        let subnet = match controller.planned().subnet(&group.topology, &group.vpc, &group.subnet) {
            Some(subnet) => Some(subnet),
            None => controller
                .read_subnet(&group.topology, &group.vpc, &group.subnet)
                .await
                .map_err(|e| runtime_error("Could not read the subnet", e))?,
        };
        let Some(subnet) = subnet else {
            let detail = format!(
                "No subnet {}/{} exists in topology {:?} or is planned by this configuration; use merak_subnet.<name>.id.",
                group.vpc, group.subnet, group.topology
            );
            return Err(Diagnostic::attribute_error(&["subnet_id"], "No such subnet", detail).into());
        };
        let spec = spec_of(&group, &subnet)?;
        for name in &spec.security_groups {
            let known = controller
                .security_group_known(&spec.topology, &spec.vpc, name)
                .await
                .map_err(|e| runtime_error("Could not read the security groups", e))?;
            if !known {
                let detail = format!(
                    "No security group {name} exists in VPC {} or is planned by this configuration; use merak_security_group.<name>.id.",
                    spec.vpc
                );
                return Err(
                    Diagnostic::attribute_error(&["security_group_ids"], "No such security group", detail).into()
                );
            }
        }
        let tree = match controller.planned().topology(&group.topology) {
            Some(tree) => Some(tree),
            None => controller
                .topology_spec(&group.topology)
                .await
                .map_err(|e| runtime_error("Could not read the topology", e))?,
        };
        // An existing group stays on the EPMs it was placed on, even if the
        // topology has grown since.
        // Creating over a group some state owns is refused at apply, not
        // here: Terraform plans the create half of a replacement with no
        // prior state too, while the old group still exists.
        let existing = match prior.is_null() {
            true => None,
            false => controller
                .read_group(&group.topology, &group.input.name)
                .await
                .map_err(|e| runtime_error("Could not read the group", e))?,
        };
        let per_epm = match (&spec.placement, &tree) {
            (Placement::Counts(counts), tree) => {
                if let Some(tree) = tree {
                    epms_exist(tree, "epm_counts", counts.keys())?;
                }
                Some(counts.clone())
            }
            (_, Some(tree)) => {
                let names: Vec<String> = match &existing {
                    Some((_, status)) if !status.placed_on.is_empty() => status.placed_on.clone(),
                    _ if spec.epms.is_empty() => tree.epms().map(|e| e.name).collect(),
                    _ => spec.epms.clone(),
                };
                epms_exist(tree, "epms", names.iter())?;
                spec.check_fits(names.len()).map_err(|e| Diagnostics::from(Diagnostic::from(e)))?;
                Some(spec.per_epm_counts(&names))
            }
            // A topology created by this same apply: known after it.
            (_, None) => None,
        };
        // The addresses are allocated at apply; the same EVMs on the same
        // EPMs keep them.
        let unchanged = prior.attr("evm_count").as_i64() == Some(i64::from(spec.count))
            && per_epm.as_ref().is_some_and(|per_epm| same_counts(prior.attr("epm_counts"), per_epm))
            && !prior.attr("address_ranges").is_null();
        let planned_status =
            GroupStatus { ready: spec.count, per_epm: per_epm.clone().unwrap_or_default(), ..GroupStatus::default() };
        let mut planned = state_of(&spec, None, &planned_status);
        if let Value::Map(attributes) = &mut planned {
            attributes.insert(
                "address_ranges".into(),
                if unchanged { prior.attr("address_ranges").clone() } else { Value::Unknown },
            );
            if per_epm.is_none() {
                attributes.insert("epm_counts".into(), Value::Unknown);
            }
            // As configured: an empty list is no group, and stays a list.
            attributes.insert("security_group_ids".into(), config.attr("security_group_ids").clone());
        }
        Ok(planned)
    }

    async fn apply(&self, controller: &Controller, prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics) {
        let group = match config_of(planned, Source::Plan) {
            Ok(group) => group,
            Err(diagnostics) => return (None, diagnostics),
        };
        let subnet = match controller.read_subnet(&group.topology, &group.vpc, &group.subnet).await {
            Ok(Some(subnet)) => subnet,
            Ok(None) => {
                return (
                    None,
                    Diagnostic::attribute_error(
                        &["subnet_id"],
                        "Subnet does not exist",
                        format!("No subnet {}/{} exists; create it first.", group.vpc, group.subnet),
                    )
                    .into(),
                );
            }
            Err(e) => return (None, runtime_error("Could not read the subnet", e)),
        };
        let spec = match spec_of(&group, &subnet) {
            Ok(spec) => spec,
            Err(diagnostics) => return (None, diagnostics),
        };
        let intent = if prior.is_null() { Intent::Create } else { Intent::Update };
        match controller.apply_group(&spec, intent).await {
            // A failed create returns no state: Terraform would taint the
            // group and replace it next time. The runtime keeps its record,
            // unconfirmed, and the next apply's create converges from it.
            Ok(status) if intent == Intent::Create && !status.confirmed => (None, failures(&spec, &status)),
            Ok(status) => {
                let diagnostics = failures(&spec, &status);
                let mut state = state_of(&spec, Some(&subnet), &status);
                if let Value::Map(attributes) = &mut state {
                    attributes.insert("security_group_ids".into(), planned.attr("security_group_ids").clone());
                }
                (Some(state), diagnostics)
            }
            Err(error) => (None, runtime_error(format!("Could not build EVM group {}", spec.name), error)),
        }
    }

    async fn destroy(&self, controller: &Controller, prior: &Value) -> Diagnostics {
        let Some(parts) = known_str(prior, "id").and_then(|id| split_id(id, 4)) else { return Diagnostics::default() };
        controller
            .delete_group(parts[0], parts[3])
            .await
            .err()
            .map(|e| runtime_error(format!("Could not delete EVM group {}", parts[3]), e))
            .unwrap_or_default()
    }

    async fn read(&self, controller: &Controller, current: &Value) -> Result<Option<Value>, Diagnostics> {
        let Some(id) = current.attr("id").as_str() else { return Ok(None) };
        let mut state = self.import(controller, id).await?;
        // No group, written as an empty list, reads back as written (the
        // record does not tell `[]` from leaving the attribute out).
        if let Some(Value::Map(attributes)) = &mut state
            && attributes.get("security_group_ids").is_some_and(Value::is_null)
            && matches!(current.attr("security_group_ids"), Value::List(ids) if ids.is_empty())
        {
            attributes.insert("security_group_ids".into(), Value::List(Vec::new()));
        }
        Ok(state)
    }

    async fn import(&self, controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
        let Some(parts) = split_id(id, 4) else { return Ok(None) };
        let read = |e| runtime_error(format!("Could not read EVM group {id}"), e);
        let Some((spec, status)) = controller.read_group(parts[0], parts[3]).await.map_err(read)? else {
            return Ok(None);
        };
        if spec.vpc != parts[1] || spec.subnet != parts[2] {
            return Ok(None);
        }
        let subnet = controller.read_subnet(parts[0], parts[1], parts[2]).await.map_err(read)?;
        Ok(Some(state_of(&spec, subnet.as_ref(), &status)))
    }
}

fn failures(spec: &GroupSpec, status: &GroupStatus) -> Diagnostics {
    super::incomplete(
        format!("EVM group {} is incomplete", spec.name),
        &status.failures,
        status.ready == spec.count,
        format!("{} of {} EVMs exist.", status.ready, spec.count),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::overlay::MAX_EVMS_PER_SUBNET_PER_EPM;

    #[test]
    fn documented_limit_is_the_real_one() {
        let epm_counts =
            SCHEMA.block.attributes.iter().find(|a| a.name == "epm_counts").map(|a| a.description).unwrap_or_default();
        let documented = format!("{},{:03}", MAX_EVMS_PER_SUBNET_PER_EPM / 1000, MAX_EVMS_PER_SUBNET_PER_EPM % 1000);
        assert!(epm_counts.contains(&documented), "{epm_counts}");
    }
}

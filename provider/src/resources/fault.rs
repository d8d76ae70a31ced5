//! `merak_fault`: a failure declared like everything else. Creating it
//! takes links down (both ends), destroying it brings them back, and a link
//! brought back behind Terraform's back is drift the next plan shows. What
//! a fault names is checked at plan against its topology (see
//! [`crate::model::fault`]).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use crate::controller::{Controller, FaultStatus};
use crate::model::fault::FaultSpec;
use merak_tfplugin::cty::{Type, Value};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::provider::Resource;
use merak_tfplugin::schema::{Attribute, Block, Schema};

use super::{any_unknown, known_str, runtime_error, spec_errors, split_id};

pub struct Fault;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    version: 0,
    block: Block {
        description: "A failure of the underlay, held for as long as the resource exists: each link it names \
            goes down at both ends (as `ip link set down` would), and comes back when the fault is destroyed, \
            with the routes the kernel dropped with it. A link is named by its two ends, the upper one first: \
            `s0-1--epm-3` (an EPM's uplink), `s1-0--s0-1` (a vswitch's uplink), `edge-0-1--epm-3`, \
            `agg-0-1--edge-0-1`, `core-0--agg-0-1` on a fat tree; the `merak_topology_graph` data source draws \
            them all. Links and nodes are checked against the topology at plan, and a link may be held by one \
            fault at most. A link brought back up behind Terraform's back leaves `down_links`, and the next \
            plan takes it down again. On kubernetes a link is a tunnel between two pods, which their agents \
            hold down.",
        attributes: vec![
            Attribute::computed("id", Type::String, "`<topology>/<name>`."),
            Attribute::required("topology_id", Type::String, "The `id` of the `merak_topology` whose links fail.")
                .forces_replacement(),
            Attribute::required("name", Type::String, "Name of the fault, unique in its topology: a DNS label.")
                .forces_replacement(),
            Attribute::optional(
                "links",
                Type::set(Type::String),
                "Links to take down, by their two ends (`s0-1--epm-3`; either order). Changing them changes \
                 the fault in place.",
            ),
            Attribute::optional(
                "nodes",
                Type::set(Type::String),
                "EPMs and switches (`epm-3`, `s0-1`, `core-0`) whose every link goes down: the node is cut off \
                 (its namespace and agent stay).",
            ),
            Attribute::computed(
                "down_links",
                Type::set(Type::String),
                "The links the fault holds down at both ends, read back from the runtime, by name (upper end \
                 first).",
            ),
        ],
        blocks: Vec::new(),
    },
});

const INPUTS: &[&str] = &["topology_id", "name", "links", "nodes"];

fn strings(value: &Value) -> BTreeSet<String> {
    value.as_list().unwrap_or_default().iter().filter_map(Value::as_str).map(str::to_string).collect()
}

fn spec_of(config: &Value) -> Result<Option<FaultSpec>, Diagnostics> {
    if any_unknown(config, INPUTS) {
        return Ok(None);
    }
    let name = known_str(config, "name").unwrap_or_default();
    crate::model::fault::check_name(name).map_err(|error| spec_errors(vec![error]))?;
    Ok(Some(FaultSpec {
        topology: known_str(config, "topology_id").unwrap_or_default().to_string(),
        name: name.to_string(),
        links: strings(config.attr("links")),
        nodes: strings(config.attr("nodes")),
    }))
}

fn set(names: &BTreeSet<String>) -> Value {
    Value::List(names.iter().map(Value::string).collect())
}

/// The state: the configuration as given, with the links down.
fn state_of(config: &Value, spec: &FaultSpec, down: &BTreeSet<String>) -> Value {
    let mut state = config.clone();
    if let Value::Map(attributes) = &mut state {
        attributes.insert("id".into(), Value::string(format!("{}/{}", spec.topology, spec.name)));
        attributes.insert("down_links".into(), set(down));
    }
    state
}

#[tonic::async_trait]
impl Resource<Controller> for Fault {
    fn type_name(&self) -> &'static str {
        "merak_fault"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        spec_of(config).err().unwrap_or_default()
    }

    async fn plan(&self, controller: Option<&Controller>, prior: &Value, config: &Value) -> Result<Value, Diagnostics> {
        let Some(spec) = spec_of(config)? else { return Ok(super::unknown_computed(&SCHEMA, config)) };
        let Some(controller) = controller else { return Ok(super::unknown_computed(&SCHEMA, config)) };
        if let Err(error) = controller.check_link_faults() {
            return Err(super::refusal(&["topology_id"], "Faults unavailable", &error).into());
        }
        let recorded = controller
            .topology_spec(&spec.topology)
            .await
            .map_err(|e| runtime_error("Could not read the topology", e))?;
        // The planned topology wins: a reshape in the same plan decides which links there will be.
        let Some(tree) = controller.planned().topology(&spec.topology).or(recorded) else {
            let detail = format!(
                "No topology {:?} exists or is planned by this configuration; use merak_topology.<name>.id.",
                spec.topology
            );
            return Err(Diagnostic::attribute_error(&["topology_id"], "No such topology", detail).into());
        };
        let held = spec.resolve(&tree).map_err(spec_errors)?;
        let faults = controller
            .faults(&spec.topology)
            .await
            .map_err(|e| runtime_error("Could not read the topology's faults", e))?;
        // A fault renamed (or moved) is replaced: the old one lets go before
        // the new one holds. Terraform plans the new one again without its
        // prior state, so the plan remembers that the old one leaves.
        if let (Some(topology), Some(old)) = (known_str(prior, "topology_id"), known_str(prior, "name"))
            && (topology, old) != (spec.topology.as_str(), spec.name.as_str())
        {
            controller.planned().fault_leaves(topology, old);
        }
        if let Err((link, other)) = controller.planned().plan_fault(&spec.topology, &spec.name, &held, &faults) {
            let attribute = if spec.links.is_empty() { "nodes" } else { "links" };
            let detail = format!(
                "Link {link} is held down by fault {other:?} too; a link is held by one fault at most. Leave it to \
                 one of them (to move it, take it out of one and apply, then add it to the other)."
            );
            return Err(Diagnostic::attribute_error(&[attribute], "Link already failed", detail).into());
        }
        Ok(state_of(config, &spec, &held))
    }

    async fn apply(&self, controller: &Controller, _prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics) {
        let spec = match spec_of(planned) {
            Ok(Some(spec)) => spec,
            Ok(None) => return (None, super::unknown_at_apply()),
            Err(diagnostics) => return (None, diagnostics),
        };
        let FaultStatus { held, down, failures } = match controller.apply_fault(&spec).await {
            Ok(status) => status,
            Err(error) => return (None, runtime_error(format!("Could not hold fault {}", spec.name), error)),
        };
        let progress = format!("{} of its {} links are down.", down.len(), held.len());
        let diagnostics = super::incomplete(
            format!("Fault {} holds only part of its links down", spec.name),
            &failures,
            down == held,
            progress,
        );
        (Some(state_of(planned, &spec, &down)), diagnostics)
    }

    async fn destroy(&self, controller: &Controller, prior: &Value) -> Diagnostics {
        let (topology, name) =
            (known_str(prior, "topology_id").unwrap_or_default(), known_str(prior, "name").unwrap_or_default());
        controller
            .delete_fault(topology, name)
            .await
            .err()
            .map(|e| runtime_error(format!("Could not let go of fault {name}"), e))
            .unwrap_or_default()
    }

    async fn import(&self, controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
        let Some(parts) = split_id(id, 2) else { return Ok(None) };
        let status = controller
            .read_fault(parts[0], parts[1])
            .await
            .map_err(|e| runtime_error(format!("Could not read fault {id}"), e))?;
        Ok(status.map(|status| {
            // The record keeps the links, not how they were named: they come back as links.
            let config = merak_tfplugin::cty::object([
                ("topology_id", Value::string(parts[0])),
                ("name", Value::string(parts[1])),
                ("links", set(&status.held)),
                ("nodes", Value::Null),
            ]);
            let spec = FaultSpec { topology: parts[0].into(), name: parts[1].into(), ..FaultSpec::default() };
            state_of(&config, &spec, &status.down)
        }))
    }

    async fn read(&self, controller: &Controller, current: &Value) -> Result<Option<Value>, Diagnostics> {
        let (Some(topology), Some(name)) = (known_str(current, "topology_id"), known_str(current, "name")) else {
            return Ok(None);
        };
        let status = controller
            .read_fault(topology, name)
            .await
            .map_err(|e| runtime_error(format!("Could not read fault {name}"), e))?;
        Ok(status.map(|status| {
            let mut state = current.clone();
            if let Value::Map(attributes) = &mut state {
                attributes.insert("down_links".into(), set(&status.down));
            }
            state
        }))
    }
}

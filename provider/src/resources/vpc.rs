//! `merak_vpc`: a tenant network, isolated from every other VPC (also when
//! their CIDRs overlap).

use std::sync::LazyLock;

use crate::controller::Controller;
use crate::model::network_controller::VpcController;
use crate::model::overlay::VpcSpec;
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, Schema};

use super::{any_unknown, known_str, runtime_error, spec_errors, split_id};
use merak_tfplugin::provider::Resource;

pub struct Vpc;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema {
    version: 0,
    block: Block {
        description: "A VPC: a tenant network of subnets that route to each other and to nothing else. \
            Its subnets appear on an EPM when EVMs of the VPC are placed there, inside a router \
            namespace of the VPC, so VPCs with overlapping CIDRs stay apart.",
        attributes: vec![
            Attribute::computed("id", Type::String, "`<topology>/<name>`."),
            Attribute::required("topology_id", Type::String, "The `id` of the `merak_topology` the VPC lives on.").forces_replacement(),
            Attribute::required("name", Type::String, "Name of the VPC, unique in its topology: a DNS label of at most 32 characters.").forces_replacement(),
            Attribute::required("cidr", Type::String, "The VPC's IPv4 prefix, e.g. `10.1.0.0/16`; its subnets lie within it.").forces_replacement(),
            Attribute::optional_computed("vni", Type::Number, "The VPC's VXLAN network identifier (1 to 16777215). Default: derived from the names.").forces_replacement(),
            Attribute::optional_computed(
                "controller",
                Type::String,
                "Who programs the VPC's ports: `builtin` (default), merak's own overlay; or `external`, the \
                 provider's `controller`: merak builds each EVM's devices and leaves their EPM end (the port's `device`, \
                 in the EPM's namespace, up on no bridge) for the system under test to attach, builds no overlay \
                 of its own, and tells the controller about every port (see docs/controller-api.md). An EVM of \
                 an external VPC is ready once the controller accepted its port.",
            )
            .forces_replacement(),
            Attribute::optional(
                "mtu",
                Type::Number,
                "The MTU of the VPC's EVMs (576 to 9000). Default: what merak's overlay carries, the data-plane \
                 MTU less VXLAN's 50 bytes (1450). An external controller's encapsulation may need less: OVN's \
                 Geneve takes 58 bytes, so 1442 at most over a 1500 data plane.",
            )
            .forces_replacement(),
        ],
        blocks: Vec::new(),
    },
}
});

const INPUTS: &[&str] = &["topology_id", "name", "cidr", "vni", "controller", "mtu"];

fn spec_of(config: &Value) -> Result<Option<VpcSpec>, Diagnostics> {
    if any_unknown(config, INPUTS) {
        return Ok(None);
    }
    let topology = known_str(config, "topology_id").unwrap_or_default();
    let name = known_str(config, "name").unwrap_or_default();
    let cidr = known_str(config, "cidr").unwrap_or_default();
    let vni = config.attr("vni");
    if !vni.is_null() && vni.as_i64().is_none() {
        let detail = format!("vni is {}; it must be a whole number from 1 to 16777215.", vni.describe());
        return Err(Diagnostic::attribute_error(&["vni"], "Invalid vni", detail).into());
    }
    let controller = match known_str(config, "controller") {
        None => VpcController::Builtin,
        Some(text) => VpcController::parse(text).ok_or_else(|| {
            let detail = format!("controller is {text:?}; use \"builtin\" (merak's own overlay) or \"external\" (the provider's controller block).");
            Diagnostics::from(Diagnostic::attribute_error(&["controller"], "Unsupported controller", detail))
        })?,
    };
    let mtu = match config.attr("mtu") {
        Value::Null => None,
        value => match value.as_i64() {
            Some(mtu) if (576..=9000).contains(&mtu) => Some(mtu as u32),
            _ => {
                let detail = format!(
                    "mtu is {}; give a whole number from 576 to 9000, or leave it out for the overlay's (1450).",
                    value.describe()
                );
                return Err(Diagnostic::attribute_error(&["mtu"], "Invalid mtu", detail).into());
            }
        },
    };
    let mut spec = VpcSpec::validate(topology, name, cidr, vni.as_i64()).map_err(spec_errors)?;
    spec.controller = controller;
    spec.mtu = mtu;
    Ok(Some(spec))
}

fn state_of(spec: &VpcSpec) -> Value {
    object([
        ("id", Value::string(format!("{}/{}", spec.topology, spec.name))),
        ("topology_id", Value::string(&spec.topology)),
        ("name", Value::string(&spec.name)),
        ("cidr", Value::string(spec.cidr.to_string())),
        ("vni", Value::int(i64::from(spec.vni))),
        ("controller", Value::string(spec.controller.name())),
        ("mtu", spec.mtu.map_or(Value::Null, |mtu| Value::int(i64::from(mtu)))),
    ])
}

#[tonic::async_trait]
impl Resource<Controller> for Vpc {
    fn type_name(&self) -> &'static str {
        "merak_vpc"
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
        if let Some(controller) = controller
            && controller.planned().topology(&spec.topology).is_none()
            && controller
                .topology_spec(&spec.topology)
                .await
                .map_err(|e| runtime_error("Could not read the topology", e))?
                .is_none()
        {
            let detail = format!(
                "No topology {:?} exists or is planned by this configuration; use merak_topology.<name>.id.",
                spec.topology
            );
            return Err(Diagnostic::attribute_error(&["topology_id"], "No such topology", detail).into());
        }
        if let Some(controller) = controller
            && spec.controller == VpcController::External
            && let Err(error) = controller.check_external_vpc()
        {
            return Err(super::refusal(&["controller"], "No external controller", &error).into());
        }
        if let Some(controller) = controller {
            controller.planned().plan_vpc(&spec);
        }
        Ok(state_of(&spec))
    }

    async fn apply(&self, controller: &Controller, _prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics) {
        let spec = match spec_of(planned) {
            Ok(Some(spec)) => spec,
            Ok(None) => return (None, super::unknown_at_apply()),
            Err(diagnostics) => return (None, diagnostics),
        };
        match controller.apply_vpc(&spec).await {
            Ok(()) => (Some(state_of(&spec)), Diagnostics::default()),
            Err(error) => (None, runtime_error(format!("Could not create VPC {}", spec.name), error)),
        }
    }

    async fn destroy(&self, controller: &Controller, prior: &Value) -> Diagnostics {
        let (topology, name) =
            (known_str(prior, "topology_id").unwrap_or_default(), known_str(prior, "name").unwrap_or_default());
        controller
            .delete_vpc(topology, name)
            .await
            .err()
            .map(|e| runtime_error(format!("Could not delete VPC {name}"), e))
            .unwrap_or_default()
    }

    async fn import(&self, controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
        let Some(parts) = split_id(id, 2) else { return Ok(None) };
        let vpc = controller
            .read_vpc(parts[0], parts[1])
            .await
            .map_err(|e| runtime_error(format!("Could not read VPC {id}"), e))?;
        Ok(vpc.as_ref().map(state_of))
    }
}

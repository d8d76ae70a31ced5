//! `merak_subnet`: one L2 network of a VPC, carried between EPMs as its own
//! VXLAN network, with a gateway on every EPM that hosts the VPC.

use std::sync::LazyLock;

use crate::controller::Controller;
use crate::model::overlay::{SubnetSpec, VpcSpec};
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, Schema};

use super::{any_unknown, known_str, runtime_error, spec_errors, split_id};
use merak_tfplugin::provider::Resource;

pub struct Subnet;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema {
    version: 0,
    block: Block {
        description: "A subnet of a VPC. EVMs of one subnet reach each other across EPMs over the \
            subnet's VXLAN network; subnets of one VPC route to each other through the gateway on \
            each EPM (same `gateway_ip` everywhere).",
        attributes: vec![
            Attribute::computed("id", Type::String, "`<topology>/<vpc>/<name>`."),
            Attribute::required("vpc_id", Type::String, "The `id` of the `merak_vpc`.").forces_replacement(),
            Attribute::required("name", Type::String, "Name of the subnet, unique in its VPC: a DNS label of at most 32 characters.").forces_replacement(),
            Attribute::required("cidr", Type::String, "The subnet's IPv4 prefix, inside the VPC's and overlapping no sibling. Changing it replaces the subnet.").forces_replacement(),
            Attribute::optional_computed("gateway_ip", Type::String, "The gateway EVMs route through. Default: the first host address.").forces_replacement(),
            Attribute::computed("vni", Type::Number, "The subnet's VXLAN network identifier."),
        ],
        blocks: Vec::new(),
    },
}
});

const INPUTS: &[&str] = &["vpc_id", "name", "cidr", "gateway_ip"];

fn vpc_of(config: &Value) -> Result<(String, String), Diagnostics> {
    let vpc_id = known_str(config, "vpc_id").unwrap_or_default();
    split_id(vpc_id, 2).map(|p| (p[0].to_string(), p[1].to_string())).ok_or_else(|| {
        Diagnostic::attribute_error(
            &["vpc_id"],
            "Invalid vpc_id",
            format!("{vpc_id:?} is not a VPC id; use merak_vpc.<name>.id."),
        )
        .into()
    })
}

/// The spec, checked against the VPC.
fn spec_of(config: &Value, vpc: &VpcSpec) -> Result<SubnetSpec, Diagnostics> {
    SubnetSpec::validate(
        vpc,
        known_str(config, "name").unwrap_or_default(),
        known_str(config, "cidr").unwrap_or_default(),
        known_str(config, "gateway_ip"),
    )
    .map_err(spec_errors)
}

fn state_of(spec: &SubnetSpec) -> Value {
    object([
        ("id", Value::string(format!("{}/{}/{}", spec.topology, spec.vpc, spec.name))),
        ("vpc_id", Value::string(format!("{}/{}", spec.topology, spec.vpc))),
        ("name", Value::string(&spec.name)),
        ("cidr", Value::string(spec.cidr.to_string())),
        ("gateway_ip", Value::string(spec.gateway.to_string())),
        ("vni", Value::int(i64::from(spec.vni))),
    ])
}

/// Plans `spec` unless it overlaps a sibling of its VPC or takes another
/// subnet's VNI: siblings on record and siblings this plan creates.
async fn plan_among_siblings(controller: &Controller, spec: &SubnetSpec) -> Result<(), Diagnostics> {
    let recorded =
        controller.list_subnets(&spec.topology).await.map_err(|e| runtime_error("Could not read the subnets", e))?;
    controller.planned().plan_subnet(spec, &recorded, |other| {
        if other.vpc == spec.vpc && other.cidr.overlaps(&spec.cidr) {
            let detail = format!(
                "{} overlaps subnet {} ({}) of VPC {}. Choose a prefix no other subnet of the VPC uses.",
                spec.cidr, other.name, other.cidr, spec.vpc
            );
            Some(Diagnostic::attribute_error(&["cidr"], "Subnet overlaps a sibling", detail).into())
        } else if other.vni == spec.vni {
            let detail = format!(
                "The VNI derived for this subnet ({}) is subnet {}/{}'s; rename the subnet.",
                spec.vni, other.vpc, other.name
            );
            Some(Diagnostic::attribute_error(&["name"], "VNI taken", detail).into())
        } else {
            None
        }
    })
}

async fn recorded_vpc(controller: &Controller, config: &Value) -> Result<Option<VpcSpec>, Diagnostics> {
    let (topology, vpc) = vpc_of(config)?;
    controller.read_vpc(&topology, &vpc).await.map_err(|e| runtime_error(format!("Could not read VPC {vpc}"), e))
}

#[tonic::async_trait]
impl Resource<Controller> for Subnet {
    fn type_name(&self) -> &'static str {
        "merak_subnet"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        if any_unknown(config, &["vpc_id"]) {
            return Diagnostics::default();
        }
        vpc_of(config).err().unwrap_or_default()
    }

    async fn plan(
        &self,
        controller: Option<&Controller>,
        _prior: &Value,
        config: &Value,
    ) -> Result<Value, Diagnostics> {
        if any_unknown(config, INPUTS) {
            return Ok(super::unknown_computed(&SCHEMA, config));
        }
        let (topology, vpc_name) = vpc_of(config)?;
        let controller =
            controller.ok_or_else(|| Diagnostics::from(Diagnostic::error("Provider not configured", "")))?;
        // The VPC planned by this same plan, or the one on record.
        let vpc = match controller.planned().vpc(&topology, &vpc_name) {
            Some(vpc) => Some(vpc),
            None => recorded_vpc(controller, config).await?,
        };
        let Some(vpc) = vpc else {
            let detail = format!(
                "No VPC {vpc_name:?} exists in topology {topology:?} or is planned by this configuration; use merak_vpc.<name>.id."
            );
            return Err(Diagnostic::attribute_error(&["vpc_id"], "No such VPC", detail).into());
        };
        let spec = spec_of(config, &vpc)?;
        plan_among_siblings(controller, &spec).await?;
        Ok(state_of(&spec))
    }

    async fn apply(&self, controller: &Controller, _prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics) {
        let vpc = match recorded_vpc(controller, planned).await {
            Ok(Some(vpc)) => vpc,
            Ok(None) => {
                let id = known_str(planned, "vpc_id").unwrap_or_default();
                return (
                    None,
                    Diagnostic::attribute_error(
                        &["vpc_id"],
                        "VPC does not exist",
                        format!("No VPC {id:?} exists; create it first."),
                    )
                    .into(),
                );
            }
            Err(diagnostics) => return (None, diagnostics),
        };
        let spec = match spec_of(planned, &vpc) {
            Ok(spec) => spec,
            Err(diagnostics) => return (None, diagnostics),
        };
        match controller.apply_subnet(&spec).await {
            Ok(()) => (Some(state_of(&spec)), Diagnostics::default()),
            Err(error) => (None, runtime_error(format!("Could not create subnet {}", spec.name), error)),
        }
    }

    async fn destroy(&self, controller: &Controller, prior: &Value) -> Diagnostics {
        let Some(parts) = known_str(prior, "id").and_then(|id| split_id(id, 3)) else { return Diagnostics::default() };
        controller
            .delete_subnet(parts[0], parts[1], parts[2])
            .await
            .err()
            .map(|e| runtime_error(format!("Could not delete subnet {}", parts[2]), e))
            .unwrap_or_default()
    }

    async fn import(&self, controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
        let Some(parts) = split_id(id, 3) else { return Ok(None) };
        let subnet = controller
            .read_subnet(parts[0], parts[1], parts[2])
            .await
            .map_err(|e| runtime_error(format!("Could not read subnet {id}"), e))?;
        Ok(subnet.as_ref().map(state_of))
    }
}

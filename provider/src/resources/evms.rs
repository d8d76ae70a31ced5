//! `merak_evms`: lists EVMs (the per-EVM detail that resource state leaves
//! out), with filters.

use std::sync::LazyLock;

use crate::controller::Controller;
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, Schema};

use super::{known_str, runtime_error};
use merak_tfplugin::provider::DataSource;

pub struct Evms;

const DEFAULT_LIMIT: i64 = 1000;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    version: 0,
    block: Block {
        description: "Lists the EVMs of a topology: name, EPM, address, MAC and namespace, optionally \
            of one group and/or one EPM.",
        attributes: vec![
            Attribute::computed("id", Type::String, "The topology and filters."),
            Attribute::required("topology_id", Type::String, "The `id` of the `merak_topology`."),
            Attribute::optional("group", Type::String, "Only EVMs of this group (its `name`)."),
            Attribute::optional("epm", Type::String, "Only EVMs on this EPM."),
            Attribute::optional("limit", Type::Number, "At most this many EVMs (default 1000)."),
            Attribute::computed("total", Type::Number, "How many EVMs match, before `limit`."),
            Attribute::computed(
                "evms",
                Type::list(Type::object([
                    ("name", Type::String),
                    ("group", Type::String),
                    ("vpc", Type::String),
                    ("subnet", Type::String),
                    ("epm", Type::String),
                    ("ip", Type::String),
                    ("mac", Type::String),
                    ("namespace", Type::String),
                ])),
                "The EVMs, in group and index order.",
            ),
        ],
        blocks: Vec::new(),
    },
});

#[tonic::async_trait]
impl DataSource<Controller> for Evms {
    fn type_name(&self) -> &'static str {
        "merak_evms"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        match config.attr("limit").as_i64() {
            Some(limit) if limit < 0 => {
                Diagnostic::attribute_error(&["limit"], "Invalid limit", "limit must be 0 or more.").into()
            }
            _ => Diagnostics::default(),
        }
    }

    async fn read(&self, controller: &Controller, config: &Value) -> Result<Value, Diagnostics> {
        let topology = known_str(config, "topology_id").unwrap_or_default();
        let group = known_str(config, "group");
        let epm = known_str(config, "epm");
        let limit = config.attr("limit").as_i64().unwrap_or(DEFAULT_LIMIT).max(0) as usize;
        let evms =
            controller.list_evms(topology, group, epm).await.map_err(|e| runtime_error("Could not list EVMs", e))?;
        let total = evms.len();
        let listed = evms
            .into_iter()
            .take(limit)
            .map(|evm| {
                object([
                    ("name", Value::string(evm.name)),
                    ("group", Value::string(evm.group)),
                    ("vpc", Value::string(evm.vpc)),
                    ("subnet", Value::string(evm.subnet)),
                    ("epm", Value::string(evm.epm)),
                    ("ip", Value::string(evm.ip.to_string())),
                    ("mac", Value::string(merak_netdev::netdev::format_mac(&evm.mac))),
                    ("namespace", Value::string(evm.namespace)),
                ])
            })
            .collect();
        let mut state = config.clone();
        if let Value::Map(attributes) = &mut state {
            attributes.insert(
                "id".into(),
                Value::string(format!("{topology}/{}/{}", group.unwrap_or("*"), epm.unwrap_or("*"))),
            );
            attributes.insert("total".into(), Value::int(total as i64));
            attributes.insert("evms".into(), Value::List(listed));
        }
        Ok(state)
    }
}

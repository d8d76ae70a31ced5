//! `merak_topology_graph`: a picture of a topology for pull requests, in
//! Graphviz `dot` and Mermaid, from the topology's own attributes. It needs
//! nothing built, so it is known at plan when those attributes are.

use std::sync::LazyLock;

use super::link_profile::{LINK_PROFILE, profiles_of};
use crate::controller::Controller;
use crate::model::graph::{DEFAULT_COLLAPSE_ABOVE, Graph};
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::provider::DataSource;
use merak_tfplugin::schema::{Attribute, Block, NestedBlock, Schema};

pub struct TopologyGraph;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    version: 0,
    block: Block {
        description: "Draws a topology: its vswitches, EPMs and links as Graphviz `dot` and as Mermaid (which \
            GitHub renders in pull requests and READMEs). Give it the same values as the `merak_topology` \
            (e.g. from shared locals, not from the resource's attributes, so that it is read at plan). Above \
            `collapse_above` EPMs, each rack's (or fat-tree edge switch's) EPMs are drawn as one node with their count. Links its \
            `link_profile` blocks (the topology's) impair are dashed and labelled.",
        attributes: vec![
            Attribute::computed("id", Type::String, "The topology's name."),
            Attribute::required("name", Type::String, "The topology's `name`."),
            Attribute::optional(
                "type",
                Type::String,
                "The topology's `type`, when it sets one (a `fat_tree` is drawn level by level).",
            ),
            Attribute::optional("racks", Type::Number, "The topology's `racks` (a tree's)."),
            Attribute::optional("hosts_per_rack", Type::Number, "The topology's `hosts_per_rack` (a tree's)."),
            Attribute::optional("k", Type::Number, "The topology's `k` (a fat tree's)."),
            Attribute::optional("fabric_cidr", Type::String, "The topology's `fabric_cidr`, when it sets one."),
            Attribute::optional("hosts", Type::Number, "The topology's `hosts`, when it sets one."),
            Attribute::optional(
                "ports_per_vswitch",
                Type::Number,
                "The topology's `ports_per_vswitch`, when it sets one.",
            ),
            Attribute::required(
                "data_plane_cidr",
                Type::String,
                "The topology's `data_plane_cidr` (EPMs are labelled with their addresses).",
            ),
            Attribute::optional(
                "collapse_above",
                Type::Number,
                "Draw EPMs one by one up to this many; above it, one node per rack. Default 64.",
            ),
            Attribute::computed("dot", Type::String, "The graph in Graphviz's language: `dot -Tsvg` renders it."),
            Attribute::computed(
                "mermaid",
                Type::String,
                "The graph as a Mermaid flowchart (`graph TD`), for a ```mermaid block.",
            ),
            Attribute::computed("node_count", Type::Number, "Nodes drawn: vswitches, and EPMs or racks."),
            Attribute::computed("edge_count", Type::Number, "Links drawn."),
        ],
        blocks: vec![NestedBlock::list(LINK_PROFILE, super::link_profile::block())],
    },
});

fn collapse_above(config: &Value) -> Result<u32, Diagnostics> {
    match config.attr("collapse_above") {
        Value::Null => Ok(DEFAULT_COLLAPSE_ABOVE),
        value => match value.as_i64() {
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(n as u32),
            _ => Err(Diagnostic::attribute_error(
                &["collapse_above"],
                "Invalid collapse_above",
                format!("collapse_above is {}; give a whole number of 1 or more.", value.describe()),
            )
            .into()),
        },
    }
}

#[tonic::async_trait]
impl DataSource<Controller> for TopologyGraph {
    fn type_name(&self) -> &'static str {
        "merak_topology_graph"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diagnostics = super::topology::spec_of(config).err().unwrap_or_default();
        diagnostics.0.extend(collapse_above(config).err().unwrap_or_default().0);
        diagnostics.0.extend(profiles_of(config).err().unwrap_or_default().0);
        diagnostics
    }

    async fn read(&self, _runtime: &Controller, config: &Value) -> Result<Value, Diagnostics> {
        let Some(spec) = super::topology::spec_of(config)? else {
            return Err(Diagnostic::error(
                "Topology unknown",
                "The topology's attributes are not known yet; give them as values known at plan.",
            )
            .into());
        };
        let Some(profiles) = profiles_of(config)? else {
            return Err(Diagnostic::error(
                "Link profiles unknown",
                "The link_profile blocks are not known yet; give them as values known at plan.",
            )
            .into());
        };
        let graph = Graph::of(&spec, collapse_above(config)?, &profiles);
        Ok(object([
            ("id", Value::string(&spec.name)),
            ("name", config.attr("name").clone()),
            ("type", config.attr("type").clone()),
            ("racks", config.attr("racks").clone()),
            ("hosts_per_rack", config.attr("hosts_per_rack").clone()),
            ("k", config.attr("k").clone()),
            ("fabric_cidr", config.attr("fabric_cidr").clone()),
            ("hosts", config.attr("hosts").clone()),
            ("ports_per_vswitch", config.attr("ports_per_vswitch").clone()),
            ("data_plane_cidr", config.attr("data_plane_cidr").clone()),
            ("collapse_above", config.attr("collapse_above").clone()),
            (LINK_PROFILE, config.attr(LINK_PROFILE).clone()),
            ("dot", Value::string(graph.dot(&spec.name))),
            ("mermaid", Value::string(graph.mermaid())),
            ("node_count", Value::int(graph.nodes.len() as i64)),
            ("edge_count", Value::int(graph.edges.len() as i64)),
        ]))
    }
}

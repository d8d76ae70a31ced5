//! The `link_profile` blocks of `merak_topology` (and of
//! `merak_topology_graph`, which draws them): their schema, how they
//! are read from a configuration, and how the state echoes them. What they
//! mean is in [`crate::model::link_profile`].

use crate::model::BlockError;
use crate::model::link_profile::{self, LinkProfileSpec};
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block};

pub const LINK_PROFILE: &str = "link_profile";
const NUMBERS: [&str; 4] = ["rate_mbit", "delay_ms", "jitter_ms", "loss_percent"];

pub fn block() -> Block {
    Block {
        description: "Impairs a role of links, both directions, as `tc` would on each end's egress: \
            `rate_mbit` with a token bucket (`tbf`), `delay_ms`, `jitter_ms` and `loss_percent` with \
            `netem`. Changing a profile reshapes the links in place; shaping removed behind \
            Terraform's back is drift the next plan shows. A kernel without `sch_netem` refuses \
            delay, jitter and loss at apply, naming it. On the `kubernetes` runtime the agents shape \
            both ends of each tunnel, in the pods.",
        attributes: vec![
            Attribute::required(
                "role",
                Type::String,
                "The links: `epm_uplink` (each EPM's `eth1` to its top-of-rack vswitch or edge switch); a tree's `switch_uplink` (each vswitch to its parent); a fat tree's `edge_aggregation` and `aggregation_core`. One profile per role.",
            ),
            Attribute::optional(
                "rate_mbit",
                Type::Number,
                "Each direction's rate, Mbit/s (0.1 to 100000); the bucket holds 10 ms of it.",
            ),
            Attribute::optional("delay_ms", Type::Number, "Added one-way delay per direction, ms (needs netem)."),
            Attribute::optional("jitter_ms", Type::Number, "Random variation of the delay, ms (needs netem)."),
            Attribute::optional(
                "loss_percent",
                Type::Number,
                "Share of packets dropped per direction, percent (needs netem).",
            ),
        ],
        blocks: Vec::new(),
    }
}

/// The `link_profile` blocks. `Ok(None)` when part of them is not known yet.
pub fn profiles_of(config: &Value) -> Result<Option<Vec<LinkProfileSpec>>, Diagnostics> {
    let blocks = match config.attr(LINK_PROFILE) {
        Value::Null => return Ok(Some(Vec::new())),
        Value::List(blocks) => blocks,
        _ => return Ok(None),
    };
    if blocks.iter().any(|b| !b.is_wholly_known()) {
        return Ok(None);
    }
    let profiles: Vec<LinkProfileSpec> = blocks
        .iter()
        .map(|block| LinkProfileSpec {
            role: block.attr("role").as_str().unwrap_or_default().to_string(),
            rate_mbit: block.attr("rate_mbit").as_f64(),
            delay_ms: block.attr("delay_ms").as_f64(),
            jitter_ms: block.attr("jitter_ms").as_f64(),
            loss_percent: block.attr("loss_percent").as_f64(),
        })
        .collect();
    let errors = link_profile::validate(&profiles);
    if errors.is_empty() {
        return Ok(Some(profiles));
    }
    Err(Diagnostics(errors.into_iter().map(diagnostic).collect()))
}

/// A broken rule, on its block's attribute.
pub fn diagnostic(error: BlockError) -> Diagnostic {
    Diagnostic::attribute_error(
        &[LINK_PROFILE, &format!("[{}]", error.index), error.attribute],
        error.summary,
        error.detail,
    )
}

pub fn value(profile: &LinkProfileSpec) -> Value {
    let number = |n: Option<f64>| n.map_or(Value::Null, Value::number);
    let numbers = [profile.rate_mbit, profile.delay_ms, profile.jitter_ms, profile.loss_percent];
    object(std::iter::once(("role", Value::string(&profile.role))).chain(NUMBERS.into_iter().zip(numbers.map(number))))
}

//! Resources and data sources: each maps configuration to the model and the
//! model to controller calls, implementing the protocol layer's
//! `Resource` and `DataSource` traits for the [`Controller`].

pub mod evm_group;
pub mod evms;
pub mod fault;
mod link_profile;
pub mod pingall;
pub mod security_group;
pub mod subnet;
pub mod topology;
pub mod topology_graph;
pub mod vpc;

use crate::controller::{Controller, Failure, RuntimeError};
use crate::model::SpecError;
use merak_tfplugin::cty::Value;
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::Schema;

impl From<SpecError> for Diagnostic {
    fn from(error: SpecError) -> Self {
        Diagnostic::attribute_error(&[error.attribute], error.summary, error.detail)
    }
}

pub fn spec_errors(errors: Vec<SpecError>) -> Diagnostics {
    Diagnostics(errors.into_iter().map(Diagnostic::from).collect())
}

/// What the protocol layer serves, with the controller as the configured client.
pub type Resource = dyn merak_tfplugin::provider::Resource<Controller>;
pub type DataSource = dyn merak_tfplugin::provider::DataSource<Controller>;

pub static RESOURCES: &[&Resource] = &[
    &topology::Topology,
    &vpc::Vpc,
    &subnet::Subnet,
    &security_group::SecurityGroup,
    &evm_group::EvmGroup,
    &fault::Fault,
];
pub static DATA_SOURCES: &[&DataSource] = &[&evms::Evms, &pingall::Pingall, &topology_graph::TopologyGraph];

/// A runtime failure as a diagnostic.
pub fn runtime_error(summary: impl Into<String>, error: RuntimeError) -> Diagnostics {
    Diagnostic::error(summary, error.to_string()).into()
}

/// A string attribute that is known and set.
/// A runtime's refusal of what the attribute at `path` asks: the
/// capability's own summary when the runtime lacks one, else `summary`.
pub fn refusal(path: &[&str], summary: &str, error: &RuntimeError) -> Diagnostic {
    let summary = match error {
        RuntimeError::Unsupported(unsupported) => unsupported.capability.summary(),
        _ => summary,
    };
    Diagnostic::attribute_error(path, summary, error.to_string())
}

pub fn known_str<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.attr(name).as_str()
}

/// Splits a composite ID `a/b/c` into exactly `parts` non-empty parts.
pub fn split_id(id: &str, parts: usize) -> Option<Vec<&str>> {
    let split: Vec<&str> = id.split('/').collect();
    (split.len() == parts && split.iter().all(|p| !p.is_empty())).then_some(split)
}

/// Whether any of the named attributes is, or holds, an unknown value.
pub fn any_unknown(value: &Value, names: &[&str]) -> bool {
    names.iter().any(|name| !value.attr(name).is_wholly_known())
}

/// The planned state when some inputs are not known yet: the configuration
/// as given, and every attribute the provider computes unknown.
pub fn unknown_computed(schema: &Schema, config: &Value) -> Value {
    let Value::Map(mut planned) = config.clone() else { return Value::Unknown };
    for attribute in schema.block.attributes.iter().filter(|a| a.presence != merak_tfplugin::schema::Presence::Required)
    {
        let slot = planned.entry(attribute.name.to_string()).or_default();
        if slot.is_null() {
            *slot = Value::Unknown;
        }
    }
    Value::Map(planned)
}

/// Apply received a plan with unknown values: a provider bug, said plainly.
pub fn unknown_at_apply() -> Diagnostics {
    Diagnostic::error("Planned value not fully known", "This is a provider bug: apply received unknown values.").into()
}

/// An apply that left some objects unbuilt: the first failures, and how much
/// exists (`progress`), as one error; no diagnostic when nothing failed.
pub fn incomplete(summary: String, failures: &[Failure], complete: bool, progress: String) -> Diagnostics {
    if failures.is_empty() && complete {
        return Diagnostics::default();
    }
    const SHOWN: usize = 10;
    let mut detail: Vec<String> = failures.iter().take(SHOWN).map(|f| format!("{}: {}", f.object, f.error)).collect();
    if failures.len() > SHOWN {
        detail.push(format!("... and {} more", failures.len() - SHOWN));
    }
    detail.push(format!("{progress} The state records what exists; run apply again to converge."));
    Diagnostic::error(summary, detail.join("\n")).into()
}

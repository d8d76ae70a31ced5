//! Resources and data sources: each maps configuration to the model and the
//! model to runtime calls. The protocol server only sees these two traits.

pub mod evm_group;
pub mod evms;
pub mod pingall;
pub mod planned;
pub mod subnet;
pub mod topology;
pub mod vpc;

use crate::model::SpecError;
use crate::protocol::cty::Value;
use crate::protocol::diagnostics::{Diagnostic, Diagnostics};
use crate::protocol::schema::Schema;
use crate::controller::{Controller, Failure, RuntimeError};

impl From<SpecError> for Diagnostic {
    fn from(error: SpecError) -> Self {
        Diagnostic::attribute_error(&[error.attribute], error.summary, error.detail)
    }
}

pub fn spec_errors(errors: Vec<SpecError>) -> Diagnostics {
    Diagnostics(errors.into_iter().map(Diagnostic::from).collect())
}

#[tonic::async_trait]
pub trait Resource: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> &'static Schema;
    /// Checks the configuration without the runtime (values may be unknown).
    fn validate(&self, config: &Value) -> Diagnostics;
    /// The planned state for `config`; `runtime` is there to check the plan
    /// against what exists (it may be absent when the provider is not configured).
    async fn plan(&self, runtime: Option<&Controller>, prior: &Value, config: &Value) -> Result<Value, Diagnostics>;
    /// Creates or updates to `planned`. Returns the state of what exists,
    /// also when something failed.
    async fn apply(&self, runtime: &Controller, prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics);
    async fn destroy(&self, runtime: &Controller, prior: &Value) -> Diagnostics;
    /// The state of the resource with import ID `id`, or None when there is none.
    async fn import(&self, runtime: &Controller, id: &str) -> Result<Option<Value>, Diagnostics>;
    /// The resource as it is, or None when it is gone. Every resource's `id`
    /// is its import ID, so reading is importing it again.
    async fn read(&self, runtime: &Controller, current: &Value) -> Result<Option<Value>, Diagnostics> {
        match known_str(current, "id") {
            Some(id) => self.import(runtime, id).await,
            None => Ok(None),
        }
    }

    /// A stored state (JSON) of schema version `version`, rewritten for
    /// the current schema. Most resources have had one version only.
    fn upgrade_state(&self, _version: i64, state: serde_json::Value) -> serde_json::Value {
        state
    }

    /// Attributes whose change between `prior` and `planned` forces replacement.
    fn requires_replace(&self, prior: &Value, planned: &Value) -> Vec<&'static str> {
        self.schema()
            .block
            .attributes
            .iter()
            .filter(|a| a.forces_replacement && prior.attr(a.name) != planned.attr(a.name))
            .map(|a| a.name)
            .collect()
    }
}

#[tonic::async_trait]
pub trait DataSource: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> &'static Schema;
    fn validate(&self, config: &Value) -> Diagnostics;
    async fn read(&self, runtime: &Controller, config: &Value) -> Result<Value, Diagnostics>;
}

pub static RESOURCES: &[&dyn Resource] = &[&topology::Topology, &vpc::Vpc, &subnet::Subnet, &evm_group::EvmGroup];
pub static DATA_SOURCES: &[&dyn DataSource] = &[&evms::Evms, &pingall::Pingall];

pub fn resource(type_name: &str) -> Option<&'static dyn Resource> {
    RESOURCES.iter().copied().find(|r| r.type_name() == type_name)
}

pub fn data_source(type_name: &str) -> Option<&'static dyn DataSource> {
    DATA_SOURCES.iter().copied().find(|d| d.type_name() == type_name)
}

/// A runtime failure as a diagnostic.
pub fn runtime_error(summary: impl Into<String>, error: RuntimeError) -> Diagnostics {
    Diagnostic::error(summary, error.to_string()).into()
}

/// A string attribute that is known and set.
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
    for attribute in schema.block.attributes.iter().filter(|a| a.presence != crate::protocol::schema::Presence::Required) {
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

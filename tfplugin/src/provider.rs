//! What the tfplugin6 service serves, as the crate above wires it in: the
//! provider's schema and configuration, and its resources and data
//! sources, each generic over `C`, what configuring the provider yields
//! (the controller). This layer knows nothing of what they do.

use std::sync::Arc;

use super::cty::Value;
use super::diagnostics::Diagnostics;
use super::schema::Schema;

/// The provider: its block's schema and configuration, and its types.
pub struct Definition<C: Sync + 'static> {
    pub schema: fn() -> &'static Schema,
    /// Checks the provider block without touching anything.
    pub validate: fn(&Value) -> Diagnostics,
    /// Checks the provider block and what it names (this host, a
    /// cluster), and makes the client.
    pub configure: fn(Value) -> futures::future::BoxFuture<'static, Result<Arc<C>, Diagnostics>>,
    /// Lets go of what the client holds beyond this process (a lock kept
    /// in a cluster), once Terraform is done with the provider.
    pub release: fn(Arc<C>) -> futures::future::BoxFuture<'static, ()>,
    pub resources: &'static [&'static dyn Resource<C>],
    pub data_sources: &'static [&'static dyn DataSource<C>],
}

impl<C: Sync + 'static> Definition<C> {
    pub fn resource(&self, type_name: &str) -> Option<&'static dyn Resource<C>> {
        self.resources.iter().copied().find(|r| r.type_name() == type_name)
    }

    pub fn data_source(&self, type_name: &str) -> Option<&'static dyn DataSource<C>> {
        self.data_sources.iter().copied().find(|d| d.type_name() == type_name)
    }
}

/// A string attribute that is known and set.
fn known_str<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.attr(name).as_str()
}

#[tonic::async_trait]
pub trait Resource<C: Sync>: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> &'static Schema;
    /// Checks the configuration before the provider is configured (values may be unknown).
    fn validate(&self, config: &Value) -> Diagnostics;
    /// The planned state for `config`; `client` is there to check the plan
    /// against what exists (it may be absent when the provider is not configured).
    async fn plan(&self, client: Option<&C>, prior: &Value, config: &Value) -> Result<Value, Diagnostics>;
    /// Creates or updates to `planned`. Returns the state of what exists,
    /// also when something failed.
    async fn apply(&self, client: &C, prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics);
    async fn destroy(&self, client: &C, prior: &Value) -> Diagnostics;
    /// The state of the resource with import ID `id`, or None when there is none.
    async fn import(&self, client: &C, id: &str) -> Result<Option<Value>, Diagnostics>;
    /// The resource as it is, or None when it is gone. Every resource's `id`
    /// is its import ID, so reading is importing it again.
    async fn read(&self, client: &C, current: &Value) -> Result<Option<Value>, Diagnostics> {
        match known_str(current, "id") {
            Some(id) => self.import(client, id).await,
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
pub trait DataSource<C: Sync>: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> &'static Schema;
    fn validate(&self, config: &Value) -> Diagnostics;
    async fn read(&self, client: &C, config: &Value) -> Result<Value, Diagnostics>;
}

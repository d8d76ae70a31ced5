//! The tfplugin6 Provider service: decodes requests, dispatches to the
//! provider definition it was given (configuration, resources), encodes
//! answers. RPCs this
//! provider does not need are not declared in our proto, so tonic answers
//! them UNIMPLEMENTED.

use std::sync::{Arc, RwLock};

use merak_proto::tfplugin6::{self as pb, provider_server::Provider};
use tonic::{Request, Response, Status};

use super::cty::{Type, Value};
use super::diagnostics::{Diagnostic, Diagnostics};
use super::provider::{DataSource, Definition, Resource};
use super::schema::{Presence, Schema};
use super::{json, msgpack};

/// The tfplugin6 service of a provider [`Definition`]; `C` is what
/// configuring it yields, handed to every resource.
pub struct ProviderService<C: Sync + 'static> {
    definition: &'static Definition<C>,
    client: Arc<RwLock<Option<Arc<C>>>>,
}

impl<C: Sync + 'static> ProviderService<C> {
    pub fn new(definition: &'static Definition<C>) -> Self {
        ProviderService { definition, client: Arc::default() }
    }
}

impl<C: Send + Sync + 'static> ProviderService<C> {
    /// What lets go of the configured client's holdings when Terraform is
    /// done (see [`Definition::release`]); usable after the service moved.
    pub fn releaser(&self) -> impl FnOnce() -> futures::future::BoxFuture<'static, ()> + Send + 'static {
        let (definition, client) = (self.definition, Arc::clone(&self.client));
        move || {
            let configured = client.read().ok().and_then(|client| client.clone());
            match configured {
                Some(configured) => (definition.release)(configured),
                None => Box::pin(async {}),
            }
        }
    }
}

impl<C: Sync + 'static> ProviderService<C> {
    fn client(&self) -> Result<Arc<C>, Diagnostics> {
        self.client.read().ok().and_then(|client| client.clone()).ok_or_else(|| {
            Diagnostic::error("Provider not configured", "ConfigureProvider was not called before this operation.")
                .into()
        })
    }

    fn resource(&self, type_name: &str) -> Result<&'static dyn Resource<C>, Diagnostics> {
        self.definition.resource(type_name).ok_or_else(|| {
            Diagnostic::error("Unknown resource type", format!("This provider has no resource type {type_name:?}."))
                .into()
        })
    }

    fn data_source(&self, type_name: &str) -> Result<&'static dyn DataSource<C>, Diagnostics> {
        self.definition.data_source(type_name).ok_or_else(|| {
            Diagnostic::error("Unknown data source", format!("This provider has no data source {type_name:?}.")).into()
        })
    }
}

fn schemas<T: ?Sized>(
    items: &[&T],
    name: impl Fn(&T) -> &'static str,
    schema: impl Fn(&T) -> &'static Schema,
) -> std::collections::HashMap<String, pb::Schema> {
    items.iter().map(|item| (name(item).to_string(), schema(item).to_proto())).collect()
}

fn decode(value: Option<&pb::DynamicValue>, ty: &Type) -> Result<Value, Diagnostics> {
    let Some(value) = value else { return Ok(Value::Null) };
    let decoded = if !value.msgpack.is_empty() {
        msgpack::decode(&value.msgpack, ty)
    } else if !value.json.is_empty() {
        json::decode(&value.json, ty)
    } else {
        Ok(Value::Null)
    };
    decoded.map_err(|e| Diagnostic::error("Invalid value from Terraform", e.to_string()).into())
}

fn encode(value: &Value, ty: &Type) -> Result<pb::DynamicValue, Diagnostics> {
    msgpack::encode(value, ty)
        .map(|msgpack| pb::DynamicValue { msgpack, json: Vec::new() })
        .map_err(|e| Diagnostic::error("Provider produced a value it cannot encode", e.to_string()).into())
}

/// Runs `work`, folding both its diagnostics and its errors into the reply.
fn diagnostics_of<T>(result: Result<T, Diagnostics>) -> (Option<T>, Vec<pb::Diagnostic>) {
    match result {
        Ok(value) => (Some(value), Vec::new()),
        Err(diagnostics) => (None, diagnostics.to_proto()),
    }
}

#[tonic::async_trait]
impl<C: Send + Sync + 'static> Provider for ProviderService<C> {
    async fn get_metadata(
        &self,
        _: Request<pb::get_metadata::Request>,
    ) -> Result<Response<pb::get_metadata::Response>, Status> {
        Ok(Response::new(pb::get_metadata::Response {
            server_capabilities: Some(pb::ServerCapabilities::default()),
            diagnostics: Vec::new(),
            data_sources: self
                .definition
                .data_sources
                .iter()
                .map(|d| pb::get_metadata::DataSourceMetadata { type_name: d.type_name().to_string() })
                .collect(),
            resources: self
                .definition
                .resources
                .iter()
                .map(|r| pb::get_metadata::ResourceMetadata { type_name: r.type_name().to_string() })
                .collect(),
        }))
    }

    async fn get_provider_schema(
        &self,
        _: Request<pb::get_provider_schema::Request>,
    ) -> Result<Response<pb::get_provider_schema::Response>, Status> {
        Ok(Response::new(pb::get_provider_schema::Response {
            provider: Some((self.definition.schema)().to_proto()),
            resource_schemas: schemas(self.definition.resources, |r| r.type_name(), |r| r.schema()),
            data_source_schemas: schemas(self.definition.data_sources, |d| d.type_name(), |d| d.schema()),
            diagnostics: Vec::new(),
            provider_meta: None,
            server_capabilities: Some(pb::ServerCapabilities::default()),
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<pb::validate_provider_config::Request>,
    ) -> Result<Response<pb::validate_provider_config::Response>, Status> {
        let request = request.into_inner();
        let diagnostics = match decode(request.config.as_ref(), &(self.definition.schema)().value_type()) {
            Ok(value) => (self.definition.validate)(&value),
            Err(diagnostics) => diagnostics,
        };
        Ok(Response::new(pb::validate_provider_config::Response { diagnostics: diagnostics.to_proto() }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<pb::validate_resource_config::Request>,
    ) -> Result<Response<pb::validate_resource_config::Response>, Status> {
        let request = request.into_inner();
        let result = self.resource(&request.type_name).and_then(|resource| {
            Ok(resource.validate(&decode(request.config.as_ref(), &resource.schema().value_type())?))
        });
        let diagnostics = match result {
            Ok(diagnostics) | Err(diagnostics) => diagnostics,
        };
        Ok(Response::new(pb::validate_resource_config::Response { diagnostics: diagnostics.to_proto() }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<pb::validate_data_resource_config::Request>,
    ) -> Result<Response<pb::validate_data_resource_config::Response>, Status> {
        let request = request.into_inner();
        let result = self
            .data_source(&request.type_name)
            .and_then(|source| Ok(source.validate(&decode(request.config.as_ref(), &source.schema().value_type())?)));
        let diagnostics = match result {
            Ok(diagnostics) | Err(diagnostics) => diagnostics,
        };
        Ok(Response::new(pb::validate_data_resource_config::Response { diagnostics: diagnostics.to_proto() }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<pb::upgrade_resource_state::Request>,
    ) -> Result<Response<pb::upgrade_resource_state::Response>, Status> {
        let request = request.into_inner();
        // The resource rewrites a state of an older schema version (as
        // JSON), then it is re-encoded as msgpack under the current schema.
        let result = self.resource(&request.type_name).and_then(|resource| {
            let ty = resource.schema().value_type();
            let raw = request.raw_state.map(|raw| raw.json).unwrap_or_default();
            let unreadable = |e: String| Diagnostics::from(Diagnostic::error("Unreadable stored state", e));
            let value = if raw.is_empty() {
                Value::Null
            } else {
                let stored: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| unreadable(e.to_string()))?;
                let upgraded = resource.upgrade_state(request.version, stored);
                let raw = serde_json::to_vec(&upgraded).map_err(|e| unreadable(e.to_string()))?;
                json::decode(&raw, &ty).map_err(|e| unreadable(e.to_string()))?
            };
            encode(&value, &ty)
        });
        let (upgraded_state, diagnostics) = diagnostics_of(result);
        Ok(Response::new(pb::upgrade_resource_state::Response { upgraded_state, diagnostics }))
    }

    async fn configure_provider(
        &self,
        request: Request<pb::configure_provider::Request>,
    ) -> Result<Response<pb::configure_provider::Response>, Status> {
        let request = request.into_inner();
        let result = match decode(request.config.as_ref(), &(self.definition.schema)().value_type()) {
            Ok(value) => (self.definition.configure)(value).await,
            Err(diagnostics) => Err(diagnostics),
        };
        let diagnostics = match result {
            Ok(client) => {
                if let Ok(mut slot) = self.client.write() {
                    *slot = Some(client);
                }
                Vec::new()
            }
            Err(diagnostics) => diagnostics.to_proto(),
        };
        Ok(Response::new(pb::configure_provider::Response { diagnostics }))
    }

    async fn read_resource(
        &self,
        request: Request<pb::read_resource::Request>,
    ) -> Result<Response<pb::read_resource::Response>, Status> {
        let request = request.into_inner();
        let result = async {
            let resource = self.resource(&request.type_name)?;
            let ty = resource.schema().value_type();
            let current = decode(request.current_state.as_ref(), &ty)?;
            if current.is_null() {
                return encode(&current, &ty);
            }
            let client = self.client()?;
            let state = resource.read(client.as_ref(), &current).await?;
            encode(&state.unwrap_or(Value::Null), &ty)
        }
        .await;
        let (new_state, diagnostics) = diagnostics_of(result);
        Ok(Response::new(pb::read_resource::Response { new_state, diagnostics, private: request.private }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<pb::plan_resource_change::Request>,
    ) -> Result<Response<pb::plan_resource_change::Response>, Status> {
        let request = request.into_inner();
        let result: Result<(pb::DynamicValue, Vec<pb::AttributePath>), Diagnostics> = async {
            let resource = self.resource(&request.type_name)?;
            let ty = resource.schema().value_type();
            let prior = decode(request.prior_state.as_ref(), &ty)?;
            let proposed = decode(request.proposed_new_state.as_ref(), &ty)?;
            if proposed.is_null() {
                return Ok((encode(&Value::Null, &ty)?, Vec::new()));
            }
            let config = decode(request.config.as_ref(), &ty)?;
            let client = self.client().ok();
            let planned = resource.plan(client.as_deref(), &prior, &config).await?;
            keeps_configured_values(resource.schema(), &config, &planned)?;
            let replace = if prior.is_null() { Vec::new() } else { resource.requires_replace(&prior, &planned) };
            let replace = replace
                .into_iter()
                .map(|name| pb::AttributePath {
                    steps: vec![pb::attribute_path::Step {
                        selector: Some(pb::attribute_path::step::Selector::AttributeName(name.to_string())),
                    }],
                })
                .collect();
            Ok((encode(&planned, &ty)?, replace))
        }
        .await;
        let (planned, diagnostics) = diagnostics_of(result);
        let (planned_state, requires_replace) = match planned {
            Some((state, replace)) => (Some(state), replace),
            None => (None, Vec::new()),
        };
        Ok(Response::new(pb::plan_resource_change::Response {
            planned_state,
            requires_replace,
            planned_private: request.prior_private,
            diagnostics,
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<pb::apply_resource_change::Request>,
    ) -> Result<Response<pb::apply_resource_change::Response>, Status> {
        let request = request.into_inner();
        let result: Result<(pb::DynamicValue, Diagnostics), Diagnostics> = async {
            let resource = self.resource(&request.type_name)?;
            let ty = resource.schema().value_type();
            let prior = decode(request.prior_state.as_ref(), &ty)?;
            let planned = decode(request.planned_state.as_ref(), &ty)?;
            let client = self.client()?;
            if planned.is_null() {
                let diagnostics = resource.destroy(client.as_ref(), &prior).await;
                // A failed destroy keeps the prior state, so it can be retried.
                let state = if diagnostics.has_errors() { prior } else { Value::Null };
                return Ok((encode(&state, &ty)?, diagnostics));
            }
            let (state, diagnostics) = resource.apply(client.as_ref(), &prior, &planned).await;
            let state = match state {
                Some(state) => state,
                // Nothing could be done: what existed before still does.
                None => prior,
            };
            Ok((encode(&state, &ty)?, diagnostics))
        }
        .await;
        let (new_state, diagnostics) = match result {
            Ok((state, diagnostics)) => (Some(state), diagnostics.to_proto()),
            Err(diagnostics) => (None, diagnostics.to_proto()),
        };
        Ok(Response::new(pb::apply_resource_change::Response {
            new_state,
            private: request.planned_private,
            diagnostics,
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<pb::import_resource_state::Request>,
    ) -> Result<Response<pb::import_resource_state::Response>, Status> {
        let request = request.into_inner();
        let result = async {
            let resource = self.resource(&request.type_name)?;
            let client = self.client()?;
            let state = resource.import(client.as_ref(), &request.id).await?.ok_or_else(|| {
                Diagnostics::from(Diagnostic::error(
                    format!("Cannot import {}: it does not exist", request.type_name),
                    format!(
                        "The runtime has no {} with ID {:?}; see the resource's docs for the import ID.",
                        request.type_name, request.id
                    ),
                ))
            })?;
            Ok(pb::import_resource_state::ImportedResource {
                type_name: request.type_name.clone(),
                state: Some(encode(&state, &resource.schema().value_type())?),
                private: Vec::new(),
            })
        }
        .await;
        let (imported, diagnostics) = diagnostics_of(result);
        Ok(Response::new(pb::import_resource_state::Response {
            imported_resources: imported.into_iter().collect(),
            diagnostics,
        }))
    }

    async fn read_data_source(
        &self,
        request: Request<pb::read_data_source::Request>,
    ) -> Result<Response<pb::read_data_source::Response>, Status> {
        let request = request.into_inner();
        let result = async {
            let source = self.data_source(&request.type_name)?;
            let ty = source.schema().value_type();
            let config = decode(request.config.as_ref(), &ty)?;
            let client = self.client()?;
            encode(&source.read(client.as_ref(), &config).await?, &ty)
        }
        .await;
        let (state, diagnostics) = diagnostics_of(result);
        Ok(Response::new(pb::read_data_source::Response { state, diagnostics }))
    }

    async fn stop_provider(
        &self,
        _: Request<pb::stop_provider::Request>,
    ) -> Result<Response<pb::stop_provider::Response>, Status> {
        // Operations are bounded by their own timeouts and each leaves
        // convergent state, so there is nothing to interrupt mid-way.
        tracing::info!("StopProvider received");
        Ok(Response::new(pb::stop_provider::Response { error: String::new() }))
    }
}

/// A plan must keep every value the configuration sets (Terraform rejects
/// the plan otherwise, as "Provider produced invalid plan", blaming the
/// provider). A value the provider would have to rewrite (a number it
/// rounds, a CIDR it normalises) is the user's to fix: say so, on the
/// attribute.
fn keeps_configured_values(schema: &Schema, config: &Value, planned: &Value) -> Result<(), Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    for attribute in schema.block.attributes.iter().filter(|a| a.presence != Presence::Computed) {
        let (configured, planned) = (config.attr(attribute.name), planned.attr(attribute.name));
        if configured.is_null() || !configured.is_wholly_known() || configured.same(planned) {
            continue;
        }
        diagnostics.push(Diagnostic::attribute_error(
            &[attribute.name],
            format!("Invalid {}", attribute.name),
            format!(
                "{} is {} as written, which this provider cannot take as it is (it would become {}). \
                 Write it the way the attribute's documentation shows.",
                attribute.name,
                configured.describe(),
                planned.describe()
            ),
        ));
    }
    if diagnostics.has_errors() { Err(diagnostics) } else { Ok(()) }
}

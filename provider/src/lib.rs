//! terraform-provider-merak: a Terraform/OpenTofu provider that builds
//! emulated data centers from real Linux network devices.

pub mod config;
pub mod controller;
pub mod docs;
pub mod logging;
pub mod model;
pub mod resources;
pub mod runtime;
pub mod store;

/// The provider as the protocol layer serves it: this crate's schema,
/// configuration, resources and data sources, the controller their client.
pub static PROVIDER: merak_tfplugin::provider::Definition<controller::Controller> =
    merak_tfplugin::provider::Definition {
        schema: || &config::SCHEMA,
        validate: config::validate,
        configure: config::configure,
        release: |controller| Box::pin(async move { controller.release().await }),
        resources: resources::RESOURCES,
        data_sources: resources::DATA_SOURCES,
    };

//! terraform-provider-merak: a Terraform/OpenTofu provider that builds
//! emulated data centers from real Linux network devices.

pub mod config;
pub mod controller;
pub mod docs;
pub mod logging;
pub mod model;
pub mod protocol;
pub mod resources;
pub mod runtime;
pub mod store;

//! Terraform's side of the conversation: the go-plugin handshake and
//! transport, TLS, the tfplugin6 service, and the value codec it needs.
//! It knows nothing of merak: a provider is a [`provider::Definition`]
//! (schema, configure, resources and data sources, generic over what
//! configuring yields) that this crate serves.

pub mod cty;
pub mod diagnostics;
pub mod json;
pub mod msgpack;
pub mod plugin;
pub mod provider;
pub mod schema;
pub mod server;
pub mod tls;

//! Terraform's side of the conversation: the go-plugin handshake and
//! transport, TLS, the tfplugin6 service, and the value codec it needs.

pub mod cty;
pub mod diagnostics;
pub mod json;
pub mod msgpack;
pub mod plugin;
pub mod provider;
pub mod schema;
pub mod server;
pub mod tls;

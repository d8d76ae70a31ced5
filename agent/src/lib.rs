//! merak-agent: the process inside every Emulated Physical Machine, and the
//! netlink library that builds network devices for it and for the provider's
//! local runtime.

pub mod bridges;
pub mod build;
pub mod evm;
pub mod goal;
pub mod host;
pub mod netdev;
pub mod netns;
pub mod overlay;
pub mod ping;
pub mod pki;
pub mod server;
pub mod tls;

//! merak-agent: the process inside every Emulated Physical Machine. It builds
//! devices with merak-netdev (re-exported as `netdev` and `netns`).

pub mod bridges;
pub mod build;
pub mod error;
pub mod evm;
pub mod goal;
pub mod host;
pub mod overlay;
pub mod ping;
pub mod pki;
pub mod server;
pub mod tls;
pub mod underlay;

pub use merak_netdev::{netdev, netns};

//! merak-agent: the process inside every Emulated Physical Machine. It builds
//! devices with merak-netdev (re-exported as `netdev` and `netns`).

pub mod bridges;
pub mod build;
pub mod error;
pub mod evm;
pub mod firewall;
pub mod gateway;
pub mod goal;
pub mod host;
pub mod namespace_entry;
pub mod nftables;
pub mod operate;
pub mod overlay;
pub mod pcap;
pub mod ping;
pub mod pki;
pub mod router;
pub mod server;
pub mod shaping;
pub mod supervisor;
pub mod tls;
pub mod underlay;

pub use merak_netdev::{netdev, netns};

/// An error with its causes: tonic's transport errors say only "transport error".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        // Some errors repeat their source's text in their own.
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

//! The error of building devices (overlay, bridges, EVMs), in a module of
//! its own so that the modules that build them import it, not each other.

use crate::netdev::NetdevError;
use crate::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netdev(#[from] NetdevError),
    #[error("{0}")]
    Invalid(String),
}

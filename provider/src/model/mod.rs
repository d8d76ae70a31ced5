//! The pure model: topology generation, address management and naming. No
//! I/O here, so every rule can be tested exhaustively.

pub mod cidr;
pub mod epm_agent;
pub mod fat_tree;
pub mod fault;
pub mod graph;
pub mod link_profile;
pub mod naming;
pub mod network_controller;
pub mod overlay;
pub mod ranges;
pub mod security_group;
pub mod tree;

pub use cidr::Ipv4Cidr;
pub use tree::{Epm, TreeInput, TreeSpec, Vswitch};

/// A rule a configuration breaks, pinned to the attribute to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub attribute: &'static str,
    pub summary: String,
    pub detail: String,
}

/// A rule a repeated block breaks: the block's index, the attribute in
/// it, and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockError {
    pub index: usize,
    pub attribute: &'static str,
    pub summary: String,
    pub detail: String,
}

impl SpecError {
    pub fn new(attribute: &'static str, summary: impl Into<String>, detail: impl Into<String>) -> Self {
        SpecError { attribute, summary: summary.into(), detail: detail.into() }
    }
}

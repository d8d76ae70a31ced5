//! Where emulated data centers are built. One trait; `local` (network
//! namespaces on this host) implements it now, `kubernetes` (pods) next. The
//! resources only ever talk to this trait.

pub mod agent_client;
pub mod local;
mod process;

use crate::model::TreeSpec;

/// How much of a topology is up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyStatus {
    /// EPMs whose namespace, agent, data-plane NIC and path to the root are all in place.
    pub ready_epms: u32,
    /// Objects that could not be built or repaired, with why.
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The EPM or vswitch, e.g. `epm-3` or `s1-0`.
    pub object: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Netns(#[from] merak_agent::netns::NetnsError),
    #[error(transparent)]
    Netdev(#[from] merak_agent::netdev::NetdevError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime's record of topology {topology} is unreadable ({detail}); remove {path} to start over")]
    CorruptRecord { topology: String, path: String, detail: String },
    #[error("{0}")]
    Unavailable(String),
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io { context: context.into(), source }
    }
}

#[tonic::async_trait]
pub trait Runtime: Send + Sync {
    /// Makes the host match `spec`: creates what is missing, repairs what
    /// drifted and removes what the spec no longer has. Failures of single
    /// objects are reported in the status; an `Err` means nothing could be done.
    async fn apply_topology(&self, spec: &TreeSpec) -> Result<TopologyStatus, RuntimeError>;

    /// The recorded spec of a topology and how much of it is up; `None` when
    /// the runtime has no such topology.
    async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError>;

    /// Removes everything of the topology and waits until its devices are gone.
    async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError>;
}

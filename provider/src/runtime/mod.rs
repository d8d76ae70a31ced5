//! Where emulated data centers are built. One trait; `local` (network
//! namespaces on this host) implements it now, `kubernetes` (pods) next. The
//! resources only ever talk to this trait.

pub mod agent_client;
pub mod local;
mod process;

use std::collections::BTreeMap;

use crate::model::TreeSpec;
use crate::model::overlay::{GroupSpec, Ranges, SubnetSpec, VpcSpec};

/// Whether Terraform is creating an object or changing one its state holds.
/// Creating an object whose record exists is refused unless that record was
/// left unconfirmed by an interrupted or failed create (then it is adopted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Create,
    Update,
}

/// The refusal to create over a record some other Terraform state owns,
/// with the import that takes it over instead.
pub fn owned_elsewhere(resource_type: &str, kind: &str, id: &str) -> RuntimeError {
    RuntimeError::Conflict(format!(
        "{kind} {id} already exists on this host, made by another Terraform state or by an apply whose \
         state was lost; this provider does not take it over. To manage it from this configuration, \
         import it: terraform import {resource_type}.NAME {id} (NAME: the resource's name in your \
         configuration). Or choose another name."
    ))
}

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

/// How much of an EVM group is up, and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub ready: u32,
    /// Host indexes of its subnet the group holds.
    pub ranges: Ranges,
    /// EPM name → EVMs placed there.
    pub per_epm: BTreeMap<String, u32>,
    /// The EPMs the group spreads or packs over (fixed when it is created).
    pub placed_on: Vec<String>,
    pub failures: Vec<Failure>,
    /// A create of the group succeeded once (see [`Intent`]).
    pub confirmed: bool,
}

/// One EVM, as the `merak_evms` data source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmInfo {
    pub name: String,
    pub group: String,
    pub vpc: String,
    pub subnet: String,
    pub epm: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: [u8; 6],
    pub namespace: String,
}

/// A ping from one EVM to an address, and whether it should get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: EvmInfo,
    pub to: std::net::Ipv4Addr,
    pub to_name: String,
    pub expect_reply: bool,
}

/// What became of a probe: it got a reply or not, or it could not be sent
/// (e.g. its EVM's namespace is gone), and why.
pub type ProbeOutcome = Result<bool, String>;

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
    /// The request contradicts what exists (overlap, missing parent, ...).
    #[error("{0}")]
    Conflict(String),
    #[error(
        "topology {topology} is being changed by another Terraform run: {holder} holds its lock ({path}). \
         Wait until that apply or destroy has finished, then run this again; the lock goes away with \
         its process, also when that process is killed."
    )]
    Locked { topology: String, holder: String, path: String },
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
    async fn apply_topology(&self, spec: &TreeSpec, intent: Intent) -> Result<TopologyStatus, RuntimeError>;

    /// Refuses a topology this runtime cannot hold as configured (e.g. a
    /// name too long for the paths it becomes), before anything is built.
    fn check_fits(&self, spec: &TreeSpec) -> Result<(), RuntimeError>;


    /// The recorded spec of a topology and how much of it is up; `None` when
    /// the runtime has no such topology.
    async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError>;

    /// The recorded spec of a topology, without checking the host (cheap).
    async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError>;

    /// Removes everything of the topology and waits until its devices are gone.
    async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError>;

    async fn apply_vpc(&self, spec: &VpcSpec) -> Result<(), RuntimeError>;
    async fn read_vpc(&self, topology: &str, name: &str) -> Result<Option<VpcSpec>, RuntimeError>;
    /// Refused while the VPC has subnets.
    async fn delete_vpc(&self, topology: &str, name: &str) -> Result<(), RuntimeError>;

    /// Refused when the subnet overlaps a sibling or its VNI is taken.
    async fn apply_subnet(&self, spec: &SubnetSpec) -> Result<(), RuntimeError>;
    async fn read_subnet(&self, topology: &str, vpc: &str, name: &str) -> Result<Option<SubnetSpec>, RuntimeError>;
    /// Every recorded subnet of the topology (for checks against siblings).
    async fn list_subnets(&self, topology: &str) -> Result<Vec<SubnetSpec>, RuntimeError>;
    /// Refused while the subnet has EVM groups.
    async fn delete_subnet(&self, topology: &str, vpc: &str, name: &str) -> Result<(), RuntimeError>;

    /// Creates, scales or repairs the group; only the difference is built or removed.
    async fn apply_group(&self, spec: &GroupSpec, intent: Intent) -> Result<GroupStatus, RuntimeError>;
    async fn read_group(&self, topology: &str, name: &str) -> Result<Option<(GroupSpec, GroupStatus)>, RuntimeError>;
    async fn delete_group(&self, topology: &str, name: &str) -> Result<(), RuntimeError>;

    /// EVMs of the topology, optionally of one group and/or one EPM.
    async fn list_evms(&self, topology: &str, group: Option<&str>, epm: Option<&str>) -> Result<Vec<EvmInfo>, RuntimeError>;
    /// Runs the probes from inside the EVMs; one outcome per probe.
    async fn ping(&self, topology: &str, probes: &[Probe], timeout_ms: u32) -> Result<Vec<ProbeOutcome>, RuntimeError>;
}

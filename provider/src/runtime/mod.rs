//! Where emulated data centers are built: the [`Substrate`] trait, one
//! implementation per runtime (`local`: network namespaces on this host;
//! `kubernetes`, pods, next). The controller drives a substrate; nothing
//! above the controller sees one.

pub mod agent_client;
pub mod capability;
pub mod held;
pub mod kubernetes;
pub mod link_profiles;
pub mod local;
mod process;
mod recorded;
pub mod wait;

pub use recorded::RecordedSpec;

use std::collections::HashSet;

use self::agent_client::AgentChannel;
use merak_proto::agent::{EvmBatch, EvmReply, EvmSpec};

use self::capability::{AgentsUnderTest, LinkFaults, LinkShaping};
use crate::model::TreeSpec;
use crate::model::epm_agent::EpmAgentSpec;

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

/// The agent that reaches a node, and the node's namespace as it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    pub agent: String,
    pub namespace: String,
}

/// How much of a topology is up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyStatus {
    /// EPMs whose namespace, agent, data-plane NIC and path to the root are all in place.
    pub ready_epms: u32,
    /// Objects that could not be built or repaired, with why.
    pub failures: Vec<Failure>,
    /// EPMs this apply made anew (a pod replaced), empty of the EVMs they
    /// held: the controller rebuilds those before the apply ends.
    pub remade: Vec<String>,
}

/// The agents under test of a topology, for a runtime that builds them
/// into its EPMs (containers of the EPM pods); each EPM's commands are
/// rendered with its placeholders.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnderTest<'a> {
    pub agents: &'a [EpmAgentSpec],
    /// What `${controller_url}` stands for.
    pub controller_url: Option<&'a str>,
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
    Netns(#[from] merak_netdev::netns::NetnsError),
    #[error(transparent)]
    Netdev(#[from] merak_netdev::netdev::NetdevError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Unavailable(String),
    /// The request contradicts what exists (overlap, missing parent, ...).
    #[error("{0}")]
    Conflict(String),
    /// The configuration asks for something this runtime does not offer.
    #[error(transparent)]
    Unsupported(#[from] capability::Unsupported),
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io { context: context.into(), source }
    }
}

/// Where EPMs live: what each runtime implements. A substrate places EPMs
/// and vswitches, wires the underlay, starts, upgrades and stops the agents,
/// tells what of it stands (drift), and tears it down. It knows nothing of
/// VPCs, subnets or EVM groups: the controller drives those through the
/// agents, which the substrate lets it reach. The controller takes the
/// topology's writer lock before calling anything that changes it.
#[tonic::async_trait]
pub trait Substrate: Send + Sync + std::fmt::Debug {
    /// Refuses a topology this runtime cannot hold as configured (e.g. a
    /// name too long for the paths it becomes), before anything is built.
    fn check_fits(&self, spec: &TreeSpec) -> Result<(), RuntimeError>;

    /// Makes the EPMs and underlay match `spec`: creates what is missing,
    /// repairs what drifted and removes what the spec no longer has.
    /// Failures of single objects are reported in the status; an `Err`
    /// means nothing could be done.
    /// `under_test` matters to runtimes whose agents under test are
    /// containers ([`AgentsUnderTest::Containers`]); others ignore it.
    async fn apply_topology(
        &self,
        spec: &TreeSpec,
        under_test: UnderTest<'_>,
        intent: Intent,
    ) -> Result<TopologyStatus, RuntimeError>;

    /// The recorded spec of a topology and how much of it is up; `None` when
    /// the runtime has no such topology.
    async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError>;

    /// The recorded spec of a topology, without checking its EPMs (cheap).
    async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError>;

    /// Removes everything of the topology and waits until it is gone.
    async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError>;

    /// Whether pieces of a topology whose records are gone are still there
    /// (a teardown a killed run abandoned), for a destroy to finish.
    async fn remains_without_record(&self, name: &str) -> Result<bool, RuntimeError> {
        let _ = name;
        Ok(false)
    }

    /// A connection to the agent of an EPM.
    async fn agent_channel(&self, topology: &str, epm: &str) -> Result<AgentChannel, RuntimeError>;

    /// Brings back the agent of an EPM that stopped answering; the EPM's
    /// devices stay (every goal the controller pushes is whole).
    async fn revive_agent(&self, topology: &str, epm: &str) -> Result<(), RuntimeError>;

    /// Deletes EVMs of an EPM whose agent does not answer, without it: a
    /// dead agent must never block a destroy.
    async fn delete_evms_without_agent(
        &self,
        topology: &str,
        epm: &str,
        batch: &EvmBatch,
    ) -> Result<EvmReply, RuntimeError>;

    /// Of these EVMs, the ones (by namespace) that are whole: built to the
    /// last step, not left half-made by a kill.
    async fn whole_evms(&self, topology: &str, evms: &[&EvmSpec]) -> Result<HashSet<String>, RuntimeError>;

    /// The runtime's name, as the provider block's `runtime` gives it.
    fn runtime_name(&self) -> &'static str;

    /// How this runtime runs the user's agents under test.
    fn agents_under_test(&self) -> AgentsUnderTest<'_>;

    /// Whether EVMs' EPM ends can be left for the user's agents to attach
    /// (external VPCs): they must sit where those agents run.
    fn leaves_ports_to_agents_under_test(&self) -> bool;

    /// Link shaping, where this runtime offers it.
    fn link_shaping(&self) -> Option<&dyn LinkShaping> {
        None
    }

    /// Links held down by faults, where this runtime offers it.
    fn link_faults(&self) -> Option<&dyn LinkFaults> {
        None
    }

    /// Which agent reaches an underlay node (an EPM or a switch of `tree`),
    /// and the namespace that agent calls the node by (empty: the agent's
    /// own). Pings across the underlay and `merak exec` go this way.
    fn node_route(&self, topology: &str, tree: &TreeSpec, node: &str) -> NodeRoute;

    /// Makes room for this many EVMs (e.g. kernel tables sized for them)
    /// before they are built.
    async fn make_room(&self, topology: &str, epms: u64, evms: u64, largest_subnet: u64) -> Result<(), RuntimeError>;
}

//! Where emulated data centers are built: the [`Substrate`] trait, one
//! implementation per runtime (`local`: network namespaces on this host;
//! `kubernetes`, pods, next). The controller drives a substrate; nothing
//! above the controller sees one.

pub mod agent_client;
pub mod kubernetes;
pub mod local;
mod process;
mod recorded;

pub use recorded::RecordedSpec;

use std::collections::HashSet;

use self::agent_client::AgentChannel;
use merak_proto::agent::{EvmBatch, EvmReply, EvmSpec};

use crate::model::TreeSpec;
use crate::model::epm_agent::{AgentHost, EpmAgentSpec};
use crate::model::link_profile::LinkProfileSpec;

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
    /// containers ([`AgentHost::Container`]); others ignore it.
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

    /// How this runtime runs agents under test: supervised by each EPM's
    /// merak-agent, or as containers it builds into the EPMs.
    fn agent_host(&self) -> AgentHost;

    /// The directory the logs of an EPM's supervised processes (the user's
    /// agents under test) go to, `<epm>.<name>.log`; an error when this
    /// runtime does not supervise them ([`AgentHost::Container`]).
    fn supervised_logs(&self, topology: &str) -> Result<std::path::PathBuf, RuntimeError>;

    /// Where agents under test are containers: per EPM of `spec`, why its
    /// agents are not all ready (the EPMs not listed are).
    async fn agent_containers_status(
        &self,
        spec: &TreeSpec,
        agents: &[EpmAgentSpec],
    ) -> Result<Vec<Failure>, RuntimeError> {
        let _ = (spec, agents);
        Err(RuntimeError::Conflict(
            "this runtime runs agents under test in the EPMs' namespaces, not as containers".into(),
        ))
    }

    /// The namespace an EPM's agent pings from to send across the underlay
    /// as that EPM (empty: the agent's own, where it is the EPM's).
    fn epm_ping_namespace(&self, topology: &str, epm: &str) -> String;

    /// Refuses `link_profile` blocks where this runtime cannot shape links.
    fn check_link_profiles(&self) -> Result<(), RuntimeError> {
        Err(RuntimeError::Conflict(
            "link_profile blocks shape the local runtime's links only in this provider version; remove them or use runtime = \"local\"."
                .into(),
        ))
    }

    /// Shapes every link a profile selects (both ends) and takes merak's
    /// shaping off the links none selects; per link end that failed, why.
    /// Shaping the kernel cannot do at all (no netem) is refused whole,
    /// before any link is touched.
    async fn apply_link_profiles(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
    ) -> Result<Vec<Failure>, RuntimeError> {
        let _ = (spec, profiles);
        self.check_link_profiles().map(|()| Vec::new())
    }

    /// How many links selected by `profiles` carry their shaping on both ends.
    async fn impaired_links(&self, spec: &TreeSpec, profiles: &[LinkProfileSpec]) -> Result<u64, RuntimeError> {
        let _ = (spec, profiles);
        Ok(0)
    }

    /// Refuses external VPCs where EVMs cannot be left to a system under
    /// test (their EPM ends must sit where the user's agents run).
    fn check_external_vpc(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Makes room for this many EVMs (e.g. kernel tables sized for them)
    /// before they are built.
    async fn make_room(&self, topology: &str, epms: u64, evms: u64, largest_subnet: u64) -> Result<(), RuntimeError>;
}

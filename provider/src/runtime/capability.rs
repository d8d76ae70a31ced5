//! What a runtime may offer beyond the core [`Substrate`](super::Substrate):
//! the controller asks for a capability, and a runtime without it answers
//! `None`. "This runtime cannot" is [`Unsupported`], a typed error that the
//! resources turn into a diagnostic on the attribute that asked for it; its
//! wording lives here, once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{Failure, RuntimeError};
use crate::model::TreeSpec;
use crate::model::epm_agent::{AgentHost, EpmAgentSpec};
use crate::model::link_profile::LinkProfileSpec;

/// Shapes the topology's links as `link_profile` blocks select them.
#[tonic::async_trait]
pub trait LinkShaping: Send + Sync {
    /// Shapes every link a profile selects (both ends) and takes merak's
    /// shaping off the links none selects; per link end that failed, why.
    /// Shaping the kernel cannot do at all (no netem) is refused whole,
    /// before any link is touched.
    async fn apply_link_profiles(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
    ) -> Result<Vec<Failure>, RuntimeError>;

    /// How many links selected by `profiles` carry their shaping on both ends.
    async fn impaired_links(&self, spec: &TreeSpec, profiles: &[LinkProfileSpec]) -> Result<u64, RuntimeError>;
}

/// A topology's faults: each `merak_fault`'s name → the links it holds
/// down, by name (see `model::fault`).
pub type Faults = BTreeMap<String, BTreeSet<String>>;

/// Holds links down as `merak_fault`s declare them. The runtime keeps the
/// faults with the topology: its underlay's repair leaves their links down
/// and counts them as built.
#[tonic::async_trait]
pub trait LinkFaults: Send + Sync {
    /// The topology's faults, as last held.
    async fn faults(&self, topology: &str) -> Result<Faults, RuntimeError>;

    /// Makes `faults` the topology's: records them, takes both ends of every
    /// link they name down, and brings back, with the underlay's routes,
    /// the links no fault holds any more. Per link end that failed, why.
    async fn hold(&self, spec: &TreeSpec, faults: &Faults) -> Result<Vec<Failure>, RuntimeError>;

    /// Of these links (by name), the ones down at both ends.
    async fn links_down(&self, spec: &TreeSpec, links: &BTreeSet<String>) -> Result<BTreeSet<String>, RuntimeError>;
}

/// How a runtime runs the user's agents under test (`epm_agent` blocks).
#[derive(Clone, Copy)]
pub enum AgentsUnderTest<'a> {
    /// Started and supervised by each EPM's merak-agent, in the EPM's namespace.
    Supervised(&'a dyn SupervisedAgents),
    /// Containers the runtime builds into each EPM (a pod's), from an image.
    Containers(&'a dyn AgentContainers),
}

impl AgentsUnderTest<'_> {
    /// Where agents under test run, as the model's validation needs it
    /// (whether an `image` is required or refused).
    pub fn host(&self) -> AgentHost {
        match self {
            AgentsUnderTest::Supervised(_) => AgentHost::Namespace,
            AgentsUnderTest::Containers(_) => AgentHost::Container,
        }
    }
}

/// Agents under test that merak-agent supervises.
pub trait SupervisedAgents: Send + Sync {
    /// The directory their logs go to, `<epm>.<name>.log`.
    fn log_dir(&self, topology: &str) -> PathBuf;
}

/// Agents under test that are containers of the EPMs.
#[tonic::async_trait]
pub trait AgentContainers: Send + Sync {
    /// Per EPM of `spec`, why its agents are not all ready (the EPMs not
    /// listed are).
    async fn not_ready(&self, spec: &TreeSpec, agents: &[EpmAgentSpec]) -> Result<Vec<Failure>, RuntimeError>;
}

/// Something a configuration asks of a runtime that not every runtime offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `link_profile` blocks.
    LinkShaping,
    /// `controller = "external"` VPCs: EVMs' EPM ends left to the user's agents.
    ExternalVpcs,
    /// `merak_fault`: links held down.
    LinkFaults,
}

impl Capability {
    /// A diagnostic's summary for a runtime without it.
    pub fn summary(self) -> &'static str {
        match self {
            Capability::LinkShaping => "Links cannot be shaped on this runtime",
            Capability::ExternalVpcs => "External VPCs are not available on this runtime",
            Capability::LinkFaults => "Faults cannot be held on this runtime",
        }
    }

    fn explain(self, runtime: &str) -> String {
        match self {
            Capability::LinkShaping => format!(
                "link_profile blocks shape links on the local and kubernetes runtimes, and this topology runs on the \
                 {runtime} runtime, which cannot; remove them."
            ),
            Capability::ExternalVpcs => format!(
                "external VPCs run on the local runtime in this provider version: the {runtime} runtime runs agents \
                 under test, but leaving EVMs' ports to them there is not built yet. Use controller = \"builtin\" or \
                 runtime = \"local\"."
            ),
            Capability::LinkFaults => format!(
                "merak_fault holds links down on the local and kubernetes runtimes, and this topology runs on the \
                 {runtime} runtime, which cannot; remove the merak_fault."
            ),
        }
    }
}

/// The refusal of a capability by a runtime that does not offer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", capability.explain(runtime))]
pub struct Unsupported {
    pub capability: Capability,
    /// The runtime's name, as the provider block's `runtime` gives it.
    pub runtime: &'static str,
}

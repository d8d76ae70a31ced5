//! `merak_fault`s: links held down, both ends, for as long as the fault
//! stands. The substrate keeps a topology's faults with it (its underlay's
//! repair must leave their links down); here they are checked against each
//! other and the topology, under the topology's writer lock.

use std::collections::BTreeSet;

use super::Controller;
use crate::model::TreeSpec;
use crate::model::fault::{FaultSpec, overlap};
use crate::runtime::capability::{Capability, Faults, LinkFaults};
use crate::runtime::{Failure, RuntimeError};

/// A fault as it stands: the links it should hold, and those down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultStatus {
    /// The links the fault names (resolved from its links and nodes).
    pub held: BTreeSet<String>,
    /// Of those, the ones down at both ends.
    pub down: BTreeSet<String>,
    /// Link ends that could not be taken down, with why.
    pub failures: Vec<Failure>,
}

impl Controller {
    /// Refuses faults where the runtime cannot hold links down.
    pub fn check_link_faults(&self) -> Result<(), RuntimeError> {
        self.link_faults().map(|_| ())
    }

    fn link_faults(&self) -> Result<&dyn LinkFaults, RuntimeError> {
        self.substrate.link_faults().ok_or_else(|| self.unsupported(Capability::LinkFaults))
    }

    /// The faults a topology holds (none where the runtime holds none).
    pub async fn faults(&self, topology: &str) -> Result<Faults, RuntimeError> {
        match self.substrate.link_faults() {
            Some(faults) => faults.faults(topology).await,
            None => Ok(Faults::new()),
        }
    }

    /// The first link `held` shares with another fault of the topology
    /// (recorded), and that fault: a link is held by one fault at most.
    pub fn clash(faults: &Faults, name: &str, held: &BTreeSet<String>) -> Option<(String, String)> {
        let others = faults.iter().filter(|(other, _)| *other != name).map(|(other, links)| (other.as_str(), links));
        overlap(held, others).map(|(link, other)| (link, other.to_string()))
    }

    /// Takes the fault's links down (both ends), or changes which it holds:
    /// links it no longer names come back.
    pub async fn apply_fault(&self, spec: &FaultSpec) -> Result<FaultStatus, RuntimeError> {
        let faults = self.link_faults()?;
        if !self.lock_tenants(&spec.topology).await? {
            return Err(RuntimeError::Conflict(format!("topology {:?} does not exist", spec.topology)));
        }
        let _underlay = self.underlay_lock.write().await;
        let tree = self.tree(&spec.topology).await?;
        let held = resolve(spec, &tree)?;
        let mut all = faults.faults(&spec.topology).await?;
        if let Some((link, other)) = Self::clash(&all, &spec.name, &held) {
            return Err(RuntimeError::Conflict(format!(
                "link {link} is already held down by fault {other:?}; a link is held by one fault at most. \
                 Leave it to that fault, or take it out of one of them."
            )));
        }
        all.insert(spec.name.clone(), held.clone());
        tracing::info!(topology = %spec.topology, fault = %spec.name, links = held.len(), "holding links down");
        let failures = faults.hold(&tree, &all).await?;
        let down = faults.links_down(&tree, &held).await?;
        Ok(FaultStatus { held, down, failures })
    }

    /// The fault's links and which of them are down; `None` when the
    /// topology or the fault is gone.
    pub async fn read_fault(&self, topology: &str, name: &str) -> Result<Option<FaultStatus>, RuntimeError> {
        let Some(faults) = self.substrate.link_faults() else { return Ok(None) };
        let Some(tree) = self.substrate.topology_spec(topology).await? else { return Ok(None) };
        let Some(held) = faults.faults(topology).await?.remove(name) else { return Ok(None) };
        let down = faults.links_down(&tree, &held).await?;
        Ok(Some(FaultStatus { held, down, failures: Vec::new() }))
    }

    /// Lets go of the fault: its links come back, with the underlay's
    /// routes. A fault whose topology is gone went with it.
    pub async fn delete_fault(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        let Some(faults) = self.substrate.link_faults() else { return Ok(()) };
        if !self.lock_tenants(topology).await? {
            return Ok(());
        }
        let _underlay = self.underlay_lock.write().await;
        let Some(tree) = self.substrate.topology_spec(topology).await? else { return Ok(()) };
        let mut all = faults.faults(topology).await?;
        if all.remove(name).is_none() {
            return Ok(());
        }
        tracing::info!(topology, fault = name, "letting links come back");
        let failures = faults.hold(&tree, &all).await?;
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(RuntimeError::Unavailable(format!(
                "the underlay's repair after the fault left {} objects failed, first {}: {}",
                failures.len(),
                first.object,
                first.error
            ))),
        }
    }
}

/// The links a fault names, or why it cannot be held on this topology.
pub fn resolve(spec: &FaultSpec, tree: &TreeSpec) -> Result<BTreeSet<String>, RuntimeError> {
    spec.resolve(tree).map_err(|errors| {
        RuntimeError::Conflict(
            errors.into_iter().map(|e| format!("{}: {}", e.summary, e.detail)).collect::<Vec<_>>().join(" "),
        )
    })
}

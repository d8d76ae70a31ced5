//! Faults on kubernetes: a link is a tunnel between two pods, and holding
//! it down is part of each end's goal (the vswitch's port, the EPM's NIC),
//! which the agents keep made and addressed but administratively down. A
//! link let go is brought up by the same goals; trees have no routes to put
//! back. Which ends are down is read from the agents' reports.

use std::collections::{BTreeSet, HashSet};

use super::KubernetesRuntime;
use super::links::EndGoals;
use crate::model::TreeSpec;
use crate::model::fault::all_links;
use crate::runtime::capability::{Faults, LinkFaults};
use crate::runtime::{Failure, RuntimeError, held, link_profiles};

#[tonic::async_trait]
impl LinkFaults for KubernetesRuntime {
    async fn faults(&self, topology: &str) -> Result<Faults, RuntimeError> {
        held::load(self.store.as_ref(), topology).await
    }

    async fn hold(&self, spec: &TreeSpec, faults: &Faults) -> Result<Vec<Failure>, RuntimeError> {
        held::save(self.store.as_ref(), &spec.name, faults).await?;
        let (pods, infos) = self.pods_and_infos(&spec.name).await?;
        let ends = EndGoals::new(spec, faults, &link_profiles::load(self.store.as_ref(), &spec.name).await?);
        Ok(self.push_underlay(&spec.name, Self::underlay_goals(spec, &pods, &infos, &ends)).await)
    }

    async fn links_down(&self, spec: &TreeSpec, links: &BTreeSet<String>) -> Result<BTreeSet<String>, RuntimeError> {
        let (_, infos) = self.pods_and_infos(&spec.name).await?;
        let up: HashSet<(&str, &str)> = infos
            .iter()
            .filter_map(|(node, info)| Some((node, info.as_ref().ok()?)))
            .flat_map(|(node, info)| {
                info.interfaces.iter().filter(|i| i.up).map(move |i| (node.as_str(), i.name.as_str()))
            })
            .collect();
        // An end whose pod or agent does not answer carries nothing: it counts as down.
        Ok(all_links(spec)
            .into_iter()
            .filter(|l| links.contains(&l.name))
            .filter(|l| !l.ends.iter().any(|e| up.contains(&(e.object.as_str(), e.device.as_str()))))
            .map(|l| l.name)
            .collect())
    }
}

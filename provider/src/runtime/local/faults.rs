//! Faults on the local runtime: a link held down is its veth pair with both
//! ends administratively down, in their two namespaces. The faults are
//! recorded with the topology, so the underlay's repair takes their links
//! down again as its last step and its readiness counts them as wired. A
//! link a fault lets go comes back through that repair, which also puts
//! back the routes the kernel dropped with it (an EPM's default route, a
//! fabric route whose every next hop was down).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::StreamExt;
use merak_netdev::netns;

use super::LocalRuntime;
use crate::model::TreeSpec;
use crate::model::fault::{all_links, ends_of};
use crate::model::link_profile::LinkEnd;
use crate::model::naming;
use crate::runtime::capability::{Faults, LinkFaults};
use crate::runtime::{Failure, Intent, RuntimeError, Substrate, UnderTest, held};

/// Namespaces worked on at once.
const PARALLEL_NAMESPACES: usize = 16;

/// Each namespace's devices among `ends`.
fn by_namespace(topology: &str, ends: &[LinkEnd]) -> BTreeMap<String, Vec<String>> {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for end in ends {
        grouped.entry(naming::namespace(topology, &end.object)).or_default().push(end.device.clone());
    }
    grouped
}

impl LocalRuntime {
    /// Takes down every end the faults hold that is up; per end that failed, why.
    pub(super) async fn hold_down(&self, spec: &TreeSpec) -> Result<Vec<Failure>, RuntimeError> {
        let faults = held::load(self.store.as_ref(), &spec.name).await?;
        let ends = ends_of(spec, faults.values().flatten());
        let failures: Vec<Vec<Failure>> = futures::stream::iter(by_namespace(&spec.name, &ends))
            .map(|(namespace, devices)| async move { down_in(&namespace, &devices).await })
            .buffer_unordered(PARALLEL_NAMESPACES)
            .collect()
            .await;
        Ok(failures.into_iter().flatten().collect())
    }
}

/// Sets the devices down in one namespace (those already down, or missing,
/// are left: a missing end is the underlay's failure, reported there).
async fn down_in(namespace: &str, devices: &[String]) -> Vec<Failure> {
    let failed = |device: &str, error: String| Failure { object: format!("{namespace} {device}"), error };
    let netlink = match netns::open(namespace).await {
        Ok(netlink) => netlink,
        Err(e) => return vec![failed("", e.to_string())],
    };
    let links = match netlink.links().await {
        Ok(links) => links,
        Err(e) => return vec![failed("", e.to_string())],
    };
    let mut failures = Vec::new();
    for link in links.iter().filter(|l| l.up && devices.contains(&l.name)) {
        if let Err(e) = netlink.set_link_down(link.index).await {
            failures.push(failed(&link.name, e.to_string()));
        }
    }
    failures
}

#[tonic::async_trait]
impl LinkFaults for LocalRuntime {
    async fn faults(&self, topology: &str) -> Result<Faults, RuntimeError> {
        held::load(self.store.as_ref(), topology).await
    }

    async fn hold(&self, spec: &TreeSpec, faults: &Faults) -> Result<Vec<Failure>, RuntimeError> {
        let released = held::save(self.store.as_ref(), &spec.name, faults).await?;
        if !released {
            return self.hold_down(spec).await;
        }
        // The repair brings every link up and its routes back, then holds
        // down what the faults still name.
        tracing::info!(topology = %spec.name, "links let go by a fault: repairing the underlay");
        let status = self.apply_topology(spec, UnderTest::default(), Intent::Update).await?;
        Ok(status.failures)
    }

    async fn links_down(&self, spec: &TreeSpec, links: &BTreeSet<String>) -> Result<BTreeSet<String>, RuntimeError> {
        let named: Vec<_> = all_links(spec).into_iter().filter(|l| links.contains(&l.name)).collect();
        let ends: Vec<LinkEnd> = named.iter().flat_map(|l| l.ends.clone()).collect();
        let up: Vec<Vec<(String, String)>> = futures::stream::iter(by_namespace(&spec.name, &ends))
            .map(|(namespace, devices)| async move {
                let links = match netns::open(&namespace).await {
                    Ok(netlink) => netlink.links().await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                // An end that is missing carries nothing: it counts as down.
                links
                    .into_iter()
                    .filter(|l| l.up && devices.contains(&l.name))
                    .map(|l| (namespace.clone(), l.name))
                    .collect()
            })
            .buffer_unordered(PARALLEL_NAMESPACES)
            .collect()
            .await;
        let up: HashSet<(String, String)> = up.into_iter().flatten().collect();
        let end_up = |end: &LinkEnd| up.contains(&(naming::namespace(&spec.name, &end.object), end.device.clone()));
        Ok(named.into_iter().filter(|l| !l.ends.iter().any(end_up)).map(|l| l.name).collect())
    }
}

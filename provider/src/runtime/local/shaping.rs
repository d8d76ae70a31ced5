//! Link profiles on the local runtime: each end of a link is a veth in one
//! of the topology's namespaces, shaped on its egress by netlink (see
//! merak_netdev::shaping), so both directions are. One qdisc dump per
//! namespace tells what every end carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;
use merak_netdev::netns::{self, NetnsOptions};
use merak_netdev::shaping::{RootQdisc, Shaping};

use super::LocalRuntime;
use crate::model::TreeSpec;
use crate::model::link_profile::{LinkEnd, LinkProfileSpec, shaped_links};
use crate::model::naming;
use crate::runtime::{Failure, RuntimeError, link_profiles};

/// Namespaces shaped at once.
const PARALLEL_NAMESPACES: usize = 16;

/// Each namespace's ends: (device, shaping).
type ByNamespace = BTreeMap<String, Vec<(String, Option<Shaping>)>>;

fn by_namespace(topology: &str, wanted: &[([LinkEnd; 2], Option<Shaping>)]) -> ByNamespace {
    let mut grouped = ByNamespace::new();
    for (ends, shaping) in wanted {
        for end in ends {
            grouped.entry(naming::namespace(topology, &end.object)).or_default().push((end.device.clone(), *shaping));
        }
    }
    grouped
}

impl LocalRuntime {
    pub(super) async fn shape_links(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
    ) -> Result<Vec<Failure>, RuntimeError> {
        if let Some(profile) = link_profiles::needing_netem(profiles) {
            kernel_has_netem(&spec.name).await.map_err(|why| link_profiles::netem_refused(profile, &why))?;
        }
        let grouped = by_namespace(&spec.name, &shaped_links(spec, profiles));
        let failures: Vec<Vec<Failure>> = futures::stream::iter(grouped)
            .map(|(namespace, ends)| async move { shape_namespace(&namespace, &ends).await })
            .buffer_unordered(PARALLEL_NAMESPACES)
            .collect()
            .await;
        Ok(failures.into_iter().flatten().collect())
    }

    pub(super) async fn count_shaped(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
    ) -> Result<u64, RuntimeError> {
        let wanted: Vec<([LinkEnd; 2], Shaping)> =
            shaped_links(spec, profiles).into_iter().filter_map(|(ends, shaping)| Some((ends, shaping?))).collect();
        let namespaces: BTreeSet<String> =
            wanted.iter().flat_map(|(ends, _)| ends.iter().map(|e| naming::namespace(&spec.name, &e.object))).collect();
        let roots: HashMap<String, HashMap<String, RootQdisc>> = futures::stream::iter(namespaces)
            .map(|namespace| async move {
                let roots = roots_by_device(&namespace).await.unwrap_or_default();
                (namespace, roots)
            })
            .buffer_unordered(PARALLEL_NAMESPACES)
            .collect()
            .await;
        let end_carries = |end: &LinkEnd, shaping: &Shaping| {
            let namespace = naming::namespace(&spec.name, &end.object);
            roots.get(&namespace).and_then(|r| r.get(&end.device)).is_some_and(|root| root.carries(shaping))
        };
        Ok(wanted.iter().filter(|(ends, shaping)| ends.iter().all(|end| end_carries(end, shaping))).count() as u64)
    }
}

/// Every device's root qdisc in a namespace, by device name; a namespace
/// that is gone holds none.
async fn roots_by_device(namespace: &str) -> Result<HashMap<String, RootQdisc>, RuntimeError> {
    let netlink = netns::open(namespace).await?;
    let names: HashMap<u32, String> = netlink.links().await?.into_iter().map(|l| (l.index, l.name)).collect();
    Ok(netlink
        .root_qdiscs()
        .await?
        .into_iter()
        .filter_map(|(index, root)| Some((names.get(&index)?.clone(), root)))
        .collect())
}

async fn shape_namespace(namespace: &str, ends: &[(String, Option<Shaping>)]) -> Vec<Failure> {
    let failed = |device: &str, error: String| Failure { object: format!("{namespace} {device}"), error };
    let netlink = match netns::open(namespace).await {
        Ok(netlink) => netlink,
        Err(e) => return vec![failed("", e.to_string())],
    };
    let (links, roots) = match (netlink.links().await, netlink.root_qdiscs().await) {
        (Ok(links), Ok(roots)) => (links, roots),
        (Err(e), _) | (_, Err(e)) => return vec![failed("", e.to_string())],
    };
    let mut failures = Vec::new();
    for (device, shaping) in ends {
        let Some(link) = links.iter().find(|l| &l.name == device) else {
            // A missing end is the underlay's failure, reported there.
            continue;
        };
        if let Err(e) = netlink.ensure_shaping(link.index, link.mtu, roots.get(&link.index), shaping.as_ref()).await {
            failures.push(failed(device, e.to_string()));
        }
    }
    failures
}

/// Whether this kernel can add a netem qdisc, tried on a veth in a scratch
/// namespace so that no link of the topology is touched; why not, if not.
async fn kernel_has_netem(topology: &str) -> Result<(), String> {
    let scratch = naming::namespace(topology, "netem-probe");
    let tried = async {
        let netlink = netns::create(&scratch, NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() })
            .await
            .map_err(|e| e.to_string())?;
        netlink.probe_netem("probe0").await.map_err(|e| e.to_string())?
    }
    .await;
    let _ = netns::delete(&scratch);
    tried
}

//! What the local runtime reads of EVMs straight from the kernel.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;
use merak_netdev::{netdev, netns};
use merak_proto::agent::EvmSpec;

use super::PARALLEL_EPMS;
use crate::model::naming;
use crate::runtime::RuntimeError;

/// The EVMs (by namespace) that are whole, read from the kernel: the
/// namespace exists and the EVM's port is up on a bridge in its router
/// namespace, the last step of building one (see merak_agent::evm). A
/// namespace alone may be a half-built EVM left by a kill.
pub(super) async fn whole(topology: &str, evms: &[&EvmSpec]) -> Result<HashSet<String>, RuntimeError> {
    let present = present_namespaces(topology)?;
    let mut by_router: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for evm in evms.iter().filter(|e| present.contains(&e.namespace)) {
        let port = merak_agent::evm::eth0_peer(evm);
        by_router.entry(evm.router_namespace.clone()).or_default().push((evm.namespace.clone(), port));
    }
    let whole: Vec<Vec<String>> = futures::stream::iter(by_router)
        .map(|(router, evms): (String, Vec<(String, String)>)| async move {
            // A router that is gone or unreadable holds no whole EVM.
            let Ok(netlink) = netns::open(&router).await else { return Vec::new() };
            let Ok(links) = netlink.links().await else { return Vec::new() };
            let ports: HashMap<&str, &netdev::LinkState> = links.iter().map(|l| (l.name.as_str(), l)).collect();
            evms.into_iter()
                .filter(|(_, port)| ports.get(port.as_str()).is_some_and(|l| merak_agent::evm::is_whole(l)))
                .map(|(namespace, _)| namespace)
                .collect()
        })
        .buffer_unordered(PARALLEL_EPMS)
        .collect()
        .await;
    Ok(whole.into_iter().flatten().collect())
}

fn present_namespaces(topology: &str) -> Result<HashSet<String>, RuntimeError> {
    netns::list_with_prefix(&naming::namespace(topology, "vm."))
        .map(|names| names.into_iter().collect())
        .map_err(|e| RuntimeError::io("listing namespaces", e))
}


//! What the local runtime reads of EVMs straight from the kernel.

use std::collections::HashSet;

use merak_netdev::netns;
use merak_proto::agent::EvmSpec;

use crate::model::naming;
use crate::runtime::RuntimeError;

/// The EVMs (by namespace) that are whole, read from the kernel (see
/// merak_agent::evm::whole); the topology's EVM namespaces listed once.
pub(super) async fn whole(topology: &str, evms: &[&EvmSpec]) -> Result<HashSet<String>, RuntimeError> {
    let present = present_namespaces(topology)?;
    let present: Vec<&EvmSpec> = evms.iter().copied().filter(|e| present.contains(&e.namespace)).collect();
    Ok(merak_agent::evm::whole(&present).await)
}

fn present_namespaces(topology: &str) -> Result<HashSet<String>, RuntimeError> {
    netns::list_with_prefix(&naming::namespace(topology, "vm."))
        .map(|names| names.into_iter().collect())
        .map_err(|e| RuntimeError::io("listing namespaces", e))
}

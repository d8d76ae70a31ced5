//! Tearing a topology down: its agents released, its namespaces deleted in
//! the kernel's batches, and the teardown waited for until the kernel
//! shows nothing of the topology.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use merak_netdev::netdev::Netlink;
use merak_netdev::netns;
use merak_proto::agent::ReleaseRequest;

use super::agent_host::host_answers;
use super::{LocalRuntime, Record, fabric};
use crate::model::{TreeSpec, naming};
use crate::runtime::wait::{Check, wait_until};
use crate::runtime::{RuntimeError, process};

/// A veth end that vanishes with a namespace being deleted, seen from the
/// other side: (namespace it lives in, its name).
pub(super) type PeerPort = (String, String);

/// How long the kernel may take to tear namespaces down.
pub(super) const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a destroy tears down before it gives up on namespaces
/// that keep appearing.
pub(super) const TEARDOWN_PASSES: u32 = 3;

/// Polls until none of the ports exist any more in their namespaces.
pub(super) async fn wait_until_gone(watched: Vec<(Netlink, Vec<String>)>) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    for (netlink, ports) in watched {
        let (netlink, ports) = (&netlink, &ports);
        wait_until(deadline, Duration::from_millis(10), move || async move {
            let present = netlink.links().await?;
            let remaining = ports.iter().filter(|p| present.iter().any(|l| &l.name == *p)).count();
            Ok::<_, RuntimeError>(if remaining == 0 { Check::Met(()) } else { Check::Pending(remaining) })
        })
        .await?
        .map_err(|remaining| {
            RuntimeError::Unavailable(format!(
                "{remaining} veth ports still present {}s after their namespaces were deleted",
                TEARDOWN_TIMEOUT.as_secs()
            ))
        })?;
    }
    Ok(())
}

impl LocalRuntime {
    /// Removes every namespace of the topology not in `keep`, stopping agents
    /// first, and waits until the kernel has torn the devices down. `spec` (the
    /// topology as last applied) tells which ports vanish with which namespace.
    pub(super) async fn tear_down(
        &self,
        topology: &str,
        spec: Option<&TreeSpec>,
        keep: &HashSet<String>,
        record: &mut Record,
    ) -> Result<(), RuntimeError> {
        // Reshaping the underlay (a non-empty `keep`) only touches EPMs and
        // vswitches; destroying the topology removes everything it holds.
        let prefix = naming::topology_prefix(topology);
        let in_scope = |ns: &str| keep.is_empty() || ns.strip_prefix(&prefix).is_some_and(naming::is_underlay_object);
        let existing: HashSet<String> = netns::list_with_prefix(&prefix)
            .map_err(|e| RuntimeError::io("listing namespaces", e))?
            .into_iter()
            .filter(|ns| !keep.contains(ns) && in_scope(ns))
            .collect();
        tracing::info!(topology, namespaces = existing.len(), whole = keep.is_empty(), "tearing down");

        // Stop the agents of leaving EPMs first (an agent's netlink
        // connection keeps its namespace alive), including any the record
        // lost: the whole host when everything goes, else the host lets go
        // of the leaving EPMs (or, not answering, stops).
        let control = self.host_socket(topology);
        let mut agents = process::agents_in(&self.topology_dir(topology));
        if !keep.is_empty() {
            let leaving: Vec<String> =
                existing.iter().filter_map(|ns| ns.strip_prefix(&prefix)).map(str::to_string).collect();
            let released = leaving.is_empty()
                || match host_answers(&control).await {
                    Some((mut host, _)) => host.release(ReleaseRequest { epms: leaving }).await.is_ok(),
                    None => false,
                };
            let leaving_socket = |socket: &Path| {
                let epm = socket.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                !keep.contains(&naming::namespace(topology, epm))
            };
            agents.retain(|(_, socket)| if *socket == control { !released } else { leaving_socket(socket) });
        }
        process::stop_agents(&agents).await;
        tracing::info!(topology, agents = agents.len(), "agents stopped");
        // The agents took what they supervised with them, but not what a
        // supervised process detached from its group: nothing may keep a
        // namespace of the topology alive, or run on after it.
        let leaving: Vec<&String> = existing.iter().collect();
        match netns::kill_processes_in(&leaving) {
            Ok(0) => {}
            Ok(killed) => tracing::warn!(topology, killed, "killed processes left in the topology's namespaces"),
            Err(e) => {
                tracing::warn!(topology, error = %e, "could not look for processes left in the topology's namespaces")
            }
        }
        if keep.is_empty() {
            record.host = None;
        }
        record.agents.retain(|epm, _| keep.contains(&naming::namespace(topology, epm)));

        // Waves: EPMs, then vswitches level by level from the leaves up. Each
        // wave's veth peers live in the next wave's namespaces; watching them
        // disappear is how we know the kernel has finished.
        let mut waves: BTreeMap<u32, Vec<(String, Option<PeerPort>)>> = BTreeMap::new();
        let mut known = HashSet::new();
        if let Some(spec) = spec {
            for epm in spec.epms() {
                let peer = match &spec.fabric {
                    Some(fabric) => {
                        let port = fabric.host_port(epm.index);
                        (fabric::switch_namespace(topology, &port.edge), port.device)
                    }
                    None => {
                        (naming::namespace(topology, &naming::vswitch_name(0, epm.rack)), naming::host_port(epm.index))
                    }
                };
                waves.entry(0).or_default().push((naming::namespace(topology, &epm.name), Some(peer)));
            }
            // A fat tree's switches: edge, aggregation, then core.
            for switch in spec.fabric.iter().flat_map(|f| f.switches()) {
                let wave = match switch {
                    crate::model::fat_tree::Switch::Edge { .. } => 1,
                    crate::model::fat_tree::Switch::Aggregation { .. } => 2,
                    crate::model::fat_tree::Switch::Core { .. } => 3,
                };
                waves.entry(wave).or_default().push((fabric::switch_namespace(topology, &switch), None));
            }
            for switch in spec.vswitches() {
                let peer = switch
                    .parent_name()
                    .map(|parent| (naming::namespace(topology, &parent), naming::downlink_port(switch.index)));
                waves.entry(switch.level + 1).or_default().push((naming::namespace(topology, &switch.name()), peer));
            }
        }
        for wave in waves.values_mut() {
            wave.retain(|(ns, _)| existing.contains(ns));
            known.extend(wave.iter().map(|(ns, _)| ns.clone()));
        }
        // Namespaces the record does not explain go last, without waiting.
        let unexplained = existing.iter().filter(|ns| !known.contains(*ns)).map(|ns| (ns.clone(), None));
        waves.entry(u32::MAX).or_default().extend(unexplained);

        for (level, wave) in waves {
            if wave.is_empty() {
                continue;
            }
            // Levels count up from the EPMs; the last wave is not one.
            let wave_name = if level == u32::MAX { "not in the record".to_string() } else { format!("level {level}") };
            tracing::info!(topology, wave = %wave_name, namespaces = wave.len(), "deleting namespaces");
            let mut watched: HashMap<String, (Netlink, Vec<String>)> = HashMap::new();
            for (_, peer) in &wave {
                let Some((peer_ns, port)) = peer else { continue };
                if !watched.contains_key(peer_ns) {
                    let Ok(netlink) = netns::open(peer_ns).await else { continue };
                    watched.insert(peer_ns.clone(), (netlink, Vec::new()));
                }
                if let Some((_, ports)) = watched.get_mut(peer_ns) {
                    ports.push(port.clone());
                }
            }
            for (ns, _) in &wave {
                netns::delete(ns)?;
            }
            wait_until_gone(watched.into_values().collect()).await?;
        }
        Ok(())
    }
}

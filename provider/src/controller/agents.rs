//! The controller's traffic with the agents: overlay goals and EVM
//! batches pushed to many EPMs at once, and pings run from inside EVMs.
//! Agents are reached through the substrate (which knows where they run and
//! brings back one that stopped answering).

use std::collections::BTreeMap;

use futures::StreamExt;
use merak_proto::agent::overlay_client::OverlayClient;
use merak_proto::agent::{
    EvmBatch, EvmSpec, FirewallGoal, OverlayGoal, PingProbe, PingReply, PingRequest, VpcFirewall,
};

use super::goals::{Evm, Forget, overlay_goals};
use super::records::OverlayRecord;
use super::{Controller, Probe, ProbeOutcome};
use crate::model::{TreeSpec, naming};
use crate::runtime::agent_client::AgentChannel;
use crate::runtime::{Failure, RuntimeError};

/// EPMs talked to at once.
const PARALLEL_EPMS: usize = 16;
/// EPMs pinging at once (each agent runs 2 pings at a time; see
/// host_limits::PINGS_AT_ONCE): every first ping floods an ARP request to the
/// whole subnet, and many at once overflow the kernel's backlog.
const PINGING_EPMS: usize = 2;
/// EPMs deleting EVMs at once (see push_evms).
const DELETING_EPMS: usize = 128;
/// EVMs per request to one agent.
const BATCH: usize = 2000;

impl Controller {
    async fn overlay_client(&self, topology: &str, epm: &str) -> Result<OverlayClient<AgentChannel>, RuntimeError> {
        let channel = self.substrate.agent_channel(topology, epm).await?;
        Ok(OverlayClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
    }

    async fn send_overlay(&self, topology: &str, epm: &str, goal: OverlayGoal) -> Result<(), RuntimeError> {
        let mut client = self.overlay_client(topology, epm).await?;
        client.apply_overlay(goal).await.map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(())
    }

    async fn send_evms(
        &self,
        topology: &str,
        epm: &str,
        batch: EvmBatch,
    ) -> Result<merak_proto::agent::EvmReply, RuntimeError> {
        let mut client = self.overlay_client(topology, epm).await?;
        let reply = client.apply_evms(batch).await.map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(reply.into_inner())
    }

    async fn send_firewalls(&self, topology: &str, epm: &str, goal: FirewallGoal) -> Result<(), RuntimeError> {
        let mut client = self.overlay_client(topology, epm).await?;
        client.apply_firewalls(goal).await.map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(())
    }

    /// Sends an EPM its overlay goal; an agent that stopped answering is
    /// restarted and gets the goal again.
    async fn send_overlay_reviving(&self, tree: &TreeSpec, epm: &str, goal: OverlayGoal) -> Option<Failure> {
        let result = match self.send_overlay(&tree.name, epm, goal.clone()).await {
            Err(_) if self.revive(tree, epm).await.is_ok() => self.send_overlay(&tree.name, epm, goal).await,
            result => result,
        };
        result.err().map(|e| Failure { object: epm.to_string(), error: format!("overlay: {e}") })
    }

    /// Pushes every EPM's overlay goal; returns the EPMs that failed.
    pub(super) async fn push_overlay(
        &self,
        tree: &TreeSpec,
        record: &OverlayRecord,
        forget: &Forget,
    ) -> Result<Vec<Failure>, RuntimeError> {
        let goals = overlay_goals(tree, record, forget)?;
        let failures: Vec<Failure> = futures::stream::iter(goals)
            .map(|(epm, goal)| async move { self.send_overlay_reviving(tree, &epm.name, goal).await })
            .buffer_unordered(PARALLEL_EPMS)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        Ok(failures)
    }

    /// Pushes one VPC's firewall, alone, to the EPMs that host the VPC: a
    /// security group changed and nothing else did, so each agent replaces
    /// one nftables table and reads nothing back (a tenth of the whole
    /// overlay's work). An EPM that cannot take it so (its router namespace
    /// not made yet, its agent restarted or gone) gets its whole overlay
    /// goal instead, which makes what is missing. Returns the EPMs that
    /// failed.
    pub(super) async fn push_firewall(
        &self,
        tree: &TreeSpec,
        record: &OverlayRecord,
        vpc: &str,
    ) -> Result<Vec<Failure>, RuntimeError> {
        let goals = overlay_goals(tree, record, &Forget::new())?;
        let pushes = goals.into_iter().filter_map(|(epm, goal)| {
            let namespace = naming::router_namespace(&tree.name, &epm.name, vpc);
            let firewall = goal.vpcs.iter().find(|v| v.namespace == namespace)?.firewall.clone()?;
            Some((epm, goal, FirewallGoal { vpcs: vec![VpcFirewall { namespace, firewall: Some(firewall) }] }))
        });
        let failures: Vec<Failure> = futures::stream::iter(pushes)
            .map(|(epm, goal, firewall)| async move {
                match self.send_firewalls(&tree.name, &epm.name, firewall).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::debug!(epm = %epm.name, error = %e, "the firewall alone was not taken; pushing the whole overlay");
                        self.send_overlay_reviving(tree, &epm.name, goal).await
                    }
                }
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        Ok(failures)
    }

    /// Sends EVM batches, grouped by EPM; returns the failures.
    pub(super) async fn push_evms(
        &self,
        topology: &str,
        tree: &TreeSpec,
        create: Vec<&Evm>,
        delete: Vec<&Evm>,
    ) -> Vec<Failure> {
        let deleting = create.is_empty();
        let mut by_epm: BTreeMap<u32, (Vec<EvmSpec>, Vec<EvmSpec>)> = BTreeMap::new();
        for evm in create {
            by_epm.entry(evm.epm_index).or_default().0.push(evm.spec.clone());
        }
        for evm in delete {
            by_epm.entry(evm.epm_index).or_default().1.push(evm.spec.clone());
        }
        let mut requests = Vec::new();
        for (epm_index, (mut create, mut delete)) in by_epm {
            while !create.is_empty() || !delete.is_empty() {
                let create_now: Vec<_> = create.drain(..create.len().min(BATCH)).collect();
                let delete_now: Vec<_> = delete.drain(..delete.len().min(BATCH)).collect();
                requests.push((tree.epm(epm_index).name, EvmBatch { create: create_now, delete: delete_now }));
            }
        }
        // Deleting: every agent at once. The kernel tears namespaces down in
        // batches, and one large batch costs far less than many small waves
        // (measured: 5000 EVMs in 8.3 s at once, 15 s in waves of 16 EPMs).
        let parallel = if deleting { DELETING_EPMS } else { PARALLEL_EPMS };
        // Progress for long applies, at INFO (TF_LOG=info shows it).
        let total: usize = requests.iter().map(|(_, b)| b.create.len() + b.delete.len()).sum();
        let done = &std::sync::atomic::AtomicUsize::new(0);
        let verb = if deleting { "deleted" } else { "built" };
        futures::stream::iter(requests)
            .map(|(epm, batch)| async move {
                let size = batch.create.len() + batch.delete.len();
                let reply = match self.send_evms(topology, &epm, batch.clone()).await {
                    Ok(reply) => Ok(reply),
                    // Deleting must not need the agent: a dead agent never
                    // blocks a destroy (the substrate removes the EVMs itself).
                    Err(e) if deleting => {
                        tracing::warn!(epm, error = %e, "agent unreachable; deleting its EVMs without it");
                        self.substrate.delete_evms_without_agent(topology, &epm, &batch).await
                    }
                    // An agent that stopped answering is restarted, once.
                    Err(e) => match self.revive(tree, &epm).await {
                        Ok(()) => self.send_evms(topology, &epm, batch).await,
                        Err(revival) => Err(RuntimeError::Unavailable(format!("{e}; restarting it failed: {revival}"))),
                    },
                };
                let finished = done.fetch_add(size, std::sync::atomic::Ordering::Relaxed) + size;
                tracing::info!(topology, "EVMs {verb}: {finished} of {total}");
                match reply {
                    Ok(reply) => reply
                        .failures
                        .into_iter()
                        .map(|f| Failure { object: format!("{epm}: {}", f.namespace), error: f.error })
                        .collect(),
                    Err(e) => vec![Failure { object: epm, error: e.to_string() }],
                }
            })
            .buffer_unordered(parallel)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    pub(super) async fn ping_agents(
        &self,
        topology: &str,
        probes: &[Probe],
        timeout_ms: u32,
        full_size: bool,
    ) -> Result<Vec<ProbeOutcome>, RuntimeError> {
        // Owned keys: borrowing ones trip the higher-ranked lifetime check
        // of futures streams inside async-trait methods.
        let mut by_epm: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, probe) in probes.iter().enumerate() {
            by_epm.entry(probe.from.epm.clone()).or_default().push(i);
        }
        let mut outcomes = vec![Ok(false); probes.len()];
        let answers: Vec<Result<(Vec<usize>, PingReply), RuntimeError>> = futures::stream::iter(by_epm)
            .map(|(epm, indexes): (String, Vec<usize>)| async move {
                let mut client = self.overlay_client(topology, &epm).await?;
                let request = PingRequest {
                    probes: indexes
                        .iter()
                        .map(|&i| PingProbe {
                            from_namespace: probes[i].from.namespace.clone(),
                            to: probes[i].to.to_string(),
                        })
                        .collect(),
                    timeout_ms,
                    payload_bytes: 0,
                    full_size,
                };
                let reply = client
                    .ping(request)
                    .await
                    .map_err(|s| RuntimeError::Unavailable(format!("{epm}: {}", s.message())))?;
                Ok((indexes, reply.into_inner()))
            })
            .buffer_unordered(PINGING_EPMS)
            .collect()
            .await;
        for answer in answers {
            let (indexes, reply) = answer?;
            for (n, i) in indexes.into_iter().enumerate() {
                let error = reply.errors.get(n).filter(|e| !e.is_empty());
                outcomes[i] = match error {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply.reached.get(n).copied().unwrap_or(false)),
                };
            }
        }
        Ok(outcomes)
    }
}

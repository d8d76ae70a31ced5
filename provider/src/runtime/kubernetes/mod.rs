//! The kubernetes runtime: every EPM and every vswitch of a topology is a
//! pod running merak-agent, in a namespace of the topology's own. The
//! runtime makes the pods, and the agents make everything else: a vswitch's
//! bridge with a tunnel port per child, an EPM's data-plane NIC as the
//! other end of its tunnel (see merak_agent::underlay), then the tenant
//! networks and EVMs the controller asks for. Links are VXLAN tunnels over
//! the pod network, so any CNI carries them; their MTU is the pod
//! network's less the VXLAN header, and the EVMs' is that less another.
//!
//! The provider reaches agents over mutual TLS with the topology's CA (its
//! key in a Secret only the provider reads): through one port-forward to
//! the topology's gateway, which forwards every call to the pod IP it names
//! (see merak_agent::gateway), or straight to the pod IPs. The records live in the
//! cluster (see [`store`]); deleting the namespace removes everything.
//!
//! Rooms: this file is the [`Substrate`] the controller drives and the
//! topology's record; `pods` makes and watches the pods, `links` the
//! underlay's tunnels (pure goals, tested), `faults` and `shaping` what
//! merak_fault and link_profile add to them, `gateway` reaches the agents,
//! `certificates` holds the topology's CA and identities, `objects`
//! shapes the API objects, `cluster` connects and retries, `store` and
//! `holder` keep records and the writer lock in ConfigMaps.

mod certificates;
pub mod cluster;
mod fabric;
mod faults;
mod gateway;
mod holder;
mod links;
pub mod objects;
mod pods;
mod shaping;
pub mod store;
mod under_test;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use merak_proto::agent::overlay_client::OverlayClient;
use merak_proto::agent::{EvmBatch, EvmReply, EvmSpec};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

use self::cluster::{DELETE_IN_BACKGROUND, is_not_found, retrying};
use self::gateway::Routes;
use self::objects::{Access, PodSettings, namespace_name};
use self::pods::{PodState, pod_state};
use super::agent_client::AgentChannel;
use super::capability::{AgentContainers, AgentsUnderTest, LinkFaults, LinkShaping};
use super::wait::{Check, wait_until};
use super::{Failure, Intent, NodeRoute, RecordedSpec, RuntimeError, Substrate, TopologyStatus, UnderTest, held};
use crate::model::TreeSpec;
use crate::model::epm_agent::EpmAgentSpec;
use crate::model::naming;
use crate::store::{self as records, RecordStore, StoreError};

/// Pods created, deleted or asked at once: enough to keep a large cluster's
/// API server busy, few enough not to be throttled into a crawl.
const IN_FLIGHT: usize = 32;

/// Each pod's agent's report, by pod name.
type Infos = HashMap<String, Result<merak_proto::agent::EpmInfo, RuntimeError>>;
/// How long a namespace may take to go away with everything in it.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);
const TOPOLOGY: &str = "topology";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    spec: RecordedSpec,
    /// A create of the topology succeeded (see [`Intent`]).
    confirmed: bool,
}

pub struct KubernetesRuntime {
    client: kube::Client,
    settings: PodSettings,
    access: Access,
    store: Arc<dyn RecordStore>,
    /// Per topology, the controller's TLS connector to its agents.
    connectors: Mutex<HashMap<String, TlsConnector>>,
    routes: Mutex<HashMap<String, Routes>>,
}

impl std::fmt::Debug for KubernetesRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesRuntime")
            .field("settings", &self.settings)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

fn api(what: impl std::fmt::Display, error: kube::Error) -> RuntimeError {
    RuntimeError::Unavailable(format!("{what}: {error}"))
}

/// The EPM an EVM's router namespace is on (`merak-<t>.<epm>.r.<vpc>`).
fn epm_of_router(topology: &str, router_namespace: &str) -> Option<String> {
    let rest = router_namespace.strip_prefix(&naming::topology_prefix(topology))?;
    rest.split_once(".r.").map(|(epm, _)| epm.to_string())
}

impl KubernetesRuntime {
    pub fn new(client: kube::Client, settings: PodSettings, access: Access, store: Arc<dyn RecordStore>) -> Self {
        KubernetesRuntime { client, settings, access, store, connectors: Mutex::default(), routes: Mutex::default() }
    }

    async fn load_record(&self, topology: &str) -> Result<Option<Record>, RuntimeError> {
        Ok(records::load_json(self.store.as_ref(), topology, TOPOLOGY).await?)
    }

    async fn save_record(&self, topology: &str, record: &Record) -> Result<(), RuntimeError> {
        Ok(records::save_json(self.store.as_ref(), topology, TOPOLOGY, record).await?)
    }

    fn spec_of(&self, topology: &str, record: &Record) -> Result<TreeSpec, RuntimeError> {
        record.spec.to_spec().map_err(|detail| {
            RuntimeError::Store(StoreError::Corrupt {
                topology: topology.into(),
                location: self.store.location(topology, TOPOLOGY),
                detail,
            })
        })
    }

    /// The pods' states and their agents' reports.
    async fn pods_and_infos(&self, topology: &str) -> Result<(HashMap<String, PodState>, Infos), RuntimeError> {
        let existing = self.list_pods(topology).await?;
        let pods: HashMap<String, PodState> =
            existing.iter().map(|(name, pod)| (name.clone(), pod_state(pod, None))).collect();
        let infos = self.infos(topology, &pods).await;
        Ok((pods, infos))
    }

    async fn status(&self, spec: &TreeSpec) -> Result<TopologyStatus, RuntimeError> {
        let (pods, infos) = self.pods_and_infos(&spec.name).await?;
        let held = held::recorded_ends(self.store.as_ref(), spec).await?;
        Ok(TopologyStatus { ready_epms: Self::ready_epms(spec, &pods, &infos, &held), ..TopologyStatus::default() })
    }

    fn forget(&self, topology: &str) {
        if let Ok(mut connectors) = self.connectors.lock() {
            connectors.remove(topology);
        }
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(topology);
        }
    }
}

#[tonic::async_trait]
impl AgentContainers for KubernetesRuntime {
    async fn not_ready(&self, spec: &TreeSpec, agents: &[EpmAgentSpec]) -> Result<Vec<Failure>, RuntimeError> {
        let pods = self.list_pods(&spec.name).await?;
        Ok(under_test::failures(spec, agents, &pods))
    }
}

#[tonic::async_trait]
impl Substrate for KubernetesRuntime {
    fn check_fits(&self, spec: &TreeSpec) -> Result<(), RuntimeError> {
        objects::fits(spec).map_err(RuntimeError::Conflict)
    }

    fn runtime_name(&self) -> &'static str {
        "kubernetes"
    }

    fn agents_under_test(&self) -> AgentsUnderTest<'_> {
        AgentsUnderTest::Containers(self)
    }

    fn leaves_ports_to_agents_under_test(&self) -> bool {
        // Their EPM ends would be for agents under test to attach in the
        // pods, which no acceptance test has proven yet.
        false
    }

    fn link_faults(&self) -> Option<&dyn LinkFaults> {
        Some(self)
    }

    fn link_shaping(&self) -> Option<&dyn LinkShaping> {
        Some(self)
    }

    fn node_route(&self, _topology: &str, _tree: &TreeSpec, node: &str) -> NodeRoute {
        // Every EPM and vswitch is a pod whose merak-agent runs in its
        // network namespace: the node's own agent, in its own namespace.
        NodeRoute { agent: node.to_string(), namespace: String::new() }
    }

    async fn apply_topology(
        &self,
        spec: &TreeSpec,
        under_test: UnderTest<'_>,
        intent: Intent,
    ) -> Result<TopologyStatus, RuntimeError> {
        let topology = &spec.name;
        objects::fits(spec).map_err(RuntimeError::Conflict)?;
        let existing = self.load_record(topology).await?;
        if intent == Intent::Create && existing.as_ref().is_some_and(|r| r.confirmed) {
            return Err(super::owned_elsewhere("merak_topology", "topology", topology));
        }
        let mut record = existing.unwrap_or_default();
        record.spec = RecordedSpec::of(spec);
        self.save_record(topology, &record).await?;
        self.ensure_tls(topology).await?;
        if self.access == Access::PortForward {
            self.converge_gateway(topology).await?;
        }

        let mut failures = Vec::new();
        let mut made = Vec::new();
        let pods = self.converge_pods(spec, under_test, &mut failures, &mut made).await?;
        if self.access == Access::PortForward
            && let Some(failure) = self.wait_gateway(topology).await?
        {
            failures.push(failure);
        }
        let infos = self.infos(topology, &pods).await;
        for (name, info) in &infos {
            if let Err(e) = info {
                failures.push(Failure { object: name.clone(), error: e.to_string() });
            }
        }
        let ends = self.recorded_end_goals(spec).await?;
        failures.extend(self.push_underlay(topology, Self::underlay_goals(spec, &pods, &infos, &ends)).await);

        let mut status = self.status(spec).await?;
        failures.sort_by(|a, b| a.object.cmp(&b.object));
        failures.dedup_by(|a, b| a.object == b.object);
        status.failures = failures;
        let epms: HashSet<String> = spec.epms().map(|e| e.name).collect();
        status.remade = made.into_iter().filter(|name| epms.contains(name)).collect();
        if !record.confirmed && status.failures.is_empty() && status.ready_epms == spec.hosts {
            record.confirmed = true;
            self.save_record(topology, &record).await?;
        }
        Ok(status)
    }

    async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError> {
        let Some(record) = self.load_record(name).await? else { return Ok(None) };
        let spec = self.spec_of(name, &record)?;
        let status = self.status(&spec).await?;
        Ok(Some((spec, status)))
    }

    async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError> {
        match self.load_record(name).await? {
            Some(record) => self.spec_of(name, &record).map(Some),
            None => Ok(None),
        }
    }

    async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = namespace_name(name);
        match retrying("deleting a namespace", || namespaces.delete(&namespace, &DELETE_IN_BACKGROUND)).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api(format!("deleting namespace {namespace}"), e)),
        }
        let (namespaces, namespace) = (&namespaces, namespace.as_str());
        wait_until(Instant::now() + TEARDOWN_TIMEOUT, Duration::from_millis(250), move || async move {
            let found = retrying("reading a namespace", || namespaces.get_opt(namespace))
                .await
                .map_err(|e| api(format!("reading namespace {namespace}"), e))?;
            Ok::<_, RuntimeError>(if found.is_some() { Check::Pending(()) } else { Check::Met(()) })
        })
        .await?
        .map_err(|()| {
            RuntimeError::Unavailable(format!(
                "namespace {namespace} was still there {} s after it was deleted",
                TEARDOWN_TIMEOUT.as_secs()
            ))
        })?;
        self.forget(name);
        Ok(())
    }

    async fn agent_channel(&self, topology: &str, epm: &str) -> Result<AgentChannel, RuntimeError> {
        self.channel(topology, epm).await
    }

    /// The kubelet restarts a container that exits; a pod that is gone or
    /// not running comes back only by applying the topology.
    async fn revive_agent(&self, topology: &str, epm: &str) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Listed, not read: the routes to it (its IP, the gateway) are noted anew.
            let pods = self.list_pods(topology).await?;
            let state = pods.get(epm).map(|p| pod_state(p, None));
            match state {
                Some(state) if state.ready && self.info(topology, epm).await.is_ok() => return Ok(()),
                Some(state) if !state.stale && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                _ => {
                    return Err(RuntimeError::Unavailable(format!(
                        "pod {}/{epm} is gone or not running; apply the topology to make it anew",
                        namespace_name(topology)
                    )));
                }
            }
        }
    }

    /// EVMs live in their EPM pod's namespaces and go with the pod; a pod
    /// that runs but whose agent does not answer keeps them.
    async fn delete_evms_without_agent(
        &self,
        topology: &str,
        epm: &str,
        batch: &EvmBatch,
    ) -> Result<EvmReply, RuntimeError> {
        let pods = self.pods(topology);
        let pod =
            retrying("reading a pod", || pods.get_opt(epm)).await.map_err(|e| api(format!("reading pod {epm}"), e))?;
        match pod.map(|p| pod_state(&p, None)) {
            Some(state) if !state.stale && state.ip.is_some() => Err(RuntimeError::Unavailable(format!(
                "the agent of {epm} does not answer while its pod {}/{epm} runs; its EVMs cannot be deleted without it",
                namespace_name(topology)
            ))),
            _ => Ok(EvmReply { deleted: batch.delete.len() as u32, ..EvmReply::default() }),
        }
    }

    async fn whole_evms(&self, topology: &str, evms: &[&EvmSpec]) -> Result<HashSet<String>, RuntimeError> {
        let mut by_epm: BTreeMap<String, Vec<EvmSpec>> = BTreeMap::new();
        for evm in evms {
            if let Some(epm) = epm_of_router(topology, &evm.router_namespace) {
                by_epm.entry(epm).or_default().push((*evm).clone());
            }
        }
        let answers: Vec<HashSet<String>> = futures::stream::iter(by_epm)
            .map(|(epm, create): (String, Vec<EvmSpec>)| async move {
                // An EPM that does not answer holds no whole EVM.
                let Ok(channel) = self.channel(topology, &epm).await else { return HashSet::new() };
                match OverlayClient::new(channel).whole_evms(EvmBatch { create, delete: Vec::new() }).await {
                    Ok(reply) => reply.into_inner().namespaces.into_iter().collect(),
                    Err(_) => HashSet::new(),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        Ok(answers.into_iter().flatten().collect())
    }

    /// Kernel tables (neighbour thresholds, backlogs) are the nodes': their
    /// administrator sizes them, not a pod.
    async fn make_room(
        &self,
        _topology: &str,
        _epms: u64,
        _evms: u64,
        _largest_subnet: u64,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evms_epm_comes_from_its_router_namespace() {
        let router = naming::router_namespace("lab", "epm-12", "blue");
        assert_eq!(epm_of_router("lab", &router).as_deref(), Some("epm-12"));
        assert_eq!(epm_of_router("other", &router), None);
    }
}

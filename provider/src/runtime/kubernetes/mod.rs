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

pub mod cluster;
mod holder;
pub mod objects;
pub mod store;
mod under_test;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{Api, ListParams};
use merak_agent::error_chain;
use merak_agent::pki::{Authority, Role};
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::overlay_client::OverlayClient;
use merak_proto::agent::{
    EpmInfo, EvmBatch, EvmReply, EvmSpec, GetInfoRequest, SwitchGoal, SwitchPort, Tunnel, UnderlayGoal,
};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;
use tonic::transport::Channel;

use self::cluster::{DELETE, DELETE_IN_BACKGROUND, POST, is_conflict, is_not_found, retrying};
use self::objects::{
    AGENT_PORT, AGENT_TLS, Access, CONTROLLER_TLS, GATEWAY, GATEWAY_ROLE, GATEWAY_TLS, PodSettings, namespace_name,
};
use super::agent_client::AgentChannel;
use super::capability::{AgentContainers, AgentsUnderTest};
use super::{Failure, Intent, RecordedSpec, RuntimeError, Substrate, TopologyStatus, UnderTest};
use crate::model::epm_agent::{AGENT_CONTAINER, EpmAgentSpec};
use crate::model::naming::{self, BRIDGE, EPM_DATA_NIC, UPLINK};
use crate::model::{Epm, TreeSpec};
use crate::store::{self as records, RecordStore, StoreError};

/// Pods created, deleted or asked at once: enough to keep a large cluster's
/// API server busy, few enough not to be throttled into a crawl.
const IN_FLIGHT: usize = 32;
/// What VXLAN over IPv4 adds to a frame.
const VXLAN_OVERHEAD: u32 = merak_netdev::netdev::VXLAN_OVERHEAD;
/// How long a namespace may take to go away with everything in it.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);
const TOPOLOGY: &str = "topology";
/// How long a read waits for the gateway's Deployment to bring back its pod.
const GATEWAY_RETURN: Duration = Duration::from_secs(60);
/// Tries at connecting to an agent before its error counts.
const CONNECT_ATTEMPTS: u32 = 4;

/// The underlay's goals: per vswitch pod its ports, per EPM its data-plane NIC.
type UnderlayGoals = (Vec<(String, SwitchGoal)>, Vec<(Epm, UnderlayGoal)>);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    spec: RecordedSpec,
    /// A create of the topology succeeded (see [`Intent`]).
    confirmed: bool,
}

/// Where a topology's agents are, as its pods were last listed.
#[derive(Default)]
struct Routes {
    /// Running agents' pod IPs, by pod name.
    ips: HashMap<String, IpAddr>,
    /// The gateway's running pod.
    gateway_pod: Option<String>,
    /// The channel through the gateway, and the pod it goes to: one
    /// connection for every call to the topology's agents.
    gateway: Option<(String, Channel)>,
}

/// What the runtime knows of a pod it found.
#[derive(Debug, Clone)]
struct PodState {
    ip: Option<String>,
    node: Option<String>,
    ready: bool,
    /// Being deleted, failed or made from other settings: to be made anew.
    stale: bool,
    /// Why it is not ready, from its status (e.g. `ImagePullBackOff: ...`).
    waiting: Option<String>,
    /// The kubelet cannot start it, and waiting will not help.
    hopeless: bool,
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

fn pod_state(pod: &Pod, digest: Option<&str>) -> PodState {
    let unknown = k8s_openapi::api::core::v1::PodStatus::default();
    let status = pod.status.as_ref().unwrap_or(&unknown);
    // Where merak-agent shares its pod with agents under test, its own
    // container says whether the EPM runs; theirs are reported apart.
    let agent = status.container_statuses.iter().flatten().find(|c| c.name == AGENT_CONTAINER);
    let ready = match agent {
        Some(agent) => agent.ready,
        None => status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True"),
    };
    let phase = status.phase.as_deref().unwrap_or_default();
    let made_from = pod.metadata.annotations.as_ref().and_then(|a| a.get(objects::SPEC_ANNOTATION)).map(String::as_str);
    let stale = pod.metadata.deletion_timestamp.is_some()
        || phase == "Failed"
        || phase == "Succeeded"
        || (digest.is_some() && made_from != digest);
    let mut waiting = None;
    let mut hopeless = false;
    for container in
        status.container_statuses.iter().flatten().filter(|c| agent.is_none_or(|agent| agent.name == c.name))
    {
        if let Some(state) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = state.reason.clone().unwrap_or_default();
            hopeless |= matches!(
                reason.as_str(),
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
            );
            waiting = Some(format!("{reason}: {}", state.message.clone().unwrap_or_default()));
        }
    }
    if waiting.is_none()
        && let Some(unscheduled) =
            status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        waiting = Some(format!(
            "{}: {}",
            unscheduled.reason.clone().unwrap_or_default(),
            unscheduled.message.clone().unwrap_or_default()
        ));
    }
    PodState {
        ip: status.pod_ip.clone().filter(|ip| !ip.is_empty()),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ready: ready && phase == "Running",
        stale,
        waiting,
        hopeless,
    }
}

fn is_gateway(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().and_then(|l| l.get(objects::ROLE_LABEL)).is_some_and(|role| role == GATEWAY_ROLE)
}

/// Every pod of a topology: its agents' and its gateway's.
fn topology_selector(topology: &str) -> String {
    format!("{}={},{}={topology}", objects::MANAGED_BY.0, objects::MANAGED_BY.1, objects::TOPOLOGY_LABEL)
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

    fn pods(&self, topology: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &namespace_name(topology))
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

    /// The topology's certificates: made once, kept in two Secrets (the
    /// agents mount one; the CA's key and the controller's identity are in
    /// the other, which only the provider reads). Returns the connector.
    async fn ensure_tls(&self, topology: &str) -> Result<TlsConnector, RuntimeError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace_name(topology));
        if retrying("reading a secret", || secrets.get_opt(CONTROLLER_TLS))
            .await
            .map_err(|e| api("reading the topology's certificates", e))?
            .is_none()
        {
            let pki = |e: merak_agent::pki::PkiError| {
                RuntimeError::Unavailable(format!("making the certificates of {topology}: {e}"))
            };
            let (authority, authority_key) = Authority::create(topology).map_err(pki)?;
            let agent = authority.issue(Role::Agent).map_err(pki)?;
            let controller = authority.issue(Role::Controller).map_err(pki)?;
            let agent_secret = objects::tls_secret(
                topology,
                AGENT_TLS,
                &[("ca.pem", &authority.certificate), ("agent.pem", &agent.certificate), ("agent.key", &agent.key)],
            );
            let controller_secret = objects::tls_secret(
                topology,
                CONTROLLER_TLS,
                &[
                    ("ca.pem", &authority.certificate),
                    ("ca.key", &authority_key),
                    ("controller.pem", &controller.certificate),
                    ("controller.key", &controller.key),
                ],
            );
            // The agents' first: the controller's completes the set. A
            // leftover agents' Secret (a kill in between) is replaced.
            for secret in [agent_secret, controller_secret] {
                let secret = secret.map_err(RuntimeError::Unavailable)?;
                let name = secret.metadata.name.clone().unwrap_or_default();
                match retrying("creating a secret", || secrets.create(&POST, &secret)).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) && name == AGENT_TLS => {
                        let _ = retrying("deleting a secret", || secrets.delete(&name, &DELETE)).await;
                        retrying("creating a secret", || secrets.create(&POST, &secret))
                            .await
                            .map_err(|e| api("storing the certificates", e))?;
                    }
                    Err(e) => return Err(api("storing the certificates", e)),
                }
            }
        }
        if self.access == Access::PortForward
            && retrying("reading a secret", || secrets.get_opt(GATEWAY_TLS))
                .await
                .map_err(|e| api("reading the gateway's certificates", e))?
                .is_none()
        {
            self.make_gateway_identity(topology, &secrets).await?;
        }
        self.connector(topology).await
    }

    /// The gateway's Secret: a server identity as an agent's (the provider
    /// checks it as one) and a client identity the agents accept, both
    /// issued by the topology's CA, whose key stays in the provider's Secret.
    async fn make_gateway_identity(&self, topology: &str, secrets: &Api<Secret>) -> Result<(), RuntimeError> {
        let data = self.controller_files(topology).await?;
        let text = |name: &str| {
            data.get(name)
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .ok_or_else(|| RuntimeError::Unavailable(format!("secret {CONTROLLER_TLS} has no {name}")))
        };
        let pki = |e: merak_agent::pki::PkiError| {
            RuntimeError::Unavailable(format!("making the gateway's certificates of {topology}: {e}"))
        };
        let authority = Authority::load(topology, &text("ca.pem")?, &text("ca.key")?).map_err(pki)?;
        let server = authority.issue(Role::Agent).map_err(pki)?;
        let client = authority.issue(Role::Gateway).map_err(pki)?;
        let secret = objects::tls_secret(
            topology,
            GATEWAY_TLS,
            &[
                ("ca.pem", &authority.certificate),
                ("agent.pem", &server.certificate),
                ("agent.key", &server.key),
                ("gateway.pem", &client.certificate),
                ("gateway.key", &client.key),
            ],
        )
        .map_err(RuntimeError::Unavailable)?;
        match retrying("creating a secret", || secrets.create(&POST, &secret)).await {
            // Made meanwhile by another run: the same CA signed it.
            Err(e) if is_conflict(&e) => Ok(()),
            other => other.map(drop).map_err(|e| api("storing the gateway's certificates", e)),
        }
    }

    async fn controller_files(
        &self,
        topology: &str,
    ) -> Result<BTreeMap<String, k8s_openapi::ByteString>, RuntimeError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace_name(topology));
        let secret = retrying("reading a secret", || secrets.get(CONTROLLER_TLS))
            .await
            .map_err(|e| api(format!("reading secret {}/{CONTROLLER_TLS}", namespace_name(topology)), e))?;
        Ok(secret.data.unwrap_or_default())
    }

    async fn connector(&self, topology: &str) -> Result<TlsConnector, RuntimeError> {
        if let Some(connector) = self.connectors.lock().ok().and_then(|c| c.get(topology).cloned()) {
            return Ok(connector);
        }
        let data = self.controller_files(topology).await?;
        let file = |name: &str| {
            data.get(name)
                .map(|bytes| bytes.0.clone())
                .ok_or_else(|| RuntimeError::Unavailable(format!("secret {CONTROLLER_TLS} has no {name}")))
        };
        let connector =
            merak_agent::tls::connector(&file("ca.pem")?, &file("controller.pem")?, &file("controller.key")?)
                .map_err(|e| RuntimeError::Unavailable(format!("the controller's certificate of {topology}: {e}")))?;
        if let Ok(mut connectors) = self.connectors.lock() {
            connectors.insert(topology.to_string(), connector.clone());
        }
        Ok(connector)
    }

    /// The topology's pods by name, the gateway's apart; where the agents
    /// are is noted on the way (see [`Routes`]).
    async fn list_pods(&self, topology: &str) -> Result<HashMap<String, Pod>, RuntimeError> {
        Ok(self.list_all_pods(topology).await?.0)
    }

    /// The agents' pods by name, and the gateway's pods.
    async fn list_all_pods(&self, topology: &str) -> Result<(HashMap<String, Pod>, Vec<Pod>), RuntimeError> {
        let selector = ListParams::default().labels(&topology_selector(topology));
        let pods = self.pods(topology);
        let items = match retrying("listing pods", || pods.list(&selector)).await {
            Ok(list) => list.items,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(api(format!("listing the pods of {}", namespace_name(topology)), e)),
        };
        self.note_routes(topology, &items);
        let (gateways, agents): (Vec<Pod>, Vec<Pod>) = items.into_iter().partition(is_gateway);
        let agents: HashMap<String, Pod> =
            agents.into_iter().filter_map(|pod| Some((pod.metadata.name.clone()?, pod))).collect();
        Ok((agents, gateways))
    }

    /// Notes where the running agents and the gateway are, from every pod
    /// of the topology as just listed.
    fn note_routes<'a>(&self, topology: &str, pods: impl IntoIterator<Item = &'a Pod>) {
        let running = |pod: &Pod| {
            let state = pod_state(pod, None);
            (state.ready && !state.stale).then_some(state.ip).flatten().and_then(|ip| ip.parse::<IpAddr>().ok())
        };
        let mut ips = HashMap::new();
        let mut gateway_pod = None;
        for pod in pods {
            let (Some(ip), Some(name)) = (running(pod), pod.metadata.name.clone()) else { continue };
            if is_gateway(pod) {
                gateway_pod = Some(name);
            } else {
                ips.insert(name, ip);
            }
        }
        if let Ok(mut routes) = self.routes.lock() {
            let routes = routes.entry(topology.to_string()).or_default();
            routes.ips = ips;
            routes.gateway_pod = gateway_pod;
        }
    }

    /// Makes the gateway's Deployment, or brings it to the settings.
    async fn converge_gateway(&self, topology: &str) -> Result<(), RuntimeError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace_name(topology));
        let mut wanted = objects::gateway(topology, &self.settings).map_err(RuntimeError::Unavailable)?;
        let digest =
            |d: &Deployment| d.metadata.annotations.as_ref().and_then(|a| a.get(objects::SPEC_ANNOTATION)).cloned();
        let found = retrying("reading a deployment", || deployments.get_opt(GATEWAY))
            .await
            .map_err(|e| api(format!("reading deployment {GATEWAY}"), e))?;
        match found {
            None => match retrying("creating a deployment", || deployments.create(&POST, &wanted)).await {
                Err(e) if !is_conflict(&e) => {
                    Err(api(format!("creating deployment {}/{GATEWAY}", namespace_name(topology)), e))
                }
                _ => Ok(()),
            },
            Some(found) if digest(&found) != digest(&wanted) => {
                tracing::info!(topology, "updating the gateway to the provider's settings");
                wanted.metadata.resource_version = found.metadata.resource_version;
                retrying("updating a deployment", || deployments.replace(GATEWAY, &POST, &wanted))
                    .await
                    .map(drop)
                    .map_err(|e| api(format!("updating deployment {}/{GATEWAY}", namespace_name(topology)), e))
            }
            Some(_) => Ok(()),
        }
    }

    /// Waits until the gateway's pod runs; a failure naming why when it
    /// does not within pod_ready_timeout, or cannot.
    async fn wait_gateway(&self, topology: &str) -> Result<Option<Failure>, RuntimeError> {
        let deadline = Instant::now() + self.settings.pod_ready_timeout;
        loop {
            let (_, gateways) = self.list_all_pods(topology).await?;
            let states: Vec<(String, PodState)> = gateways
                .iter()
                .map(|pod| (pod.metadata.name.clone().unwrap_or_default(), pod_state(pod, None)))
                .collect();
            if states.iter().any(|(_, s)| s.ready && !s.stale && s.ip.is_some()) {
                return Ok(None);
            }
            let hopeless = states.iter().find(|(_, s)| s.hopeless);
            if hopeless.is_some() || Instant::now() > deadline {
                let events = self.events(topology).await;
                let (name, reason) = match hopeless.or(states.first()) {
                    Some((name, state)) => {
                        let node = state
                            .node
                            .as_deref()
                            .map(|n| format!(" on node {n}"))
                            .unwrap_or_else(|| " (not scheduled)".into());
                        let why = state
                            .waiting
                            .clone()
                            .or_else(|| events.get(name).cloned())
                            .unwrap_or_else(|| "no reason given in its status or events".into());
                        (format!("{name}{node}"), why)
                    }
                    None => (
                        "(none made)".into(),
                        events.get(GATEWAY).cloned().unwrap_or_else(|| "the deployment made no pod".into()),
                    ),
                };
                return Ok(Some(Failure {
                    object: GATEWAY.into(),
                    error: format!(
                        "the gateway (deployment {}/{GATEWAY}, pod {name}) is not running: {reason}",
                        namespace_name(topology)
                    ),
                }));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn delete_pods(&self, topology: &str, names: Vec<String>) -> Result<(), RuntimeError> {
        let pods = self.pods(topology);
        let results: Vec<Result<(), RuntimeError>> = futures::stream::iter(names)
            .map(|name: String| {
                let pods = pods.clone();
                async move {
                    match retrying("deleting a pod", || pods.delete(&name, &DELETE)).await {
                        Ok(_) => Ok(()),
                        Err(e) if is_not_found(&e) => Ok(()),
                        Err(e) => Err(api(format!("deleting pod {name}"), e)),
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Makes the pods the spec has and the cluster lacks (or holds stale),
    /// removes those it no longer has, and waits until each is running or
    /// cannot be: the pods by name, as they are at the end.
    /// `made`: the pods it created.
    async fn converge_pods(
        &self,
        spec: &TreeSpec,
        under_test: UnderTest<'_>,
        failures: &mut Vec<Failure>,
        made: &mut Vec<String>,
    ) -> Result<HashMap<String, PodState>, RuntimeError> {
        let topology = &spec.name;
        let wanted: Vec<(String, k8s_openapi::api::core::v1::Pod)> = objects::pod_objects(spec)
            .iter()
            .map(|object| objects::pod(topology, object, &self.settings, under_test).map(|pod| (object.name(), pod)))
            .collect::<Result<_, String>>()
            .map_err(RuntimeError::Unavailable)?;
        let digest =
            |pod: &Pod| pod.metadata.annotations.as_ref().and_then(|a| a.get(objects::SPEC_ANNOTATION)).cloned();
        let wanted_names: HashSet<&str> = wanted.iter().map(|(name, _)| name.as_str()).collect();
        let existing = self.list_pods(topology).await?;
        let mut leaving: Vec<String> =
            existing.keys().filter(|name| !wanted_names.contains(name.as_str())).cloned().collect();
        let mut to_create = Vec::new();
        let mut replaced = Vec::new();
        for (name, pod) in &wanted {
            match existing.get(name) {
                None => to_create.push((name.clone(), pod.clone())),
                Some(found) if pod_state(found, digest(pod).as_deref()).stale => {
                    replaced.push(name.clone());
                    to_create.push((name.clone(), pod.clone()));
                }
                Some(_) => {}
            }
        }
        leaving.extend(replaced.iter().cloned());
        if !leaving.is_empty() {
            tracing::info!(topology, pods = leaving.len(), "deleting pods the topology no longer has, or holds stale");
            self.delete_pods(topology, leaving).await?;
            self.wait_gone(topology, &replaced).await?;
        }
        let pods = self.pods(topology);
        let total = to_create.len();
        if total > 0 {
            tracing::info!(topology, pods = total, "creating pods");
        }
        let created: Vec<(String, Result<(), kube::Error>)> = futures::stream::iter(to_create)
            .map(|(name, pod): (String, Pod)| {
                let pods = pods.clone();
                async move {
                    let result = match retrying("creating a pod", || pods.create(&POST, &pod)).await {
                        Err(e) if is_conflict(&e) => Ok(()),
                        other => other.map(drop),
                    };
                    (name, result)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (name, result) in created {
            match result {
                Ok(()) => made.push(name),
                Err(e) => failures.push(Failure {
                    object: name.clone(),
                    error: format!("creating pod {}/{name}: {e}", namespace_name(topology)),
                }),
            }
        }
        self.wait_running(spec, &wanted, failures).await
    }

    /// Waits until the pods are deleted for good (a pod made anew must not
    /// meet its old self).
    async fn wait_gone(&self, topology: &str, names: &[String]) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        loop {
            let existing = self.list_pods(topology).await?;
            let left: Vec<&String> = names.iter().filter(|n| existing.contains_key(*n)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Unavailable(format!(
                    "pods {left:?} of {} were still there {} s after they were deleted",
                    namespace_name(topology),
                    TEARDOWN_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_running(
        &self,
        spec: &TreeSpec,
        wanted: &[(String, Pod)],
        failures: &mut Vec<Failure>,
    ) -> Result<HashMap<String, PodState>, RuntimeError> {
        let topology = &spec.name;
        let deadline = Instant::now() + self.settings.pod_ready_timeout;
        let mut reported = Instant::now();
        let watching = |e| api(format!("watching the pods of {}", namespace_name(topology)), e);
        let mut watch =
            watch::PodWatch::start(self.pods(topology), topology_selector(topology)).await.map_err(watching)?;
        loop {
            let existing = &watch.pods;
            let states: HashMap<String, PodState> = wanted
                .iter()
                .filter_map(|(name, _)| existing.get(name).map(|pod| (name.clone(), pod_state(pod, None))))
                .collect();
            let running = states.values().filter(|s| s.ready && s.ip.is_some()).count();
            let settled = states.values().filter(|s| (s.ready && s.ip.is_some()) || s.hopeless).count();
            if settled == wanted.len() || Instant::now() > deadline {
                if running < wanted.len() {
                    let timed_out = Instant::now() > deadline;
                    let events = self.events(topology).await;
                    for (name, _) in wanted {
                        let Some(state) = states.get(name) else {
                            if !failures.iter().any(|f| &f.object == name) {
                                failures.push(Failure {
                                    object: name.clone(),
                                    error: format!("pod {}/{name} does not exist", namespace_name(topology)),
                                });
                            }
                            continue;
                        };
                        if state.ready && state.ip.is_some() {
                            continue;
                        }
                        let reason = state
                            .waiting
                            .clone()
                            .or_else(|| events.get(name).cloned())
                            .unwrap_or_else(|| "no reason given in its status or events".into());
                        let node = state
                            .node
                            .as_deref()
                            .map(|n| format!(" on node {n}"))
                            .unwrap_or_else(|| " (not scheduled)".into());
                        let waited = if timed_out {
                            format!(" within pod_ready_timeout ({} s)", self.settings.pod_ready_timeout.as_secs())
                        } else {
                            String::new()
                        };
                        failures.push(Failure {
                            object: name.clone(),
                            error: format!(
                                "pod {}/{name}{node} is not running{waited}: {reason}",
                                namespace_name(topology)
                            ),
                        });
                    }
                }
                self.note_routes(topology, watch.pods.values());
                return Ok(states);
            }
            if reported.elapsed() > Duration::from_secs(5) {
                tracing::info!(topology, "{running} of {} pods running", wanted.len());
                reported = Instant::now();
            }
            watch.changed(deadline.min(Instant::now() + Duration::from_secs(5))).await.map_err(watching)?;
        }
    }

    /// The latest warning event per pod, for a pod whose status says nothing.
    async fn events(&self, topology: &str) -> HashMap<String, String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace_name(topology));
        let all = ListParams::default();
        let Ok(list) = retrying("listing events", || events.list(&all)).await else { return HashMap::new() };
        let mut latest = HashMap::new();
        for event in list.items {
            if event.type_.as_deref() == Some("Warning")
                && let Some(name) = event.involved_object.name
            {
                latest.insert(
                    name,
                    format!("{}: {}", event.reason.unwrap_or_default(), event.message.unwrap_or_default()),
                );
            }
        }
        latest
    }

    /// The IP of a pod's agent, as last listed (listed anew when unknown).
    async fn agent_ip(&self, topology: &str, pod: &str) -> Result<IpAddr, RuntimeError> {
        let known =
            |this: &Self| this.routes.lock().ok().and_then(|r| r.get(topology).and_then(|r| r.ips.get(pod).copied()));
        if let Some(ip) = known(self) {
            return Ok(ip);
        }
        self.list_pods(topology).await?;
        known(self)
            .ok_or_else(|| RuntimeError::Unavailable(format!("pod {}/{pod} is not running", namespace_name(topology))))
    }

    /// A channel to the agent of a pod: through the gateway's one
    /// connection (port-forward), or one of its own to the pod's IP (direct).
    async fn channel(&self, topology: &str, pod: &str) -> Result<AgentChannel, RuntimeError> {
        let ip = self.agent_ip(topology, pod).await?;
        match self.access {
            Access::PortForward => Ok(AgentChannel::through_gateway(self.gateway_channel(topology).await?, ip)),
            Access::Direct => {
                let connector = self.connector(topology).await?;
                let dial = move || async move {
                    let stream = tokio::net::TcpStream::connect((ip, AGENT_PORT)).await?;
                    let _ = stream.set_nodelay(true);
                    Ok(stream)
                };
                let channel =
                    Self::connect_with_retries(pod, || merak_agent::tls::channel_over(dial, connector.clone())).await?;
                Ok(AgentChannel::direct(channel))
            }
        }
    }

    /// The channel through the topology's gateway, kept while its pod is
    /// the one running; a gateway made anew is dialled anew.
    async fn gateway_channel(&self, topology: &str) -> Result<Channel, RuntimeError> {
        let current = |this: &Self| {
            this.routes.lock().ok().and_then(|r| r.get(topology).map(|r| (r.gateway_pod.clone(), r.gateway.clone())))
        };
        let (mut pod, kept) = current(self).unwrap_or_default();
        if let (Some(pod), Some((kept_pod, channel))) = (&pod, kept)
            && *pod == kept_pod
        {
            return Ok(channel);
        }
        // A gateway pod that went away is made anew by its Deployment within
        // seconds: a read meanwhile waits for it rather than seeing no agent.
        let deadline = Instant::now() + self.settings.pod_ready_timeout.min(GATEWAY_RETURN);
        while pod.is_none() {
            self.list_pods(topology).await?;
            pod = current(self).and_then(|(pod, _)| pod);
            if pod.is_none() {
                if Instant::now() > deadline {
                    return Err(RuntimeError::Unavailable(format!(
                        "the gateway of {} (deployment {GATEWAY}) has no running pod; apply the topology",
                        namespace_name(topology)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let Some(pod) = pod else { return Err(RuntimeError::Unavailable("no gateway pod".into())) };
        let connector = self.connector(topology).await?;
        let pods = self.pods(topology);
        let name = pod.clone();
        let dial = move || {
            let (pods, name) = (pods.clone(), name.clone());
            async move {
                let mut forwarder = retrying("port-forwarding", || pods.portforward(&name, &[AGENT_PORT]))
                    .await
                    .map_err(std::io::Error::other)?;
                forwarder
                    .take_stream(AGENT_PORT)
                    .ok_or_else(|| std::io::Error::other(format!("no port-forward stream to {name}")))
            }
        };
        let channel =
            Self::connect_with_retries(&pod, || merak_agent::tls::channel_over(dial.clone(), connector.clone()))
                .await?;
        if let Ok(mut routes) = self.routes.lock() {
            routes.entry(topology.to_string()).or_default().gateway = Some((pod, channel.clone()));
        }
        Ok(channel)
    }

    /// A handshake through the API server can miss the connect timeout on
    /// a busy host: a few tries, with a growing pause, before the error counts.
    async fn connect_with_retries<C, F>(pod: &str, connect: C) -> Result<Channel, RuntimeError>
    where
        C: Fn() -> F,
        F: std::future::Future<Output = Result<Channel, tonic::transport::Error>>,
    {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match connect().await {
                Ok(channel) => return Ok(channel),
                Err(error) if attempt < CONNECT_ATTEMPTS => {
                    tracing::debug!(pod, attempt, error = %error_chain(&error), "connecting failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(RuntimeError::Unavailable(format!("{pod}: {}", error_chain(&error)))),
            }
        }
    }

    async fn info(&self, topology: &str, pod: &str) -> Result<EpmInfo, RuntimeError> {
        let mut agent = AgentClient::new(self.channel(topology, pod).await?);
        Ok(agent
            .get_info(GetInfoRequest {})
            .await
            .map_err(|s| RuntimeError::Unavailable(format!("agent of {pod}: {}", s.message())))?
            .into_inner())
    }

    /// Every running pod's agent, asked what it has: by pod name.
    async fn infos(
        &self,
        topology: &str,
        pods: &HashMap<String, PodState>,
    ) -> HashMap<String, Result<EpmInfo, RuntimeError>> {
        let running: Vec<String> =
            pods.iter().filter(|(_, s)| s.ready && s.ip.is_some()).map(|(n, _)| n.clone()).collect();
        futures::stream::iter(running)
            .map(|name: String| async move {
                let info = self.info(topology, &name).await;
                (name, info)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await
    }

    /// The underlay's goals from the pods' IPs and MTUs: per vswitch its
    /// ports, per EPM its data-plane NIC. A link whose far end has no
    /// running pod is left out (its vswitch port removed) until it has.
    fn underlay_goals(
        spec: &TreeSpec,
        pods: &HashMap<String, PodState>,
        infos: &HashMap<String, Result<EpmInfo, RuntimeError>>,
    ) -> UnderlayGoals {
        let ip = |name: &str| pods.get(name).filter(|s| s.ready).and_then(|s| s.ip.clone());
        let pod_mtu = |name: &str| {
            infos
                .get(name)
                .and_then(|i| i.as_ref().ok())
                .and_then(|info| info.interfaces.iter().find(|i| i.name == "eth0").map(|i| i.mtu))
        };
        let link = |a: &str, b: &str, vni: u32| -> Option<Tunnel> {
            let mtu = pod_mtu(a)?.min(pod_mtu(b)?).checked_sub(VXLAN_OVERHEAD)?;
            Some(Tunnel { remote: ip(b)?, vni, mtu })
        };
        let switches = spec.vswitches();
        let epms: Vec<Epm> = spec.epms().collect();
        let mut switch_goals = Vec::new();
        for switch in &switches {
            let name = switch.name();
            let mut ports = Vec::new();
            if let Some(parent) = switch.parent_name()
                && let Some(tunnel) = link(&name, &parent, objects::uplink_vni(switch))
            {
                ports.push(SwitchPort { name: UPLINK.into(), tunnel: Some(tunnel) });
            }
            for child in switches.iter().filter(|c| c.level + 1 == switch.level && c.parent == Some(switch.index)) {
                if let Some(tunnel) = link(&name, &child.name(), objects::uplink_vni(child)) {
                    ports.push(SwitchPort { name: naming::downlink_port(child.index), tunnel: Some(tunnel) });
                }
            }
            if switch.level == 0 {
                for epm in epms.iter().filter(|e| e.rack == switch.index) {
                    if let Some(tunnel) = link(&name, &epm.name, objects::epm_link_vni(epm.index)) {
                        ports.push(SwitchPort { name: naming::host_port(epm.index), tunnel: Some(tunnel) });
                    }
                }
            }
            switch_goals.push((name, SwitchGoal { bridge: BRIDGE.into(), ports }));
        }
        let mut epm_goals = Vec::new();
        for epm in epms {
            let tor = naming::vswitch_name(0, epm.rack);
            if let Some(tunnel) = link(&epm.name, &tor, objects::epm_link_vni(epm.index)) {
                let goal = UnderlayGoal {
                    interface: EPM_DATA_NIC.into(),
                    address: format!("{}/{}", epm.ip, spec.data_plane.prefix_len()),
                    mac: merak_netdev::netdev::format_mac(&epm.mac),
                    tunnel: Some(tunnel),
                    gateway: String::new(),
                };
                epm_goals.push((epm, goal));
            }
        }
        (switch_goals, epm_goals)
    }

    /// Pushes the underlay goals to the agents; failures by object.
    async fn push_underlay(
        &self,
        topology: &str,
        switches: Vec<(String, SwitchGoal)>,
        epms: Vec<(Epm, UnderlayGoal)>,
    ) -> Vec<Failure> {
        let switch_results: Vec<Option<Failure>> = futures::stream::iter(switches)
            .map(|(name, goal): (String, SwitchGoal)| async move {
                let result = async {
                    let mut agent = AgentClient::new(self.channel(topology, &name).await?);
                    agent
                        .apply_switch(goal)
                        .await
                        .map_err(|s| RuntimeError::Unavailable(format!("agent of {name}: {}", s.message())))
                }
                .await;
                result.err().map(|e| Failure { object: name, error: e.to_string() })
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let epm_results: Vec<Option<Failure>> = futures::stream::iter(epms)
            .map(|(epm, goal): (Epm, UnderlayGoal)| async move {
                let result = async {
                    let mut agent = AgentClient::new(self.channel(topology, &epm.name).await?);
                    agent
                        .apply_underlay(goal)
                        .await
                        .map_err(|s| RuntimeError::Unavailable(format!("agent of {}: {}", epm.name, s.message())))
                }
                .await;
                result.err().map(|e| Failure { object: epm.name, error: e.to_string() })
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        switch_results.into_iter().chain(epm_results).flatten().collect()
    }

    /// How many EPMs are up: pod running, agent answering, NIC up with its
    /// address and tunnelled to its top-of-rack pod, and every vswitch on
    /// the way to the root holding the ports of the path, tunnelled to the
    /// pods there are now.
    fn ready_epms(
        spec: &TreeSpec,
        pods: &HashMap<String, PodState>,
        infos: &HashMap<String, Result<EpmInfo, RuntimeError>>,
    ) -> u32 {
        let ip = |name: &str| pods.get(name).filter(|s| s.ready).and_then(|s| s.ip.clone());
        let interfaces = |name: &str| infos.get(name).and_then(|i| i.as_ref().ok()).map(|info| &info.interfaces);
        // A port of a vswitch: up on its bridge, tunnelled to `far`'s pod.
        let port_to = |switch: &str, port: &str, far: &str| {
            let (Some(interfaces), Some(far_ip)) = (interfaces(switch), ip(far)) else { return false };
            let Some(bridge) = interfaces.iter().find(|i| i.name == BRIDGE && i.up) else { return false };
            interfaces
                .iter()
                .any(|i| i.name == port && i.up && i.controller == bridge.index && i.tunnel_remote == far_ip)
        };
        let switches = spec.vswitches();
        let mut reachable: HashMap<(u32, u32), bool> = HashMap::new();
        let mut ordered = switches.clone();
        ordered.sort_by_key(|s| std::cmp::Reverse(s.level));
        for switch in &ordered {
            let name = switch.name();
            let linked = match switch.parent_name() {
                None => interfaces(&name).is_some_and(|i| i.iter().any(|i| i.name == BRIDGE && i.up)),
                Some(parent) => {
                    reachable.get(&(switch.level + 1, switch.parent.unwrap_or_default())).copied().unwrap_or(false)
                        && port_to(&name, UPLINK, &parent)
                        && port_to(&parent, &naming::downlink_port(switch.index), &name)
                }
            };
            reachable.insert((switch.level, switch.index), linked);
        }
        spec.epms()
            .filter(|epm| {
                let tor = naming::vswitch_name(0, epm.rack);
                let address = format!("{}/{}", epm.ip, spec.data_plane.prefix_len());
                let nic_up = interfaces(&epm.name).is_some_and(|i| {
                    i.iter().any(|i| {
                        i.name == EPM_DATA_NIC
                            && i.up
                            && i.addresses.contains(&address)
                            && Some(&i.tunnel_remote) == ip(&tor).as_ref()
                    })
                });
                nic_up
                    && reachable.get(&(0, epm.rack)).copied().unwrap_or(false)
                    && port_to(&tor, &naming::host_port(epm.index), &epm.name)
            })
            .count() as u32
    }

    async fn status(&self, spec: &TreeSpec) -> Result<TopologyStatus, RuntimeError> {
        let existing = self.list_pods(&spec.name).await?;
        let pods: HashMap<String, PodState> =
            existing.iter().map(|(name, pod)| (name.clone(), pod_state(pod, None))).collect();
        let infos = self.infos(&spec.name, &pods).await;
        Ok(TopologyStatus { ready_epms: Self::ready_epms(spec, &pods, &infos), ..TopologyStatus::default() })
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

    fn epm_ping_namespace(&self, _topology: &str, _epm: &str) -> String {
        // merak-agent runs in its EPM's pod: its own namespace is the EPM's.
        String::new()
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
        let (switch_goals, epm_goals) = Self::underlay_goals(spec, &pods, &infos);
        failures.extend(self.push_underlay(topology, switch_goals, epm_goals).await);

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
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while retrying("reading a namespace", || namespaces.get_opt(&namespace))
            .await
            .map_err(|e| api(format!("reading namespace {namespace}"), e))?
            .is_some()
        {
            if Instant::now() > deadline {
                return Err(RuntimeError::Unavailable(format!(
                    "namespace {namespace} was still there {} s after it was deleted",
                    TEARDOWN_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
    use crate::model::TreeInput;
    use merak_proto::agent::Interface;
    use objects::PodObject;

    fn lab() -> TreeSpec {
        TreeSpec::validate(&TreeInput {
            name: "lab",
            racks: 2,
            hosts_per_rack: 2,
            hosts: Some(4),
            ports_per_vswitch: 2,
            data_plane_cidr: "10.100.0.0/16",
        })
        .unwrap()
    }

    fn running(ip: &str) -> PodState {
        PodState {
            ip: Some(ip.into()),
            node: Some("node-1".into()),
            ready: true,
            stale: false,
            waiting: None,
            hopeless: false,
        }
    }

    fn pod_ip(name: &str) -> String {
        let n = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 250;
        format!("10.244.1.{}", n + 2)
    }

    /// What each agent would report after its goal was applied.
    fn applied(
        spec: &TreeSpec,
        pods: &HashMap<String, PodState>,
        mtus: &HashMap<String, Result<EpmInfo, RuntimeError>>,
    ) -> HashMap<String, Result<EpmInfo, RuntimeError>> {
        let (switches, epms) = KubernetesRuntime::underlay_goals(spec, pods, mtus);
        let mut infos = HashMap::new();
        for (name, goal) in switches {
            let mut interfaces = vec![Interface { name: BRIDGE.into(), index: 1, up: true, ..Interface::default() }];
            interfaces.extend(goal.ports.iter().map(|p| Interface {
                name: p.name.clone(),
                up: true,
                controller: 1,
                tunnel_remote: p.tunnel.clone().unwrap().remote,
                ..Interface::default()
            }));
            infos.insert(name, Ok(EpmInfo { epm: String::new(), interfaces }));
        }
        for (epm, goal) in epms {
            let tunnel = goal.tunnel.unwrap();
            let nic = Interface {
                name: EPM_DATA_NIC.into(),
                up: true,
                mtu: tunnel.mtu,
                addresses: vec![goal.address],
                tunnel_remote: tunnel.remote,
                ..Interface::default()
            };
            infos.insert(epm.name, Ok(EpmInfo { epm: String::new(), interfaces: vec![nic] }));
        }
        infos
    }

    #[test]
    fn goals_wire_every_link_with_the_pod_networks_mtu_and_count_ready_epms() {
        let spec = lab();
        let names: Vec<String> = objects::pod_objects(&spec).iter().map(PodObject::name).collect();
        let pods: HashMap<String, PodState> = names.iter().map(|n| (n.clone(), running(&pod_ip(n)))).collect();
        let eth0 = |mtu| {
            Ok(EpmInfo {
                epm: String::new(),
                interfaces: vec![Interface { name: "eth0".into(), mtu, ..Interface::default() }],
            })
        };
        let mtus: HashMap<String, Result<EpmInfo, RuntimeError>> =
            names.iter().map(|n| (n.clone(), eth0(if n == "epm-3" { 1400 } else { 1450 }))).collect();
        let (switches, epms) = KubernetesRuntime::underlay_goals(&spec, &pods, &mtus);
        let tor0 = &switches.iter().find(|(n, _)| n == "s0-0").unwrap().1;
        let port_names: Vec<&str> = tor0.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(port_names, ["up", "e0", "e1"]);
        let e1 = tor0.ports.iter().find(|p| p.name == "e1").unwrap().tunnel.clone().unwrap();
        assert_eq!((e1.remote, e1.vni, e1.mtu), (pod_ip("epm-1"), objects::epm_link_vni(1), 1400));
        let epm3 = &epms.iter().find(|(e, _)| e.name == "epm-3").unwrap().1;
        assert_eq!(epm3.tunnel.as_ref().unwrap().mtu, 1350, "the smaller pod MTU of the link's two ends");
        assert_eq!(epm3.tunnel.as_ref().unwrap().remote, pod_ip("s0-1"));

        let infos = applied(&spec, &pods, &mtus);
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &pods, &infos), 4);

        // A pod made anew elsewhere: its links point at its old IP until the next apply.
        let mut moved = pods.clone();
        moved.insert("epm-2".into(), running("10.244.9.9"));
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &moved, &infos), 3);
        // A vswitch pod gone cuts off its rack.
        let mut without_tor = pods.clone();
        without_tor.remove("s0-0");
        let (switches, epms) = KubernetesRuntime::underlay_goals(&spec, &without_tor, &mtus);
        assert!(epms.iter().all(|(e, _)| e.rack == 1), "no goal for EPMs whose top-of-rack pod is missing");
        assert!(switches.iter().find(|(n, _)| n == "s1-0").unwrap().1.ports.iter().all(|p| p.name != "d0"));
        assert_eq!(KubernetesRuntime::ready_epms(&spec, &without_tor, &applied(&spec, &without_tor, &mtus)), 2);
    }

    #[test]
    fn a_pods_state_says_why_it_is_not_running() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "epm-0", "annotations": {objects::SPEC_ANNOTATION: "abc"}},
            "spec": {"nodeName": "fake-node-2", "containers": []},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}},
            }]},
        }))
        .unwrap();
        let state = pod_state(&pod, Some("abc"));
        assert!(state.hopeless && !state.ready && !state.stale);
        assert_eq!(state.waiting.as_deref(), Some("ImagePullBackOff: Back-off pulling image \"x\""));
        assert_eq!(state.node.as_deref(), Some("fake-node-2"));
        assert!(pod_state(&pod, Some("other")).stale, "made from other settings");
    }

    #[test]
    fn an_evms_epm_comes_from_its_router_namespace() {
        let router = naming::router_namespace("lab", "epm-12", "blue");
        assert_eq!(epm_of_router("lab", &router).as_deref(), Some("epm-12"));
        assert_eq!(epm_of_router("other", &router), None);
    }
}

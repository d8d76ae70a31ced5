//! Reaching the agents: the topology's gateway (a Deployment of
//! merak-agent --gateway) brought up and waited for, one port-forwarded
//! or direct channel to it kept while its pod runs, and each call routed
//! to its agent's pod IP as last listed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use merak_agent::error_chain;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::{EpmInfo, GetInfoRequest};
use tonic::transport::Channel;

use super::cluster::{POST, is_conflict, retrying};
use super::objects::{AGENT_PORT, Access, GATEWAY, namespace_name};
use super::pods::{PodState, is_gateway, pod_state};
use super::{IN_FLIGHT, KubernetesRuntime, api, objects};
use crate::runtime::agent_client::AgentChannel;
use crate::runtime::wait::{Check, wait_until};
use crate::runtime::{Failure, RuntimeError};

/// How long a read waits for the gateway's Deployment to bring back its pod.
pub(super) const GATEWAY_RETURN: Duration = Duration::from_secs(60);

/// Tries at connecting to an agent before its error counts.
pub(super) const CONNECT_ATTEMPTS: u32 = 4;

/// Tries at asking an agent what it has before its error counts.
const INFO_ATTEMPTS: u32 = 3;

/// Where a topology's agents are, as its pods were last listed.
#[derive(Default)]
pub(super) struct Routes {
    /// Running agents' pod IPs, by pod name.
    pub(super) ips: HashMap<String, IpAddr>,
    /// The gateway's running pod.
    pub(super) gateway_pod: Option<String>,
    /// The channel through the gateway, and the pod it goes to: one
    /// connection for every call to the topology's agents.
    pub(super) gateway: Option<(String, Channel)>,
}

impl KubernetesRuntime {
    /// Notes where the running agents and the gateway are, from every pod
    /// of the topology as just listed.
    pub(super) fn note_routes<'a>(&self, topology: &str, pods: impl IntoIterator<Item = &'a Pod>) {
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
    pub(super) async fn converge_gateway(&self, topology: &str) -> Result<(), RuntimeError> {
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
    pub(super) async fn wait_gateway(&self, topology: &str) -> Result<Option<Failure>, RuntimeError> {
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

    /// The IP of a pod's agent, as last listed (listed anew when unknown).
    pub(super) async fn agent_ip(&self, topology: &str, pod: &str) -> Result<IpAddr, RuntimeError> {
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
    pub(super) async fn channel(&self, topology: &str, pod: &str) -> Result<AgentChannel, RuntimeError> {
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
    pub(super) async fn gateway_channel(&self, topology: &str) -> Result<Channel, RuntimeError> {
        let current = |this: &Self| {
            this.routes.lock().ok().and_then(|r| r.get(topology).map(|r| (r.gateway_pod.clone(), r.gateway.clone())))
        };
        let (pod, kept) = current(self).unwrap_or_default();
        if let (Some(pod), Some((kept_pod, channel))) = (&pod, kept)
            && *pod == kept_pod
        {
            return Ok(channel);
        }
        // A gateway pod that went away is made anew by its Deployment within
        // seconds: a read meanwhile waits for it rather than seeing no agent.
        let pod = match pod {
            Some(pod) => pod,
            None => {
                let deadline = Instant::now() + self.settings.pod_ready_timeout.min(GATEWAY_RETURN);
                wait_until(deadline, Duration::from_millis(250), move || async move {
                    self.list_pods(topology).await?;
                    let pod = current(self).and_then(|(pod, _)| pod);
                    Ok::<_, RuntimeError>(pod.map_or(Check::Pending(()), Check::Met))
                })
                .await?
                .map_err(|()| {
                    RuntimeError::Unavailable(format!(
                        "the gateway of {} (deployment {GATEWAY}) has no running pod; apply the topology",
                        namespace_name(topology)
                    ))
                })?
            }
        };
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
    pub(super) async fn connect_with_retries<C, F>(pod: &str, connect: C) -> Result<Channel, RuntimeError>
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

    /// What a pod's agent has. A call that fails is tried again before it
    /// counts: every call crosses the API server and the node's kubelet,
    /// and one stream dropped on the way (a kubelet restarting, a busy API
    /// server) must not read as an EPM down, which the plan would show as
    /// drift.
    pub(super) async fn info(&self, topology: &str, pod: &str) -> Result<EpmInfo, RuntimeError> {
        let mut pause = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let answered = match self.channel(topology, pod).await {
                Ok(channel) => AgentClient::new(channel)
                    .get_info(GetInfoRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| RuntimeError::Unavailable(format!("agent of {pod}: {}", s.message()))),
                Err(error) => Err(error),
            };
            match answered {
                Err(error) if attempt < INFO_ATTEMPTS => {
                    tracing::debug!(pod, attempt, %error, "asking an agent what it has failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                answered => return answered,
            }
        }
    }

    /// Every running pod's agent, asked what it has: by pod name.
    pub(super) async fn infos(
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
}

//! The EPM and vswitch pods: their state as the runtime reads it, made to
//! match the spec (created, made anew when stale, deleted) in bounded
//! parallel, and waited for with a watch until they run or cannot.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};

use super::cluster::{DELETE, POST, is_conflict, is_not_found, retrying};
use super::objects::{GATEWAY_ROLE, namespace_name};
use super::{IN_FLIGHT, KubernetesRuntime, TEARDOWN_TIMEOUT, api, objects, watch};
use crate::model::TreeSpec;
use crate::model::epm_agent::AGENT_CONTAINER;
use crate::runtime::wait::{Check, wait_until};
use crate::runtime::{Failure, RuntimeError, UnderTest};

/// What the runtime knows of a pod it found.
#[derive(Debug, Clone)]
pub(super) struct PodState {
    pub(super) ip: Option<String>,
    pub(super) node: Option<String>,
    pub(super) ready: bool,
    /// Being deleted, failed or made from other settings: to be made anew.
    pub(super) stale: bool,
    /// Why it is not ready, from its status (e.g. `ImagePullBackOff: ...`).
    pub(super) waiting: Option<String>,
    /// The kubelet cannot start it, and waiting will not help.
    pub(super) hopeless: bool,
}

pub(super) fn pod_state(pod: &Pod, digest: Option<&str>) -> PodState {
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

pub(super) fn is_gateway(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().and_then(|l| l.get(objects::ROLE_LABEL)).is_some_and(|role| role == GATEWAY_ROLE)
}

/// Every pod of a topology: its agents' and its gateway's.
pub(super) fn topology_selector(topology: &str) -> String {
    format!("{}={},{}={topology}", objects::MANAGED_BY.0, objects::MANAGED_BY.1, objects::TOPOLOGY_LABEL)
}

impl KubernetesRuntime {
    pub(super) fn pods(&self, topology: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &namespace_name(topology))
    }

    /// The topology's pods by name, the gateway's apart; where the agents
    /// are is noted on the way (see [`Routes`]).
    pub(super) async fn list_pods(&self, topology: &str) -> Result<HashMap<String, Pod>, RuntimeError> {
        Ok(self.list_all_pods(topology).await?.0)
    }

    /// The agents' pods by name, and the gateway's pods.
    pub(super) async fn list_all_pods(&self, topology: &str) -> Result<(HashMap<String, Pod>, Vec<Pod>), RuntimeError> {
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

    pub(super) async fn delete_pods(&self, topology: &str, names: Vec<String>) -> Result<(), RuntimeError> {
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
    pub(super) async fn converge_pods(
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
    pub(super) async fn wait_gone(&self, topology: &str, names: &[String]) -> Result<(), RuntimeError> {
        let waited = wait_until(Instant::now() + TEARDOWN_TIMEOUT, Duration::from_millis(200), move || async move {
            let existing = self.list_pods(topology).await?;
            let left: Vec<&String> = names.iter().filter(|n| existing.contains_key(*n)).collect();
            Ok::<_, RuntimeError>(if left.is_empty() { Check::Met(()) } else { Check::Pending(left) })
        })
        .await?;
        waited.map_err(|left| {
            RuntimeError::Unavailable(format!(
                "pods {left:?} of {} were still there {} s after they were deleted",
                namespace_name(topology),
                TEARDOWN_TIMEOUT.as_secs()
            ))
        })
    }

    pub(super) async fn wait_running(
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
    pub(super) async fn events(&self, topology: &str) -> HashMap<String, String> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

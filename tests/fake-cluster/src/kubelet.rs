//! The cluster's moving parts, driven by the store's change stream: the
//! scheduler (binds pods to nodes by nodeSelector and capacity), the
//! kubelet of every node (runs each bound pod for real: a network namespace
//! as its sandbox, `eth0` on its node's bridge, the container's program in
//! a mount namespace of its own, status and events as a kubelet writes
//! them, restarts with back-off, graceful deletion), and the namespace
//! controller (a deleted namespace takes everything in it, each object
//! deleted as a client's DELETE would: pods gracefully, Deployments and
//! ReplicaSets with their dependents collected after them).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::network;
use crate::store::{Change, Event};
use crate::{Cluster, meta, resources};

/// Kubelet's back-off for a crashing container, shortened for tests.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The longest a container gets between SIGTERM and SIGKILL here.
const MAX_GRACE: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn node_name(index: usize) -> String {
    format!("fake-node-{}", index + 1)
}

fn node_labels(index: usize) -> Value {
    json!({
        "kubernetes.io/hostname": node_name(index),
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": format!("zone-{}", index % 2),
    })
}

pub fn node_object(index: usize, pods: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name(index), "labels": node_labels(index)},
        "spec": {"podCIDR": network::pod_cidr(index), "podCIDRs": [network::pod_cidr(index)]},
        "status": {
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": pods.to_string()},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": pods.to_string()},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "the fake kubelet is posting ready status", "lastHeartbeatTime": meta::now(), "lastTransitionTime": meta::now()}],
            "addresses": [{"type": "InternalIP", "address": format!("10.243.0.{}", index + 1)}, {"type": "Hostname", "address": node_name(index)}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-merak-fake", "containerRuntimeVersion": "merak-fake://0.1", "operatingSystem": "linux", "architecture": "amd64", "osImage": "merak fake node", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    })
}

/// A pod the kubelet holds: how to stop it.
struct Held {
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct Nodes {
    /// Pods bound to each node (scheduled or running).
    bound: HashMap<String, usize>,
    per_node: Vec<usize>,
    /// Pod-IP slots in use, per node.
    slots: Vec<BTreeSet<usize>>,
    /// The slot each node gave last: the next pod gets the next free one
    /// after it, wrapping round, as host-local IPAM does, so an address
    /// is not handed out again while neighbours may still cache the MAC
    /// of the pod that had it.
    last_slot: Vec<Option<usize>>,
}

pub struct Kubelet {
    cluster: Arc<Cluster>,
    held: Mutex<HashMap<String, Held>>,
    nodes: Mutex<Nodes>,
    sandboxes: std::sync::atomic::AtomicU64,
    terminating: Mutex<HashSet<String>>,
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}
fn name_of(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_string()
}
fn namespace_of(pod: &Value) -> String {
    pod["metadata"]["namespace"].as_str().unwrap_or_default().to_string()
}

impl Kubelet {
    pub fn new(cluster: Arc<Cluster>) -> Arc<Kubelet> {
        let count = cluster.config.nodes;
        let nodes = Nodes {
            bound: HashMap::new(),
            per_node: vec![0; count],
            slots: vec![BTreeSet::new(); count],
            last_slot: vec![None; count],
        };
        Arc::new(Kubelet {
            cluster,
            held: Mutex::default(),
            nodes: Mutex::new(nodes),
            sandboxes: Default::default(),
            terminating: Mutex::default(),
        })
    }

    /// Follows the store until it closes.
    pub async fn run(self: Arc<Self>) {
        let mut live = match self.cluster.store.subscribe(None) {
            Ok(subscription) => subscription.live,
            Err(e) => {
                tracing::error!("the kubelet cannot follow the store: {e}");
                return;
            }
        };
        self.resync();
        loop {
            match live.recv().await {
                Ok(event) => self.on_event(&event),
                Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn resync(self: &Arc<Self>) {
        for (_, pod) in self.cluster.store.all("pods") {
            self.on_pod(&pod);
        }
        for (_, namespace) in self.cluster.store.all("namespaces") {
            self.on_namespace(&namespace);
        }
    }

    fn on_event(self: &Arc<Self>, event: &Event) {
        match (event.resource.as_str(), event.change) {
            (_, Change::Deleted) => {}
            ("pods", _) => self.on_pod(&event.object),
            ("namespaces", _) => self.on_namespace(&event.object),
            _ => {}
        }
    }

    fn on_pod(self: &Arc<Self>, pod: &Value) {
        let uid = uid_of(pod);
        let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let held = lock(&self.held).get(&uid).map(|h| h.stop.clone());
        match held {
            Some(stop) if deleting => {
                // Nobody listening means the pod is already stopping.
                let _ = stop.send(true);
            }
            Some(_) => {}
            None if deleting => {
                let _ = self.cluster.store.remove("pods", &namespace_of(pod), &name_of(pod), "pods");
            }
            None if node.is_empty() => self.schedule(pod),
            None => match (0..self.cluster.config.nodes).find(|i| node_name(*i) == node) {
                Some(index) => self.start(pod.clone(), index),
                None => tracing::warn!(pod = %name_of(pod), "bound to {node}, which is not a node of this cluster"),
            },
        }
    }

    fn schedule(&self, pod: &Value) {
        let (namespace, name, uid) = (namespace_of(pod), name_of(pod), uid_of(pod));
        let selector = pod["spec"]["nodeSelector"].as_object().cloned().unwrap_or_default();
        let capacity = self.cluster.config.pods_per_node;
        let chosen = {
            let mut nodes = lock(&self.nodes);
            if nodes.bound.contains_key(&uid) {
                return;
            }
            let fits = |i: &usize| selector.iter().all(|(k, v)| node_labels(*i).get(k) == Some(v));
            let candidates: Vec<usize> = (0..self.cluster.config.nodes).filter(fits).collect();
            let chosen =
                candidates.iter().copied().filter(|i| nodes.per_node[*i] < capacity).min_by_key(|i| nodes.per_node[*i]);
            if let Some(node) = chosen {
                nodes.per_node[node] += 1;
                nodes.bound.insert(uid.clone(), node);
                Ok(node)
            } else {
                let total = self.cluster.config.nodes;
                let unmatched = total - candidates.len();
                let mut reasons = Vec::new();
                if !candidates.is_empty() {
                    reasons.push(format!("{} Too many pods", candidates.len()));
                }
                if unmatched > 0 {
                    reasons.push(format!("{unmatched} node(s) didn't match Pod's node affinity/selector"));
                }
                Err(format!(
                    "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
                    reasons.join(", ")
                ))
            }
        };
        match chosen {
            Ok(node) => {
                let bound = self.cluster.store.update("pods", &namespace, &name, "pods", |pod| {
                    pod["spec"]["nodeName"] = json!(node_name(node));
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}]);
                    Ok(())
                });
                match bound {
                    Ok(pod) => self.cluster.event(
                        &pod,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {namespace}/{name} to {}", node_name(node)),
                        "default-scheduler",
                    ),
                    Err(_) => self.unbind(&uid),
                }
            }
            Err(message) => {
                let already = pod["status"]["conditions"][0]["reason"] == "Unschedulable";
                if already {
                    return;
                }
                let updated = self.cluster.store.update("pods", &namespace, &name, "pods", |pod| {
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": meta::now()}]);
                    Ok(())
                });
                if let Ok(pod) = updated {
                    self.cluster.event(&pod, "Warning", "FailedScheduling", &message, "default-scheduler");
                }
            }
        }
    }

    fn unbind(&self, uid: &str) {
        let mut nodes = lock(&self.nodes);
        if let Some(node) = nodes.bound.remove(uid) {
            nodes.per_node[node] = nodes.per_node[node].saturating_sub(1);
        }
    }

    fn start(self: &Arc<Self>, pod: Value, node: usize) {
        let uid = uid_of(&pod);
        let (stop, stopped) = watch::channel(false);
        {
            let mut held = lock(&self.held);
            if held.contains_key(&uid) {
                return;
            }
            held.insert(uid.clone(), Held { stop });
        }
        {
            let mut nodes = lock(&self.nodes);
            if !nodes.bound.contains_key(&uid) {
                nodes.bound.insert(uid.clone(), node);
                nodes.per_node[node] += 1;
            }
        }
        let kubelet = Arc::clone(self);
        tokio::spawn(async move {
            let (namespace, name) = (namespace_of(&pod), name_of(&pod));
            let sandbox = kubelet.run_pod(pod, node, stopped).await;
            if let Some(sandbox) = &sandbox {
                if let Err(e) = merak_netdev::netns::delete(&sandbox.netns) {
                    tracing::warn!("removing the sandbox of {namespace}/{name}: {e}");
                }
                let mut nodes = lock(&kubelet.nodes);
                nodes.slots[node].remove(&sandbox.slot);
            }
            let _ = std::fs::remove_dir_all(kubelet.cluster.pod_dir(&namespace, &name));
            kubelet.unbind(&uid);
            lock(&kubelet.held).remove(&uid);
            let _ = kubelet.cluster.store.remove("pods", &namespace, &name, "pods");
        });
    }

    /// Stops every pod, waits for them to go, and removes the network.
    pub async fn shutdown(&self) {
        for held in lock(&self.held).values() {
            let _ = held.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + MAX_GRACE + Duration::from_secs(5);
        while !lock(&self.held).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cluster.network.remove();
    }

    fn on_namespace(self: &Arc<Self>, namespace: &Value) {
        if namespace["metadata"]["deletionTimestamp"].is_null() {
            return;
        }
        let name = name_of(namespace);
        if !lock(&self.terminating).insert(name.clone()) {
            return;
        }
        let kubelet = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let keys = kubelet.cluster.store.keys_in_namespace(&name);
                if keys.is_empty() {
                    break;
                }
                for (resource, object) in keys {
                    match resources::by_key(&resource) {
                        Some(served) => {
                            let _ = kubelet.cluster.delete(served, &name, &object, None);
                        }
                        None => {
                            let _ = kubelet.cluster.store.remove(&resource, &name, &object, &resource);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = kubelet.cluster.store.remove("namespaces", "", &name, "namespaces");
            lock(&kubelet.terminating).remove(&name);
        });
    }

    /// Runs the pod until it is deleted; the sandbox it made, if any.
    /// Its containers run side by side in the sandbox's network namespace,
    /// each supervised on its own, their statuses published together.
    async fn run_pod(&self, pod: Value, node: usize, mut stopped: watch::Receiver<bool>) -> Option<Sandbox> {
        let (namespace, name) = (namespace_of(&pod), name_of(&pod));
        let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            self.fail_to_start(&pod, "FailedCreatePodSandBox", "the pod has no containers");
            wait_for_stop(&mut stopped).await;
            return None;
        }
        let statuses = PodStatuses::new(&pod, &containers, node);
        let programs: Vec<Option<PathBuf>> = containers
            .iter()
            .map(|c| self.cluster.config.program_of(c["image"].as_str().unwrap_or_default()))
            .collect();
        if programs.iter().all(Option::is_none) {
            let missing = containers
                .iter()
                .enumerate()
                .map(|(slot, container)| self.image_not_found(&statuses, slot, container, stopped.clone()));
            futures::future::join_all(missing).await;
            return None;
        }
        let sandbox = match self.make_sandbox(node).await {
            Ok(sandbox) => sandbox,
            Err(e) => {
                self.fail_to_start(&pod, "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e:#}"));
                wait_for_stop(&mut stopped).await;
                return None;
            }
        };
        *lock(&statuses.sandbox_ip) = Some(sandbox.ip.to_string());
        let runs = containers.iter().zip(programs).enumerate().map(|(slot, (container, program))| {
            let (statuses, sandbox, stopped) = (&statuses, &sandbox, stopped.clone());
            async move {
                match program {
                    Some(program) => self.run_container(statuses, slot, container, &program, sandbox, stopped).await,
                    None => self.image_not_found(statuses, slot, container, stopped).await,
                }
            }
        });
        futures::future::join_all(runs).await;
        tracing::debug!(pod = %format!("{namespace}/{name}"), "stopped");
        Some(sandbox)
    }

    async fn run_container(
        &self,
        statuses: &PodStatuses,
        slot: usize,
        container: &Value,
        program: &Path,
        sandbox: &Sandbox,
        mut stopped: watch::Receiver<bool>,
    ) {
        let image = container["image"].as_str().unwrap_or_default();
        self.cluster.event(
            &statuses.pod,
            "Normal",
            "Pulled",
            &format!("Container image \"{image}\" already present on machine and can be accessed by the pod"),
            "kubelet",
        );
        if let Some(launch) =
            self.prepare(&statuses.pod, container, program, sandbox, &statuses.host_ip, &mut stopped).await
        {
            self.supervise(statuses, slot, container, launch, sandbox, &mut stopped).await;
        }
    }

    async fn make_sandbox(&self, node: usize) -> anyhow::Result<Sandbox> {
        let slot = {
            let mut nodes = lock(&self.nodes);
            let start = nodes.last_slot[node].map_or(0, |last| last + 1);
            let slots = &mut nodes.slots[node];
            let slot = (0..network::MAX_PODS_PER_NODE)
                .map(|offset| (start + offset) % network::MAX_PODS_PER_NODE)
                .find(|s| !slots.contains(s))
                .context("the node has no pod IP left")?;
            slots.insert(slot);
            nodes.last_slot[node] = Some(slot);
            slot
        };
        let ip = network::pod_ip(node, slot).context("no pod IP for this slot")?;
        let sequence = self.sandboxes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sandbox = Sandbox { netns: format!("{}-{sequence}", self.cluster.network.prefix), slot, ip };
        if let Err(e) = self.cluster.network.add_pod(&sandbox.netns, &format!("veth{sequence}"), node, ip).await {
            let _ = merak_netdev::netns::delete(&sandbox.netns);
            lock(&self.nodes).slots[node].remove(&slot);
            return Err(e);
        }
        Ok(sandbox)
    }

    fn fail_to_start(&self, pod: &Value, reason: &str, message: &str) {
        self.cluster.event(pod, "Warning", reason, message, "kubelet");
    }

    async fn image_not_found(
        &self,
        statuses: &PodStatuses,
        slot: usize,
        container: &Value,
        mut stopped: watch::Receiver<bool>,
    ) {
        let image = container["image"].as_str().unwrap_or_default();
        let message = format!(
            "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"
        );
        self.set_waiting(statuses, slot, "ErrImagePull", &message, 0);
        self.cluster.event(&statuses.pod, "Warning", "Failed", &message, "kubelet");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = wait_for_stop(&mut stopped) => return,
        }
        let back_off = format!("Back-off pulling image \"{image}\"");
        self.set_waiting(statuses, slot, "ImagePullBackOff", &back_off, 0);
        self.cluster.event(&statuses.pod, "Normal", "BackOff", &back_off, "kubelet");
        wait_for_stop(&mut stopped).await;
    }

    fn set_waiting(&self, statuses: &PodStatuses, slot: usize, reason: &str, message: &str, restarts: u64) {
        let container = &statuses.containers[slot];
        let mut status = json!({
            "name": container["name"], "image": container["image"], "imageID": "", "ready": false, "started": false,
            "restartCount": restarts, "state": {"waiting": {"reason": reason, "message": message}},
        });
        if let Some(last) = lock(&statuses.slots)[slot].get("lastState").cloned() {
            status["lastState"] = last;
        }
        self.publish(statuses, slot, status);
    }

    /// Volumes and environment for the container; None when the pod was
    /// deleted while waiting for them.
    async fn prepare(
        &self,
        pod: &Value,
        container: &Value,
        program: &Path,
        sandbox: &Sandbox,
        host_ip: &str,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<Launch> {
        let dir = self.cluster.pod_dir(&namespace_of(pod), &name_of(pod));
        loop {
            match self.launch_plan(pod, container, program, sandbox, host_ip, &dir) {
                Ok(launch) => return Some(launch),
                Err(e) => {
                    self.fail_to_start(pod, "FailedMount", &format!("{e:#}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = wait_for_stop(stopped) => return None,
                    }
                }
            }
        }
    }

    fn launch_plan(
        &self,
        pod: &Value,
        container: &Value,
        program: &Path,
        sandbox: &Sandbox,
        host_ip: &str,
        dir: &Path,
    ) -> anyhow::Result<Launch> {
        let namespace = namespace_of(pod);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut volumes: HashMap<String, PathBuf> = HashMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default().to_string();
            let path = dir.join("volumes").join(&name);
            if let Some(secret) = volume["secret"].as_object() {
                let secret_name = secret.get("secretName").and_then(Value::as_str).unwrap_or_default();
                let object = self.cluster.store.get("secrets", &namespace, secret_name).with_context(|| {
                    format!("MountVolume.SetUp failed for volume \"{name}\" : secret \"{secret_name}\" not found")
                })?;
                write_volume(&path, &object["data"], true)?;
            } else if let Some(config_map) = volume["configMap"].as_object() {
                let map_name = config_map.get("name").and_then(Value::as_str).unwrap_or_default();
                let object = self.cluster.store.get("configmaps", &namespace, map_name).with_context(|| {
                    format!("MountVolume.SetUp failed for volume \"{name}\" : configmap \"{map_name}\" not found")
                })?;
                write_volume(&path, &object["data"], false)?;
            } else if volume["emptyDir"].is_object() {
                std::fs::create_dir_all(&path)?;
            } else if let Some(host) = volume["hostPath"]["path"].as_str() {
                volumes.insert(name, PathBuf::from(host));
                continue;
            } else {
                anyhow::bail!(
                    "volume \"{name}\": the fake kubelet mounts only secret, configMap, emptyDir and hostPath volumes"
                );
            }
            volumes.insert(name, path);
        }
        let mut binds = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap_or_default();
            let target = mount["mountPath"].as_str().unwrap_or_default();
            let source = volumes.get(name).with_context(|| format!("volumeMount {name}: no volume of that name"))?;
            if source == Path::new(target) {
                continue;
            }
            anyhow::ensure!(
                target.starts_with("/run/"),
                "volumeMount {name}: the fake kubelet mounts volumes only under /run/ (the container's own tmpfs), not at {target}"
            );
            binds.push((source.clone(), PathBuf::from(target)));
        }
        let mut env = vec![
            ("HOSTNAME".to_string(), name_of(pod)),
            ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
        ];
        for variable in container["env"].as_array().into_iter().flatten() {
            let key = variable["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(value) = variable["value"].as_str() {
                value.to_string()
            } else if let Some(path) = variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "status.podIP" => sandbox.ip.to_string(),
                    "status.hostIP" => host_ip.to_string(),
                    other => {
                        let value = other.split('.').try_fold(pod, |v, part| v.get(part));
                        value
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .with_context(|| format!("env {key}: unsupported fieldPath {other}"))?
                    }
                }
            } else if let Some(reference) = variable["valueFrom"]["secretKeyRef"].as_object() {
                let (secret, field) = (
                    reference.get("name").and_then(Value::as_str).unwrap_or_default(),
                    reference.get("key").and_then(Value::as_str).unwrap_or_default(),
                );
                let object = self
                    .cluster
                    .store
                    .get("secrets", &namespace, secret)
                    .with_context(|| format!("env {key}: secret \"{secret}\" not found"))?;
                let encoded = object["data"][field]
                    .as_str()
                    .with_context(|| format!("env {key}: secret \"{secret}\" has no key {field}"))?;
                String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(encoded)?).into_owned()
            } else {
                String::new()
            };
            env.push((key, value));
        }
        let mut argv: Vec<String> = Vec::new();
        if let Some(command) = container["command"].as_array() {
            let first = command.first().and_then(Value::as_str).unwrap_or_default();
            anyhow::ensure!(
                Path::new(first).file_name() == program.file_name(),
                "container command {first:?}: the fake's image {} holds only {}",
                container["image"],
                program.display()
            );
            argv.extend(command.iter().skip(1).filter_map(Value::as_str).map(str::to_string));
        }
        argv.extend(container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string));
        let log = dir.join(format!("{}.log", container["name"].as_str().unwrap_or("container")));
        Ok(Launch { program: program.to_path_buf(), argv, env, binds, log })
    }

    /// Starts the container, keeps its status, restarts it when it exits,
    /// and stops it when the pod is deleted.
    async fn supervise(
        &self,
        statuses: &PodStatuses,
        slot: usize,
        container: &Value,
        launch: Launch,
        sandbox: &Sandbox,
        stopped: &mut watch::Receiver<bool>,
    ) {
        let pod = &statuses.pod;
        let (namespace, name) = (namespace_of(pod), name_of(pod));
        let container_name = container["name"].as_str().unwrap_or_default();
        let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_string();
        let grace =
            Duration::from_secs(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30)).min(MAX_GRACE);
        let mut restarts = 0u64;
        let mut backoff = BACKOFF_START;
        let mut last_state = Value::Null;
        loop {
            let mut child = match launch.spawn(&sandbox.netns) {
                Ok(child) => child,
                Err(e) => {
                    self.fail_to_start(
                        pod,
                        "Failed",
                        &format!("Error: failed to start container \"{container_name}\": {e:#}"),
                    );
                    self.set_waiting(statuses, slot, "CreateContainerError", &format!("{e:#}"), restarts);
                    wait_for_stop(stopped).await;
                    return;
                }
            };
            let started_at = meta::now();
            // As kubelet 1.36 words them, at every (re)start.
            self.cluster.event(pod, "Normal", "Created", "Container created", "kubelet");
            self.cluster.event(pod, "Normal", "Started", "Container started", "kubelet");
            let pid = child.id().unwrap_or_default();
            let running = {
                let (previous, restarts, started_at) = (last_state.clone(), restarts, started_at.clone());
                move |ready: bool| {
                    let mut status = json!({
                        "name": container["name"], "image": container["image"], "imageID": format!("merak-fake://{}", container["image"].as_str().unwrap_or_default()),
                        "containerID": format!("merak-fake://{pid}"), "ready": ready, "started": true, "restartCount": restarts,
                        "state": {"running": {"startedAt": started_at}},
                    });
                    if !previous.is_null() {
                        status["lastState"] = previous.clone();
                    }
                    status
                }
            };
            self.publish(statuses, slot, running(false));
            let ready = self.wait_ready(container, &launch, sandbox, &mut child, stopped).await;
            if ready {
                self.publish(statuses, slot, running(true));
            }
            let exit = tokio::select! {
                status = child.wait() => status.ok(),
                _ = wait_for_stop(stopped) => None,
            };
            let Some(exit) = exit else {
                self.cluster.event(
                    pod,
                    "Normal",
                    "Killing",
                    &format!("Stopping container {container_name}"),
                    "kubelet",
                );
                terminate(&mut child, grace).await;
                return;
            };
            let code = exit.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&exit).unwrap_or(0));
            last_state = json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": started_at, "finishedAt": meta::now()}});
            let restart = match restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if !restart {
                let mut status = running(false);
                status["state"] = last_state.clone();
                status.as_object_mut().map(|s| s.remove("lastState"));
                self.publish(statuses, slot, status);
                wait_for_stop(stopped).await;
                return;
            }
            restarts += 1;
            let message = format!(
                "back-off {}s restarting failed container={container_name} pod={name}",
                backoff.as_secs().max(1)
            );
            let mut waiting = running(false);
            waiting["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
            waiting["lastState"] = last_state.clone();
            waiting["restartCount"] = json!(restarts);
            self.publish(statuses, slot, waiting);
            self.cluster.event(
                pod,
                "Warning",
                "BackOff",
                &format!("Back-off restarting failed container {container_name} in pod {name}"),
                "kubelet",
            );
            tracing::debug!(pod = %format!("{namespace}/{name}"), container = container_name, code, "container exited");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = wait_for_stop(stopped) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Ready at once without a readiness probe; with a tcpSocket probe, once
    /// the port accepts a connection from the cluster network; with an exec
    /// probe, once its command exits 0 within timeoutSeconds, run in the
    /// container (its network and mount namespaces, its environment) every
    /// periodSeconds.
    async fn wait_ready(
        &self,
        container: &Value,
        launch: &Launch,
        sandbox: &Sandbox,
        child: &mut tokio::process::Child,
        stopped: &mut watch::Receiver<bool>,
    ) -> bool {
        let probe = &container["readinessProbe"];
        let period = Duration::from_secs(probe["periodSeconds"].as_u64().unwrap_or(10).max(1));
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
        let tcp = probe["tcpSocket"]["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        let exec: Option<Vec<String>> = probe["exec"]["command"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).map(str::to_string).collect());
        if tcp.is_none() && exec.is_none() {
            return true;
        }
        loop {
            let passed = match (&exec, tcp) {
                (Some(command), _) => match child.id() {
                    Some(pid) => launch.probe(command, pid, &sandbox.netns, timeout).await,
                    None => false,
                },
                (None, Some(port)) => {
                    self.cluster.network.connect(std::net::SocketAddr::from((sandbox.ip, port))).await.is_ok()
                }
                (None, None) => true,
            };
            if passed {
                return true;
            }
            if *stopped.borrow() || matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            let pause = if exec.is_some() { period } else { Duration::from_millis(100) };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wait_for_stop(stopped) => return false,
                _ = child.wait() => return false,
            }
        }
    }

    /// Sets one container's status and writes the pod's: running once its
    /// sandbox has an IP and a container started, ready when every
    /// container is, done when every container ended for good.
    fn publish(&self, statuses: &PodStatuses, slot: usize, status: Value) {
        let all: Vec<Value> = {
            let mut slots = lock(&statuses.slots);
            slots[slot] = status;
            slots.clone()
        };
        let sandbox_ip = lock(&statuses.sandbox_ip).clone();
        let host_ip = statuses.host_ip.clone();
        let _ = self.cluster.store.update("pods", &namespace_of(&statuses.pod), &name_of(&statuses.pod), "pods", |pod| {
            let started = all.iter().any(|c| c["started"] == true);
            let (Some(ip), true) = (sandbox_ip.as_ref(), started) else {
                pod["status"]["containerStatuses"] = json!(all);
                return Ok(());
            };
            let now = meta::now();
            let start_time = pod["status"]["startTime"].as_str().map(str::to_string).unwrap_or_else(|| now.clone());
            let ready = all.iter().all(|c| c["ready"] == true);
            let ended: Vec<i64> = all.iter().filter_map(|c| c["state"]["terminated"]["exitCode"].as_i64()).collect();
            let phase = match ended.len() == all.len() {
                true if ended.iter().all(|code| *code == 0) => "Succeeded",
                true => "Failed",
                false => "Running",
            };
            let ready_text = if ready { "True" } else { "False" };
            let was_ready = pod["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").map(|c| (c["status"].clone(), c["lastTransitionTime"].clone()));
            let transition = match was_ready {
                Some((status, at)) if status == ready_text => at,
                _ => json!(now),
            };
            pod["status"] = json!({
                "phase": phase,
                "qosClass": pod["status"]["qosClass"],
                "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                "podIP": ip, "podIPs": [{"ip": ip}],
                "startTime": start_time,
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": start_time},
                    {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": start_time},
                    {"type": "Ready", "status": ready_text, "lastProbeTime": null, "lastTransitionTime": transition},
                    {"type": "ContainersReady", "status": ready_text, "lastProbeTime": null, "lastTransitionTime": transition},
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": start_time},
                ],
                "containerStatuses": all,
            });
            Ok(())
        });
    }
}

/// The statuses of a pod's containers, in the order of its spec.
struct PodStatuses {
    pod: Value,
    containers: Vec<Value>,
    host_ip: String,
    /// Set once the sandbox has its address.
    sandbox_ip: Mutex<Option<String>>,
    slots: Mutex<Vec<Value>>,
}

impl PodStatuses {
    fn new(pod: &Value, containers: &[Value], node: usize) -> PodStatuses {
        let waiting = |c: &Value| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}});
        PodStatuses {
            pod: pod.clone(),
            containers: containers.to_vec(),
            host_ip: format!("10.243.0.{}", node + 1),
            sandbox_ip: Mutex::new(None),
            slots: Mutex::new(containers.iter().map(waiting).collect()),
        }
    }
}

async fn wait_for_stop(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the kubelet is stopping too.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// SIGTERM to the container's process group, SIGKILL after the grace period.
async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling a process group we created.
        unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pid) = child.id() {
            // SAFETY: as above.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
        let _ = child.wait().await;
    }
}

fn write_volume(path: &Path, data: &Value, base64_encoded: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)?;
    for (key, value) in data.as_object().into_iter().flatten() {
        anyhow::ensure!(!key.contains('/') && key != ".." && key != ".", "key {key:?} is not a file name");
        let text = value.as_str().unwrap_or_default();
        let bytes = if base64_encoded {
            base64::engine::general_purpose::STANDARD.decode(text)?
        } else {
            text.as_bytes().to_vec()
        };
        std::fs::write(path.join(key), bytes)?;
    }
    Ok(())
}

struct Sandbox {
    netns: String,
    slot: usize,
    ip: std::net::Ipv4Addr,
}

/// Everything needed to start the container, decided before the fork.
struct Launch {
    program: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Volume directories to bind at paths under the container's /run.
    binds: Vec<(PathBuf, PathBuf)>,
    log: PathBuf,
}

fn c_string(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("a path holds a NUL byte")
}

impl Launch {
    /// Runs an exec probe's command in the container whose process is
    /// `pid` (its network and mount namespaces, its environment): whether
    /// it exits 0 within `timeout`.
    async fn probe(&self, command: &[String], pid: u32, netns: &str, timeout: Duration) -> bool {
        use std::os::unix::process::CommandExt;
        let Some((program, args)) = command.split_first() else { return false };
        let (Ok(net), Ok(mnt)) =
            (merak_netdev::netns::open_fd(netns), std::fs::File::open(format!("/proc/{pid}/ns/mnt")))
        else {
            return false;
        };
        let mut probe = std::process::Command::new(program);
        probe
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let (net_fd, mnt_fd) = (net.as_raw_fd(), mnt.as_raw_fd());
        // SAFETY: only setns(2), async-signal-safe, on descriptors opened above.
        unsafe {
            probe.pre_exec(move || {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                check(libc::setns(net_fd, libc::CLONE_NEWNET))?;
                check(libc::setns(mnt_fd, libc::CLONE_NEWNS))
            });
        }
        let Ok(mut child) = tokio::process::Command::from(probe).kill_on_drop(true).spawn() else { return false };
        drop((net, mnt));
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                if let Some(pid) = child.id() {
                    // SAFETY: signalling the probe's own process group.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                false
            }
        }
    }

    /// Forks the container: in the pod's network namespace, in a mount
    /// namespace of its own with a fresh tmpfs on /run (so namespaces the
    /// agent names under /run/netns are the pod's, as in a real container),
    /// dying with the fake (PR_SET_PDEATHSIG).
    fn spawn(&self, netns: &str) -> anyhow::Result<tokio::process::Child> {
        use std::os::unix::process::CommandExt;
        let net = merak_netdev::netns::open_fd(netns)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        // Every allocation happens here; the child only makes system calls.
        let mut dirs = Vec::new();
        let mut binds = Vec::new();
        for (source, target) in &self.binds {
            let mut ancestors: Vec<&Path> =
                target.ancestors().take_while(|a| *a != Path::new("/run") && *a != Path::new("/")).collect();
            ancestors.reverse();
            for dir in ancestors {
                dirs.push(c_string(dir)?);
            }
            binds.push((c_string(source)?, c_string(target)?));
        }
        let mut command = std::process::Command::new(&self.program);
        command
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let net_fd = net.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls async-signal-safe system calls on data prepared above.
        unsafe {
            command.pre_exec(move || {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                check(libc::setns(net_fd, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/run".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    c"mode=0755".as_ptr().cast(),
                ))?;
                for dir in &dirs {
                    if libc::mkdir(dir.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (source, target) in &binds {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        drop(net);
        Ok(child)
    }
}

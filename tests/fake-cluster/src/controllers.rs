//! kube-controller-manager's part of the fake, driven by the store's change
//! stream as the kubelet is: the deployment controller, the replicaset
//! controller and the garbage collector. They write what the real ones
//! write, in the same shapes: a Deployment's ReplicaSet
//! `<deployment>-<pod-template-hash>` and the ReplicaSet's pods
//! `<replicaset>-<5 random>`, owner references (`controller`,
//! `blockOwnerDeletion`), the `pod-template-hash` label, the
//! `deployment.kubernetes.io/*` annotations, statuses with the real
//! conditions and reasons, and the controllers' events.
//!
//! Where they are simpler than the real ones: a changed pod template rolls
//! out like Recreate without its wait, whatever `spec.strategy` says (the
//! new ReplicaSet is scaled to `spec.replicas` and the old ones to 0 in the
//! same sync; maxSurge and maxUnavailable only shape the annotations and
//! the Available condition); a ReplicaSet neither adopts orphaned pods that
//! match its selector nor releases pods that stopped matching; there is no
//! rollback (`kubectl rollout undo`), revision history annotation or
//! `terminatingReplicas`.
//!
//! Each controller reads the store itself (no informer cache that lags), and
//! one task runs them all, so the real controllers' expectations are not
//! needed: what a sync created is there for the next one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::api::{self, DeleteOptions, Propagation, Target};
use crate::resources::{self, Resource};
use crate::select::{self, Selector};
use crate::store::{Change, Event};
use crate::table::age_seconds;
use crate::{Cluster, meta};

const DEPLOYMENTS: &str = "deployments.apps";
const REPLICA_SETS: &str = "replicasets.apps";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations a ReplicaSet does not copy.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// How often every Deployment and ReplicaSet is synced besides their
/// changes (minReadySeconds passing, progress deadlines).
const RESYNC: Duration = Duration::from_secs(1);
/// The most pods a ReplicaSet creates or deletes in one sync (the real
/// controller's burstReplicas).
const BURST: usize = 500;
/// The most change events taken before working on them.
const BATCH: usize = 4096;

fn name_of(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap_or_default().to_string()
}
fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}
fn deleting(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}
fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    object["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == finalizer))
}
fn owner_references(object: &Value) -> &[Value] {
    object["metadata"]["ownerReferences"].as_array().map_or(&[], Vec::as_slice)
}
/// The owner reference with `controller: true`.
fn controller_of(object: &Value) -> Option<&Value> {
    owner_references(object).iter().find(|r| r["controller"] == json!(true))
}
fn controlled_by(object: &Value, owner: &Value) -> bool {
    controller_of(object).is_some_and(|r| r["uid"] == owner["metadata"]["uid"])
}
fn replicas_of(object: &Value) -> i64 {
    object["spec"]["replicas"].as_i64().unwrap_or(1)
}
fn count(status: &Value, field: &str) -> i64 {
    status[field].as_i64().unwrap_or(0)
}
/// Counts as the real statuses carry them: omitted when zero.
fn put_count(status: &mut Value, field: &str, n: i64) {
    if n != 0 {
        status[field] = json!(n);
    }
}
fn revision_of(object: &Value) -> i64 {
    object["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// A reference to an object with the owner's controller flags, as the
/// controllers set it on what they make.
fn controller_reference(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

/// JSON with every object's keys sorted, whatever order serde_json keeps:
/// what the pod-template hash is taken over.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&fields[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `pod-template-hash` of a pod template, made as the real controller
/// makes it: FNV-1a (32 bits) over the template, then over the collision
/// count (4 bytes, little-endian) when there is one, printed in decimal and
/// each digit mapped into the alphabet of generated names (so "7c5ddbdf54").
/// The real one hashes Go's dump of the typed template, this one the
/// template's canonical JSON: the values differ from a real cluster's, the
/// properties (stable, changes with the template, no vowels) do not.
pub fn pod_template_hash(template: &Value, collision_count: Option<u32>) -> String {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut text = String::new();
    canonical_json(template, &mut text);
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(text.as_bytes());
    if let Some(collisions) = collision_count {
        feed(&collisions.to_le_bytes());
    }
    hash.to_string().bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

/// A template without the `pod-template-hash` label (what the deployment
/// controller compares to find a Deployment's current ReplicaSet).
fn without_hash(template: &Value) -> Value {
    let mut template = template.clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(metadata) = template["metadata"].as_object_mut()
        {
            metadata.remove("labels");
        }
    }
    template
}

fn equal_ignoring_hash(a: &Value, b: &Value) -> bool {
    without_hash(a) == without_hash(b)
}

/// An int-or-percent of `total` (`maxSurge` rounds up, `maxUnavailable` down).
fn scaled_value(value: &Value, total: i64, round_up: bool) -> i64 {
    if let Some(n) = value.as_i64() {
        return n.max(0);
    }
    let percent =
        value.as_str().and_then(|t| t.strip_suffix('%')).and_then(|p| p.parse::<i64>().ok()).unwrap_or(0).max(0);
    if round_up { (percent * total + 99) / 100 } else { percent * total / 100 }
}

/// maxSurge and maxUnavailable of a Deployment, resolved against
/// spec.replicas (both 0 would make no progress: then 1 may be unavailable).
fn surge_and_unavailable(deployment: &Value) -> (i64, i64) {
    let spec = &deployment["spec"];
    if spec["strategy"]["type"] != "RollingUpdate" {
        return (0, 0);
    }
    let replicas = replicas_of(deployment);
    let surge = scaled_value(&spec["strategy"]["rollingUpdate"]["maxSurge"], replicas, true);
    let mut unavailable = scaled_value(&spec["strategy"]["rollingUpdate"]["maxUnavailable"], replicas, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

/// The ReplicaSet a Deployment makes for its current template.
pub fn replica_set_for(deployment: &Value, hash: &str, revision: i64, replicas: i64) -> Value {
    let spec = &deployment["spec"];
    let mut template = spec["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = spec["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut annotations = serde_json::Map::new();
    for (key, value) in deployment["metadata"]["annotations"].as_object().into_iter().flatten() {
        if !NOT_COPIED.contains(&key.as_str()) {
            annotations.insert(key.clone(), value.clone());
        }
    }
    annotations.insert(REVISION.into(), json!(revision.to_string()));
    annotations.insert(DESIRED_REPLICAS.into(), json!(replicas_of(deployment).to_string()));
    annotations.insert(
        MAX_REPLICAS.into(),
        json!((replicas_of(deployment) + surge_and_unavailable(deployment).0).to_string()),
    );
    let mut replica_set = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", name_of(deployment)),
            "namespace": deployment["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": annotations,
            "ownerReferences": [controller_reference(deployment)],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    });
    if let Some(seconds) = spec["minReadySeconds"].as_i64().filter(|s| *s > 0) {
        replica_set["spec"]["minReadySeconds"] = json!(seconds);
    }
    replica_set
}

/// A pod of a ReplicaSet, from its template (the API server names it from
/// `generateName`).
pub fn pod_for(replica_set: &Value) -> Value {
    let template = &replica_set["spec"]["template"];
    let mut metadata = json!({
        "generateName": format!("{}-", name_of(replica_set)),
        "namespace": replica_set["metadata"]["namespace"],
        "ownerReferences": [controller_reference(replica_set)],
    });
    for field in ["labels", "annotations", "finalizers"] {
        if !template["metadata"][field].is_null() {
            metadata[field] = template["metadata"][field].clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

fn is_active(pod: &Value) -> bool {
    !deleting(pod) && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed"))
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Ready for at least `min_ready` seconds.
fn is_available(pod: &Value, min_ready: u64) -> bool {
    match ready_condition(pod) {
        None => false,
        Some(_) if min_ready == 0 => true,
        Some(condition) => {
            condition["lastTransitionTime"].as_str().and_then(age_seconds).is_some_and(|age| age >= min_ready)
        }
    }
}

/// The status the replicaset controller writes from the pods it owns (as
/// listed before it created or deleted any), and why creating failed, if it did.
pub fn replica_set_status(replica_set: &Value, owned: &[Value], failure: Option<&str>) -> Value {
    let min_ready = replica_set["spec"]["minReadySeconds"].as_u64().unwrap_or(0);
    let active: Vec<&Value> = owned.iter().filter(|p| is_active(p)).collect();
    let template_labels =
        replica_set["spec"]["template"]["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    let fully_labeled =
        active.iter().filter(|p| template_labels.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v)).count();
    let ready = active.iter().filter(|p| ready_condition(p).is_some()).count();
    let available = active.iter().filter(|p| is_available(p, min_ready)).count();
    let mut status = json!({"replicas": active.len()});
    put_count(&mut status, "fullyLabeledReplicas", fully_labeled as i64);
    put_count(&mut status, "readyReplicas", ready as i64);
    put_count(&mut status, "availableReplicas", available as i64);
    if let Some(generation) = replica_set["metadata"]["generation"].as_i64() {
        status["observedGeneration"] = json!(generation);
    }
    if let Some(message) = failure {
        let current = replica_set["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ReplicaFailure").cloned());
        let since =
            current.and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string)).unwrap_or_else(meta::now);
        status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "lastTransitionTime": since, "reason": "FailedCreate", "message": message}]);
    }
    status
}

/// Sets a Deployment condition as the real controller's
/// SetDeploymentCondition does: nothing when status and reason are the
/// same; otherwise the old one goes and the new one is appended, keeping
/// lastTransitionTime when only the reason changed.
fn set_condition(conditions: &mut Vec<Value>, kind: &str, status: &str, reason: &str, message: &str, now: &str) {
    let current = conditions.iter().find(|c| c["type"] == kind);
    if current.is_some_and(|c| c["status"] == status && c["reason"] == reason) {
        return;
    }
    let since = current
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_string();
    conditions.retain(|c| c["type"] != kind);
    conditions.push(json!({"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": since, "reason": reason, "message": message}));
}

/// How the sync came by the Deployment's current ReplicaSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewReplicaSet {
    Created,
    Found,
    /// None yet (paused before its first rollout) or not looked for (being deleted).
    Absent,
}

/// The status the deployment controller writes: the counts over all the
/// Deployment's ReplicaSets, Available, and Progressing as the rollout goes
/// (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated,
/// NewReplicaSetAvailable, ProgressDeadlineExceeded, DeploymentPaused).
pub fn deployment_status(
    deployment: &Value,
    new_rs: Option<&Value>,
    all: &[Value],
    how: NewReplicaSet,
    now: &str,
) -> Value {
    let old = &deployment["status"];
    let spec = &deployment["spec"];
    let desired = replicas_of(deployment);
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let new_name = new_rs.map(name_of).unwrap_or_default();
    match how {
        NewReplicaSet::Created => set_condition(
            &mut conditions,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            &format!("Created new replica set \"{new_name}\""),
            now,
        ),
        NewReplicaSet::Found if !conditions.iter().any(|c| c["type"] == "Progressing") => set_condition(
            &mut conditions,
            "Progressing",
            "True",
            "FoundNewReplicaSet",
            &format!("Found new replica set \"{new_name}\""),
            now,
        ),
        _ => {}
    }
    let sum = |field: &str| all.iter().map(|rs| count(&rs["status"], field)).sum::<i64>();
    let (replicas, ready, available) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
    let updated = new_rs.map_or(0, |rs| count(&rs["status"], "replicas"));
    let total_desired: i64 = all.iter().map(replicas_of).sum();
    let unavailable = (total_desired - available).max(0);
    let mut status = json!({});
    if let Some(generation) = deployment["metadata"]["generation"].as_i64() {
        status["observedGeneration"] = json!(generation);
    }
    put_count(&mut status, "replicas", replicas);
    put_count(&mut status, "updatedReplicas", updated);
    put_count(&mut status, "readyReplicas", ready);
    put_count(&mut status, "availableReplicas", available);
    put_count(&mut status, "unavailableReplicas", unavailable);
    if !old["collisionCount"].is_null() {
        status["collisionCount"] = old["collisionCount"].clone();
    }
    if available >= desired - surge_and_unavailable(deployment).1 {
        set_condition(
            &mut conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            now,
        );
    } else {
        set_condition(
            &mut conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
        );
    }
    let progressing = conditions.iter().find(|c| c["type"] == "Progressing").cloned();
    let reason = progressing.as_ref().and_then(|c| c["reason"].as_str()).unwrap_or_default().to_string();
    let paused = spec["paused"] == json!(true);
    if paused && reason != "DeploymentPaused" {
        set_condition(&mut conditions, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", now);
    } else if !paused && reason == "DeploymentPaused" {
        set_condition(&mut conditions, "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed", now);
    }
    let deadline = spec["progressDeadlineSeconds"].as_u64();
    let complete_before = replicas == updated && reason == "NewReplicaSetAvailable";
    if !paused
        && !deleting(deployment)
        && how != NewReplicaSet::Absent
        && !complete_before
        && let Some(deadline) = deadline
    {
        let observed = status["observedGeneration"].as_i64().unwrap_or(0)
            >= deployment["metadata"]["generation"].as_i64().unwrap_or(0);
        let complete = updated == desired && replicas == desired && available == desired && observed;
        let moved = updated > count(old, "updatedReplicas")
            || (replicas - updated) < (count(old, "replicas") - count(old, "updatedReplicas"))
            || ready > count(old, "readyReplicas")
            || available > count(old, "availableReplicas");
        let current = conditions.iter().find(|c| c["type"] == "Progressing").cloned();
        let timed_out = || match current.as_ref() {
            None => false,
            Some(c) if c["reason"] == "NewReplicaSetAvailable" => false,
            Some(c) if c["reason"] == "ProgressDeadlineExceeded" => true,
            Some(c) => c["lastUpdateTime"].as_str().and_then(age_seconds).is_some_and(|age| age > deadline),
        };
        if complete {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                now,
            );
        } else if moved {
            // Progress refreshes lastUpdateTime even with the same reason.
            let since = current
                .as_ref()
                .filter(|c| c["status"] == "True")
                .and_then(|c| c["lastTransitionTime"].as_str())
                .unwrap_or(now)
                .to_string();
            conditions.retain(|c| c["type"] != "Progressing");
            conditions.push(json!({"type": "Progressing", "status": "True", "lastUpdateTime": now, "lastTransitionTime": since, "reason": "ReplicaSetUpdated", "message": format!("ReplicaSet \"{new_name}\" is progressing.")}));
        } else if timed_out() {
            set_condition(
                &mut conditions,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                now,
            );
        }
    }
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    status
}

/// Which pods of a ReplicaSet go first when it scales down: unscheduled,
/// then pending, then not ready, then the youngest.
fn deletion_rank(pod: &Value) -> (bool, u8, bool, std::cmp::Reverse<String>) {
    let scheduled = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let phase = match pod["status"]["phase"].as_str() {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let created = pod["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string();
    (scheduled, phase, ready_condition(pod).is_some(), std::cmp::Reverse(created))
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ObjectRef {
    resource: String,
    namespace: String,
    name: String,
}

/// What is left to do, in the order it is done within a batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    /// Garbage collection: delete an object whose owners are all gone, or
    /// take references to gone owners off it.
    Collect(ObjectRef),
    /// An owner being deleted with Foreground or Orphan propagation.
    Finalize(ObjectRef),
    Deployment(String, String),
    ReplicaSet(String, String),
}

/// The garbage collector's graph: who owns whom, by uid.
#[derive(Default)]
struct Graph {
    dependents: HashMap<String, BTreeSet<ObjectRef>>,
    owners: HashMap<ObjectRef, Vec<String>>,
}

impl Graph {
    /// Records an object's owners; whether they changed.
    fn set(&mut self, object: &ObjectRef, owners: Vec<String>) -> bool {
        let before = self.owners.get(object).cloned().unwrap_or_default();
        if before == owners {
            return false;
        }
        self.forget(object);
        for owner in &owners {
            self.dependents.entry(owner.clone()).or_default().insert(object.clone());
        }
        if !owners.is_empty() {
            self.owners.insert(object.clone(), owners);
        }
        true
    }

    fn forget(&mut self, object: &ObjectRef) {
        for owner in self.owners.remove(object).unwrap_or_default() {
            if let Some(dependents) = self.dependents.get_mut(&owner) {
                dependents.remove(object);
                if dependents.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<ObjectRef> {
        self.dependents.get(uid).map(|d| d.iter().cloned().collect()).unwrap_or_default()
    }
}

enum Owner {
    Present(Value),
    Absent,
    /// Of a kind the fake does not serve: never collected for it.
    Unknown,
}

struct Manager {
    cluster: Arc<Cluster>,
    graph: Graph,
    queue: BTreeSet<Work>,
}

/// Runs the controllers until the store closes.
pub async fn run(cluster: Arc<Cluster>) {
    let mut live = match cluster.store.subscribe(None) {
        Ok(subscription) => subscription.live,
        Err(e) => {
            tracing::error!("the controllers cannot follow the store: {e}");
            return;
        }
    };
    let mut manager = Manager { cluster, graph: Graph::default(), queue: BTreeSet::new() };
    manager.resync();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        manager.process();
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => {
                    manager.observe(&event);
                    for _ in 0..BATCH {
                        match live.try_recv() {
                            Ok(event) => manager.observe(&event),
                            Err(TryRecvError::Lagged(_)) => manager.resync(),
                            Err(_) => break,
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => manager.resync(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => manager.enqueue_workloads(),
        }
    }
}

fn resource(key: &str) -> &'static Resource {
    resources::by_key(key).unwrap_or_else(|| panic!("{key} is served"))
}

impl Manager {
    /// Rebuilds the graph from the store and syncs every workload (at start
    /// and after falling behind the change stream).
    fn resync(&mut self) {
        self.graph = Graph::default();
        for served in resources::RESOURCES.iter().filter(|r| !r.virtual_only) {
            let key = served.key();
            for (namespace, object) in self.cluster.store.all(&key) {
                let reference = ObjectRef { resource: key.clone(), namespace, name: name_of(&object) };
                let owners: Vec<String> =
                    owner_references(&object).iter().filter_map(|r| r["uid"].as_str().map(str::to_string)).collect();
                if !owners.is_empty() {
                    self.queue.insert(Work::Collect(reference.clone()));
                }
                if deleting(&object)
                    && (has_finalizer(&object, "foregroundDeletion") || has_finalizer(&object, "orphan"))
                {
                    self.queue.insert(Work::Finalize(reference.clone()));
                }
                self.graph.set(&reference, owners);
            }
        }
        self.enqueue_workloads();
    }

    fn enqueue_workloads(&mut self) {
        for (namespace, object) in self.cluster.store.all(DEPLOYMENTS) {
            self.queue.insert(Work::Deployment(namespace, name_of(&object)));
        }
        for (namespace, object) in self.cluster.store.all(REPLICA_SETS) {
            self.queue.insert(Work::ReplicaSet(namespace, name_of(&object)));
        }
    }

    /// The owner an owner reference of an object in `namespace` names.
    fn owner_reference_target(reference: &Value, namespace: &str) -> Option<ObjectRef> {
        let owner = resources::by_kind(reference["apiVersion"].as_str()?, reference["kind"].as_str()?)?;
        let namespace = if owner.namespaced { namespace.to_string() } else { String::new() };
        Some(ObjectRef { resource: owner.key(), namespace, name: reference["name"].as_str()?.to_string() })
    }

    fn owner(&self, reference: &Value, namespace: &str) -> Owner {
        let Some(target) = Self::owner_reference_target(reference, namespace) else { return Owner::Unknown };
        match self.cluster.store.get(&target.resource, &target.namespace, &target.name) {
            Some(owner) if owner["metadata"]["uid"] == reference["uid"] => Owner::Present(owner),
            _ => Owner::Absent,
        }
    }

    fn observe(&mut self, event: &Event) {
        let object = &event.object;
        let reference =
            ObjectRef { resource: event.resource.clone(), namespace: event.namespace.clone(), name: name_of(object) };
        let references = owner_references(object);
        if event.change == Change::Deleted {
            self.graph.forget(&reference);
            for dependent in self.graph.dependents_of(&uid_of(object)) {
                self.queue.insert(Work::Collect(dependent));
            }
            // Owners deleted in the foreground may have been waiting for this one.
            for owner in references.iter().filter_map(|r| Self::owner_reference_target(r, &event.namespace)) {
                self.queue.insert(Work::Finalize(owner));
            }
        } else {
            let owners: Vec<String> = references.iter().filter_map(|r| r["uid"].as_str().map(str::to_string)).collect();
            let has_owners = !owners.is_empty();
            if self.graph.set(&reference, owners) && has_owners {
                self.queue.insert(Work::Collect(reference.clone()));
            }
            if deleting(object) && (has_finalizer(object, "foregroundDeletion") || has_finalizer(object, "orphan")) {
                self.queue.insert(Work::Finalize(reference.clone()));
            }
        }
        let owner_named = |kind: &str| {
            controller_of(object)
                .filter(|r| r["kind"] == kind && r["apiVersion"] == "apps/v1")
                .and_then(|r| r["name"].as_str())
                .map(str::to_string)
        };
        match event.resource.as_str() {
            DEPLOYMENTS => {
                self.queue.insert(Work::Deployment(reference.namespace, reference.name));
            }
            REPLICA_SETS => {
                if let Some(deployment) = owner_named("Deployment") {
                    self.queue.insert(Work::Deployment(reference.namespace.clone(), deployment));
                }
                self.queue.insert(Work::ReplicaSet(reference.namespace, reference.name));
            }
            "pods" => {
                if let Some(replica_set) = owner_named("ReplicaSet") {
                    self.queue.insert(Work::ReplicaSet(reference.namespace, replica_set));
                }
            }
            _ => {}
        }
    }

    fn process(&mut self) {
        while let Some(work) = self.queue.pop_first() {
            match work {
                Work::Collect(object) => self.collect(&object),
                Work::Finalize(object) => self.finalize(&object),
                Work::Deployment(namespace, name) => self.sync_deployment(&namespace, &name),
                Work::ReplicaSet(namespace, name) => self.sync_replica_set(&namespace, &name),
            }
        }
    }

    /// The garbage collector's look at one dependent: deleted when every
    /// owner is gone or waits for its dependents (in the foreground when
    /// one waits), its references to gone or waiting owners taken off when
    /// some other owner remains.
    fn collect(&mut self, reference: &ObjectRef) {
        let Some(object) = self.cluster.store.get(&reference.resource, &reference.namespace, &reference.name) else {
            return;
        };
        if deleting(&object) {
            return;
        }
        let (mut solid, mut dangling, mut waiting) = (0, Vec::new(), Vec::new());
        for owner_ref in owner_references(&object) {
            match self.owner(owner_ref, &reference.namespace) {
                Owner::Absent => dangling.push(owner_ref["uid"].clone()),
                Owner::Present(owner) if deleting(&owner) && has_finalizer(&owner, "foregroundDeletion") => {
                    waiting.push(owner_ref.clone())
                }
                Owner::Present(_) | Owner::Unknown => solid += 1,
            }
        }
        if dangling.is_empty() && waiting.is_empty() {
            return;
        }
        let Some(served) = resources::by_key(&reference.resource) else { return };
        if solid == 0 {
            let blocking = waiting.iter().any(|r| r["blockOwnerDeletion"] == json!(true));
            let propagation = if blocking { Propagation::Foreground } else { Propagation::Background };
            let options = DeleteOptions {
                propagation,
                preconditions: json!({"uid": object["metadata"]["uid"]}),
                ..DeleteOptions::default()
            };
            if let Err(e) = self.cluster.delete_with(served, &reference.namespace, &reference.name, &options) {
                tracing::debug!("garbage-collecting {}/{}: {e}", reference.resource, reference.name);
            }
        } else {
            let gone: Vec<Value> = dangling.into_iter().chain(waiting.iter().map(|r| r["uid"].clone())).collect();
            let _ = self.cluster.store.update(
                &reference.resource,
                &reference.namespace,
                &reference.name,
                &reference.resource,
                |object| {
                    if let Some(references) = object["metadata"]["ownerReferences"].as_array_mut() {
                        references.retain(|r| !gone.contains(&r["uid"]));
                    }
                    Ok(())
                },
            );
        }
    }

    /// An owner being deleted with Orphan propagation loses its dependents'
    /// references and then goes; with Foreground it goes once no dependent
    /// that blocks its deletion is left (they are deleted first).
    fn finalize(&mut self, reference: &ObjectRef) {
        let Some(object) = self.cluster.store.get(&reference.resource, &reference.namespace, &reference.name) else {
            return;
        };
        let Some(served) = resources::by_key(&reference.resource) else { return };
        if !deleting(&object) {
            return;
        }
        let uid = object["metadata"]["uid"].clone();
        let dependents = self.graph.dependents_of(uid.as_str().unwrap_or_default());
        if has_finalizer(&object, "orphan") {
            for dependent in &dependents {
                let _ = self.cluster.store.update(
                    &dependent.resource,
                    &dependent.namespace,
                    &dependent.name,
                    &dependent.resource,
                    |object| {
                        if let Some(references) = object["metadata"]["ownerReferences"].as_array_mut() {
                            references.retain(|r| r["uid"] != uid);
                            if references.is_empty()
                                && let Some(metadata) = object["metadata"].as_object_mut()
                            {
                                metadata.remove("ownerReferences");
                            }
                        }
                        Ok(())
                    },
                );
            }
            let _ = self.cluster.remove_finalizer(served, &reference.namespace, &reference.name, "orphan");
            return;
        }
        if has_finalizer(&object, "foregroundDeletion") {
            let mut blocked = false;
            for dependent in &dependents {
                let Some(current) = self.cluster.store.get(&dependent.resource, &dependent.namespace, &dependent.name)
                else {
                    continue;
                };
                if owner_references(&current).iter().any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == json!(true))
                {
                    blocked = true;
                }
                self.collect(dependent);
            }
            if !blocked {
                let _ =
                    self.cluster.remove_finalizer(served, &reference.namespace, &reference.name, "foregroundDeletion");
            }
        }
    }

    /// Writes an object as its controller does; a changed spec is a new
    /// generation, as the API server would make it.
    fn write(&self, key: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let result = self.cluster.store.update(key, namespace, name, key, |object| {
            let spec = object["spec"].clone();
            change(object);
            if object["spec"] != spec {
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
            Ok(())
        });
        result.ok()
    }

    fn sync_deployment(&mut self, namespace: &str, name: &str) {
        let Some(mut deployment) = self.cluster.store.get(DEPLOYMENTS, namespace, name) else { return };
        let everything = Selector::default();
        let mut owned: Vec<Value> = self
            .cluster
            .store
            .list(REPLICA_SETS, Some(namespace), &everything, &everything)
            .0
            .into_iter()
            .filter(|rs| controlled_by(rs, &deployment))
            .collect();
        let now = meta::now();
        if deleting(&deployment) {
            // Being deleted: the status only.
            let new_rs = owned
                .iter()
                .find(|rs| equal_ignoring_hash(&rs["spec"]["template"], &deployment["spec"]["template"]))
                .cloned();
            let status = deployment_status(&deployment, new_rs.as_ref(), &owned, NewReplicaSet::Absent, &now);
            self.write(DEPLOYMENTS, namespace, name, |d| d["status"] = status);
            return;
        }
        let desired = replicas_of(&deployment);
        let paused = deployment["spec"]["paused"] == json!(true);
        let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
        let mut how = NewReplicaSet::Found;
        let mut new_rs = owned
            .iter()
            .find(|rs| equal_ignoring_hash(&rs["spec"]["template"], &deployment["spec"]["template"]))
            .cloned();
        if new_rs.is_none() && paused {
            how = NewReplicaSet::Absent;
        }
        if new_rs.is_none() && !paused {
            match self.create_replica_set(&mut deployment, max_revision + 1) {
                Some((created, fresh)) => {
                    if fresh {
                        how = NewReplicaSet::Created;
                        if desired > 0 {
                            self.cluster.event(
                                &deployment,
                                "Normal",
                                "ScalingReplicaSet",
                                &format!("Scaled up replica set {} from 0 to {desired}", name_of(&created)),
                                "deployment-controller",
                            );
                        }
                        owned.push(created.clone());
                    }
                    new_rs = Some(created);
                }
                None => return,
            }
        }
        if let Some(rs) = new_rs.as_mut().filter(|_| !paused) {
            // A template rolled back to is the newest revision again.
            let revision = revision_of(rs);
            let others = owned.iter().filter(|o| name_of(o) != name_of(rs)).map(revision_of).max().unwrap_or(0);
            let revision = if revision <= others { others + 1 } else { revision };
            let max_replicas = desired + surge_and_unavailable(&deployment).0;
            let before = replicas_of(rs);
            if let Some(written) = self.write(REPLICA_SETS, namespace, &name_of(rs), |rs| {
                rs["spec"]["replicas"] = json!(desired);
                rs["metadata"]["annotations"][REVISION] = json!(revision.to_string());
                rs["metadata"]["annotations"][DESIRED_REPLICAS] = json!(desired.to_string());
                rs["metadata"]["annotations"][MAX_REPLICAS] = json!(max_replicas.to_string());
            }) {
                if before != desired {
                    let direction = if before < desired { "up" } else { "down" };
                    self.cluster.event(
                        &deployment,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled {direction} replica set {} from {before} to {desired}", name_of(rs)),
                        "deployment-controller",
                    );
                }
                *rs = written;
            }
            // Recreate-like: every older ReplicaSet straight to 0 (see the module's doc).
            for old in owned.iter().filter(|o| name_of(o) != name_of(rs)) {
                let before = replicas_of(old);
                if before == 0 {
                    continue;
                }
                if self
                    .write(REPLICA_SETS, namespace, &name_of(old), |old| old["spec"]["replicas"] = json!(0))
                    .is_some()
                {
                    self.cluster.event(
                        &deployment,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled down replica set {} from {before} to 0", name_of(old)),
                        "deployment-controller",
                    );
                }
            }
            let written = revision.to_string();
            if deployment["metadata"]["annotations"][REVISION] != json!(written)
                && let Some(updated) = self
                    .write(DEPLOYMENTS, namespace, name, |d| d["metadata"]["annotations"][REVISION] = json!(written))
            {
                deployment = updated;
            }
            self.clean_up(&deployment, &owned, &name_of(rs));
        }
        let owned: Vec<Value> =
            owned.iter().filter_map(|rs| self.cluster.store.get(REPLICA_SETS, namespace, &name_of(rs))).collect();
        let new_rs = new_rs.and_then(|rs| owned.iter().find(|o| name_of(o) == name_of(&rs)).cloned());
        let status = deployment_status(&deployment, new_rs.as_ref(), &owned, how, &now);
        self.write(DEPLOYMENTS, namespace, name, |d| d["status"] = status);
    }

    /// Creates the ReplicaSet of the Deployment's template; it and whether it
    /// is new. A name taken by another template is a hash collision: the
    /// Deployment's collisionCount goes up and the hash is taken again.
    fn create_replica_set(&mut self, deployment: &mut Value, revision: i64) -> Option<(Value, bool)> {
        let (namespace, name) =
            (deployment["metadata"]["namespace"].as_str().unwrap_or_default().to_string(), name_of(deployment));
        let target = Target { resource: resource(REPLICA_SETS), namespace: namespace.clone() };
        for _ in 0..10 {
            let collisions = deployment["status"]["collisionCount"].as_u64().and_then(|c| u32::try_from(c).ok());
            let hash = pod_template_hash(&deployment["spec"]["template"], collisions);
            let replica_set = replica_set_for(deployment, &hash, revision, replicas_of(deployment));
            match api::create(&self.cluster, &target, replica_set) {
                Ok(created) => return Some((created, true)),
                Err(e) if e.code == 409 => {
                    let existing = self.cluster.store.get(REPLICA_SETS, &namespace, &format!("{name}-{hash}"))?;
                    if controlled_by(&existing, deployment)
                        && equal_ignoring_hash(&existing["spec"]["template"], &deployment["spec"]["template"])
                    {
                        return Some((existing, false));
                    }
                    let next = collisions.unwrap_or(0) + 1;
                    *deployment =
                        self.write(DEPLOYMENTS, &namespace, &name, |d| d["status"]["collisionCount"] = json!(next))?;
                }
                Err(e) => {
                    self.cluster.event(
                        deployment,
                        "Warning",
                        "FailedCreate",
                        &format!("Failed to create new replica set \"{name}-{hash}\": {}", e.message),
                        "deployment-controller",
                    );
                    return None;
                }
            }
        }
        None
    }

    /// Old ReplicaSets scaled to nothing beyond revisionHistoryLimit go,
    /// oldest first.
    fn clean_up(&self, deployment: &Value, owned: &[Value], current: &str) {
        let limit = deployment["spec"]["revisionHistoryLimit"].as_u64().unwrap_or(10) as usize;
        let mut idle: Vec<Value> = owned
            .iter()
            .filter(|rs| name_of(rs) != current)
            .filter_map(|rs| {
                self.cluster.store.get(
                    REPLICA_SETS,
                    rs["metadata"]["namespace"].as_str().unwrap_or_default(),
                    &name_of(rs),
                )
            })
            .filter(|rs| !deleting(rs) && replicas_of(rs) == 0 && count(&rs["status"], "replicas") == 0)
            .collect();
        if idle.len() <= limit {
            return;
        }
        idle.sort_by_key(revision_of);
        for rs in &idle[..idle.len() - limit] {
            let _ = self.cluster.delete(
                resource(REPLICA_SETS),
                rs["metadata"]["namespace"].as_str().unwrap_or_default(),
                &name_of(rs),
                None,
            );
        }
    }

    fn sync_replica_set(&mut self, namespace: &str, name: &str) {
        let Some(replica_set) = self.cluster.store.get(REPLICA_SETS, namespace, name) else { return };
        let Some(selector) = select::from_label_selector(&replica_set["spec"]["selector"]) else { return };
        let owned: Vec<Value> = self
            .cluster
            .store
            .list("pods", Some(namespace), &selector, &Selector::default())
            .0
            .into_iter()
            .filter(|p| controlled_by(p, &replica_set))
            .collect();
        let mut failure = None;
        if !deleting(&replica_set) {
            let desired = usize::try_from(replicas_of(&replica_set)).unwrap_or(0);
            let mut active: Vec<&Value> = owned.iter().filter(|p| is_active(p)).collect();
            let pods = Target { resource: resource("pods"), namespace: namespace.to_string() };
            if active.len() < desired {
                for _ in 0..(desired - active.len()).min(BURST) {
                    match api::create(&self.cluster, &pods, pod_for(&replica_set)) {
                        Ok(pod) => self.cluster.event(
                            &replica_set,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {}", name_of(&pod)),
                            "replicaset-controller",
                        ),
                        Err(e) => {
                            let message = e.message.clone();
                            self.cluster.event(
                                &replica_set,
                                "Warning",
                                "FailedCreate",
                                &format!("Error creating: {message}"),
                                "replicaset-controller",
                            );
                            failure = Some(message);
                            break;
                        }
                    }
                }
            } else if active.len() > desired {
                active.sort_by_key(|p| deletion_rank(p));
                for pod in active.iter().take((active.len() - desired).min(BURST)) {
                    if self.cluster.delete(pods.resource, namespace, &name_of(pod), None).is_ok() {
                        self.cluster.event(
                            &replica_set,
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted pod: {}", name_of(pod)),
                            "replicaset-controller",
                        );
                    }
                }
            }
        }
        let status = replica_set_status(&replica_set, &owned, failure.as_deref());
        self.write(REPLICA_SETS, namespace, name, |rs| rs["status"] = status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "gateway", "namespace": "merak-t", "uid": "d-1", "generation": 1, "annotations": {"team": "net", REVISION: "1"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "gateway"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "progressDeadlineSeconds": 600,
                "revisionHistoryLimit": 10,
                "template": {"metadata": {"labels": {"app": "gateway"}}, "spec": {"containers": [{"name": "agent", "image": image}], "restartPolicy": "Always"}},
            },
            "status": {},
        })
    }

    fn pod(name: &str, ready: bool, phase: &str) -> Value {
        json!({
            "metadata": {"name": name, "uid": name, "labels": {"app": "gateway", HASH_LABEL: "h"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "gateway-h", "uid": "rs-1", "controller": true}]},
            "spec": {"nodeName": "fake-node-1"},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": meta::now()}]},
        })
    }

    #[test]
    fn the_pod_template_hash_is_stable_and_follows_the_template() {
        let a = deployment(1, "merak-agent:1");
        let hash = pod_template_hash(&a["spec"]["template"], None);
        // Pinned: a changed hash would make every existing ReplicaSet look outdated.
        assert_eq!(hash, pod_template_hash(&a["spec"]["template"], None));
        assert_eq!(hash, PINNED_HASH, "the hash of the reference template changed");
        assert!((6..=10).contains(&hash.len()) && hash.chars().all(|c| "456789bcdf".contains(c)), "{hash}");
        // Key order does not matter; content does.
        let reordered: Value = serde_json::from_str(r#"{"spec": {"restartPolicy": "Always", "containers": [{"image": "merak-agent:1", "name": "agent"}]}, "metadata": {"labels": {"app": "gateway"}}}"#).unwrap();
        assert_eq!(pod_template_hash(&reordered, None), hash);
        assert_ne!(pod_template_hash(&deployment(1, "merak-agent:2")["spec"]["template"], None), hash);
        assert_ne!(pod_template_hash(&a["spec"]["template"], Some(1)), hash);
        // The replica count is not part of the template.
        assert_eq!(pod_template_hash(&deployment(3, "merak-agent:1")["spec"]["template"], None), hash);
    }

    const PINNED_HASH: &str = "85947d477c";

    #[test]
    fn a_replica_set_is_named_labelled_and_owned_by_its_deployment() {
        let d = deployment(1, "merak-agent:1");
        let rs = replica_set_for(&d, "5d8f", 2, 1);
        assert_eq!(rs["metadata"]["name"], "gateway-5d8f");
        assert_eq!(rs["metadata"]["labels"], json!({"app": "gateway", HASH_LABEL: "5d8f"}));
        assert_eq!(rs["spec"]["selector"]["matchLabels"], json!({"app": "gateway", HASH_LABEL: "5d8f"}));
        assert_eq!(rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL], "5d8f");
        assert_eq!(
            rs["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway", "uid": "d-1", "controller": true, "blockOwnerDeletion": true}])
        );
        let annotations = &rs["metadata"]["annotations"];
        assert_eq!(
            (
                annotations[REVISION].as_str(),
                annotations[DESIRED_REPLICAS].as_str(),
                annotations[MAX_REPLICAS].as_str()
            ),
            (Some("2"), Some("1"), Some("2"))
        );
        assert_eq!(annotations["team"], "net");
        assert!(equal_ignoring_hash(&rs["spec"]["template"], &d["spec"]["template"]));
        assert!(!equal_ignoring_hash(&rs["spec"]["template"], &deployment(1, "merak-agent:2")["spec"]["template"]));

        let mut rs = rs;
        rs["metadata"]["uid"] = json!("rs-1");
        let pod = pod_for(&rs);
        assert_eq!(pod["metadata"]["generateName"], "gateway-5d8f-");
        assert_eq!(pod["metadata"]["namespace"], "merak-t");
        assert_eq!(pod["metadata"]["labels"], json!({"app": "gateway", HASH_LABEL: "5d8f"}));
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "rs-1");
        assert_eq!(pod["spec"]["containers"][0]["image"], "merak-agent:1");
    }

    #[test]
    fn surge_and_unavailable_round_as_the_real_controller_does() {
        assert_eq!(surge_and_unavailable(&deployment(1, "i")), (1, 0));
        assert_eq!(surge_and_unavailable(&deployment(10, "i")), (3, 2));
        let mut zero = deployment(4, "i");
        zero["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": "0%"});
        assert_eq!(surge_and_unavailable(&zero), (0, 1));
        zero["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(surge_and_unavailable(&zero), (0, 0));
    }

    #[test]
    fn a_replica_set_counts_only_its_live_pods() {
        let mut rs = replica_set_for(&deployment(3, "i"), "h", 1, 3);
        rs["metadata"]["generation"] = json!(2);
        let mut going = pod("c", true, "Running");
        going["metadata"]["deletionTimestamp"] = json!(meta::now());
        let mut unlabeled = pod("e", false, "Pending");
        unlabeled["metadata"]["labels"] = json!({"app": "gateway"});
        let pods = [pod("a", true, "Running"), pod("b", false, "Running"), going, pod("d", false, "Failed"), unlabeled];
        let status = replica_set_status(&rs, &pods, None);
        assert_eq!(
            status,
            json!({"replicas": 3, "fullyLabeledReplicas": 2, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 2})
        );
        rs["spec"]["minReadySeconds"] = json!(30);
        assert_eq!(
            replica_set_status(&rs, &pods, None).get("availableReplicas"),
            None,
            "ready for less than minReadySeconds"
        );
        let none = replica_set_status(&rs, &[], Some("pods \"x\" is forbidden"));
        assert_eq!(none["replicas"], 0);
        assert_eq!(none["conditions"][0]["reason"], "FailedCreate");
    }

    #[test]
    fn a_deployment_status_follows_its_rollout() {
        let mut d = deployment(1, "i");
        let mut rs = replica_set_for(&d, "h", 1, 1);
        rs["status"] = json!({"replicas": 0});
        let now = meta::now();
        // Just created: progressing, not available.
        let status = deployment_status(&d, Some(&rs), std::slice::from_ref(&rs), NewReplicaSet::Created, &now);
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["unavailableReplicas"], 1);
        assert_eq!(status.get("replicas"), None, "zero counts are left out");
        let reasons = |s: &Value| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{}={}:{}",
                        c["type"].as_str().unwrap(),
                        c["status"].as_str().unwrap(),
                        c["reason"].as_str().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reasons(&status),
            ["Progressing=True:NewReplicaSetCreated", "Available=False:MinimumReplicasUnavailable"]
        );
        assert_eq!(status["conditions"][0]["message"], "Created new replica set \"gateway-h\"");

        // The pod came up: available, and the rollout complete.
        d["status"] = status;
        rs["status"] = json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 1});
        let status = deployment_status(&d, Some(&rs), std::slice::from_ref(&rs), NewReplicaSet::Found, &now);
        assert_eq!(
            reasons(&status),
            ["Available=True:MinimumReplicasAvailable", "Progressing=True:NewReplicaSetAvailable"]
        );
        assert_eq!(status["conditions"][1]["message"], "ReplicaSet \"gateway-h\" has successfully progressed.");
        assert_eq!(status["conditions"][0]["message"], "Deployment has minimum availability.");
        for (field, value) in [("replicas", 1), ("updatedReplicas", 1), ("readyReplicas", 1), ("availableReplicas", 1)]
        {
            assert_eq!(status[field], value, "{field}");
        }
        assert_eq!(status.get("unavailableReplicas"), None);
        // Another sync with nothing new writes the same status.
        d["status"] = status.clone();
        assert_eq!(
            deployment_status(&d, Some(&rs), std::slice::from_ref(&rs), NewReplicaSet::Found, &meta::now()),
            status
        );

        // A pod that never gets ready past the deadline.
        let mut stuck = deployment(1, "i");
        let long_ago =
            meta::rfc3339(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 700);
        stuck["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1, "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "lastUpdateTime": long_ago, "lastTransitionTime": long_ago, "message": ""}]});
        rs["status"] = json!({"replicas": 1, "observedGeneration": 1});
        let status = deployment_status(&stuck, Some(&rs), std::slice::from_ref(&rs), NewReplicaSet::Found, &now);
        assert!(reasons(&status).contains(&"Progressing=False:ProgressDeadlineExceeded".to_string()), "{status}");
    }

    #[test]
    fn scale_down_takes_the_least_useful_pods_first() {
        let mut pending = pod("p", false, "Pending");
        pending["spec"]["nodeName"] = json!("");
        let mut pods = [pod("ready", true, "Running"), pod("unready", false, "Running"), pending];
        pods.sort_by_key(deletion_rank);
        let order: Vec<String> = pods.iter().map(name_of).collect();
        assert_eq!(order, ["p", "unready", "ready"]);
    }

    #[test]
    fn the_graph_knows_each_owners_dependents() {
        let mut graph = Graph::default();
        let pod = ObjectRef { resource: "pods".into(), namespace: "n".into(), name: "p".into() };
        assert!(graph.set(&pod, vec!["rs-1".into()]));
        assert!(!graph.set(&pod, vec!["rs-1".into()]), "unchanged owners are no change");
        assert_eq!(graph.dependents_of("rs-1"), std::slice::from_ref(&pod));
        assert!(graph.set(&pod, vec!["rs-2".into()]));
        assert!(graph.dependents_of("rs-1").is_empty());
        graph.forget(&pod);
        assert!(graph.dependents_of("rs-2").is_empty() && graph.owners.is_empty());
    }
}

//! The kubernetes runtime's records live in the cluster, in the topology's
//! namespace, so that any machine with the kubeconfig finds the topology
//! (import from a fresh directory elsewhere) and deleting the namespace
//! removes them with everything else. Each record is a ConfigMap
//! (`merak-record-<kind>`, the document under `record.json`), replaced
//! whole at the resourceVersion it was read at. ConfigMaps rather than a
//! CustomResource: no cluster-scoped install (a CRD) is needed, only the
//! namespaced rights the runtime needs anyway.
//!
//! The writer lock is a ConfigMap too (`merak-lock`): created by the taker
//! (a second create is a conflict), naming its holder, renewed every few
//! seconds while held; one not renewed for [`LOCK_TTL`] belonged to a
//! process that died, and is taken over at its resourceVersion (two
//! takers: one gets the conflict). A holder that ran on this machine and is
//! gone (see [`super::holder`]) is taken over at once, without the wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use serde_json::json;

use super::cluster::{DELETE, POST, is_conflict, is_not_found, retrying};
use super::holder::{self, ProcessIdentity};
use super::objects::{self, namespace_name};
use crate::store::{RecordStore, StoreError};

/// A ConfigMap holds at most 1 MiB of data.
const RECORD_LIMIT: usize = 1 << 20;
const LOCK: &str = "merak-lock";
/// How long a lock holder may go without renewing before it counts as dead.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);

pub struct ClusterStore {
    client: kube::Client,
    /// Who this process is when it holds a lock: host, pid and start time.
    holder: String,
    /// The same, as the kernel names this process (None where /proc does
    /// not tell): what lets a later run here see that this one is gone.
    identity: Option<ProcessIdentity>,
    /// Per held lock, the task renewing it.
    renewing: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore").field("holder", &self.holder).finish_non_exhaustive()
    }
}

fn api_error(topology: &str, what: &str, error: kube::Error) -> StoreError {
    StoreError::io(format!("{what} of topology {topology} in the cluster"), std::io::Error::other(error.to_string()))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ClusterStore {
    pub fn new(client: kube::Client) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let holder =
            format!("terraform-provider-merak pid {} on {} (since {})", std::process::id(), host.trim(), now_secs());
        ClusterStore { client, holder, identity: ProcessIdentity::this_process(), renewing: Mutex::default() }
    }

    fn maps(&self, topology: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &namespace_name(topology))
    }

    /// The topology's namespace, made when missing (the lock comes before
    /// anything else of a topology). A namespace being deleted (a destroy
    /// that was interrupted) is waited out first: nothing can be made in it.
    pub async fn ensure_namespace(&self, topology: &str) -> Result<(), kube::Error> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let name = namespace_name(topology);
        let object = objects::namespace(topology).map_err(|e| kube::Error::Service(e.into()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            match retrying("reading a namespace", || namespaces.get_opt(&name)).await? {
                Some(existing) if existing.metadata.deletion_timestamp.is_none() => return Ok(()),
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Some(_) => {
                    return Err(kube::Error::Service(
                        format!("namespace {name} is still being deleted after 5 minutes").into(),
                    ));
                }
                None => match retrying("creating a namespace", || namespaces.create(&POST, &object)).await {
                    Err(e) if is_conflict(&e) => continue,
                    other => return other.map(drop),
                },
            }
        }
    }

    async fn read_lock(&self, topology: &str) -> Result<Option<ConfigMap>, kube::Error> {
        let maps = self.maps(topology);
        retrying("reading the lock", || maps.get_opt(LOCK)).await
    }

    fn lock_map(&self, resource_version: Option<String>) -> Result<ConfigMap, StoreError> {
        let mut data = serde_json::Map::new();
        data.insert("holder".into(), self.holder.clone().into());
        data.insert("renewed".into(), now_secs().to_string().into());
        for (key, value) in self.identity.iter().flat_map(ProcessIdentity::to_data) {
            data.insert(key.into(), value.into());
        }
        serde_json::from_value(json!({
            "metadata": {"name": LOCK, "resourceVersion": resource_version},
            "data": data,
        }))
        .map_err(|e| StoreError::io("building the lock", std::io::Error::other(e)))
    }

    fn start_renewing(&self, topology: &str) {
        let maps = self.maps(topology);
        let holder = self.holder.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                // A refused read is tried again at the next renewal; only a
                // lock that is gone (or another's) ends the renewing.
                let mut lock = match maps.get_opt(LOCK).await {
                    Ok(Some(lock)) => lock,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::debug!(%error, "reading the topology lock to renew it failed; trying again");
                        continue;
                    }
                };
                let data = lock.data.get_or_insert_default();
                if data.get("holder") != Some(&holder) {
                    return;
                }
                data.insert("renewed".into(), now_secs().to_string());
                if let Err(error) = maps.replace(LOCK, &POST, &lock).await {
                    tracing::debug!(%error, "renewing the topology lock failed; trying again");
                }
            }
        });
        if let Ok(mut renewing) = self.renewing.lock()
            && let Some(old) = renewing.insert(topology.to_string(), task)
        {
            old.abort();
        }
    }

    fn holds(&self, topology: &str) -> bool {
        self.renewing.lock().is_ok_and(|renewing| renewing.get(topology).is_some_and(|task| !task.is_finished()))
    }
}

#[tonic::async_trait]
impl RecordStore for ClusterStore {
    async fn load(&self, topology: &str, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = objects::record_name(kind);
        let maps = self.maps(topology);
        match retrying("reading a record", || maps.get_opt(&name)).await {
            Ok(Some(map)) => Ok(map.data.and_then(|mut data| data.remove("record.json")).map(String::into_bytes)),
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api_error(topology, &format!("reading the {kind} record"), e)),
        }
    }

    async fn save(&self, topology: &str, kind: &str, document: &[u8]) -> Result<(), StoreError> {
        let text = std::str::from_utf8(document).map_err(|e| StoreError::io("a record", std::io::Error::other(e)))?;
        if text.len() > RECORD_LIMIT {
            return Err(StoreError::io(
                format!("saving the {kind} record of topology {topology}"),
                std::io::Error::other(format!("it is {} bytes, more than a ConfigMap holds (1 MiB)", text.len())),
            ));
        }
        let (maps, name) = (self.maps(topology), objects::record_name(kind));
        let failed = |e| api_error(topology, &format!("saving the {kind} record"), e);
        // Replaced at the version read; a conflict (someone else's write in
        // between: only a process without the lock) reads again.
        loop {
            let current = retrying("reading a record", || maps.get_opt(&name)).await.map_err(failed)?;
            let result = match current {
                Some(map) => {
                    let object = objects::record_map(topology, kind, text, map.metadata.resource_version)
                        .map_err(|e| StoreError::io("a record", std::io::Error::other(e)))?;
                    retrying("replacing a record", || maps.replace(&name, &POST, &object)).await
                }
                None => {
                    let object = objects::record_map(topology, kind, text, None)
                        .map_err(|e| StoreError::io("a record", std::io::Error::other(e)))?;
                    retrying("creating a record", || maps.create(&POST, &object)).await
                }
            };
            match result {
                Err(e) if is_conflict(&e) => continue,
                other => return other.map(drop).map_err(failed),
            }
        }
    }

    async fn remove(&self, topology: &str) -> Result<(), StoreError> {
        let maps = self.maps(topology);
        let selector = ListParams::default().labels("merak.dev/record");
        let records = match retrying("listing records", || maps.list(&selector)).await {
            Ok(list) => list.items,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(api_error(topology, "listing the records", e)),
        };
        for record in records {
            let Some(name) = record.metadata.name else { continue };
            match retrying("deleting a record", || maps.delete(&name, &DELETE)).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_error(topology, "deleting a record", e)),
            }
        }
        Ok(())
    }

    fn location(&self, topology: &str, kind: &str) -> String {
        format!("configmap {}/{}", namespace_name(topology), objects::record_name(kind))
    }

    async fn lock(&self, topology: &str) -> Result<(), StoreError> {
        if self.holds(topology) {
            return Ok(());
        }
        let failed = |e| api_error(topology, "taking the lock", e);
        self.ensure_namespace(topology).await.map_err(failed)?;
        let maps = self.maps(topology);
        loop {
            let result = match self.read_lock(topology).await.map_err(failed)? {
                None => {
                    retrying("taking the lock", || async {
                        maps.create(&POST, &self.lock_map(None).map_err(|e| kube::Error::Service(e.into()))?).await
                    })
                    .await
                }
                Some(lock) => {
                    let data = lock.data.clone().unwrap_or_default();
                    let holder = data.get("holder").cloned().unwrap_or_default();
                    let renewed: u64 = data.get("renewed").and_then(|r| r.parse().ok()).unwrap_or(0);
                    let age = now_secs().saturating_sub(renewed);
                    let gone = self.identity.as_ref().is_some_and(|here| {
                        ProcessIdentity::from_data(&data).is_some_and(|h| h.is_gone(here, holder::start_time))
                    });
                    if holder != self.holder && age < LOCK_TTL.as_secs() && !gone {
                        return Err(StoreError::Locked {
                            topology: topology.to_string(),
                            holder: format!(
                                "{holder}, renewed {age} s ago (it lapses {} s after its last renewal)",
                                LOCK_TTL.as_secs()
                            ),
                            location: format!("configmap {}/{LOCK}", namespace_name(topology)),
                        });
                    }
                    if holder != self.holder && gone {
                        tracing::warn!(topology, %holder, age, "taking over the lock of a process of this machine that is gone");
                    } else if holder != self.holder {
                        tracing::warn!(topology, %holder, age, "taking over a lock its holder stopped renewing");
                    }
                    let object = self
                        .lock_map(lock.metadata.resource_version)
                        .map_err(|e| StoreError::io("the lock", std::io::Error::other(e.to_string())))?;
                    retrying("taking over the lock", || maps.replace(LOCK, &POST, &object)).await
                }
            };
            match result {
                Ok(_) => break,
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        self.start_renewing(topology);
        Ok(())
    }

    async fn release_all(&self) {
        let held: Vec<String> =
            self.renewing.lock().map(|renewing| renewing.keys().cloned().collect()).unwrap_or_default();
        for topology in held {
            self.unlock(&topology).await;
        }
    }

    async fn unlock(&self, topology: &str) {
        if let Ok(mut renewing) = self.renewing.lock()
            && let Some(task) = renewing.remove(topology)
        {
            task.abort();
        }
        // The namespace and the lock with it are usually gone already.
        // Retried: a lock left behind blocks the next run until it lapses.
        if let Ok(Some(lock)) = self.read_lock(topology).await
            && lock.data.as_ref().and_then(|d| d.get("holder")) == Some(&self.holder)
        {
            let maps = self.maps(topology);
            if let Err(error) = retrying("releasing the lock", || maps.delete(LOCK, &DELETE)).await
                && !is_not_found(&error)
            {
                tracing::warn!(topology, %error, "could not release the topology lock; it lapses {} s after its last renewal", LOCK_TTL.as_secs());
            }
        }
    }
}

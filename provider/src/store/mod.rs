//! Where the emulation's records live: per topology, a few named JSON
//! documents (the substrate's record of the topology, the controller's
//! record of its tenant networks) and the topology's writer lock. The
//! controller and the substrates only see [`RecordStore`]; the local runtime
//! keeps records as files under its state directory ([`FileStore`]), a
//! cluster would keep them as objects in the cluster, and the controller's
//! unit tests use [`MemoryStore`].

mod file;
mod lock;
mod memory;

pub use file::FileStore;
pub use memory::MemoryStore;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the record {location} of topology {topology} is unreadable ({detail}); remove it to start over")]
    Corrupt { topology: String, location: String, detail: String },
    #[error(
        "topology {topology} is being changed by another Terraform run: {holder} holds its lock ({location}). \
         Wait until that apply or destroy has finished, then run this again; the lock goes away with \
         its process, also when that process is killed."
    )]
    Locked { topology: String, holder: String, location: String },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}

/// Records by topology and kind (`topology`, `overlay`, ...). A save
/// replaces the whole document atomically: a crash leaves the old one or
/// the new one, never a mix.
#[tonic::async_trait]
pub trait RecordStore: Send + Sync + std::fmt::Debug {
    async fn load(&self, topology: &str, kind: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn save(&self, topology: &str, kind: &str, document: &[u8]) -> Result<(), StoreError>;
    /// Every record of the topology; no error when there are none.
    async fn remove(&self, topology: &str) -> Result<(), StoreError>;
    /// Where a record lives, for messages (a path, an object's name).
    fn location(&self, topology: &str, kind: &str) -> String;
    /// Takes the topology's writer lock for this process, held until the
    /// process exits or [`RecordStore::unlock`]; refused, naming the
    /// holder, while another process holds it. Taking it again is a no-op.
    async fn lock(&self, topology: &str) -> Result<(), StoreError>;
    /// Lets go of the lock of a topology that is gone.
    async fn unlock(&self, topology: &str);
    /// Lets go of every lock this process holds. A store whose locks go
    /// with the process (a file lock) has nothing to do.
    async fn release_all(&self) {}
    /// Finishes what a killed destroy left of a topology that has no
    /// records: its lock, when the destroy died after removing the records
    /// and before letting go, and what a removal killed half-way left. A
    /// lock a live process holds stays. A store whose locks and files go
    /// with the topology's records has nothing to do.
    async fn finish_abandoned_removal(&self, topology: &str) {
        let _ = topology;
    }
}

/// A record decoded; `None` when there is none.
pub async fn load_json<T: DeserializeOwned>(
    store: &dyn RecordStore,
    topology: &str,
    kind: &str,
) -> Result<Option<T>, StoreError> {
    let Some(document) = store.load(topology, kind).await? else { return Ok(None) };
    serde_json::from_slice(&document).map(Some).map_err(|e| StoreError::Corrupt {
        topology: topology.to_string(),
        location: store.location(topology, kind),
        detail: e.to_string(),
    })
}

pub async fn save_json<T: Serialize>(
    store: &dyn RecordStore,
    topology: &str,
    kind: &str,
    record: &T,
) -> Result<(), StoreError> {
    let document = serde_json::to_vec_pretty(record)
        .map_err(|e| StoreError::io(format!("encoding the {kind} record"), std::io::Error::other(e)))?;
    store.save(topology, kind, &document).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every store must do, run against each implementation.
    pub(crate) async fn behaves_as_a_store(store: &dyn RecordStore) {
        assert_eq!(store.load("lab", "overlay").await.unwrap(), None);
        save_json(store, "lab", "overlay", &serde_json::json!({"next_id": 1})).await.unwrap();
        save_json(store, "lab", "overlay", &serde_json::json!({"next_id": 2})).await.unwrap();
        save_json(store, "other", "overlay", &serde_json::json!({"next_id": 9})).await.unwrap();
        let back: serde_json::Value = load_json(store, "lab", "overlay").await.unwrap().unwrap();
        assert_eq!(back["next_id"], 2, "a save replaces the record");
        store.save("lab", "topology", b"{not json").await.unwrap();
        match load_json::<serde_json::Value>(store, "lab", "topology").await {
            Err(StoreError::Corrupt { location, .. }) => assert_eq!(location, store.location("lab", "topology")),
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        store.remove("lab").await.unwrap();
        store.remove("lab").await.unwrap();
        assert_eq!(store.load("lab", "overlay").await.unwrap(), None);
        assert!(store.load("other", "overlay").await.unwrap().is_some(), "other topologies keep theirs");
        store.lock("lab").await.unwrap();
        store.lock("lab").await.unwrap();
        store.unlock("lab").await;
        store.remove("other").await.unwrap();
    }

    #[tokio::test]
    async fn the_memory_store_behaves_as_a_store() {
        behaves_as_a_store(&MemoryStore::default()).await;
    }
}

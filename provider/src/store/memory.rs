//! Records in this process's memory: for the controller's unit tests, and
//! for anything that must not touch the host. Its lock excludes writers of
//! this store only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::{RecordStore, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    locked: Mutex<BTreeSet<String>>,
}

fn poisoned() -> StoreError {
    StoreError::io("the in-memory store", std::io::Error::other("poisoned by a panic"))
}

#[tonic::async_trait]
impl RecordStore for MemoryStore {
    async fn load(&self, topology: &str, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let records = self.records.lock().map_err(|_| poisoned())?;
        Ok(records.get(&(topology.to_string(), kind.to_string())).cloned())
    }

    async fn save(&self, topology: &str, kind: &str, document: &[u8]) -> Result<(), StoreError> {
        let mut records = self.records.lock().map_err(|_| poisoned())?;
        records.insert((topology.to_string(), kind.to_string()), document.to_vec());
        Ok(())
    }

    async fn remove(&self, topology: &str) -> Result<(), StoreError> {
        let mut records = self.records.lock().map_err(|_| poisoned())?;
        records.retain(|(t, _), _| t != topology);
        Ok(())
    }

    fn location(&self, topology: &str, kind: &str) -> String {
        format!("memory:{topology}/{kind}")
    }

    async fn lock(&self, topology: &str) -> Result<(), StoreError> {
        self.locked.lock().map_err(|_| poisoned())?.insert(topology.to_string());
        Ok(())
    }

    async fn unlock(&self, topology: &str) {
        if let Ok(mut locked) = self.locked.lock() {
            locked.remove(topology);
        }
    }
}

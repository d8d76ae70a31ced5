//! Records as files: `<dir>/<topology>/<kind>.json`, each written to a
//! temporary file and renamed over the old one, and the writer lock as an
//! flock on `<dir>/<topology>.lock` (see [`super::lock`]). The local runtime
//! keeps its agents' sockets and logs in the same topology directory.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::lock::Locks;
use super::{RecordStore, StoreError};

#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    locks: Locks,
}

impl FileStore {
    pub fn new(dir: PathBuf) -> Self {
        FileStore { dir, locks: Locks::default() }
    }

    /// The directory of a topology's records.
    pub fn topology_dir(&self, topology: &str) -> PathBuf {
        self.dir.join(topology)
    }

    fn path(&self, topology: &str, kind: &str) -> PathBuf {
        self.topology_dir(topology).join(format!("{kind}.json"))
    }
}

#[tonic::async_trait]
impl RecordStore for FileStore {
    async fn load(&self, topology: &str, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(topology, kind);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    async fn save(&self, topology: &str, kind: &str, document: &[u8]) -> Result<(), StoreError> {
        let dir = self.topology_dir(topology);
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let path = self.path(topology, kind);
        let temporary = path.with_extension("json.tmp");
        fs::write(&temporary, document)
            .and_then(|()| fs::rename(&temporary, &path))
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
    }

    async fn remove(&self, topology: &str) -> Result<(), StoreError> {
        let dir = self.topology_dir(topology);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("reading {}", dir.display()), e)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") || name.ends_with(".json.tmp") {
                fs::remove_file(&path).map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
            }
        }
        // The directory goes when the records were all it held.
        let _ = fs::remove_dir(&dir);
        Ok(())
    }

    fn location(&self, topology: &str, kind: &str) -> String {
        self.path(topology, kind).display().to_string()
    }

    async fn lock(&self, topology: &str) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(|e| StoreError::io(format!("creating {}", self.dir.display()), e))?;
        self.locks.acquire(&self.dir, topology)
    }

    async fn unlock(&self, topology: &str) {
        self.locks.remove(&self.dir, topology);
    }

    async fn clear_abandoned_lock(&self, topology: &str) {
        let has_records = fs::read_dir(self.topology_dir(topology))
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".json")))
            .unwrap_or(false);
        if !has_records {
            self.locks.clear_abandoned(&self.dir, topology);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_store_behaves_as_a_store() {
        let dir = std::env::temp_dir().join(format!("merak-store-test-{}", std::process::id()));
        let store = FileStore::new(dir.clone());
        super::super::tests::behaves_as_a_store(&store).await;
        assert!(!store.topology_dir("lab").exists(), "removing the records removes their directory");
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Records as files: `<dir>/<topology>/<kind>.json`, each written to a
//! temporary file and renamed over the old one, and the writer lock as an
//! flock on `<dir>/<topology>.lock` (see [`super::lock`]). The local runtime
//! keeps its agents' sockets and logs in the same topology directory, and
//! removing the records removes the directory whole: it is first renamed to
//! `<dir>/.<topology>.removing`, so that a kill at any point leaves either
//! every record (the next destroy finds the topology and finishes) or none,
//! and what is left then goes the next time the topology is looked at.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

    /// Where a topology's directory goes to be removed.
    fn removing_dir(&self, topology: &str) -> PathBuf {
        self.dir.join(format!(".{topology}.removing"))
    }
}

/// Removes a directory and all it holds; one that is not there is removed.
fn remove_tree(dir: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io(format!("removing {}", dir.display()), e)),
        _ => Ok(()),
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
        let (dir, removing) = (self.topology_dir(topology), self.removing_dir(topology));
        // Left by an earlier removal that was killed: a rename needs the name free.
        remove_tree(&removing)?;
        // One rename takes every record away at once: a topology is either
        // whole or gone, never a directory of leftovers without its record.
        match fs::rename(&dir, &removing) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io(format!("moving {} aside to remove it", dir.display()), e));
            }
            _ => {}
        }
        remove_tree(&removing)
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

    async fn finish_abandoned_removal(&self, topology: &str) {
        let has_records = fs::read_dir(self.topology_dir(topology))
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".json")))
            .unwrap_or(false);
        if !has_records {
            if let Err(e) = remove_tree(&self.removing_dir(topology)) {
                tracing::warn!(topology, error = %e, "what a killed removal left stays");
            }
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

    /// A destroy killed while the topology's directory was being removed
    /// (issue 22's soak, cycle 53 of Terraform 1.0.3: its record was gone
    /// and its TLS material and agents' log were left, so the next destroy
    /// found nothing to finish). Removal is a rename first, so each point a
    /// kill can land leaves the whole topology or no record at all, and the
    /// next look at it finishes.
    #[tokio::test]
    async fn a_removal_killed_at_any_point_leaves_the_topology_whole_or_nothing() {
        let dir = std::env::temp_dir().join(format!("merak-store-removal-{}", std::process::id()));
        let store = FileStore::new(dir.clone());
        let populate = || async {
            store.save("lab", "topology", b"{}").await.unwrap();
            store.save("lab", "overlay", b"{}").await.unwrap();
            let topology_dir = store.topology_dir("lab");
            fs::create_dir_all(topology_dir.join("tls")).unwrap();
            fs::write(topology_dir.join("tls/ca.pem"), "key").unwrap();
            fs::write(topology_dir.join("agents.log"), "log").unwrap();
        };

        // Killed before the rename: every record is there for the next destroy.
        populate().await;
        assert!(store.load("lab", "topology").await.unwrap().is_some());

        // Killed right after it, half-way through removing what was moved
        // aside: no record is found, and looking at the topology finishes.
        fs::rename(store.topology_dir("lab"), store.removing_dir("lab")).unwrap();
        fs::remove_file(store.removing_dir("lab").join("topology.json")).unwrap();
        assert_eq!(store.load("lab", "topology").await.unwrap(), None);
        assert_eq!(store.load("lab", "overlay").await.unwrap(), None, "no record outlives the topology's");
        store.lock("lab").await.unwrap();
        store.unlock("lab").await;
        store.finish_abandoned_removal("lab").await;
        assert!(!store.removing_dir("lab").exists(), "what the killed removal left is gone");

        // A topology of the same name made while leftovers are there, then
        // removed: the leftovers do not stand in the way.
        fs::create_dir_all(store.removing_dir("lab").join("tls")).unwrap();
        populate().await;
        store.remove("lab").await.unwrap();
        assert!(!store.topology_dir("lab").exists() && !store.removing_dir("lab").exists());
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

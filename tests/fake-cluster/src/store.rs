//! The fake's etcd: objects as the JSON clients sent, one resourceVersion
//! counter for all of them, and a bounded history of changes so that a
//! watch from a given resourceVersion replays what it missed (or gets 410
//! Gone, as from a real server, when that is too old).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::select::Selector;

/// How many changes a watch can catch up on.
const HISTORY: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub resource: String,
    pub namespace: String,
    pub change: Change,
    pub revision: u64,
    pub object: Value,
}

/// An API error, answered as a `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }
    pub fn not_found(plural: &str, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{plural} \"{name}\" not found"))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

type Key = (String, String, String);

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    history: VecDeque<Arc<Event>>,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

/// What a watch starts with: the changes it missed, then the live ones.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        Store { inner: Mutex::new(Inner::default()), events: broadcast::channel(65_536).0 }
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn set_revision(object: &mut Value, revision: u64) {
    object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map whole (every change
        // is one insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, inner: &mut Inner, resource: &str, namespace: &str, change: Change, object: Value) {
        let event = Arc::new(Event {
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            change,
            revision: inner.revision,
            object,
        });
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        // No receivers is normal (nothing watching).
        let _ = self.events.send(event);
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(resource.to_string(), namespace.to_string(), name.to_string())).cloned()
    }

    /// Objects of a resource (in one namespace, or all when None) that match
    /// the selectors, and the revision the list is consistent at.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &Selector,
    ) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .range((resource.to_string(), String::new(), String::new())..)
            .take_while(|((r, _, _), _)| r == resource)
            .filter(|((_, ns, _), _)| namespace.is_none_or(|wanted| ns == wanted))
            .filter(|(_, object)| labels.matches_labels(object) && fields.matches_fields(object))
            .map(|(_, object)| object.clone())
            .collect();
        (items, inner.revision)
    }

    /// Stores a new object (its metadata already filled in but for the
    /// resourceVersion); 409 AlreadyExists if the name is taken.
    pub fn create(&self, resource: &str, namespace: &str, plural: &str, mut object: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (resource.to_string(), namespace.to_string(), name_of(&object).to_string());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::new(409, "AlreadyExists", format!("{plural} \"{}\" already exists", key.2)));
        }
        inner.revision += 1;
        let revision = inner.revision;
        set_revision(&mut object, revision);
        inner.objects.insert(key, object.clone());
        self.record(&mut inner, resource, namespace, Change::Added, object.clone());
        Ok(object)
    }

    /// Changes an object in place under the store's lock. `change` sees the
    /// current object and returns an error to leave it as it is. A change
    /// that leaves the object equal is not a new revision.
    pub fn update<F>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        plural: &str,
        change: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce(&mut Value) -> Result<(), ApiError>,
    {
        let mut inner = self.lock();
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let current = inner.objects.get(&key).ok_or_else(|| ApiError::not_found(plural, name))?;
        let mut updated = current.clone();
        change(&mut updated)?;
        // Identity and the revision are the server's, whatever the change did.
        if !updated["metadata"].is_object() {
            updated["metadata"] = json!({});
        }
        for field in ["name", "namespace", "uid", "creationTimestamp", "resourceVersion"] {
            if let Value::Object(metadata) = &mut updated["metadata"] {
                match current["metadata"].get(field) {
                    Some(value) => metadata.insert(field.to_string(), value.clone()),
                    None => metadata.remove(field),
                };
            }
        }
        if &updated == current {
            return Ok(updated);
        }
        inner.revision += 1;
        let revision = inner.revision;
        set_revision(&mut updated, revision);
        inner.objects.insert(key, updated.clone());
        self.record(&mut inner, resource, namespace, Change::Modified, updated.clone());
        Ok(updated)
    }

    /// Removes an object; the removed object (at its final revision).
    pub fn remove(&self, resource: &str, namespace: &str, name: &str, plural: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let mut object = inner.objects.remove(&key).ok_or_else(|| ApiError::not_found(plural, name))?;
        inner.revision += 1;
        let revision = inner.revision;
        set_revision(&mut object, revision);
        self.record(&mut inner, resource, namespace, Change::Deleted, object.clone());
        Ok(object)
    }

    /// A watch from `from` (exclusive): the recorded changes after it, then
    /// live ones. None for "from now, after the current objects" — the
    /// caller lists first. 410 Gone when `from` is older than the history.
    pub fn subscribe(&self, from: Option<u64>) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let live = self.events.subscribe();
        let replay = match from {
            None => Vec::new(),
            Some(from) => {
                let oldest = inner.history.front().map(|e| e.revision);
                if let Some(oldest) = oldest
                    && from + 1 < oldest
                {
                    return Err(ApiError::new(410, "Expired", format!("too old resource version: {from} ({oldest})")));
                }
                inner.history.iter().filter(|e| e.revision > from).cloned().collect()
            }
        };
        Ok(Subscription { replay, live })
    }

    /// Every stored object, with its resource and namespace (for the
    /// controllers' resync after they fell behind the event stream).
    pub fn all(&self, resource: &str) -> Vec<(String, Value)> {
        let inner = self.lock();
        inner
            .objects
            .range((resource.to_string(), String::new(), String::new())..)
            .take_while(|((r, _, _), _)| r == resource)
            .map(|((_, ns, _), object)| (ns.clone(), object.clone()))
            .collect()
    }

    /// Names of the resources that hold anything in `namespace`.
    pub fn namespace_is_empty(&self, namespace: &str) -> bool {
        !self.lock().objects.keys().any(|(_, ns, _)| ns == namespace)
    }

    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<(String, String)> {
        self.lock()
            .objects
            .keys()
            .filter(|(_, ns, _)| ns == namespace)
            .map(|(r, _, name)| (r.clone(), name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> Value {
        json!({"metadata": {"name": name, "uid": "u", "labels": {"app": "x"}}})
    }

    #[test]
    fn names_are_unique_per_namespace_and_revisions_grow() {
        let store = Store::default();
        let a = store.create("pods", "ns", "pods", object("a")).unwrap();
        assert_eq!(store.create("pods", "ns", "pods", object("a")).unwrap_err().code, 409);
        let b = store.create("pods", "other", "pods", object("a")).unwrap();
        assert!(
            b["metadata"]["resourceVersion"].as_str().unwrap() > a["metadata"]["resourceVersion"].as_str().unwrap()
        );
    }

    #[test]
    fn an_update_cannot_rename_and_a_no_op_is_no_revision() {
        let store = Store::default();
        store.create("pods", "ns", "pods", object("a")).unwrap();
        let before = store.revision();
        store.update("pods", "ns", "a", "pods", |_| Ok(())).unwrap();
        assert_eq!(store.revision(), before);
        let renamed = store.update("pods", "ns", "a", "pods", |o| {
            o["metadata"]["name"] = json!("b");
            o["spec"] = json!({"x": 1});
            Ok(())
        });
        assert_eq!(renamed.unwrap()["metadata"]["name"], "a");
        assert_eq!(store.update("pods", "ns", "zz", "pods", |_| Ok(())).unwrap_err().code, 404);
    }

    #[test]
    fn a_watch_replays_what_came_after_its_revision() {
        let store = Store::default();
        store.create("pods", "ns", "pods", object("a")).unwrap();
        let from = store.revision();
        store.create("pods", "ns", "pods", object("b")).unwrap();
        store.remove("pods", "ns", "a", "pods").unwrap();
        let subscription = store.subscribe(Some(from)).unwrap();
        let changes: Vec<(Change, &str)> = subscription.replay.iter().map(|e| (e.change, name_of(&e.object))).collect();
        assert_eq!(changes, vec![(Change::Added, "b"), (Change::Deleted, "a")]);
    }

    #[test]
    fn lists_filter_by_namespace_and_labels() {
        let store = Store::default();
        store.create("pods", "ns", "pods", object("a")).unwrap();
        store.create("pods", "other", "pods", object("b")).unwrap();
        store.create("secrets", "ns", "secrets", object("c")).unwrap();
        let everything = Selector::default();
        assert_eq!(store.list("pods", None, &everything, &everything).0.len(), 2);
        assert_eq!(store.list("pods", Some("ns"), &everything, &everything).0.len(), 1);
        let none = Selector::parse("app=y").unwrap();
        assert!(store.list("pods", None, &none, &everything).0.is_empty());
    }
}

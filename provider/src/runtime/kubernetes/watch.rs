//! A topology's pods as the API server last said, kept by a watch: waiting
//! for thousands of pods to run polls nothing. (Listing 2,000 pods four
//! times a second cost the API server and the provider more CPU than
//! making the pods did.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

use super::cluster::{is_not_found, retrying};

/// How long one watch request lasts before it is made again (the API
/// server's own limit is longer; a shorter one survives idle proxies).
const WATCH_SECONDS: u32 = 240;
/// How long changes are gathered after the first (see [`PodWatch::changed`]).
const GATHER: Duration = Duration::from_millis(200);

pub struct PodWatch {
    api: Api<Pod>,
    selector: String,
    /// The pods the selector picks, by name.
    pub pods: HashMap<String, Pod>,
    version: String,
    events: Option<BoxStream<'static, kube::Result<WatchEvent<Pod>>>>,
}

impl PodWatch {
    /// The pods `selector` picks now, to be kept up to date.
    pub async fn start(api: Api<Pod>, selector: String) -> Result<Self, kube::Error> {
        let mut watch = PodWatch { api, selector, pods: HashMap::new(), version: String::new(), events: None };
        watch.relist().await?;
        Ok(watch)
    }

    async fn relist(&mut self) -> Result<(), kube::Error> {
        self.events = None;
        let params = ListParams::default().labels(&self.selector);
        let list = match retrying("listing pods", || self.api.list(&params)).await {
            Ok(list) => list,
            // No namespace yet: no pods.
            Err(e) if is_not_found(&e) => {
                self.pods.clear();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.version = list.metadata.resource_version.unwrap_or_default();
        self.pods = list.items.into_iter().filter_map(|pod| Some((pod.metadata.name.clone()?, pod))).collect();
        Ok(())
    }

    fn apply(&mut self, event: WatchEvent<Pod>) -> Result<(), Box<kube::core::Status>> {
        match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                if let Some(version) = pod.metadata.resource_version.clone() {
                    self.version = version;
                }
                if let Some(name) = pod.metadata.name.clone() {
                    self.pods.insert(name, pod);
                }
            }
            WatchEvent::Deleted(pod) => {
                if let Some(version) = pod.metadata.resource_version.clone() {
                    self.version = version;
                }
                if let Some(name) = &pod.metadata.name {
                    self.pods.remove(name);
                }
            }
            WatchEvent::Bookmark(bookmark) => self.version = bookmark.metadata.resource_version,
            // Most often 410: the history the watch resumed from is gone.
            WatchEvent::Error(status) => return Err(status),
        }
        Ok(())
    }

    /// Waits until the pods change or `until` comes, then takes in the
    /// changes of the next [`GATHER`] too: pods change one at a time, by
    /// the thousand, and the caller looks at all of them after each call.
    pub async fn changed(&mut self, until: Instant) -> Result<(), kube::Error> {
        if self.events.is_none() {
            let params = WatchParams::default().labels(&self.selector).timeout(WATCH_SECONDS);
            let version = self.version.clone();
            match retrying("watching pods", || self.api.watch(&params, &version)).await {
                Ok(events) => self.events = Some(events.boxed()),
                Err(e) if is_not_found(&e) => {
                    tokio::time::sleep_until(until.min(Instant::now() + Duration::from_millis(250)).into()).await;
                    return self.relist().await;
                }
                Err(e) => return Err(e),
            }
        }
        let Some(events) = self.events.as_mut() else { return Ok(()) };
        let first = match tokio::time::timeout_at(until.into(), events.next()).await {
            // Quiet until the caller's deadline: list again, so that a
            // change a watch never delivered is seen all the same.
            Err(_) => return self.relist().await,
            Ok(next) => next,
        };
        let gathered = Instant::now() + GATHER;
        let mut next = first;
        loop {
            match next {
                Some(Ok(event)) => {
                    if let Err(status) = self.apply(event) {
                        tracing::debug!(code = status.code, message = %status.message, "the pod watch ended; listing anew");
                        return self.relist().await;
                    }
                }
                // The watch ran out (its timeout) or broke: resume from the last version seen.
                Some(Err(error)) => {
                    tracing::debug!(%error, "the pod watch failed; listing anew");
                    return self.relist().await;
                }
                None => {
                    self.events = None;
                    return Ok(());
                }
            }
            let Some(events) = self.events.as_mut() else { return Ok(()) };
            next = match events.next().now_or_never() {
                Some(more) => more,
                None if Instant::now() < gathered => {
                    match tokio::time::timeout_at(gathered.into(), events.next()).await {
                        Ok(more) => more,
                        Err(_) => return Ok(()),
                    }
                }
                None => return Ok(()),
            };
        }
    }
}

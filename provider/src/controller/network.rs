//! The client of the user's network controller (see [`super::port_api`]):
//! port batches as JSON over HTTP, retried with backoff on timeouts,
//! connection failures, 408, 429 and 5xx, and a result per port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
// reqwest's errors say little at the top ("error sending request"); the
// cause (e.g. "Connection refused") is further down.
use merak_agent::error_chain;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::port_api::{
    ErrorBody, PORTS_PATH, Port, PortBatch, PortIds, PortResults, SECURITY_GROUPS_PATH, SecurityGroup,
    SecurityGroupBatch, SecurityGroupIds,
};
use crate::model::network_controller::ControllerSpec;

/// Attempts per request, and the pause before the second (doubling).
const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Requests in flight at once.
const PARALLEL: usize = 4;
/// Of a refusal's body, what a diagnostic shows.
const MESSAGE_CHARS: usize = 300;

/// What became of one port: accepted, or why not.
pub type PortOutcome = (String, Result<(), String>);

#[derive(Debug)]
pub struct NetworkController {
    spec: ControllerSpec,
    client: reqwest::Client,
    ports_url: String,
    security_groups_url: String,
    requests: AtomicU64,
}

/// Why a request failed, and whether trying again may help.
struct RequestError {
    message: String,
    retry: bool,
}

impl NetworkController {
    pub fn new(spec: ControllerSpec) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            // Checked by ControllerSpec::validate.
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(u64::from(spec.timeout_s)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let ports_url = format!("{}{PORTS_PATH}", spec.url);
        let security_groups_url = format!("{}{SECURITY_GROUPS_PATH}", spec.url);
        Ok(NetworkController { spec, client, ports_url, security_groups_url, requests: AtomicU64::new(0) })
    }

    pub fn url(&self) -> &str {
        &self.spec.url
    }

    /// HTTP requests sent so far (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Creates or updates the ports, `batch_size` per request.
    pub async fn put_ports(&self, ports: Vec<Port>) -> Vec<PortOutcome> {
        let batches: Vec<PortBatch> =
            ports.chunks(self.batch_size()).map(|chunk| PortBatch { ports: chunk.to_vec() }).collect();
        let ids_of = |batch: &PortBatch| batch.ports.iter().map(|p| p.id.clone()).collect();
        self.send_all(&self.ports_url, batches, reqwest::Method::PUT, ids_of).await
    }

    /// Deletes the ports by id, `batch_size` per request.
    pub async fn delete_ports(&self, ids: Vec<String>) -> Vec<PortOutcome> {
        let batches: Vec<PortIds> =
            ids.chunks(self.batch_size()).map(|chunk| PortIds { ids: chunk.to_vec() }).collect();
        self.send_all(&self.ports_url, batches, reqwest::Method::DELETE, |batch| batch.ids.clone()).await
    }

    /// Creates the security groups or replaces their rules, in one request.
    pub async fn put_security_groups(&self, security_groups: Vec<SecurityGroup>) -> Vec<PortOutcome> {
        let ids_of = |batch: &SecurityGroupBatch| batch.security_groups.iter().map(|g| g.id.clone()).collect();
        let batch = SecurityGroupBatch { security_groups };
        self.send_all(&self.security_groups_url, vec![batch], reqwest::Method::PUT, ids_of).await
    }

    /// Deletes the security groups by id, in one request.
    pub async fn delete_security_groups(&self, ids: Vec<String>) -> Vec<PortOutcome> {
        let batch = SecurityGroupIds { ids };
        self.send_all(&self.security_groups_url, vec![batch], reqwest::Method::DELETE, |batch| batch.ids.clone()).await
    }

    fn batch_size(&self) -> usize {
        self.spec.batch_size.max(1) as usize
    }

    async fn send_all<B: serde::Serialize>(
        &self,
        url: &str,
        batches: Vec<B>,
        method: reqwest::Method,
        ids_of: fn(&B) -> Vec<String>,
    ) -> Vec<PortOutcome> {
        futures::stream::iter(batches)
            .map(|batch| {
                let method = method.clone();
                async move {
                    let ids = ids_of(&batch);
                    match self.send(url, method, &batch).await {
                        Ok(results) => outcomes(ids, results),
                        Err(message) => ids.into_iter().map(|id| (id, Err(message.clone()))).collect(),
                    }
                }
            })
            .buffer_unordered(PARALLEL)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// One request, retried while that may help.
    async fn send<B: serde::Serialize>(
        &self,
        url: &str,
        method: reqwest::Method,
        body: &B,
    ) -> Result<PortResults, String> {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            match self.send_once(url, method.clone(), body).await {
                Ok(results) => return Ok(results),
                Err(error) if error.retry && attempt < ATTEMPTS => {
                    tracing::warn!(method = %method, url, attempt, error = error.message, "controller request failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(error) => {
                    let tries = if attempt > 1 { format!(" (after {attempt} attempts)") } else { String::new() };
                    return Err(format!("{method} {url}: {}{tries}", error.message));
                }
            }
        }
    }

    async fn send_once<B: serde::Serialize>(
        &self,
        url: &str,
        method: reqwest::Method,
        body: &B,
    ) -> Result<PortResults, RequestError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = self.client.request(method, url).json(body).send().await.map_err(|e| RequestError {
            message: if e.is_timeout() {
                format!("no answer within {} s (controller.timeout_s)", self.spec.timeout_s)
            } else {
                format!("cannot reach the controller: {}", error_chain(&e))
            },
            retry: true,
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| RequestError { message: format!("reading the answer ({status}): {e}"), retry: true })?;
        if !status.is_success() {
            let retry = status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            return Err(RequestError { message: format!("HTTP {status}: {}", refusal_message(&text)), retry });
        }
        if text.trim().is_empty() {
            return Ok(PortResults::default());
        }
        serde_json::from_str(&text).map_err(|e| RequestError {
            message: format!("HTTP {status} with a body that is not PortResults JSON ({e})"),
            retry: false,
        })
    }
}

/// Every id's outcome. An empty result list accepts all; otherwise a port
/// without a result was refused.
fn outcomes(ids: Vec<String>, results: PortResults) -> Vec<PortOutcome> {
    if results.results.is_empty() {
        return ids.into_iter().map(|id| (id, Ok(()))).collect();
    }
    let mut by_id: std::collections::HashMap<String, (bool, String)> =
        results.results.into_iter().map(|r| (r.id, (r.ok, r.message))).collect();
    ids.into_iter()
        .map(|id| {
            let outcome = match by_id.remove(&id) {
                Some((true, _)) => Ok(()),
                Some((false, message)) if message.is_empty() => Err("refused by the controller".to_string()),
                Some((false, message)) => Err(format!("refused by the controller: {}", clip(&message))),
                None => Err("the controller's answer has no result for it".to_string()),
            };
            (id, outcome)
        })
        .collect()
}

/// `{"message": ...}` when the body is that, else the text itself, clipped.
fn refusal_message(body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(error) => clip(&error.message),
        Err(_) if body.trim().is_empty() => "(no message)".to_string(),
        Err(_) => clip(body.trim()),
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::port_api::PortResult;
    use super::*;

    #[test]
    fn results_name_every_port_and_missing_ones_count_as_refused() {
        let ids = vec!["t/a-0".to_string(), "t/a-1".into(), "t/a-2".into()];
        let results = PortResults {
            results: vec![
                PortResult { id: "t/a-0".into(), ok: true, message: String::new() },
                PortResult { id: "t/a-1".into(), ok: false, message: "no such switch".into() },
            ],
        };
        let outcomes = outcomes(ids.clone(), results);
        assert_eq!(outcomes[0], ("t/a-0".into(), Ok(())));
        assert_eq!(outcomes[1], ("t/a-1".into(), Err("refused by the controller: no such switch".into())));
        assert!(outcomes[2].1.as_ref().is_err_and(|e| e.contains("no result")));
        assert!(
            super::outcomes(ids, PortResults::default()).iter().all(|(_, o)| o.is_ok()),
            "an empty answer accepts all"
        );
    }

    #[test]
    fn refusals_show_the_controllers_message_clipped() {
        assert_eq!(refusal_message(r#"{"message": "quota exceeded"}"#), "quota exceeded");
        assert_eq!(refusal_message("  upstream down \n"), "upstream down");
        assert_eq!(refusal_message(""), "(no message)");
        assert_eq!(refusal_message(&"x".repeat(1000)).chars().count(), MESSAGE_CHARS + 1);
    }
}

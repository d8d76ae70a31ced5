//! Talking to the API server: connecting from a kubeconfig, asking before
//! building whether the credentials may do what the runtime needs
//! (SelfSubjectAccessReview), and retrying what a busy or flaky API server
//! refuses for now (429, 5xx, a dropped connection) with backoff.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

/// What the runtime does in the cluster: (verb, resource, API group).
/// Namespaced resources are asked for in every namespace: the runtime
/// makes a namespace per topology, whose name RBAC cannot know beforehand.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("create", "namespaces", ""),
    ("get", "namespaces", ""),
    ("delete", "namespaces", ""),
    ("create", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("delete", "pods", ""),
    ("create", "pods/portforward", ""),
    ("create", "secrets", ""),
    ("get", "secrets", ""),
    ("delete", "secrets", ""),
    ("create", "configmaps", ""),
    ("get", "configmaps", ""),
    ("list", "configmaps", ""),
    ("update", "configmaps", ""),
    ("delete", "configmaps", ""),
    ("list", "events", ""),
    ("create", "deployments", "apps"),
    ("get", "deployments", "apps"),
    ("update", "deployments", "apps"),
];

/// A client for the cluster the kubeconfig names: `path` (else KUBECONFIG,
/// else ~/.kube/config, else the in-cluster service account) and `context`
/// (else the kubeconfig's current one).
pub async fn connect(path: Option<PathBuf>, context: Option<String>) -> Result<kube::Client, String> {
    let options = KubeConfigOptions { context, ..KubeConfigOptions::default() };
    let config = match path {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(&path).map_err(|e| format!("reading the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("the kubeconfig {}: {e}", path.display()))?
        }
        None if options.context.is_some() => {
            kube::Config::from_kubeconfig(&options).await.map_err(|e| format!("the kubeconfig: {e}"))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no kubeconfig found (KUBECONFIG, ~/.kube/config) and not running in a cluster: {e}")
        })?,
    };
    let mut config = config;
    // An API server that accepts the connection and never answers must not hang an apply.
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(config).map_err(|e| format!("a client for the cluster: {e}"))
}

/// The API server's version, e.g. `v1.33.0`; an error when it does not answer.
pub async fn version(client: &kube::Client) -> Result<String, String> {
    let info =
        retrying("asking the API server's version", || client.apiserver_version()).await.map_err(|e| e.to_string())?;
    Ok(info.git_version)
}

/// The needed permissions the credentials lack, as `verb resource` texts.
pub async fn missing_permissions(client: &kube::Client) -> Result<Vec<String>, String> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = NEEDED.iter().map(|(verb, resource, group)| {
        let reviews = reviews.clone();
        async move {
            let (resource_name, subresource) = resource.split_once('/').unwrap_or((resource, ""));
            let review: SelfSubjectAccessReview = serde_json::from_value(json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": verb, "resource": resource_name, "subresource": subresource, "group": group}},
            }))
            .map_err(|e| e.to_string())?;
            let answer = retrying("asking for a permission", || reviews.create(&POST, &review)).await.map_err(|e| e.to_string())?;
            let allowed = answer.status.is_some_and(|s| s.allowed);
            Ok::<_, String>((!allowed).then(|| format!("{verb} {resource}")))
        }
    });
    let answers = futures::future::join_all(asks).await;
    answers.into_iter().filter_map(Result::transpose).collect()
}

/// Request options shared by every call (a call's future borrows them).
pub static POST: std::sync::LazyLock<PostParams> = std::sync::LazyLock::new(PostParams::default);
pub static DELETE: std::sync::LazyLock<kube::api::DeleteParams> =
    std::sync::LazyLock::new(kube::api::DeleteParams::default);
/// Deleting a namespace: its objects go in the background, after the answer.
pub static DELETE_IN_BACKGROUND: std::sync::LazyLock<kube::api::DeleteParams> =
    std::sync::LazyLock::new(kube::api::DeleteParams::background);

/// The HTTP status of an API error, if the API server answered.
pub fn code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub fn is_not_found(error: &kube::Error) -> bool {
    code(error) == Some(404)
}

pub fn is_conflict(error: &kube::Error) -> bool {
    code(error) == Some(409)
}

/// Whether trying again later may succeed: the API server throttled us or
/// failed inside, or the connection broke.
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// How many times a refused call is tried in all, and the pauses between.
const ATTEMPTS: u32 = 8;
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// Runs `call` until it succeeds, fails for good, or was refused for now
/// [`ATTEMPTS`] times, pausing longer each time (with jitter, so many
/// refused calls do not come back at once).
pub async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(error) if transient(&error) && attempt < ATTEMPTS => {
                tracing::debug!(what, attempt, %error, "the API server refused for now; trying again");
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let jitter = pause.mul_f64(f64::from(nanos % 1000) / 2000.0);
                tokio::time::sleep(pause + jitter).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    /// examples/kubernetes/rbac.yaml grants exactly what the runtime asks for.
    #[test]
    fn the_example_role_grants_every_needed_verb() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/kubernetes/rbac.yaml");
        let text = std::fs::read_to_string(path).expect("the example role");
        let mut granted = std::collections::BTreeSet::new();
        let mut resources: Vec<String> = Vec::new();
        for line in text.lines().map(str::trim) {
            let list = |rest: &str| {
                rest.trim()
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|v| v.trim().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
            };
            if let Some(rest) = line.strip_prefix("resources:") {
                resources = list(rest);
            } else if let Some(rest) = line.strip_prefix("verbs:") {
                for resource in &resources {
                    for verb in list(rest) {
                        granted.insert(format!("{verb} {resource}"));
                    }
                }
            }
        }
        for (verb, resource, _) in super::NEEDED {
            assert!(granted.contains(&format!("{verb} {resource}")), "rbac.yaml lacks {verb} {resource}");
        }
        let needed: std::collections::BTreeSet<String> =
            super::NEEDED.iter().map(|(v, r, _)| format!("{v} {r}")).collect();
        let extra: Vec<&String> =
            granted.iter().filter(|g| !needed.contains(*g) && !g.ends_with("selfsubjectaccessreviews")).collect();
        assert!(extra.is_empty(), "rbac.yaml grants more than the runtime needs: {extra:?}");
    }
}

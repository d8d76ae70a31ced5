//! The `kubernetes { ... }` block of the provider: its schema, its checks
//! (at validate time what the configuration alone decides; at configure
//! time that the cluster answers and the credentials may do what the
//! runtime needs), and the runtime it configures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;

use crate::controller::Controller;
use crate::runtime::kubernetes::objects::{Access, PodSettings};
use crate::runtime::kubernetes::store::ClusterStore;
use crate::runtime::kubernetes::{KubernetesRuntime, cluster};
use merak_tfplugin::cty::{Type, Value};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, NestedBlock};

const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(300);
const TOLERATION_KEYS: [&str; 5] = ["key", "operator", "value", "effect", "toleration_seconds"];

pub fn block() -> NestedBlock {
    NestedBlock::single(
        "kubernetes",
        Block {
            description: "Settings of the `kubernetes` runtime: every EPM and vswitch a pod running merak-agent, in a \
                          namespace `merak-<topology>` of its own.",
            attributes: vec![
                Attribute::optional(
                    "kubeconfig",
                    Type::String,
                    "Path of the kubeconfig. Default: `KUBECONFIG`, then `~/.kube/config`, then the service account \
                     of the pod the provider runs in.",
                ),
                Attribute::optional(
                    "context",
                    Type::String,
                    "The kubeconfig context to use. Default: its current context.",
                ),
                Attribute::optional(
                    "agent_image",
                    Type::String,
                    "The merak-agent image every pod runs (`make agent-image` builds it; push it where the cluster \
                     pulls from). Required with `runtime = \"kubernetes\"`.",
                ),
                Attribute::optional(
                    "image_pull_policy",
                    Type::String,
                    "`Always`, `IfNotPresent` (default) or `Never`.",
                ),
                Attribute::optional(
                    "node_selector",
                    Type::map(Type::String),
                    "Labels the nodes of the pods must have.",
                ),
                Attribute::optional(
                    "tolerations",
                    Type::list(Type::map(Type::String)),
                    "Taints the pods tolerate, each a map of `key`, `operator` (`Equal` or `Exists`), `value`, \
                     `effect` and `toleration_seconds`.",
                ),
                Attribute::optional(
                    "epm_cpu",
                    Type::String,
                    "The CPU each EPM pod requests, e.g. `100m`. Default: none.",
                ),
                Attribute::optional(
                    "epm_memory",
                    Type::String,
                    "The memory each EPM pod requests, e.g. `64Mi`. Default: none.",
                ),
                Attribute::optional(
                    "pod_ready_timeout",
                    Type::Number,
                    "Seconds a pod may take to run before apply reports it (with its node and the reason from its \
                     status or events). Default 300.",
                ),
                Attribute::optional(
                    "access",
                    Type::String,
                    "How the provider reaches the agents: `port-forward` (default), one port-forward through the API \
                     server to the topology's gateway (a Deployment `merak-gateway`), which forwards every call to \
                     the agents' pod IPs; or `direct`, to the pod IPs, when the provider runs where they route \
                     (in the cluster), with no gateway.",
                ),
            ],
            blocks: Vec::new(),
        },
    )
}

/// What the configuration alone decides about the block.
pub fn validate(config: &Value, selected: bool, diagnostics: &mut Diagnostics) {
    let block = config.attr("kubernetes");
    let known = |name: &str| !matches!(block.attr(name), Value::Unknown);
    if selected && block.attr("agent_image").is_null() && known("agent_image") {
        diagnostics.push(Diagnostic::attribute_error(
            &["kubernetes", "agent_image"],
            "agent_image is required",
            "The kubernetes runtime runs merak-agent in every pod: set kubernetes.agent_image to the image \
             `make agent-image` built, pushed where the cluster pulls from.",
        ));
    }
    if let Some(policy) = block.attr("image_pull_policy").as_str()
        && !PULL_POLICIES.contains(&policy)
    {
        diagnostics.push(Diagnostic::attribute_error(
            &["kubernetes", "image_pull_policy"],
            "Unsupported image_pull_policy",
            format!("image_pull_policy is {policy:?}; use one of {}.", PULL_POLICIES.join(", ")),
        ));
    }
    if let Some(access) = block.attr("access").as_str()
        && Access::parse(access).is_none()
    {
        diagnostics.push(Diagnostic::attribute_error(
            &["kubernetes", "access"],
            "Unsupported access",
            format!("access is {access:?}; use \"port-forward\" or \"direct\"."),
        ));
    }
    if let Value::Number(_) = block.attr("pod_ready_timeout")
        && !block.attr("pod_ready_timeout").as_i64().is_some_and(|s| (1..=86_400).contains(&s))
    {
        diagnostics.push(Diagnostic::attribute_error(
            &["kubernetes", "pod_ready_timeout"],
            "Invalid pod_ready_timeout",
            "pod_ready_timeout is a whole number of seconds from 1 to 86400.",
        ));
    }
    if let Err(error) = tolerations(block.attr("tolerations")) {
        diagnostics.push(Diagnostic::attribute_error(&["kubernetes", "tolerations"], "Invalid toleration", error));
    }
    if !selected && !block.is_null() && !matches!(block, Value::Unknown) {
        diagnostics.push(Diagnostic::warning(
            "The kubernetes block is not used",
            "The provider's runtime is not \"kubernetes\", so the kubernetes { ... } settings have no effect. Set runtime = \"kubernetes\" to use them.",
        ));
    }
}

fn strings(value: &Value) -> BTreeMap<String, String> {
    match value {
        Value::Map(items) => items.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect(),
        _ => BTreeMap::new(),
    }
}

fn tolerations(value: &Value) -> Result<Vec<Toleration>, String> {
    let mut all = Vec::new();
    for (i, item) in value.as_list().unwrap_or_default().iter().enumerate() {
        let fields = strings(item);
        if let Some(unknown) = fields.keys().find(|k| !TOLERATION_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "toleration {i} has {unknown:?}; a toleration has only {}.",
                TOLERATION_KEYS.join(", ")
            ));
        }
        let seconds = match fields.get("toleration_seconds") {
            Some(text) => Some(
                text.parse::<i64>()
                    .map_err(|_| format!("toleration {i}: toleration_seconds is {text:?}, not a whole number"))?,
            ),
            None => None,
        };
        if let Some(operator) = fields.get("operator")
            && operator != "Equal"
            && operator != "Exists"
        {
            return Err(format!("toleration {i}: operator is {operator:?}; use \"Equal\" or \"Exists\"."));
        }
        all.push(Toleration {
            key: fields.get("key").cloned(),
            operator: fields.get("operator").cloned(),
            value: fields.get("value").cloned(),
            effect: fields.get("effect").cloned(),
            toleration_seconds: seconds,
        });
    }
    Ok(all)
}

fn settings(block: &Value) -> Result<(PodSettings, Access), Diagnostics> {
    let tolerations = tolerations(block.attr("tolerations"))
        .map_err(|e| Diagnostic::attribute_error(&["kubernetes", "tolerations"], "Invalid toleration", e))?;
    let mut epm_requests = BTreeMap::new();
    for (attribute, resource) in [("epm_cpu", "cpu"), ("epm_memory", "memory")] {
        if let Some(quantity) = block.attr(attribute).as_str() {
            epm_requests.insert(resource.to_string(), quantity.to_string());
        }
    }
    let settings = PodSettings {
        agent_image: block.attr("agent_image").as_str().unwrap_or_default().to_string(),
        image_pull_policy: block.attr("image_pull_policy").as_str().unwrap_or("IfNotPresent").to_string(),
        node_selector: strings(block.attr("node_selector")),
        tolerations,
        epm_requests,
        pod_ready_timeout: block
            .attr("pod_ready_timeout")
            .as_i64()
            .map(|s| Duration::from_secs(s.unsigned_abs()))
            .unwrap_or(DEFAULT_READY_TIMEOUT),
    };
    // validate() refused anything else.
    let access = block.attr("access").as_str().and_then(Access::parse).unwrap_or(Access::PortForward);
    Ok((settings, access))
}

/// Connects to the cluster and checks, before anything is built, that it
/// answers and that the credentials may do everything the runtime does.
pub async fn configure(config: &Value) -> Result<Controller, Diagnostics> {
    let block = config.attr("kubernetes");
    let (settings, access) = settings(block)?;
    let kubeconfig = block.attr("kubeconfig").as_str().map(PathBuf::from);
    let context = block.attr("context").as_str().map(str::to_string);
    let client = cluster::connect(kubeconfig, context).await.map_err(|e| {
        Diagnostic::attribute_error(
            &["kubernetes", "kubeconfig"],
            "Cannot use the kubeconfig",
            format!("{e}. Set kubernetes.kubeconfig (and context) to a kubeconfig of the cluster."),
        )
    })?;
    let version = cluster::version(&client).await.map_err(|e| {
        Diagnostic::attribute_error(
            &["kubernetes", "kubeconfig"],
            "The Kubernetes API server does not answer",
            format!("{e}. Check that the cluster is up and that kubernetes.kubeconfig and context name it (try `kubectl version`)."),
        )
    })?;
    let missing = cluster::missing_permissions(&client).await.map_err(|e| {
        Diagnostic::error(
            "Cannot ask the API server for permissions",
            format!("A SelfSubjectAccessReview failed: {e}."),
        )
    })?;
    if !missing.is_empty() {
        return Err(Diagnostic::attribute_error(
            &["kubernetes", "kubeconfig"],
            "The Kubernetes credentials lack permissions the runtime needs",
            format!(
                "The API server says these credentials may not: {}. Bind them to a ClusterRole with these verbs \
                 (examples/kubernetes/rbac.yaml has one), or use a kubeconfig that has them.",
                missing.join(", ")
            ),
        )
        .into());
    }
    tracing::info!(%version, image = %settings.agent_image, ?access, "kubernetes runtime configured");
    let store = Arc::new(ClusterStore::new(client.clone()));
    Ok(Controller::new(Arc::new(KubernetesRuntime::new(client, settings, access, store.clone())), store))
}

/// The controller over existing topologies of a cluster, for the `merak`
/// command: it reads the topologies' records and reaches their agents
/// (through each topology's gateway with `Access::PortForward`), and never
/// makes a pod, so it needs no pod settings and only the rights to read and
/// port-forward.
pub async fn operator(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    access: Access,
) -> Result<Controller, String> {
    let client = cluster::connect(kubeconfig, context).await?;
    let unused = PodSettings {
        agent_image: String::new(),
        image_pull_policy: "IfNotPresent".into(),
        node_selector: BTreeMap::new(),
        tolerations: Vec::new(),
        epm_requests: BTreeMap::new(),
        pod_ready_timeout: DEFAULT_READY_TIMEOUT,
    };
    let store = Arc::new(ClusterStore::new(client.clone()));
    Ok(Controller::new(Arc::new(KubernetesRuntime::new(client, unused, access, store.clone())), store))
}

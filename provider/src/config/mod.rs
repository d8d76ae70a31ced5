//! The provider block: which runtime builds the emulation, and its settings.

mod kubernetes;
pub use kubernetes::operator as kubernetes_operator;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use crate::controller::Controller;
use crate::controller::network::NetworkController;
use crate::model::network_controller::{ControllerInput, ControllerSpec};
use crate::runtime::RuntimeError;
use crate::runtime::local::{AgentTransport, LocalRuntime};
use crate::store::FileStore;
use merak_tfplugin::cty::{Type, Value};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, NestedBlock, Schema};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/merak";
const AGENT_BINARY: &str = "merak-agent";

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    version: 0,
    block: Block {
        description: "Builds emulated data centers from real Linux network devices.",
        attributes: vec![Attribute::optional(
            "runtime",
            Type::String,
            "Where the emulation runs: `local` (default), network namespaces on the host running \
             Terraform, which needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); or `kubernetes`, pods in a \
             cluster (see the `kubernetes` block). Every resource block stays the same.",
        )],
        blocks: vec![
            kubernetes::block(),
            controller_block(),
            NestedBlock::single(
                "local",
                Block {
                    description: "Settings of the `local` runtime.",
                    attributes: vec![
                        Attribute::optional(
                            "state_dir",
                            Type::String,
                            "Directory for the runtime's records, agent sockets and logs. Default `/var/lib/merak`.",
                        ),
                        Attribute::optional(
                            "agent_path",
                            Type::String,
                            "Path of the `merak-agent` binary. Default: next to the provider binary, then on `PATH`.",
                        ),
                        Attribute::optional(
                            "agent_transport",
                            Type::String,
                            "How the provider reaches the agents: `unix` (default), each agent's unix socket under \
                         `state_dir` (mode 0600); or `tcp`, loopback TCP with mutual TLS, the agents and the \
                         provider holding certificates of a CA made for the topology (kept in \
                         `state_dir/<topology>/tls`, keys readable by root only). Changing it is an in-place \
                         change: the next apply serves the agents the new way.",
                        ),
                    ],
                    blocks: Vec::new(),
                },
            ),
        ],
    },
});

fn controller_block() -> NestedBlock {
    NestedBlock::single(
        "controller",
        Block {
            description: "The user's own network controller, which programs the ports of VPCs with \
                `controller = \"external\"`: the provider sends it every such EVM's port (name, MAC, IP, subnet, \
                VPC, VNI, EPM and the device to attach) in batches, as JSON over HTTP; see docs/controller-api.md. \
                Agents under test find it as `${controller_url}`.",
            attributes: vec![
                Attribute::required(
                    "url",
                    Type::String,
                    "The controller's base URL, e.g. `http://127.0.0.1:8080`: plain HTTP, no query. The API's paths (`/v1/ports`) follow it.",
                ),
                Attribute::optional(
                    "headers",
                    Type::map(Type::String),
                    "HTTP headers sent with every request, e.g. `{ Authorization = \"Bearer ...\" }`.",
                )
                .sensitive(),
                Attribute::optional(
                    "timeout_s",
                    Type::Number,
                    "Seconds one request may take (1 to 600; default 10). Requests that time out, fail to connect, or \
                     are answered 408, 429 or 5xx are retried with backoff, 5 attempts in all.",
                ),
                Attribute::optional("batch_size", Type::Number, "Ports per request (1 to 10000; default 500)."),
            ],
            blocks: Vec::new(),
        },
    )
}

/// The `controller` block, checked; `Ok(None)` without one (or while unknown).
fn controller_spec(config: &Value) -> Result<Option<ControllerSpec>, Diagnostics> {
    let block = config.attr("controller");
    let Some(url) = block.attr("url").as_str() else { return Ok(None) };
    let number = |name: &str| -> Result<Option<i64>, Diagnostics> {
        match block.attr(name) {
            Value::Null => Ok(None),
            value => value.as_i64().map(Some).ok_or_else(|| {
                Diagnostic::attribute_error(
                    &["controller", name],
                    format!("Invalid {name}"),
                    format!("{name} is {}; give a whole number.", value.describe()),
                )
                .into()
            }),
        }
    };
    let headers = match block.attr("headers") {
        Value::Map(headers) => {
            headers.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
        }
        _ => Default::default(),
    };
    let input = ControllerInput {
        url: url.to_string(),
        headers,
        timeout_s: number("timeout_s")?,
        batch_size: number("batch_size")?,
    };
    ControllerSpec::validate(input).map(Some).map_err(|errors| {
        let mut diagnostics = Diagnostics::default();
        for error in errors {
            diagnostics.push(Diagnostic::attribute_error(
                &["controller", error.attribute],
                error.summary,
                error.detail,
            ));
        }
        diagnostics
    })
}

/// The network controller client, when the configuration has one.
fn network_controller(config: &Value) -> Result<Option<NetworkController>, Diagnostics> {
    let Some(spec) = controller_spec(config)? else { return Ok(None) };
    tracing::info!(url = spec.url, batch_size = spec.batch_size, "external network controller");
    NetworkController::new(spec)
        .map(Some)
        .map_err(|e| Diagnostic::attribute_error(&["controller"], "Cannot configure the controller client", e).into())
}

/// The runtime the configuration selects (`None` while unknown).
fn runtime(config: &Value) -> Option<&str> {
    match config.attr("runtime") {
        Value::Null => Some("local"),
        Value::String(runtime) => Some(runtime),
        _ => None,
    }
}

/// Checks the configuration without touching the host.
pub fn validate(config: &Value) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    match runtime(config) {
        None | Some("local" | "kubernetes") => {}
        Some(other) => diagnostics.push(Diagnostic::attribute_error(
            &["runtime"],
            "Unsupported runtime",
            format!("runtime is {other:?}; use \"local\" or \"kubernetes\"."),
        )),
    }
    kubernetes::validate(config, runtime(config) == Some("kubernetes"), &mut diagnostics);
    if let Err(errors) = controller_spec(config) {
        diagnostics.0.extend(errors.0);
    }
    if let Some(transport) = config.attr("local").attr("agent_transport").as_str()
        && AgentTransport::parse(transport).is_none()
    {
        diagnostics.push(Diagnostic::attribute_error(
            &["local", "agent_transport"],
            "Unsupported agent_transport",
            format!("agent_transport is {transport:?}; use \"unix\" or \"tcp\"."),
        ));
    }
    if let Some(dir) = config.attr("local").attr("state_dir").as_str()
        && !Path::new(dir).is_absolute()
    {
        diagnostics.push(Diagnostic::attribute_error(
            &["local", "state_dir"],
            "state_dir must be an absolute path",
            format!("{dir:?} is relative; use an absolute path such as \"{DEFAULT_STATE_DIR}\"."),
        ));
    }
    diagnostics
}

/// Builds the runtime the configuration asks for, checking that this host
/// and process (or the cluster) can run it.
pub fn configure(config: Value) -> futures::future::BoxFuture<'static, Result<Arc<Controller>, Diagnostics>> {
    Box::pin(async move {
        let diagnostics = validate(&config);
        if diagnostics.has_errors() {
            return Err(diagnostics);
        }
        let network = network_controller(&config)?;
        let controller = match runtime(&config) {
            Some("kubernetes") => kubernetes::configure(&config).await?,
            _ => configure_local(&config)?,
        };
        Ok(Arc::new(match network {
            Some(network) => controller.with_network_controller(network),
            None => controller,
        }))
    })
}

fn configure_local(config: &Value) -> Result<Controller, Diagnostics> {
    check_privileges()?;
    let local = config.attr("local");
    let state_dir = PathBuf::from(local.attr("state_dir").as_str().unwrap_or(DEFAULT_STATE_DIR));
    let agent_path = match local.attr("agent_path").as_str() {
        Some(path) => {
            let path = PathBuf::from(path);
            if !is_executable(&path) {
                return Err(Diagnostic::attribute_error(
                    &["local", "agent_path"],
                    "merak-agent not found",
                    format!("{} is not an executable file.", path.display()),
                )
                .into());
            }
            path
        }
        None => find_agent().ok_or_else(|| {
            Diagnostic::attribute_error(
                &["local", "agent_path"],
                "merak-agent not found",
                "The merak-agent binary is neither next to the provider binary nor on PATH. \
                 Install it, or set local.agent_path.",
            )
        })?,
    };
    check_agent(&agent_path)?;
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        Diagnostic::attribute_error(
            &["local", "state_dir"],
            "Cannot create the state directory",
            format!("{}: {e}", state_dir.display()),
        )
    })?;
    tracing::info!(state_dir = %state_dir.display(), agent = %agent_path.display(), "local runtime configured");
    // validate() refused anything else.
    let transport =
        local.attr("agent_transport").as_str().and_then(AgentTransport::parse).unwrap_or(AgentTransport::Unix);
    tracing::info!(?transport, "agent transport");
    Ok(local_controller(state_dir, agent_path, transport))
}

/// The controller over the local runtime, its records as files under `state_dir`.
pub fn local_controller(state_dir: PathBuf, agent_path: PathBuf, transport: AgentTransport) -> Controller {
    let store = Arc::new(FileStore::new(state_dir.clone()));
    Controller::new(Arc::new(LocalRuntime::new(state_dir, agent_path, transport, store.clone())), store)
}

/// The controller over an existing topology of the local runtime, for the
/// `merak` command: it reaches the topology's agents as they were served,
/// and never starts an agent host. Its agent is the merak-agent installed
/// beside it or on PATH (`None`: none is), whose build the running agents
/// are compared with.
pub async fn local_operator(state_dir: PathBuf, topology: &str) -> Result<(Controller, Option<PathBuf>), RuntimeError> {
    let store = Arc::new(FileStore::new(state_dir.clone()));
    let installed = find_agent();
    let agent_path = installed.clone().unwrap_or_else(|| AGENT_BINARY.into());
    let probe = LocalRuntime::new(state_dir.clone(), agent_path.clone(), AgentTransport::Unix, store);
    let transport = probe.served_transport(topology).await?;
    Ok((local_controller(state_dir, agent_path, transport), installed))
}

/// The local runtime makes namespaces (CAP_SYS_ADMIN) and links (CAP_NET_ADMIN).
fn check_privileges() -> Result<(), Diagnostics> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    Err(Diagnostic::error(
        "The local runtime needs root",
        "The local runtime creates network namespaces and devices, which needs CAP_NET_ADMIN and \
         CAP_SYS_ADMIN. Run terraform as root (e.g. with sudo).",
    )
    .into())
}

fn find_agent() -> Option<PathBuf> {
    let beside_provider = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(AGENT_BINARY)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(AGENT_BINARY));
    beside_provider.into_iter().chain(on_path).find(|path| is_executable(path))
}

/// How long `merak-agent --build-id` may take (it digests its own file).
const BUILD_ID_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The agent at `path` is merak-agent of this provider's release: asked
/// its build id, it answers `<version>-<digest>` with our version. Checked
/// here, before anything is made with it, rather than when the first agent
/// fails to start after namespaces exist.
fn check_agent(path: &Path) -> Result<(), Diagnostics> {
    let refuse = |answer: String| -> Diagnostics {
        Diagnostic::attribute_error(
            &["local", "agent_path"],
            "Not the merak-agent of this provider",
            format!(
                "{} is not merak-agent {}: asked `{} --build-id`, {answer}. Point local.agent_path at the \
                 merak-agent shipped with this provider (beside its binary), or leave it unset.",
                path.display(),
                env!("CARGO_PKG_VERSION"),
                path.display()
            ),
        )
        .into()
    };
    let answer = run_with_timeout(std::process::Command::new(path).arg("--build-id"), BUILD_ID_TIMEOUT)
        .map_err(|e| refuse(format!("it did not answer ({e})")))?;
    let said = String::from_utf8_lossy(&answer.stdout).trim().to_string();
    let version = said
        .rsplit_once('-')
        .map(|(version, digest)| (version, digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit())));
    match version {
        Some((version, true)) if answer.status.success() && version == env!("CARGO_PKG_VERSION") => Ok(()),
        Some((version, true)) if answer.status.success() => Err(refuse(format!("it is version {version}"))),
        _ => Err(refuse(format!("it answered {said:?} ({})", answer.status))),
    }
}

/// Runs `command` to its end, or kills it after `timeout`.
fn run_with_timeout(
    command: &mut std::process::Command,
    timeout: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

//! A stand-in Kubernetes cluster for tests, because no kube-apiserver or
//! kubelet can be installed on the machines this project is built on.
//!
//! It is faithful where clients can tell: HTTPS with a kubeconfig and a
//! bearer token, the real paths and JSON bodies, discovery, resourceVersion
//! with 409 conflicts, 404/403/422 Status errors, label and field
//! selectors, watches, Tables for `kubectl get`, SelfSubjectAccessReview.
//! Pods run for real: a network namespace as the sandbox, a pod IP from its
//! node's pod CIDR on that node's bridge, the nodes' bridges routed to each
//! other (see [`network`]), simulated nodes, the program an image names
//! started as the container. Deployments and ReplicaSets (apps/v1) are run
//! by controllers as kube-controller-manager runs them, with garbage
//! collection by owner references (see [`controllers`]). What it leaves
//! out: everything the provider does not call (no StatefulSets, DaemonSets
//! or Services, no admission webhooks, no server-side apply, no protobuf).

mod admission;
pub mod api;
pub mod controllers;
pub mod kubelet;
pub mod meta;
pub mod network;
pub mod portforward;
pub mod resources;
pub mod select;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use merak_netdev::host_limits;
use serde_json::json;

use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the kubeconfig, pod logs and volumes go.
    pub dir: PathBuf,
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Image references the nodes "have", each with the program that stands
    /// for its entrypoint. Any other image fails to pull.
    pub images: Vec<(String, PathBuf)>,
    /// Added to every resource request.
    pub latency: Duration,
    /// Every n-th resource request fails (429 and 500 in turn).
    pub fail_every: Option<u64>,
    /// RBAC denials, `verb:resource` (`create:pods`, `*:secrets`).
    pub deny: Vec<String>,
    /// MTU of the cluster network.
    pub mtu: u32,
    /// Prefix of every network namespace the fake makes.
    pub prefix: String,
}

impl Config {
    pub fn program_of(&self, image: &str) -> Option<PathBuf> {
        self.images.iter().find(|(name, _)| name == image).map(|(_, program)| program.clone())
    }
}

pub struct Cluster {
    pub store: Store,
    pub config: Config,
    /// host:port clients use.
    pub address: String,
    /// The bearer token of the one user (written into the kubeconfig).
    token: String,
    pub network: network::Network,
    requests: AtomicU64,
}

impl Cluster {
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.config.dir.join("pods").join(format!("{namespace}_{name}"))
    }

    fn log_path(&self, namespace: &str, name: &str, container: &str) -> PathBuf {
        let dir = self.pod_dir(namespace, name);
        if !container.is_empty() {
            return dir.join(format!("{container}.log"));
        }
        // No container named: the pod's only one.
        std::fs::read_dir(&dir)
            .ok()
            .and_then(|entries| {
                entries.filter_map(Result::ok).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "log"))
            })
            .unwrap_or_else(|| dir.join("container.log"))
    }

    /// Records a core/v1 Event about `object`, as the scheduler and the
    /// kubelet do (what `kubectl describe` shows under Events).
    pub fn event(&self, object: &serde_json::Value, kind: &str, reason: &str, message: &str, component: &str) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let terminating =
            self.store.get("namespaces", "", namespace).is_none_or(|ns| !ns["metadata"]["deletionTimestamp"].is_null());
        if terminating {
            return;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let now = meta::now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{}", meta::hex_suffix()), "namespace": namespace, "uid": meta::uid(), "creationTimestamp": now},
            "involvedObject": {"kind": object["kind"], "apiVersion": object["apiVersion"], "namespace": namespace, "name": name, "uid": object["metadata"]["uid"], "resourceVersion": object["metadata"]["resourceVersion"]},
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": "",
        });
        let _ = self.store.create("events", namespace, "events", event);
    }
}

/// What a running fake tells its clients.
pub struct Endpoint {
    pub address: SocketAddr,
    pub kubeconfig: PathBuf,
}

fn kubeconfig(address: SocketAddr, ca: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: merak-fake\n  cluster:\n    server: https://{address}\n    certificate-authority-data: {ca}\nusers:\n- name: merak-fake-admin\n  user:\n    token: {token}\ncontexts:\n- name: merak-fake\n  context:\n    cluster: merak-fake\n    user: merak-fake-admin\ncurrent-context: merak-fake\n"
    )
}

/// The server's TLS identity: a CA of its own and a certificate for
/// 127.0.0.1 and localhost signed by it (the CA goes in the kubeconfig).
fn tls_identity() -> anyhow::Result<(String, tokio_rustls::TlsAcceptor)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "merak fake cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_certificate = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    let certificate = params.signed_by(&key, &issuer)?;
    let chain = vec![certificate.der().clone()];
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the server key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca_certificate.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Runs the cluster until `shutdown` resolves, then stops every pod and
/// removes every namespace it made. `ready` hears where it listens once the
/// kubeconfig is written.
pub async fn run(
    config: Config,
    ready: tokio::sync::oneshot::Sender<Endpoint>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir).with_context(|| format!("creating {}", config.dir.display()))?;
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the API server's port")?;
    let address = listener.local_addr()?;
    let (ca, acceptor) = tls_identity().context("making the API server's certificate")?;
    let token = meta::hex_suffix() + &meta::hex_suffix();
    let network = network::Network::create(&config.prefix, config.mtu, config.nodes).await?;
    // Given back below once every pod is stopped, or by `Running`'s drop
    // when this process could not get there.
    host_limits::ensure(&config.dir, network::host_limits(config.nodes * config.pods_per_node))
        .context("raising the host's neighbour table (gc_thresh3) for the cluster's pods")?;
    let cluster = Arc::new(Cluster {
        store: Store::default(),
        config,
        address: address.to_string(),
        token,
        network,
        requests: AtomicU64::new(0),
    });
    // The namespaces every real cluster starts with.
    for name in ["default", "kube-node-lease", "kube-public", "kube-system"] {
        cluster.store.create("namespaces", "", "namespaces", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "uid": meta::uid(), "creationTimestamp": meta::now(), "labels": {"kubernetes.io/metadata.name": name}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))?;
    }
    for index in 0..cluster.config.nodes {
        let mut node = kubelet::node_object(index, cluster.config.pods_per_node);
        node["metadata"]["uid"] = json!(meta::uid());
        node["metadata"]["creationTimestamp"] = json!(meta::now());
        cluster.store.create("nodes", "", "nodes", node)?;
    }
    let kubelet = kubelet::Kubelet::new(Arc::clone(&cluster));
    let kubelet_task = tokio::spawn(Arc::clone(&kubelet).run());
    let controllers_task = tokio::spawn(controllers::run(Arc::clone(&cluster)));
    let kubeconfig_path = cluster.config.dir.join("kubeconfig");
    let temporary = cluster.config.dir.join(".kubeconfig.tmp");
    std::fs::write(&temporary, kubeconfig(address, &ca, &cluster.token))?;
    std::fs::rename(&temporary, &kubeconfig_path)?;
    let _ = ready.send(Endpoint { address, kubeconfig: kubeconfig_path });
    tracing::info!(%address, nodes = cluster.config.nodes, "the fake cluster is serving");
    let serve = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            };
            let (acceptor, cluster) = (acceptor.clone(), Arc::clone(&cluster));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |request| api::handle(Arc::clone(&cluster), request));
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades();
                if let Err(e) = connection.await {
                    tracing::debug!("connection: {e}");
                }
            });
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = shutdown => {}
    }
    tracing::info!("stopping the fake cluster");
    // The controllers first, or they would replace the pods the kubelet stops.
    controllers_task.abort();
    kubelet_task.abort();
    kubelet.shutdown().await;
    host_limits::release(&cluster.config.dir).context("giving the host its neighbour table limits back")?;
    Ok(())
}

/// Removes whatever namespaces a fake with this prefix left behind (after
/// it was killed, say).
pub fn remove_leftovers(prefix: &str) {
    let prefix = format!("{prefix}-");
    for name in merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default() {
        let _ = merak_netdev::netns::delete(&name);
    }
}

pub fn default_prefix() -> String {
    format!("mkf{}", std::process::id())
}

/// A fake cluster process for a test: started by [`Running::start`],
/// stopped (pods, agents, namespaces, its directory and its hold on the
/// host's limits gone) when dropped,
/// even if the test failed.
pub struct Running {
    child: std::process::Child,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Prefix of the network namespaces it makes; `<prefix>-net` is the
    /// cluster network.
    pub prefix: String,
}

impl Running {
    /// Runs `binary` (merak-fake-cluster) with `args` besides `--dir` and
    /// `--prefix`, and waits for its kubeconfig.
    pub fn start(binary: &std::path::Path, dir: &std::path::Path, args: &[String]) -> anyhow::Result<Running> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("mkf{}x{}", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed));
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let child = std::process::Command::new(binary)
            .arg("--dir")
            .arg(dir)
            .arg("--prefix")
            .arg(&prefix)
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut running = Running { child, dir: dir.to_path_buf(), kubeconfig: dir.join("kubeconfig"), prefix };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !running.kubeconfig.exists() {
            if let Some(status) = running.child.try_wait()? {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                anyhow::bail!("the fake cluster exited ({status}) before serving:\n{log}");
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "the fake cluster did not serve within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }

    /// The network namespaces it holds now, but the cluster network.
    pub fn pod_sandboxes(&self) -> Vec<String> {
        let network = format!("{}-net", self.prefix);
        merak_netdev::netns::list_with_prefix(&format!("{}-", self.prefix))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n != network)
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_leftovers(&self.prefix);
        let _ = host_limits::release(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let log = self.dir.with_extension("log");
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "--- the fake cluster's last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_file(log);
    }
}

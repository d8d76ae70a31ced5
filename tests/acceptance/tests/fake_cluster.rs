//! The fake cluster checked against real clients: `kubectl` (v1.32) creates,
//! waits on (a watch), lists, describes, reads logs of and deletes what
//! runs in it, and the agents inside its pods answer over mutual TLS from
//! the cluster network. Needs root (pods are network namespaces).

use std::process::Command;

use merak_acceptance::binary;
use merak_agent::pki::{Authority, Role};
use merak_fake_cluster::Running;
use serde_json::{Value, json};

const IMAGE: &str = "localhost/merak-agent:test";
const NAMESPACE: &str = "merak-kubectl";

struct Kubectl<'a>(&'a Running);

impl Kubectl<'_> {
    /// Runs kubectl; its stdout, or a panic with what it said.
    fn run(&self, args: &[&str]) -> String {
        let output = self.try_run(args);
        match output {
            Ok(stdout) => stdout,
            Err(stderr) => panic!("kubectl {} failed: {stderr}", args.join(" ")),
        }
    }

    fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(merak_acceptance::kubectl()).env("KUBECONFIG", &self.0.kubeconfig).args(args).output().expect("kubectl runs (make deps installs it)");
        if output.status.success() { Ok(String::from_utf8_lossy(&output.stdout).into_owned()) } else { Err(String::from_utf8_lossy(&output.stderr).into_owned()) }
    }

    fn create(&self, object: &Value) -> String {
        let file = self.0.dir.join(format!("object-{}.json", object["metadata"]["name"].as_str().unwrap_or("x")));
        std::fs::write(&file, object.to_string()).expect("write the manifest");
        // The fake serves no OpenAPI schema for kubectl's client-side validation.
        self.run(&["create", "--validate=false", "-f", file.to_str().expect("a UTF-8 path")])
    }

    fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.run(&["get", "pod", name, "-n", NAMESPACE, "-o", "json"])).expect("kubectl prints JSON")
    }
}

fn agent_pod(name: &str, image: &str, node_selector: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "merak-test", "merak.dev/role": "epm"}},
        "spec": {
            "nodeSelector": node_selector,
            "containers": [{
                "name": "agent",
                "image": image,
                "args": ["--epm", name, "--listen", "0.0.0.0:7443", "--tls-dir", "/run/merak/tls"],
                "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}},
                "readinessProbe": {"tcpSocket": {"port": 7443}},
                "volumeMounts": [{"name": "tls", "mountPath": "/run/merak/tls", "readOnly": true}, {"name": "tun", "mountPath": "/dev/net/tun"}],
            }],
            "volumes": [{"name": "tls", "secret": {"secretName": "agent-tls"}}, {"name": "tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}}],
        },
    })
}

async fn health(running: &Running, ip: &str, ca: &str, client: &merak_agent::pki::Identity) -> Result<(String, String), String> {
    let address: std::net::SocketAddr = format!("{ip}:7443").parse().map_err(|e| format!("{e}"))?;
    let network = format!("{}-net", running.prefix);
    let dial = move || {
        let network = network.clone();
        async move {
            let stream = merak_netdev::netns::connect_in(&network, address, std::time::Duration::from_secs(2)).await.map_err(std::io::Error::other)?;
            stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(stream)
        }
    };
    let connector = merak_agent::tls::connector(ca.as_bytes(), client.certificate.as_bytes(), client.key.as_bytes()).map_err(|e| e.to_string())?;
    let channel = merak_agent::tls::channel_over(dial, connector).await.map_err(|e| format!("connect: {e}"))?;
    let reply = merak_proto::agent::agent_client::AgentClient::new(channel).health(merak_proto::agent::HealthRequest {}).await.map_err(|e| format!("health: {e}"))?.into_inner();
    Ok((reply.epm, reply.build_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_describes_and_deletes_what_runs_in_the_fake() {
    let dir = std::env::temp_dir().join(format!("merak-fake-kubectl-{}", std::process::id()));
    let image = format!("{IMAGE}={}", binary("merak-agent").display());
    let running = Running::start(&binary("merak-fake-cluster"), &dir, &["--nodes".into(), "3".into(), "--image".into(), image]).expect("the fake cluster starts");
    let kubectl = Kubectl(&running);

    let nodes = kubectl.run(&["get", "nodes"]);
    assert_eq!(nodes.lines().filter(|l| l.contains(" Ready ")).count(), 3, "{nodes}");

    let (authority, _) = Authority::create("kubectl").expect("a CA");
    let agent = authority.issue(Role::Agent).expect("an agent certificate");
    kubectl.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}));
    kubectl.create(&json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-tls", "namespace": NAMESPACE},
        "stringData": {"ca.pem": authority.certificate, "agent.pem": agent.certificate, "agent.key": agent.key},
    }));
    // Creating it again is a conflict, as on a real server.
    let manifest = running.dir.join(format!("object-{NAMESPACE}.json"));
    let again = kubectl.try_run(&["create", "--validate=false", "-f", manifest.to_str().expect("a UTF-8 path")]).expect_err("a second namespace of the same name");
    assert!(again.contains("AlreadyExists") && again.contains("already exists"), "{again}");

    for name in ["epm-0", "epm-1"] {
        kubectl.create(&agent_pod(name, IMAGE, json!({})));
    }
    kubectl.create(&agent_pod("no-image", "localhost/merak-agent:missing", json!({})));
    kubectl.create(&agent_pod("nowhere", IMAGE, json!({"merak.dev/pool": "none"})));

    // `kubectl wait` follows the pods with a watch.
    kubectl.run(&["wait", "--for=condition=Ready", "pod/epm-0", "pod/epm-1", "-n", NAMESPACE, "--timeout=60s"]);
    let table = kubectl.run(&["get", "pods", "-n", NAMESPACE, "-o", "wide"]);
    let row = |name: &str| table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no row for {name} in\n{table}")).to_string();
    assert!(row("epm-0").contains("1/1") && row("epm-0").contains("Running"), "{table}");
    assert!(row("nowhere").contains("Pending"), "{table}");
    let (zero, one) = (kubectl.pod("epm-0"), kubectl.pod("epm-1"));
    assert_ne!(zero["spec"]["nodeName"], one["spec"]["nodeName"], "the scheduler spreads pods over nodes");
    let ips = [zero["status"]["podIP"].as_str().expect("a pod IP").to_string(), one["status"]["podIP"].as_str().expect("a pod IP").to_string()];

    // The agents in the pods answer, over mutual TLS from the cluster network.
    let controller = authority.issue(Role::Controller).expect("a client certificate");
    for (ip, name) in ips.iter().zip(["epm-0", "epm-1"]) {
        let (epm, build) = health(&running, ip, &authority.certificate, &controller).await.expect("the agent in the pod answers");
        assert_eq!(epm, name);
        assert!(build.starts_with(env!("CARGO_PKG_VERSION")), "{build}");
    }

    let described = kubectl.run(&["describe", "pod", "epm-0", "-n", NAMESPACE]);
    for expected in ["Status:           Running", "Successfully assigned merak-kubectl/epm-0 to fake-node-", "Started container agent", "/run/merak/tls from tls"] {
        assert!(described.contains(expected), "describe lacks {expected:?}:\n{described}");
    }
    let logs = kubectl.run(&["logs", "epm-0", "-n", NAMESPACE]);
    assert!(logs.contains("agent serving"), "{logs}");
    let no_image = kubectl.run(&["describe", "pod", "no-image", "-n", NAMESPACE]);
    assert!(no_image.contains("Failed to pull image \"localhost/merak-agent:missing\""), "{no_image}");
    let nowhere = kubectl.run(&["describe", "pod", "nowhere", "-n", NAMESPACE]);
    assert!(nowhere.contains("FailedScheduling") && nowhere.contains("didn't match Pod's node affinity/selector"), "{nowhere}");
    let selected = kubectl.run(&["get", "pods", "-n", NAMESPACE, "-l", "merak.dev/role=epm,app.kubernetes.io/managed-by in (merak-test)", "--field-selector", "status.phase=Running", "-o", "name"]);
    assert_eq!(selected.lines().collect::<Vec<_>>(), ["pod/epm-0", "pod/epm-1"]);

    // Deleting a pod stops its agent and removes its sandbox.
    assert_eq!(running.pod_sandboxes().len(), 2, "one sandbox per running pod");
    let deleted = kubectl.run(&["delete", "pod", "epm-1", "-n", NAMESPACE]);
    assert!(deleted.contains("\"epm-1\" deleted"), "{deleted}");
    assert!(kubectl.try_run(&["get", "pod", "epm-1", "-n", NAMESPACE]).expect_err("the pod is gone").contains("NotFound"));
    assert_eq!(running.pod_sandboxes().len(), 1);
    assert!(health(&running, &ips[1], &authority.certificate, &controller).await.is_err(), "the deleted pod's agent still answers");

    // Deleting the namespace takes everything in it.
    kubectl.run(&["delete", "namespace", NAMESPACE, "--timeout=60s"]);
    let namespaces = kubectl.run(&["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default");
    assert!(running.pod_sandboxes().is_empty(), "sandboxes left: {:?}", running.pod_sandboxes());
    let prefix = running.prefix.clone();
    drop(running);
    assert!(merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default().is_empty(), "the fake left namespaces behind");
}

async fn kube_client(running: &Running) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&running.kubeconfig).expect("the fake's kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.expect("a client configuration");
    kube::Client::try_from(config).expect("a client")
}

/// What the provider's kubernetes runtime does through kube: typed objects
/// in and out, a conflict on a stale resourceVersion, a watch, and the
/// agent in a pod reached through the API server's port-forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_clients_create_watch_and_port_forward_through_the_fake() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
    use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};

    let dir = std::env::temp_dir().join(format!("merak-fake-kube-{}", std::process::id()));
    let image = format!("{IMAGE}={}", binary("merak-agent").display());
    let running = Running::start(&binary("merak-fake-cluster"), &dir, &["--nodes".into(), "2".into(), "--image".into(), image]).expect("the fake cluster starts");
    let client = kube_client(&running).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.expect("create the namespace");
    let (authority, _) = Authority::create("kube").expect("a CA");
    let agent = authority.issue(Role::Agent).expect("an agent certificate");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-tls"},
        "stringData": {"ca.pem": authority.certificate, "agent.pem": agent.certificate, "agent.key": agent.key},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.expect("create the secret");

    // A stale resourceVersion is a 409 Conflict.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "record"}, "data": {"v": "1"}})).unwrap();
    let first = maps.create(&PostParams::default(), &map).await.expect("create the config map");
    let mut second = first.clone();
    second.data = Some([("v".to_string(), "2".to_string())].into());
    maps.replace("record", &PostParams::default(), &second).await.expect("replace at the current version");
    let stale = maps.replace("record", &PostParams::default(), &second).await.expect_err("a stale replace");
    assert!(matches!(&stale, kube::Error::Api(status) if status.code == 409), "{stale:?}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod: Pod = serde_json::from_value(agent_pod("epm-0", IMAGE, json!({}))).unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.expect("create the pod");
    let from = created.metadata.resource_version.clone().expect("a resourceVersion");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ready = loop {
        let pod = pods.get("epm-0").await.expect("get the pod");
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
            break pod;
        }
        assert!(std::time::Instant::now() < deadline, "the pod did not get ready: {:?}", pod.status);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ready.status.and_then(|s| s.pod_ip).is_some_and(|ip| ip.starts_with("10.244.")));

    // The agent, through port-forward: a new forwarded stream per connection.
    let controller = authority.issue(Role::Controller).expect("a client certificate");
    let connector = merak_agent::tls::connector(authority.certificate.as_bytes(), controller.certificate.as_bytes(), controller.key.as_bytes()).unwrap();
    let forwarding = pods.clone();
    let dial = move || {
        let pods = forwarding.clone();
        async move {
            let mut forwarder = pods.portforward("epm-0", &[7443]).await.map_err(std::io::Error::other)?;
            forwarder.take_stream(7443).ok_or_else(|| std::io::Error::other("no stream for port 7443"))
        }
    };
    let channel = merak_agent::tls::channel_over(dial, connector).await.expect("a channel through port-forward");
    let reply = merak_proto::agent::agent_client::AgentClient::new(channel).health(merak_proto::agent::HealthRequest {}).await.expect("health through port-forward").into_inner();
    assert_eq!(reply.epm, "epm-0");

    // A watch from the pod's creation sees it modified (scheduled, started) and then deleted.
    let mut events = pods.watch(&WatchParams::default().fields("metadata.name=epm-0").timeout(30), &from).await.expect("a watch").boxed();
    pods.delete("epm-0", &DeleteParams::default()).await.expect("delete the pod");
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        match event.expect("a watch event") {
            WatchEvent::Modified(_) => seen.push("MODIFIED"),
            WatchEvent::Deleted(_) => {
                seen.push("DELETED");
                break;
            }
            WatchEvent::Added(_) => seen.push("ADDED"),
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    assert!(seen.first() == Some(&"MODIFIED") && seen.last() == Some(&"DELETED"), "{seen:?}");

    namespaces.delete(NAMESPACE, &DeleteParams::default()).await.expect("delete the namespace");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while namespaces.get_opt(NAMESPACE).await.expect("get the namespace").is_some() {
        assert!(std::time::Instant::now() < deadline, "the namespace was not removed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(running.pod_sandboxes().is_empty());
}

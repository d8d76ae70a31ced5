//! The fake cluster checked against real clients: `kubectl` (v1.32) creates,
//! waits on (a watch), lists, describes, reads logs of and deletes what
//! runs in it, rolls out a Deployment and sees its ReplicaSet replace a
//! deleted pod and go with it, and the agents inside its pods answer over
//! mutual TLS from the cluster network and from pods on other nodes; the
//! host's neighbour table is sized for the pods it can hold and given back.
//! Needs root (pods are network namespaces).

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
        let output = Command::new(merak_acceptance::kubectl())
            .env("KUBECONFIG", &self.0.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs (make deps installs it)");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn create(&self, object: &Value) -> String {
        let file = self.0.dir.join(format!("object-{}.json", object["metadata"]["name"].as_str().unwrap_or("x")));
        std::fs::write(&file, object.to_string()).expect("write the manifest");
        // The fake serves no OpenAPI schema for kubectl's client-side validation.
        self.run(&["create", "--validate=false", "-f", file.to_str().expect("a UTF-8 path")])
    }

    fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.run(&["get", "pod", name, "-n", NAMESPACE, "-o", "json"]))
            .expect("kubectl prints JSON")
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

async fn health(
    running: &Running,
    ip: &str,
    ca: &str,
    client: &merak_agent::pki::Identity,
) -> Result<(String, String), String> {
    health_from(format!("{}-net", running.prefix), ip, ca, client).await
}

/// The agent's health at `ip`, asked from inside the network namespace `network`.
async fn health_from(
    network: String,
    ip: &str,
    ca: &str,
    client: &merak_agent::pki::Identity,
) -> Result<(String, String), String> {
    let address: std::net::SocketAddr = format!("{ip}:7443").parse().map_err(|e| format!("{e}"))?;
    let dial = move || {
        let network = network.clone();
        async move {
            let stream = merak_netdev::netns::connect_in(&network, address, std::time::Duration::from_secs(2))
                .await
                .map_err(std::io::Error::other)?;
            stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(stream)
        }
    };
    let connector = merak_agent::tls::connector(ca.as_bytes(), client.certificate.as_bytes(), client.key.as_bytes())
        .map_err(|e| e.to_string())?;
    let channel = merak_agent::tls::channel_over(dial, connector).await.map_err(|e| format!("connect: {e}"))?;
    let reply = merak_proto::agent::agent_client::AgentClient::new(channel)
        .health(merak_proto::agent::HealthRequest {})
        .await
        .map_err(|e| format!("health: {e}"))?
        .into_inner();
    Ok((reply.epm, reply.build_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_describes_and_deletes_what_runs_in_the_fake() {
    let dir = std::env::temp_dir().join(format!("merak-fake-kubectl-{}", std::process::id()));
    let image = format!("{IMAGE}={}", binary("merak-agent").display());
    let running =
        Running::start(&binary("merak-fake-cluster"), &dir, &["--nodes".into(), "3".into(), "--image".into(), image])
            .expect("the fake cluster starts");
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
    let again = kubectl
        .try_run(&["create", "--validate=false", "-f", manifest.to_str().expect("a UTF-8 path")])
        .expect_err("a second namespace of the same name");
    assert!(again.contains("AlreadyExists") && again.contains("already exists"), "{again}");

    for name in ["epm-0", "epm-1"] {
        kubectl.create(&agent_pod(name, IMAGE, json!({})));
    }
    kubectl.create(&agent_pod("no-image", "localhost/merak-agent:missing", json!({})));
    kubectl.create(&agent_pod("nowhere", IMAGE, json!({"merak.dev/pool": "none"})));

    // `kubectl wait` follows the pods with a watch.
    kubectl.run(&["wait", "--for=condition=Ready", "pod/epm-0", "pod/epm-1", "-n", NAMESPACE, "--timeout=60s"]);
    let table = kubectl.run(&["get", "pods", "-n", NAMESPACE, "-o", "wide"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
            .to_string()
    };
    assert!(row("epm-0").contains("1/1") && row("epm-0").contains("Running"), "{table}");
    assert!(row("nowhere").contains("Pending"), "{table}");
    let (zero, one) = (kubectl.pod("epm-0"), kubectl.pod("epm-1"));
    assert_ne!(zero["spec"]["nodeName"], one["spec"]["nodeName"], "the scheduler spreads pods over nodes");
    let ips = [
        zero["status"]["podIP"].as_str().expect("a pod IP").to_string(),
        one["status"]["podIP"].as_str().expect("a pod IP").to_string(),
    ];

    // The agents in the pods answer, over mutual TLS from the cluster network.
    let controller = authority.issue(Role::Controller).expect("a client certificate");
    for (ip, name) in ips.iter().zip(["epm-0", "epm-1"]) {
        let (epm, build) =
            health(&running, ip, &authority.certificate, &controller).await.expect("the agent in the pod answers");
        assert_eq!(epm, name);
        assert!(build.starts_with(env!("CARGO_PKG_VERSION")), "{build}");
    }

    let described = kubectl.run(&["describe", "pod", "epm-0", "-n", NAMESPACE]);
    for expected in [
        "Status:           Running",
        "Successfully assigned merak-kubectl/epm-0 to fake-node-",
        "Container started",
        "/run/merak/tls from tls",
    ] {
        assert!(described.contains(expected), "describe lacks {expected:?}:\n{described}");
    }
    let logs = kubectl.run(&["logs", "epm-0", "-n", NAMESPACE]);
    assert!(logs.contains("agent serving"), "{logs}");
    let no_image = kubectl.run(&["describe", "pod", "no-image", "-n", NAMESPACE]);
    assert!(no_image.contains("Failed to pull image \"localhost/merak-agent:missing\""), "{no_image}");
    let nowhere = kubectl.run(&["describe", "pod", "nowhere", "-n", NAMESPACE]);
    assert!(
        nowhere.contains("FailedScheduling") && nowhere.contains("didn't match Pod's node affinity/selector"),
        "{nowhere}"
    );
    let selected = kubectl.run(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "merak.dev/role=epm,app.kubernetes.io/managed-by in (merak-test)",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "name",
    ]);
    assert_eq!(selected.lines().collect::<Vec<_>>(), ["pod/epm-0", "pod/epm-1"]);

    // Deleting a pod stops its agent and removes its sandbox.
    assert_eq!(running.pod_sandboxes().len(), 2, "one sandbox per running pod");
    let deleted = kubectl.run(&["delete", "pod", "epm-1", "-n", NAMESPACE]);
    assert!(deleted.contains("\"epm-1\" deleted"), "{deleted}");
    assert!(
        kubectl.try_run(&["get", "pod", "epm-1", "-n", NAMESPACE]).expect_err("the pod is gone").contains("NotFound")
    );
    assert_eq!(running.pod_sandboxes().len(), 1);
    assert!(
        health(&running, &ips[1], &authority.certificate, &controller).await.is_err(),
        "the deleted pod's agent still answers"
    );

    // Deleting the namespace takes everything in it.
    kubectl.run(&["delete", "namespace", NAMESPACE, "--timeout=60s"]);
    let namespaces = kubectl.run(&["get", "namespaces", "-o", "name"]);
    assert_eq!(
        namespaces.split_whitespace().collect::<Vec<_>>(),
        ["namespace/default", "namespace/kube-node-lease", "namespace/kube-public", "namespace/kube-system"]
    );
    assert!(running.pod_sandboxes().is_empty(), "sandboxes left: {:?}", running.pod_sandboxes());
    let prefix = running.prefix.clone();
    drop(running);
    assert!(
        merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default().is_empty(),
        "the fake left namespaces behind"
    );
}

/// The namespace, and the Secret with the agents' certificates, that agent
/// pods mount.
fn namespace_with_agent_tls(kubectl: &Kubectl<'_>, authority: &Authority) {
    let agent = authority.issue(Role::Agent).expect("an agent certificate");
    kubectl.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}));
    kubectl.create(&json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-tls", "namespace": NAMESPACE},
        "stringData": {"ca.pem": authority.certificate, "agent.pem": agent.certificate, "agent.key": agent.key},
    }));
}

/// Polls `check` every 100 ms for up to 60 s; its last answer.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A Deployment, made with kubectl, is rolled out by the fake's controllers
/// as by kube-controller-manager: its ReplicaSet `<deployment>-<hash>` and
/// pod `<replicaset>-<5>`, owner references, statuses, conditions and
/// events kubectl reads; a deleted pod comes back under a new name, and
/// deleting the Deployment takes its ReplicaSet and pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rolls_out_a_deployment_whose_pods_come_back_and_go_with_it() {
    let dir = std::env::temp_dir().join(format!("merak-fake-deployment-{}", std::process::id()));
    let image = format!("{IMAGE}={}", binary("merak-agent").display());
    let running =
        Running::start(&binary("merak-fake-cluster"), &dir, &["--nodes".into(), "2".into(), "--image".into(), image])
            .expect("the fake cluster starts");
    let kubectl = Kubectl(&running);
    let (authority, _) = Authority::create("deployment").expect("a CA");
    namespace_with_agent_tls(&kubectl, &authority);
    let controller = authority.issue(Role::Controller).expect("a client certificate");

    let pod = agent_pod("gateway", IMAGE, json!({}));
    kubectl.create(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "gateway", "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "merak-test"}},
        "spec": {
            "selector": {"matchLabels": {"merak.dev/role": "gateway"}},
            "template": {"metadata": {"labels": {"merak.dev/role": "gateway", "app.kubernetes.io/managed-by": "merak-test"}}, "spec": pod["spec"]},
        },
    }));
    let rolled = kubectl.run(&["rollout", "status", "deployment/gateway", "-n", NAMESPACE, "--timeout=60s"]);
    assert!(rolled.contains("deployment \"gateway\" successfully rolled out"), "{rolled}");

    // The Deployment with the API server's defaults and the controller's status.
    let deployment: Value =
        serde_json::from_str(&kubectl.run(&["get", "deployment", "gateway", "-n", NAMESPACE, "-o", "json"]))
            .expect("JSON");
    let spec = &deployment["spec"];
    assert_eq!(
        (spec["replicas"].as_i64(), spec["revisionHistoryLimit"].as_i64(), spec["progressDeadlineSeconds"].as_i64()),
        (Some(1), Some(10), Some(600))
    );
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    let status = &deployment["status"];
    assert_eq!(status["observedGeneration"], deployment["metadata"]["generation"]);
    for field in ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"] {
        assert_eq!(status[field], 1, "status.{field} in {status}");
    }
    let reasons: Vec<(String, String)> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| (c["type"].as_str().unwrap().to_string(), c["reason"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        reasons.contains(&("Available".into(), "MinimumReplicasAvailable".into()))
            && reasons.contains(&("Progressing".into(), "NewReplicaSetAvailable".into())),
        "{reasons:?}"
    );
    assert_eq!(deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");

    // Its ReplicaSet and pod, as named, labelled and owned by the controllers.
    let replica_sets: Value =
        serde_json::from_str(&kubectl.run(&["get", "rs", "-n", NAMESPACE, "-o", "json"])).expect("JSON");
    let [replica_set] = replica_sets["items"].as_array().expect("items").as_slice() else {
        panic!("one ReplicaSet: {replica_sets}")
    };
    let rs_name = replica_set["metadata"]["name"].as_str().expect("a name").to_string();
    let hash = replica_set["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("the pod-template-hash label")
        .to_string();
    assert_eq!(rs_name, format!("gateway-{hash}"));
    assert_eq!(replica_set["spec"]["selector"]["matchLabels"]["pod-template-hash"], hash.as_str());
    assert_eq!(replica_set["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let owner = &replica_set["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["name"].as_str(),
            owner["controller"].as_bool(),
            owner["blockOwnerDeletion"].as_bool()
        ),
        (Some("Deployment"), Some("gateway"), Some(true), Some(true))
    );
    assert_eq!(owner["uid"], deployment["metadata"]["uid"]);
    assert_eq!(
        (
            replica_set["status"]["replicas"].as_i64(),
            replica_set["status"]["readyReplicas"].as_i64(),
            replica_set["status"]["availableReplicas"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );

    let gateway_pods = || -> Vec<Value> {
        let list: Value = serde_json::from_str(&kubectl.run(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "merak.dev/role=gateway",
            "-o",
            "json",
        ]))
        .expect("JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let pods = gateway_pods();
    let [first] = pods.as_slice() else { panic!("one pod: {pods:?}") };
    let first_name = first["metadata"]["name"].as_str().expect("a name").to_string();
    let suffix = first_name
        .strip_prefix(&format!("{rs_name}-"))
        .unwrap_or_else(|| panic!("{first_name} is not named after {rs_name}"));
    assert!(suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{first_name}");
    assert_eq!(first["metadata"]["labels"]["pod-template-hash"], hash.as_str());
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    assert_eq!(first["metadata"]["ownerReferences"][0]["uid"], replica_set["metadata"]["uid"]);

    let table = kubectl.run(&["get", "deploy,rs,pods", "-n", NAMESPACE]);
    let row = |prefix: &str| {
        table
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix} in\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let headers: Vec<Vec<&str>> =
        table.lines().filter(|l| l.starts_with("NAME ")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        headers,
        [
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        ],
        "{table}"
    );
    assert_eq!(row("deployment.apps/gateway")[1..4], ["1/1", "1", "1"], "{table}");
    assert_eq!(row(&format!("replicaset.apps/{rs_name}"))[1..4], ["1", "1", "1"], "{table}");
    assert_eq!(row(&format!("pod/{first_name}"))[1..3], ["1/1", "Running"], "{table}");

    let described = kubectl.run(&["describe", "deployment", "gateway", "-n", NAMESPACE]);
    for expected in [
        "Replicas:               1 desired | 1 updated | 1 total | 1 available | 0 unavailable".to_string(),
        "RollingUpdateStrategy:  25% max unavailable, 25% max surge".to_string(),
        format!("NewReplicaSet:   {rs_name} (1/1 replicas created)"),
        format!("Scaled up replica set {rs_name} from 0 to 1"),
        "MinimumReplicasAvailable".to_string(),
        "NewReplicaSetAvailable".to_string(),
    ] {
        assert!(described.contains(&expected), "describe deployment lacks {expected:?}:\n{described}");
    }
    let described = kubectl.run(&["describe", "rs", &rs_name, "-n", NAMESPACE]);
    assert!(
        described.contains("Controlled By:  Deployment/gateway")
            && described.contains(&format!("Created pod: {first_name}")),
        "{described}"
    );

    // The agent in the Deployment's pod answers.
    let ip = first["status"]["podIP"].as_str().expect("a pod IP").to_string();
    let (epm, _) = health(&running, &ip, &authority.certificate, &controller)
        .await
        .expect("the agent in the deployment's pod answers");
    assert_eq!(epm, "gateway");

    // A deleted pod is replaced by one of another name, which gets ready and answers.
    let deleted = kubectl.run(&["delete", "pod", &first_name, "-n", NAMESPACE]);
    assert!(deleted.contains(&format!("\"{first_name}\" deleted")), "{deleted}");
    let second = eventually("a new ready pod", || {
        gateway_pods().into_iter().find(|p| p["metadata"]["name"] != first_name.as_str() && is_ready(p))
    })
    .await;
    let second_name = second["metadata"]["name"].as_str().expect("a name").to_string();
    assert!(second_name.starts_with(&format!("{rs_name}-")), "{second_name}");
    let rolled = kubectl.run(&["rollout", "status", "deployment/gateway", "-n", NAMESPACE, "--timeout=60s"]);
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    let ip = second["status"]["podIP"].as_str().expect("a pod IP").to_string();
    let (epm, _) =
        health(&running, &ip, &authority.certificate, &controller).await.expect("the replacement's agent answers");
    assert_eq!(epm, "gateway");
    let described = kubectl.run(&["describe", "rs", &rs_name, "-n", NAMESPACE]);
    assert!(described.contains(&format!("Created pod: {second_name}")), "{described}");

    // Deleting the Deployment takes its ReplicaSet and pods (background propagation).
    let deleted = kubectl.run(&["delete", "deployment", "gateway", "-n", NAMESPACE]);
    assert!(deleted.contains("deployment.apps \"gateway\" deleted"), "{deleted}");
    eventually("the ReplicaSet and pods to go", || {
        kubectl.run(&["get", "deploy,rs,pods", "-n", NAMESPACE, "-o", "name"]).trim().is_empty().then_some(())
    })
    .await;
    eventually("the sandboxes to go", || running.pod_sandboxes().is_empty().then_some(())).await;

    kubectl.run(&["delete", "namespace", NAMESPACE, "--timeout=60s"]);
    let prefix = running.prefix.clone();
    drop(running);
    assert!(
        merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default().is_empty(),
        "the fake left namespaces behind"
    );
}

/// Runs `ip` with `args`; its output.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each node's pods are on that node's bridge, in its pod CIDR, routed via
/// its bridge's address; pods on two nodes reach each other through the
/// cluster namespace (the agent in one answers mutual TLS asked from inside
/// the other), with the pod network's MTU on every bridge and veth.
/// Every node's pods share this host's kernel and so its one neighbour
/// table: the fake sizes it for the pods it can hold while it runs (2,000
/// pods overflowed the default), and gives the host its own value back.
#[test]
fn the_hosts_neighbour_table_is_sized_for_the_pods_and_given_back() {
    use merak_netdev::host_limits;
    let dir = std::env::temp_dir().join(format!("merak-fake-limits-{}", std::process::id()));
    let (users_before, entries_before) = (host_limits::users(), host_limits::arp_entries().expect("gc_thresh3"));
    let args = ["--nodes", "4", "--pods-per-node", "253"].map(String::from);
    let running = Running::start(&binary("merak-fake-cluster"), &dir, &args).expect("the fake cluster starts");
    let needed = merak_fake_cluster::network::host_limits(4 * 253).arp_entries;
    assert!(needed > 1024, "1,012 pods need more than the kernel's default table");
    assert!(host_limits::users().contains(&dir), "the fake holds the raised limits: {:?}", host_limits::users());
    let entries = host_limits::arp_entries().expect("gc_thresh3");
    assert!(entries >= needed, "gc_thresh3 is {entries} while 1,012 pods may run; {needed} needed");
    drop(running);
    let users_after = host_limits::users();
    assert!(!users_after.contains(&dir), "the stopped fake still holds the limits: {users_after:?}");
    if users_before.is_empty() && users_after.is_empty() {
        assert_eq!(host_limits::arp_entries().expect("gc_thresh3"), entries_before, "the host's own value is back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_different_nodes_reach_each_other_over_their_nodes_bridges() {
    let dir = std::env::temp_dir().join(format!("merak-fake-bridges-{}", std::process::id()));
    let image = format!("{IMAGE}={}", binary("merak-agent").display());
    let running = Running::start(
        &binary("merak-fake-cluster"),
        &dir,
        &["--nodes".into(), "3".into(), "--mtu".into(), "1400".into(), "--image".into(), image],
    )
    .expect("the fake cluster starts");
    let kubectl = Kubectl(&running);
    let (authority, _) = Authority::create("bridges").expect("a CA");
    namespace_with_agent_tls(&kubectl, &authority);
    let controller = authority.issue(Role::Controller).expect("a client certificate");
    for (name, node) in [("epm-a", "fake-node-1"), ("epm-b", "fake-node-3")] {
        kubectl.create(&agent_pod(name, IMAGE, json!({"kubernetes.io/hostname": node})));
    }
    kubectl.run(&["wait", "--for=condition=Ready", "pod/epm-a", "pod/epm-b", "-n", NAMESPACE, "--timeout=60s"]);
    let (a, b) = (kubectl.pod("epm-a"), kubectl.pod("epm-b"));
    let ip_of = |pod: &Value| pod["status"]["podIP"].as_str().expect("a pod IP").to_string();
    let (ip_a, ip_b) = (ip_of(&a), ip_of(&b));
    for (pod, node, cidr) in [(&a, "fake-node-1", "10.244.1."), (&b, "fake-node-3", "10.244.3.")] {
        assert_eq!(pod["spec"]["nodeName"], node);
        assert!(ip_of(pod).starts_with(cidr), "{} is not in {node}'s pod CIDR", ip_of(pod));
        let advertised = kubectl.run(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
        assert_eq!(advertised, format!("{cidr}0/24"));
    }

    // The sandboxes: eth0 at the pod IP in the node's /24, default route via the node's bridge.
    let mut sandbox_of = std::collections::HashMap::new();
    for sandbox in running.pod_sandboxes() {
        let addresses = ip(&["-n", &sandbox, "-4", "-o", "addr", "show", "dev", "eth0"]);
        let links = ip(&["-n", &sandbox, "-o", "link", "show", "dev", "eth0"]);
        assert!(links.contains("mtu 1400"), "{links}");
        for (pod_ip, gateway) in [(&ip_a, "10.244.1.1"), (&ip_b, "10.244.3.1")] {
            if addresses.contains(&format!("inet {pod_ip}/24 ")) {
                let route = ip(&["-n", &sandbox, "-4", "route", "show", "default"]);
                assert!(route.contains(&format!("default via {gateway} dev eth0")), "{route}");
                sandbox_of.insert(pod_ip.clone(), sandbox.clone());
            }
        }
    }
    assert_eq!(sandbox_of.len(), 2, "a sandbox for each pod: {sandbox_of:?}");

    // The cluster namespace: a bridge per node with its gateway address, each pod's veth on its node's bridge.
    let network = format!("{}-net", running.prefix);
    for (bridge, address, ports) in
        [("cbr0", "10.244.1.1/24", 1), ("cbr1", "10.244.2.1/24", 0), ("cbr2", "10.244.3.1/24", 1)]
    {
        let shown = ip(&["-n", &network, "-4", "-o", "addr", "show", "dev", bridge]);
        assert!(shown.contains(&format!("inet {address} ")), "{shown}");
        assert!(ip(&["-n", &network, "-o", "link", "show", "dev", bridge]).contains("mtu 1400"));
        let attached = ip(&["-n", &network, "-o", "link", "show", "master", bridge]);
        assert_eq!(attached.lines().count(), ports, "ports of {bridge}: {attached}");
        assert!(attached.lines().all(|l| l.contains("mtu 1400")), "{attached}");
    }
    assert!(
        ip(&["-n", &network, "-o", "link", "show"]).lines().all(|l| !l.contains("cni0")),
        "no single cluster bridge any more"
    );

    // Pod to pod across nodes, both ways: the agent answers mutual TLS asked from inside the other pod.
    let (epm, _) = health_from(sandbox_of[&ip_a].clone(), &ip_b, &authority.certificate, &controller)
        .await
        .expect("epm-b answers epm-a across nodes");
    assert_eq!(epm, "epm-b");
    let (epm, _) = health_from(sandbox_of[&ip_b].clone(), &ip_a, &authority.certificate, &controller)
        .await
        .expect("epm-a answers epm-b across nodes");
    assert_eq!(epm, "epm-a");
    // A full-size packet with DF set crosses the routed hop (the pod MTU less 28 bytes of headers).
    let ping = Command::new("ip")
        .args(["netns", "exec", &sandbox_of[&ip_a], "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", &ip_b])
        .output()
        .expect("ping runs");
    assert!(
        ping.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    kubectl.run(&["delete", "namespace", NAMESPACE, "--timeout=60s"]);
    assert!(running.pod_sandboxes().is_empty(), "sandboxes left: {:?}", running.pod_sandboxes());
    let prefix = running.prefix.clone();
    drop(running);
    assert!(
        merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default().is_empty(),
        "the fake left namespaces behind"
    );
}

async fn kube_client(running: &Running) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&running.kubeconfig).expect("the fake's kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("a client configuration");
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
    let running =
        Running::start(&binary("merak-fake-cluster"), &dir, &["--nodes".into(), "2".into(), "--image".into(), image])
            .expect("the fake cluster starts");
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
    let connector = merak_agent::tls::connector(
        authority.certificate.as_bytes(),
        controller.certificate.as_bytes(),
        controller.key.as_bytes(),
    )
    .unwrap();
    let forwarding = pods.clone();
    let dial = move || {
        let pods = forwarding.clone();
        async move {
            let mut forwarder = pods.portforward("epm-0", &[7443]).await.map_err(std::io::Error::other)?;
            forwarder.take_stream(7443).ok_or_else(|| std::io::Error::other("no stream for port 7443"))
        }
    };
    let channel = merak_agent::tls::channel_over(dial, connector).await.expect("a channel through port-forward");
    let reply = merak_proto::agent::agent_client::AgentClient::new(channel)
        .health(merak_proto::agent::HealthRequest {})
        .await
        .expect("health through port-forward")
        .into_inner();
    assert_eq!(reply.epm, "epm-0");

    // A watch from the pod's creation sees it modified (scheduled, started) and then deleted.
    let mut events = pods
        .watch(&WatchParams::default().fields("metadata.name=epm-0").timeout(30), &from)
        .await
        .expect("a watch")
        .boxed();
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

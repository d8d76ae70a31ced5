//! The kubernetes runtime's acceptance scenarios, run against any cluster:
//! the fake one (tests/fake-cluster: many nodes, injected failures) in
//! tests/kubernetes.rs and the real single-node one (tests/real-cluster:
//! a real API server, kubelet, containerd and runc) in tests/real_cluster.rs.
//! Each scenario drives the real terraform, checks with kubectl what the
//! provider made, and leaves nothing behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Workspace, fixtures, kubectl, repo_root};

/// A cluster the scenarios run against.
pub trait Cluster {
    fn kubeconfig(&self) -> &Path;
    /// The nodes pods may be spread over.
    fn nodes(&self) -> usize;
    /// How a diagnostic names a node of this cluster (a prefix of its name).
    fn node_name_prefix(&self) -> String;
    /// What the cluster's pods left on the host that should be gone once no
    /// pod exists (sandboxes, their network namespaces, running tasks).
    fn host_leftovers(&self) -> Vec<String>;
    /// The named network namespaces this cluster's pods may have on the
    /// host (another cluster running beside it reuses its pod IPs).
    fn pod_network_namespaces(&self) -> Vec<String>;
}

impl Cluster for merak_fake_cluster::Running {
    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
    fn nodes(&self) -> usize {
        3
    }
    fn node_name_prefix(&self) -> String {
        "fake-node-".into()
    }
    fn host_leftovers(&self) -> Vec<String> {
        self.pod_sandboxes()
    }
    fn pod_network_namespaces(&self) -> Vec<String> {
        merak_netdev::netns::list_with_prefix(&format!("{}-", self.prefix)).unwrap_or_default()
    }
}

/// kubectl against `cluster`, which must succeed; its output.
pub fn kubectl_ok(cluster: &dyn Cluster, args: &[&str]) -> String {
    let output =
        Command::new(kubectl()).env("KUBECONFIG", cluster.kubeconfig()).args(args).output().expect("kubectl runs");
    assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn provider_block(cluster: &dyn Cluster, image: &str) -> String {
    format!(
        "provider \"merak\" {{\n  runtime = \"kubernetes\"\n  kubernetes {{\n    kubeconfig        = \"{}\"\n    agent_image       = \"{image}\"\n    pod_ready_timeout = 60\n  }}\n}}\n",
        cluster.kubeconfig().display()
    )
}

/// The example, applied with this test's topology name and the cluster's kubeconfig.
fn example_workspace(test: &str, cluster: &dyn Cluster, image: &str) -> (Workspace, Vec<String>) {
    let ws = Workspace::new(test).with_provider(provider_block(cluster, image));
    let example =
        std::fs::read_to_string(repo_root().join("examples/terraform/kubernetes/main.tf")).expect("the example");
    std::fs::write(ws.dir.join("main.tf"), example).expect("write main.tf");
    let vars = vec![
        "-var".to_string(),
        format!("name={}", ws.name),
        "-var".into(),
        format!("kubeconfig={}", cluster.kubeconfig().display()),
        "-var".into(),
        format!("agent_image={image}"),
    ];
    (ws, vars)
}

pub fn with<'a>(command: &[&'a str], vars: &'a [String]) -> Vec<&'a str> {
    command.iter().copied().chain(vars.iter().map(String::as_str)).collect()
}

fn pod_names(cluster: &dyn Cluster, namespace: &str) -> Vec<String> {
    let listed = kubectl_ok(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/managed-by=terraform-provider-merak,merak.dev/role!=gateway",
            "-o",
            "name",
        ],
    );
    let mut names: Vec<String> = listed.lines().map(|l| l.trim_start_matches("pod/").to_string()).collect();
    names.sort();
    names
}

/// Terraform wraps diagnostics: compare words, not lines.
pub fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The cluster holds no namespace but those it started with.
pub fn assert_no_topology_namespace(cluster: &dyn Cluster) {
    let namespaces = kubectl_ok(cluster, &["get", "namespaces", "-o", "name"]);
    let ours: Vec<&str> = namespaces.lines().filter(|n| n.starts_with("namespace/merak-")).collect();
    assert!(ours.is_empty(), "namespaces of topologies left in the cluster: {ours:?}");
}

/// Nothing of the cluster's pods is left on the host (a real kubelet tears
/// sandboxes down a moment after the pods are gone from the API).
pub fn assert_host_clean(cluster: &dyn Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = cluster.host_leftovers();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left on the host a minute after destroy: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A fault cutting epm-5 off its top-of-rack vswitch, and the underlay's
/// pingall after it.
const CUT_EPM_5: &str = r#"
resource "merak_fault" "cut" {
  topology_id = merak_topology.dc.id
  name        = "cut"
  links       = ["s0-1--epm-5"]
}
"#;

/// examples/terraform/kubernetes: applied, pinged (also with full-size
/// packets), seen by kubectl, a deleted EPM pod repaired, the gateway pod
/// replaced, a link held down by a fault and let go, imported from a fresh
/// directory, destroyed without a trace.
pub fn quickstart_repairs_imports_and_goes_away(cluster: &dyn Cluster, image: &str) {
    let (ws, vars) = example_workspace("k8s", cluster, image);
    let namespace = format!("merak-{}", ws.name);
    ws.init();
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("6 of 6 EPMs ready, 3 vswitches, 8 links"), "{output}");
    assert!(output.contains("38/38 replies, 1/1 isolation probes blocked"), "{output}");

    // Full-size packets with DF set cross the tunnels (VXLAN in VXLAN over
    // the pod network): EVMs' MTU leaves room for both.
    std::fs::write(
        ws.dir.join("full_size.tf"),
        "data \"merak_pingall\" \"full\" {\n  topology_id = merak_topology.dc.id\n  full_size   = true\n  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.red]\n}\n\noutput \"full_size\" {\n  value = \"${data.merak_pingall.full.replies}/${data.merak_pingall.full.expected_replies} full-size replies\"\n}\n",
    )
    .expect("write full_size.tf");
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("38/38 full-size replies"), "{output}");

    // The merak command reaches every node through the API server and the
    // topology's gateway, as on the local runtime.
    let merak = crate::operate::Merak::kubernetes(cluster.kubeconfig(), &ws.name);
    crate::operate::nodes_answer_by_name(&merak, 6, "10.0.0.2", &ws.dir);

    // kubectl sees a pod per EPM and vswitch, running, spread over the nodes.
    let mut expected: Vec<String> =
        (0..6).map(|i| format!("epm-{i}")).chain(["s0-0", "s0-1", "s1-0"].map(String::from)).collect();
    expected.sort();
    assert_eq!(pod_names(cluster, &namespace), expected);
    let wide = kubectl_ok(cluster, &["get", "pods", "-n", &namespace, "-o", "wide"]);
    let nodes: std::collections::HashSet<&str> =
        wide.lines().skip(1).filter_map(|l| l.split_whitespace().nth(6)).collect();
    assert!(nodes.len() >= cluster.nodes().min(2), "the pods went to one node: {wide}");
    assert!(wide.lines().skip(1).all(|l| l.contains("Running")), "{wide}");
    let described = kubectl_ok(cluster, &["describe", "pod", "epm-0", "-n", &namespace]);
    assert!(described.contains(image) && described.contains("Started"), "{described}");
    let events = kubectl_ok(cluster, &["get", "events", "-n", &namespace]);
    assert!(events.contains("Scheduled") && events.contains("Started"), "the pods' events as users see them: {events}");
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"], &vars));
    assert_eq!(
        plan.status.code(),
        Some(0),
        "a fresh apply leaves nothing to do: {}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );

    // A deleted EPM pod: plan shows it, apply makes it anew with its EVMs.
    kubectl_ok(cluster, &["delete", "pod", "epm-2", "-n", &namespace]);
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"], &vars));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "the deleted pod is drift: {text}");
    assert!(text.contains("ready_epms"), "{text}");
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("6 of 6 EPMs ready"), "{output}");
    assert!(output.contains("38/38 replies, 1/1 isolation probes blocked"), "after the repair: {output}");
    assert_eq!(pod_names(cluster, &namespace), expected);

    // Every call to the agents went through the gateway, a Deployment; its
    // pod deleted, the Deployment makes another and a plan meanwhile finds
    // the topology whole through it.
    let deployments = kubectl_ok(cluster, &["get", "deployments", "-n", &namespace]);
    assert!(deployments.lines().any(|l| l.starts_with("merak-gateway ") && l.contains("1/1")), "{deployments}");
    let gateway = kubectl_ok(cluster, &["get", "pods", "-n", &namespace, "-l", "merak.dev/role=gateway", "-o", "name"]);
    assert_eq!(gateway.lines().count(), 1, "{gateway}");
    kubectl_ok(cluster, &["delete", "-n", &namespace, gateway.trim()]);
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"], &vars));
    assert_eq!(
        plan.status.code(),
        Some(0),
        "the gateway made anew: {}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    let again = kubectl_ok(cluster, &["get", "pods", "-n", &namespace, "-l", "merak.dev/role=gateway", "-o", "name"]);
    assert!(!again.contains(gateway.trim()), "a new gateway pod: {again}");

    // A fault on epm-5's link: the agents at both ends of its tunnel hold
    // it down, epm-5 is cut off, and the topology counts it as built;
    // without the fault every EVM answers again.
    let fault = format!("{CUT_EPM_5}{}", fixtures::underlay_pingall("merak_fault.cut"));
    std::fs::write(ws.dir.join("fault.tf"), fault).expect("write fault.tf");
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("underlay = \"20/30\""), "epm-5 answers none of 5 and asks none of 5: {output}");
    assert_eq!(ws.resource_values("merak_fault.cut")["down_links"], serde_json::json!(["s0-1--epm-5"]));
    for (node, device) in [("epm-5", "eth1"), ("s0-1", "e5"), ("epm-4", "eth1")] {
        let shown = crate::operate::said(&merak.exec(node, &["ip", "-o", "link", "show", device]));
        let up =
            shown.split('<').nth(1).and_then(|f| f.split('>').next()).is_some_and(|f| f.split(',').any(|x| x == "UP"));
        assert_eq!(up, node == "epm-4", "{node} {device}: {shown}");
    }
    ws.ok(&with(&["apply", "-refresh-only", "-auto-approve"], &vars));
    assert_eq!(ws.resource_values("merak_topology.dc")["ready_epms"], 6, "a link held down is as declared");
    // Brought back up by hand inside the pods: drift, which apply takes down again.
    for (node, device) in [("epm-5", "eth1"), ("s0-1", "e5")] {
        let set = merak.exec(node, &["ip", "link", "set", device, "up"]);
        assert!(set.status.success(), "{}", crate::operate::said(&set));
    }
    let plan = ws.terraform(&with(&["plan"], &vars));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("merak_fault.cut will be updated in-place") && text.contains("down_links"), "{text}");
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("underlay = \"20/30\""), "held down again: {output}");
    std::fs::remove_file(ws.dir.join("fault.tf")).expect("remove fault.tf");
    ws.ok(&with(&["apply", "-auto-approve"], &vars));
    let output = ws.ok(&with(&["apply", "-refresh-only", "-auto-approve"], &vars));
    assert!(output.contains("38/38 replies, 1/1 isolation probes blocked"), "healed: {output}");

    // A fresh directory with the same kubeconfig finds the topology.
    let fresh = Workspace::new("k8s-import").with_provider(provider_block(cluster, image));
    fresh.write_config(&format!("resource \"merak_topology\" \"dc\" {{\n  name = \"{}\"\n  racks = 2\n  hosts_per_rack = 3\n  data_plane_cidr = \"10.0.0.0/24\"\n}}\n", ws.name));
    fresh.init();
    fresh.ok(&["import", "merak_topology.dc", &ws.name]);
    let imported = fresh.resource_values("merak_topology.dc");
    assert_eq!((imported["hosts"].as_i64(), imported["ready_epms"].as_i64()), (Some(6), Some(6)), "{imported}");
    std::fs::remove_file(fresh.dir.join("terraform.tfstate")).expect("forget the import: the first directory destroys");
    drop(fresh);

    ws.ok(&with(&["destroy", "-auto-approve"], &vars));
    assert_no_topology_namespace(cluster);
    assert_host_clean(cluster);
    let name = ws.name.clone();
    drop(ws);
    let on_host: Vec<String> = merak_netdev::netns::list_with_prefix("merak-")
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.contains(&name))
        .collect();
    assert!(on_host.is_empty(), "namespaces of the topology on the host: {on_host:?}");
}

/// merak_acceptance::shaping's scenario on kubernetes: the agents shape
/// both ends of each EPM's tunnel (the EPM's NIC and the vswitch's port),
/// and the traffic runs in the pods' network namespaces, found on this host
/// by their pod IPs.
pub fn links_are_shaped_by_the_agents(cluster: &dyn Cluster, image: &str) {
    let ws = Workspace::new("k8s-shape").with_provider(provider_block(cluster, image));
    ws.write_config(&crate::shaping::config());
    ws.init();
    let namespaces = PodNamespaces::new(cluster, &ws.name);
    crate::shaping::links_are_shaped(&ws, &|epm| namespaces.of(epm));
    ws.ok(&["destroy", "-auto-approve"]);
    assert_no_topology_namespace(cluster);
    assert_host_clean(cluster);
}

/// merak_acceptance::fat_tree's scenario on kubernetes: every router a
/// pod, every link a tunnel between two pods with the model's addresses,
/// the routes the agents install; then destroy leaving nothing.
pub fn a_fat_tree_routes_over_every_core(cluster: &dyn Cluster, image: &str) {
    let ws = Workspace::new("k8s-fat").with_provider(provider_block(cluster, image));
    let main = crate::fat_tree::example(Some(&provider_block(cluster, image)));
    std::fs::write(ws.dir.join("main.tf"), main).expect("write main.tf");
    ws.init();
    let vars = [format!("name={}", ws.name)];
    let namespaces = PodNamespaces::new(cluster, &ws.name);
    crate::fat_tree::routes_over_every_core_and_survives_one(&ws, &vars, &|object| namespaces.of(object));
    ws.ok(&with(&["destroy", "-auto-approve"], &["-var".to_string(), vars[0].clone()]));
    assert_no_topology_namespace(cluster);
    assert_host_clean(cluster);
}

/// merak_acceptance::security_groups' scenario on kubernetes: the agents
/// enforce the groups in the EPM pods' router namespaces, traffic sent from
/// inside the EVMs with `merak exec`; then destroy leaving nothing.
pub fn security_groups_are_enforced_in_the_pods(cluster: &dyn Cluster, image: &str) {
    if crate::client_pass() {
        return eprintln!("the local scenario checks this client; the pods are the first pass's");
    }
    let ws = Workspace::new("k8s-sg").with_provider(provider_block(cluster, image));
    let main = crate::security_groups::example(Some(&provider_block(cluster, image)));
    std::fs::write(ws.dir.join("main.tf"), main).expect("write main.tf");
    ws.init();
    let vars = [format!("name={}", ws.name)];
    let merak = crate::operate::Merak::kubernetes(cluster.kubeconfig(), &ws.name);
    crate::security_groups::enforced_as_declared(&ws, &vars, &merak);
    ws.ok(&with(&["destroy", "-auto-approve"], &["-var".to_string(), vars[0].clone()]));
    assert_no_topology_namespace(cluster);
    assert_host_clean(cluster);
}

/// Each pod's network namespace on this host (the stand-in's pods and the
/// real node's are namespaces here), found by pod IP the first time one is
/// asked for: pods do not move unless deleted.
pub struct PodNamespaces<'a> {
    cluster: &'a dyn Cluster,
    namespace: String,
    found: std::cell::RefCell<std::collections::HashMap<String, String>>,
}

impl<'a> PodNamespaces<'a> {
    pub fn new(cluster: &'a dyn Cluster, topology: &str) -> Self {
        PodNamespaces { cluster, namespace: format!("merak-{topology}"), found: Default::default() }
    }

    /// The network namespace of pod `pod`.
    pub fn of(&self, pod: &str) -> String {
        if self.found.borrow().is_empty() {
            let listed = kubectl_ok(
                self.cluster,
                &[
                    "get",
                    "pods",
                    "-n",
                    &self.namespace,
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
                ],
            );
            let by_ip = namespaces_by_eth0_ip(self.cluster.pod_network_namespaces());
            let found = listed
                .lines()
                .filter_map(|line| line.split_once(' '))
                .filter_map(|(name, ip)| Some((name.to_string(), by_ip.get(ip.trim())?.clone())))
                .collect();
            *self.found.borrow_mut() = found;
        }
        self.found
            .borrow()
            .get(pod)
            .cloned()
            .unwrap_or_else(|| panic!("no network namespace on this host for pod {pod}"))
    }
}

/// These network namespaces by the IPv4 address of their `eth0`.
fn namespaces_by_eth0_ip(names: Vec<String>) -> std::collections::HashMap<String, String> {
    names
        .into_iter()
        .filter_map(|name| {
            let shown =
                Command::new("ip").args(["-n", &name, "-o", "-4", "addr", "show", "dev", "eth0"]).output().ok()?;
            let text = String::from_utf8_lossy(&shown.stdout).into_owned();
            let ip = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next()?.to_string();
            Some((ip, name))
        })
        .collect()
}

/// An agent under test, the commands of its container; `{port}` is the
/// Terraform variable's value, `$${epm}` and `$${epm_ip}` the provider's.
pub struct UnderTest<'a> {
    pub image: &'a str,
    /// Terraform the commands refer to (a `locals` block), or "".
    pub locals: &'a str,
    /// Serves the EPM's name on its data-plane address and the port.
    pub serve: &'a str,
    /// Passes when the server answers with the EPM's name.
    pub ready: &'a str,
    /// What the server's log shows of the ready command's request.
    pub served_log: &'a str,
    /// Exits with code 3 at once.
    pub crash: &'a str,
}

/// An agent under test in every EPM pod: a name server bound to the EPM's
/// data-plane address (so it runs in the pod's network namespace, where
/// eth1 holds that address), ready when it answers there with its EPM's
/// name; `crash` swaps it for a program that exits 3.
fn under_test_config(agent: &UnderTest) -> String {
    let config = r#"
variable "port" {
  type    = number
  default = 8000
}

variable "crash" {
  type    = bool
  default = false
}

resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.0.0.0/24"
  epm_agent {
    name            = "name-server"
    image           = "IMAGE"
    command         = var.crash ? CRASH : SERVE
    ready_command   = READY
    ready_timeout_s = var.crash ? 6 : 60
  }
}

output "agents_ready" {
  value = merak_topology.dc.epm_agents_ready
}
"#;
    let tenant = format!(
        "{}{}{}",
        fixtures::underlay_pingall("merak_topology.dc"),
        fixtures::tenant("4"),
        fixtures::pingall("merak_topology.dc, merak_evm_group.web")
    );
    let config = format!("{}{config}{tenant}", agent.locals);
    config
        .replace("IMAGE", agent.image)
        .replace("CRASH", agent.crash)
        .replace("SERVE", agent.serve)
        .replace("READY", agent.ready)
}

/// Agents under test run as containers of the EPM pods, next to
/// merak-agent; a new command makes the pods anew; one that keeps crashing
/// fails the apply naming it, and is drift.
pub fn agents_under_test_run_as_containers(cluster: &dyn Cluster, image: &str, agent: &UnderTest) {
    let ws = Workspace::new("k8s-agt").with_provider(provider_block(cluster, image));
    ws.write_config(&under_test_config(agent));
    ws.init();
    let namespace = format!("merak-{}", ws.name);
    let output = ws.apply();
    assert!(output.contains("agents_ready = 2") && fixtures::pingall_whole(&output), "{output}");
    assert!(output.contains("underlay = \"2/2\""), "the EPM pods reach each other over their tunnels: {output}");

    // kubectl sees the agent under test as a container of each EPM pod,
    // next to merak-agent, ready; its output is the container's log.
    let containers =
        kubectl_ok(cluster, &["get", "pod", "epm-1", "-n", &namespace, "-o", "jsonpath={.spec.containers[*].name}"]);
    assert_eq!(containers, "agent name-server");
    let ready = kubectl_ok(
        cluster,
        &["get", "pod", "epm-1", "-n", &namespace, "-o", "jsonpath={.status.containerStatuses[*].ready}"],
    );
    assert_eq!(ready, "true true");
    let log = kubectl_ok(cluster, &["logs", "epm-1", "-n", &namespace, "-c", "name-server"]);
    assert!(log.contains(agent.served_log), "the ready command reached the server on the EPM's address: {log}");
    assert_eq!(ws.plan().0, 0, "a fresh apply leaves nothing to do");

    // Another command is an update in place: the pods' containers cannot
    // change, so they are made anew, and their EVMs rebuilt in the same apply.
    let uid = |pod: &str| kubectl_ok(cluster, &["get", "pod", pod, "-n", &namespace, "-o", "jsonpath={.metadata.uid}"]);
    let before = uid("epm-0");
    let plan = ws.ok(&["plan", "-var", "port=8001"]);
    assert!(plan.contains("updated in-place") && !plan.contains("must be replaced"), "{plan}");
    let output = ws.ok(&["apply", "-auto-approve", "-var", "port=8001"]);
    assert!(output.contains("agents_ready = 2") && fixtures::pingall_whole(&output), "{output}");
    assert_ne!(uid("epm-0"), before, "the pod was made anew");
    let plan = ws.terraform(&["plan", "-detailed-exitcode", "-var", "port=8001"]);
    assert_eq!(plan.status.code(), Some(0), "the EVMs were rebuilt: {}", String::from_utf8_lossy(&plan.stdout));

    // An agent that keeps crashing fails the apply naming it, its exit code
    // and where its output is; the next plan shows the drift.
    let output = ws.terraform(&["apply", "-auto-approve", "-var", "crash=true"]);
    let error = words(&String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "a crashing agent under test fails the apply");
    assert!(error.contains("agent name-server:") && error.contains("last exited with code 3"), "{error}");
    assert!(error.contains(&format!("kubectl logs -n {namespace} epm-0 -c name-server")), "{error}");
    let plan = ws.terraform(&["plan", "-detailed-exitcode", "-var", "crash=true"]);
    assert_eq!(plan.status.code(), Some(2), "crashed agents are drift: {}", String::from_utf8_lossy(&plan.stdout));

    ws.ok(&["destroy", "-auto-approve", "-var", "crash=true"]);
    assert_no_topology_namespace(cluster);
}

/// An agent image no node has: the apply fails naming the pod, its node and
/// the kubelet's reason; the state keeps the topology, destroy removes it.
pub fn a_pod_that_cannot_run_is_reported(cluster: &dyn Cluster) {
    let ws = Workspace::new("k8s-image").with_provider(provider_block(cluster, "localhost/merak-agent:missing"));
    ws.write_config("resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n}\n");
    ws.init();
    let output = ws.terraform(&["apply", "-auto-approve"]);
    let error = words(&String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "an image no node has cannot run");
    assert!(
        error.contains("pod merak-k8s-image-")
            && error.contains(&format!("/epm-0 on node {}", cluster.node_name_prefix())),
        "the pod and its node: {error}"
    );
    assert!(
        error.contains("ErrImagePull") || error.contains("ImagePullBackOff") || error.contains("ErrImageNeverPull"),
        "the reason: {error}"
    );
    // The state records what exists, and destroy removes it.
    let listed = ws.ok(&["state", "list"]);
    assert!(listed.contains("merak_topology.dc"), "{listed}");
    ws.ok(&["destroy", "-auto-approve"]);
    assert_no_topology_namespace(cluster);
}

//! The kubernetes runtime through the real terraform, against the fake
//! cluster (tests/fake-cluster: an API server and kubelets that run every
//! pod for real as a network namespace on this host, with the agent binary
//! as its container): the quickstart's data center from
//! examples/terraform/kubernetes, pingall across tunnels between pods, a
//! deleted pod seen by plan and repaired by apply, import from a fresh
//! directory, missing permissions refused at plan, an API server that
//! refuses a share of requests, agents under test as containers of the EPM
//! pods, and destroy leaving nothing in the cluster or on the host. kubectl
//! checks what the provider made. Needs root.

use std::path::Path;
use std::process::Command;

use merak_acceptance::{Workspace, binary, kubectl, repo_root};
use merak_fake_cluster::Running;

const IMAGE: &str = "localhost/merak-agent:test";

fn fake_cluster(dir: &Path, extra: &[&str]) -> Running {
    let mut args = vec!["--nodes".to_string(), "3".into(), "--image".into(), format!("{IMAGE}={}", binary("merak-agent").display())];
    args.extend(extra.iter().map(|a| a.to_string()));
    Running::start(&binary("merak-fake-cluster"), dir, &args).expect("the fake cluster starts")
}

fn kubectl_ok(cluster: &Running, args: &[&str]) -> String {
    let output = Command::new(kubectl()).env("KUBECONFIG", &cluster.kubeconfig).args(args).output().expect("kubectl runs");
    assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn provider_block(cluster: &Running) -> String {
    format!(
        "provider \"merak\" {{\n  runtime = \"kubernetes\"\n  kubernetes {{\n    kubeconfig        = \"{}\"\n    agent_image       = \"{IMAGE}\"\n    pod_ready_timeout = 60\n  }}\n}}\n",
        cluster.kubeconfig.display()
    )
}

/// The example, applied with this test's topology name and the fake's kubeconfig.
fn example_workspace(test: &str, cluster: &Running) -> (Workspace, Vec<String>) {
    let ws = Workspace::new(test).with_provider(provider_block(cluster));
    let example = std::fs::read_to_string(repo_root().join("examples/terraform/kubernetes/main.tf")).expect("the example");
    std::fs::write(ws.dir.join("main.tf"), example).expect("write main.tf");
    let vars = vec![
        "-var".to_string(),
        format!("name={}", ws.name),
        "-var".into(),
        format!("kubeconfig={}", cluster.kubeconfig.display()),
        "-var".into(),
        format!("agent_image={IMAGE}"),
    ];
    (ws, vars)
}

fn with<'a>(command: &[&'a str], vars: &'a [String]) -> Vec<&'a str> {
    command.iter().copied().chain(vars.iter().map(String::as_str)).collect()
}

fn pod_names(cluster: &Running, namespace: &str) -> Vec<String> {
    let listed = kubectl_ok(cluster, &["get", "pods", "-n", namespace, "-l", "app.kubernetes.io/managed-by=terraform-provider-merak,merak.dev/role!=gateway", "-o", "name"]);
    let mut names: Vec<String> = listed.lines().map(|l| l.trim_start_matches("pod/").to_string()).collect();
    names.sort();
    names
}

/// Terraform wraps diagnostics: compare words, not lines.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_quickstart_runs_on_kubernetes_repairs_imports_and_goes_away() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-quick-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    let (ws, vars) = example_workspace("k8s", &cluster);
    let namespace = format!("merak-{}", ws.name);
    ws.init();
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("6 of 6 EPMs ready, 3 vswitches, 8 links"), "{output}");
    assert!(output.contains("38/38 replies, 1/1 isolation probes blocked"), "{output}");

    // Full-size packets with DF set cross the tunnels (VXLAN in VXLAN over
    // the fake's 1450-byte pod network): EVMs' MTU leaves room for both.
    std::fs::write(
        ws.dir.join("full_size.tf"),
        "data \"merak_pingall\" \"full\" {\n  topology_id = merak_topology.dc.id\n  full_size   = true\n  depends_on  = [merak_evm_group.web, merak_evm_group.db, merak_evm_group.red]\n}\n\noutput \"full_size\" {\n  value = \"${data.merak_pingall.full.replies}/${data.merak_pingall.full.expected_replies} full-size replies\"\n}\n",
    )
    .expect("write full_size.tf");
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("38/38 full-size replies"), "{output}");

    // kubectl sees a pod per EPM and vswitch, running, spread over the nodes.
    let mut expected: Vec<String> = (0..6).map(|i| format!("epm-{i}")).chain(["s0-0", "s0-1", "s1-0"].map(String::from)).collect();
    expected.sort();
    assert_eq!(pod_names(&cluster, &namespace), expected);
    let wide = kubectl_ok(&cluster, &["get", "pods", "-n", &namespace, "-o", "wide"]);
    let nodes: std::collections::HashSet<&str> = wide.lines().skip(1).filter_map(|l| l.split_whitespace().nth(6)).collect();
    assert!(nodes.len() >= 2, "the pods went to one node: {wide}");
    assert!(wide.lines().skip(1).all(|l| l.contains("Running")), "{wide}");
    let described = kubectl_ok(&cluster, &["describe", "pod", "epm-0", "-n", &namespace]);
    assert!(described.contains(IMAGE) && described.contains("Started"), "{described}");
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"], &vars));
    assert_eq!(plan.status.code(), Some(0), "a fresh apply leaves nothing to do: {}{}", String::from_utf8_lossy(&plan.stdout), String::from_utf8_lossy(&plan.stderr));

    // A deleted EPM pod: plan shows it, apply makes it anew with its EVMs.
    kubectl_ok(&cluster, &["delete", "pod", "epm-2", "-n", &namespace]);
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"], &vars));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "the deleted pod is drift: {text}");
    assert!(text.contains("ready_epms"), "{text}");
    let output = ws.ok(&with(&["apply", "-auto-approve"], &vars));
    assert!(output.contains("6 of 6 EPMs ready"), "{output}");
    assert!(output.contains("38/38 replies, 1/1 isolation probes blocked"), "after the repair: {output}");
    assert_eq!(pod_names(&cluster, &namespace), expected);

    // Every call to the agents went through the gateway, a Deployment; its
    // pod deleted, the Deployment makes another and a plan meanwhile finds
    // the topology whole through it.
    let deployments = kubectl_ok(&cluster, &["get", "deployments", "-n", &namespace]);
    assert!(deployments.lines().any(|l| l.starts_with("merak-gateway ") && l.contains("1/1")), "{deployments}");
    let gateway = kubectl_ok(&cluster, &["get", "pods", "-n", &namespace, "-l", "merak.dev/role=gateway", "-o", "name"]);
    assert_eq!(gateway.lines().count(), 1, "{gateway}");
    kubectl_ok(&cluster, &["delete", "-n", &namespace, gateway.trim()]);
    let plan = ws.terraform(&with(&["plan", "-detailed-exitcode"], &vars));
    assert_eq!(plan.status.code(), Some(0), "the gateway made anew: {}{}", String::from_utf8_lossy(&plan.stdout), String::from_utf8_lossy(&plan.stderr));
    let again = kubectl_ok(&cluster, &["get", "pods", "-n", &namespace, "-l", "merak.dev/role=gateway", "-o", "name"]);
    assert_ne!(again.trim(), gateway.trim(), "a new gateway pod");

    // A fresh directory with the same kubeconfig finds the topology.
    let fresh = Workspace::new("k8s-import").with_provider(provider_block(&cluster));
    fresh.write_config(&format!("resource \"merak_topology\" \"dc\" {{\n  name = \"{}\"\n  racks = 2\n  hosts_per_rack = 3\n  data_plane_cidr = \"10.0.0.0/24\"\n}}\n", ws.name));
    fresh.init();
    fresh.ok(&["import", "merak_topology.dc", &ws.name]);
    let imported = fresh.resource_values("merak_topology.dc");
    assert_eq!((imported["hosts"].as_i64(), imported["ready_epms"].as_i64()), (Some(6), Some(6)), "{imported}");
    std::fs::remove_file(fresh.dir.join("terraform.tfstate")).expect("forget the import: the first directory destroys");
    drop(fresh);

    ws.ok(&with(&["destroy", "-auto-approve"], &vars));
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default", "destroy leaves no namespace of the topology");
    assert!(cluster.pod_sandboxes().is_empty(), "pod sandboxes left: {:?}", cluster.pod_sandboxes());
    let prefix = cluster.prefix.clone();
    drop(ws);
    drop(cluster);
    assert!(merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default().is_empty(), "namespaces left on the host");
}

#[test]
fn missing_permissions_are_refused_at_plan_naming_them() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-rbac-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &["--deny", "create:pods", "--deny", "create:pods/portforward"]);
    let ws = Workspace::new("k8s-rbac").with_provider(provider_block(&cluster));
    ws.write_config("resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n}\n");
    ws.init();
    let error = words(&ws.plan_error("plan without the rights to create pods"));
    assert!(error.contains("lack permissions") && error.contains("create pods") && error.contains("create pods/portforward"), "{error}");
    assert!(error.contains("rbac.yaml"), "the fix is named: {error}");
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default", "nothing was made");
}

/// The image of the agents under test: the fake runs its containers from
/// this host's Python.
const PYTHON_IMAGE: &str = "localhost/python:3";

/// An agent under test in every EPM pod: a name server bound to the EPM's
/// data-plane address (so it runs in the pod's network namespace, where
/// eth1 holds that address), ready when it answers there with its EPM's
/// name; `crash` swaps it for a program that exits 3.
const UNDER_TEST: &str = r#"
variable "port" {
  type    = number
  default = 8000
}

variable "crash" {
  type    = bool
  default = false
}

locals {
  server = <<-EOT
    import http.server, sys
    class Name(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(sys.argv[1].encode())
    http.server.HTTPServer((sys.argv[2], int(sys.argv[3])), Name).serve_forever()
  EOT
}

resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.0.0.0/24"
  epm_agent {
    name            = "name-server"
    image           = "localhost/python:3"
    command         = var.crash ? ["python3", "-c", "raise SystemExit(3)"] : ["python3", "-c", local.server, "$${epm}", "$${epm_ip}", tostring(var.port)]
    ready_command   = ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://$${epm_ip}:${var.port}/', timeout=2).read() != b'$${epm}')"]
    ready_timeout_s = var.crash ? 6 : 60
  }
}

resource "merak_vpc" "blue" {
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.1.0.0/16"
}

resource "merak_subnet" "web" {
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.1.1.0/24"
}

resource "merak_evm_group" "web" {
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = 4
}

data "merak_pingall" "check" {
  topology_id = merak_topology.dc.id
  depends_on  = [merak_topology.dc, merak_evm_group.web]
}

output "agents_ready" {
  value = merak_topology.dc.epm_agents_ready
}

output "pingall" {
  value = "${data.merak_pingall.check.replies}/${data.merak_pingall.check.expected_replies} replies"
}

data "merak_pingall" "underlay" {
  topology_id = merak_topology.dc.id
  scope       = "underlay"
  depends_on  = [merak_topology.dc]
}

output "underlay" {
  value = "${data.merak_pingall.underlay.replies}/${data.merak_pingall.underlay.expected_replies}"
}
"#;

/// The `pingall` output says every expected reply came.
fn all_replied(output: &str) -> bool {
    let Some(line) = output.lines().find(|l| l.trim_start().starts_with("pingall = ")) else { return false };
    let counts = line.split('"').nth(1).and_then(|t| t.strip_suffix(" replies")).and_then(|t| t.split_once('/'));
    counts.is_some_and(|(got, expected)| got == expected && expected.parse::<u32>().is_ok_and(|n| n > 0))
}

fn python() -> String {
    let found = Command::new("sh").args(["-c", "command -v python3"]).output().expect("sh runs");
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

#[test]
fn agents_under_test_run_as_containers_of_the_epm_pods() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-epmagent-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &["--image", &format!("{PYTHON_IMAGE}={}", python())]);
    let ws = Workspace::new("k8s-agt").with_provider(provider_block(&cluster));
    ws.write_config(UNDER_TEST);
    ws.init();
    let namespace = format!("merak-{}", ws.name);
    let output = ws.apply();
    assert!(output.contains("agents_ready = 2") && all_replied(&output), "{output}");
    assert!(output.contains("underlay = \"2/2\""), "the EPM pods reach each other over their tunnels: {output}");

    // kubectl sees the agent under test as a container of each EPM pod,
    // next to merak-agent, ready; its output is the container's log.
    let containers = kubectl_ok(&cluster, &["get", "pod", "epm-1", "-n", &namespace, "-o", "jsonpath={.spec.containers[*].name}"]);
    assert_eq!(containers, "agent name-server");
    let ready = kubectl_ok(&cluster, &["get", "pod", "epm-1", "-n", &namespace, "-o", "jsonpath={.status.containerStatuses[*].ready}"]);
    assert_eq!(ready, "true true");
    let log = kubectl_ok(&cluster, &["logs", "epm-1", "-n", &namespace, "-c", "name-server"]);
    assert!(log.contains("\"GET / HTTP/1.1\" 200"), "the ready command reached the server on the EPM's address: {log}");
    assert_eq!(ws.plan().0, 0, "a fresh apply leaves nothing to do");

    // Another command is an update in place: the pods' containers cannot
    // change, so they are made anew, and their EVMs rebuilt in the same apply.
    let uid = |pod: &str| kubectl_ok(&cluster, &["get", "pod", pod, "-n", &namespace, "-o", "jsonpath={.metadata.uid}"]);
    let before = uid("epm-0");
    let plan = ws.ok(&["plan", "-var", "port=8001"]);
    assert!(plan.contains("updated in-place") && !plan.contains("must be replaced"), "{plan}");
    let output = ws.ok(&["apply", "-auto-approve", "-var", "port=8001"]);
    assert!(output.contains("agents_ready = 2") && all_replied(&output), "{output}");
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
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default", "nothing is left in the cluster");
}

#[test]
fn agents_under_test_need_an_image_on_kubernetes() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-noimage-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    let ws = Workspace::new("k8s-noimg").with_provider(provider_block(&cluster));
    ws.write_config(
        "resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n\
         epm_agent {\n    name = \"bgpd\"\n    command = [\"bgpd\"]\n  }\n  epm_agent {\n    name = \"agent\"\n    command = [\"x\"]\n    image = \"localhost/x:1\"\n  }\n}\n",
    );
    ws.init();
    let error = words(&ws.plan_error("plan with an epm_agent without an image on kubernetes"));
    assert!(error.contains("Missing epm_agent image") && error.contains("\"bgpd\""), "{error}");
    assert!(error.contains("Reserved epm_agent name") && error.contains("merak-agent's own container"), "{error}");
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default", "nothing was made");
}

#[test]
fn an_unreachable_api_server_is_refused_at_plan() {
    let ws = Workspace::new("k8s-down");
    let kubeconfig = ws.dir.join("kubeconfig");
    // A port nobody listens on: loopback only.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .expect("write a kubeconfig");
    let ws = ws.with_provider(format!(
        "provider \"merak\" {{\n  runtime = \"kubernetes\"\n  kubernetes {{\n    kubeconfig  = \"{}\"\n    agent_image = \"{IMAGE}\"\n  }}\n}}\n",
        kubeconfig.display()
    ));
    ws.write_config("resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n}\n");
    ws.init();
    let error = words(&ws.plan_error("plan against an API server that is down"));
    assert!(error.contains("does not answer") && error.contains("kubectl version"), "{error}");

    // And a kubernetes runtime without an image is refused before any call.
    let ws = ws.with_provider("provider \"merak\" {\n  runtime = \"kubernetes\"\n}\n".into());
    ws.write_config("resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n}\n");
    let error = words(&ws.plan_error("plan without agent_image"));
    assert!(error.contains("agent_image is required"), "{error}");
}

#[test]
fn apply_converges_while_the_api_server_refuses_a_share_of_requests() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-flaky-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &["--fail-every", "5"]);
    let ws = Workspace::new("k8s-flaky").with_provider(provider_block(&cluster));
    ws.write_config(
        r#"
resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 2
  hosts_per_rack  = 2
  data_plane_cidr = "10.0.0.0/24"
}

resource "merak_vpc" "blue" {
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.1.0.0/16"
}

resource "merak_subnet" "web" {
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.1.1.0/24"
}

resource "merak_evm_group" "web" {
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = 6
}

data "merak_pingall" "check" {
  topology_id = merak_topology.dc.id
  depends_on  = [merak_evm_group.web]
}

output "pingall" {
  value = "${data.merak_pingall.check.replies}/${data.merak_pingall.check.expected_replies}"
}
"#,
    );
    ws.init();
    let output = ws.apply();
    let line = output.lines().rev().find(|l| l.contains("pingall =")).unwrap_or_default().to_string();
    let (got, of) = line.trim_matches(|c: char| !c.is_ascii_digit() && c != '/').split_once('/').unwrap_or(("", "x"));
    assert!(got == of && !got.is_empty() && got != "0", "every ping answered though the API server refused every 5th request: {output}");
    ws.ok(&["destroy", "-auto-approve"]);
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default");
}

#[test]
fn a_pod_that_cannot_run_is_reported_with_its_node_and_reason() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-image-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    let block = provider_block(&cluster).replace(IMAGE, "localhost/merak-agent:missing");
    let ws = Workspace::new("k8s-image").with_provider(block);
    ws.write_config("resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n}\n");
    ws.init();
    let output = ws.terraform(&["apply", "-auto-approve"]);
    let error = words(&String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "an image no node has cannot run");
    assert!(error.contains("pod merak-k8s-image-") && error.contains("/epm-0 on node fake-node-"), "the pod and its node: {error}");
    assert!(error.contains("ErrImagePull") || error.contains("ImagePullBackOff"), "the reason: {error}");
    // The state records what exists, and destroy removes it.
    let listed = ws.ok(&["state", "list"]);
    assert!(listed.contains("merak_topology.dc"), "{listed}");
    ws.ok(&["destroy", "-auto-approve"]);
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert_eq!(namespaces.trim(), "namespace/default");
}

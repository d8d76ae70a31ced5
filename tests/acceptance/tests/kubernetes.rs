//! The kubernetes runtime through the real terraform, against the fake
//! cluster (tests/fake-cluster: an API server and kubelets that run every
//! pod for real as a network namespace on this host, with the agent binary
//! as its container). The scenarios a real cluster shows too live in
//! merak_acceptance::kubernetes and run here and in tests/real_cluster.rs;
//! what only the fake can show is here alone: pods spread over many nodes,
//! missing permissions refused at plan, an API server that refuses a share
//! of requests or does not answer. Needs root.

use std::path::Path;
use std::process::Command;

use merak_acceptance::kubernetes::{self, UnderTest, assert_no_topology_namespace, provider_block, words};
use merak_acceptance::{Workspace, binary, fixtures};
use merak_fake_cluster::Running;

const IMAGE: &str = "localhost/merak-agent:test";

fn fake_cluster(dir: &Path, extra: &[&str]) -> Running {
    let mut args = vec![
        "--nodes".to_string(),
        "3".into(),
        "--image".into(),
        format!("{IMAGE}={}", binary("merak-agent").display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Running::start(&binary("merak-fake-cluster"), dir, &args).expect("the fake cluster starts")
}

#[test]
fn the_quickstart_runs_on_kubernetes_repairs_imports_and_goes_away() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-quick-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    kubernetes::quickstart_repairs_imports_and_goes_away(&cluster, IMAGE);
    let prefix = cluster.prefix.clone();
    drop(cluster);
    assert!(
        merak_netdev::netns::list_with_prefix(&prefix).unwrap_or_default().is_empty(),
        "namespaces of the fake cluster left on the host"
    );
}

#[test]
fn links_are_shaped_by_the_agents_at_both_ends_of_each_tunnel() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-shape-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    kubernetes::links_are_shaped_by_the_agents(&cluster, IMAGE);
}

#[test]
fn a_fat_tree_of_router_pods_routes_over_every_core_and_survives_one() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-fat-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    kubernetes::a_fat_tree_routes_over_every_core(&cluster, IMAGE);
}

#[test]
fn security_groups_are_enforced_by_the_agents_in_the_epm_pods() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-sg-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    kubernetes::security_groups_are_enforced_in_the_pods(&cluster, IMAGE);
}

#[test]
fn missing_permissions_are_refused_at_plan_naming_them() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-rbac-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &["--deny", "create:pods", "--deny", "create:pods/portforward"]);
    let ws = Workspace::new("k8s-rbac").with_provider(provider_block(&cluster, IMAGE));
    ws.write_config("resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n}\n");
    ws.init();
    let error = words(&ws.plan_error("plan without the rights to create pods"));
    assert!(
        error.contains("lack permissions")
            && error.contains("create pods")
            && error.contains("create pods/portforward"),
        "{error}"
    );
    assert!(error.contains("rbac.yaml"), "the fix is named: {error}");
    assert_no_topology_namespace(&cluster);
}

/// The image of the agents under test: the fake runs its containers from
/// this host's Python.
const PYTHON_IMAGE: &str = "localhost/python:3";

fn python() -> String {
    let found = Command::new("sh").args(["-c", "command -v python3"]).output().expect("sh runs");
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

/// The name server, a Terraform local the commands use.
const NAME_SERVER: &str = r#"
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
"#;

#[test]
fn agents_under_test_run_as_containers_of_the_epm_pods() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-epmagent-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &["--image", &format!("{PYTHON_IMAGE}={}", python())]);
    let agent = UnderTest {
        image: PYTHON_IMAGE,
        locals: NAME_SERVER,
        serve: r#"["python3", "-c", local.server, "$${epm}", "$${epm_ip}", tostring(var.port)]"#,
        ready: r#"["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://$${epm_ip}:${var.port}/', timeout=2).read() != b'$${epm}')"]"#,
        served_log: "\"GET / HTTP/1.1\" 200",
        crash: r#"["python3", "-c", "raise SystemExit(3)"]"#,
    };
    kubernetes::agents_under_test_run_as_containers(&cluster, IMAGE, &agent);
}

#[test]
fn agents_under_test_need_an_image_on_kubernetes() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-noimage-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    let ws = Workspace::new("k8s-noimg").with_provider(provider_block(&cluster, IMAGE));
    ws.write_config(
        "resource \"merak_topology\" \"dc\" {\n  name = \"{name}\"\n  racks = 1\n  hosts_per_rack = 2\n  data_plane_cidr = \"10.0.0.0/24\"\n\
         epm_agent {\n    name = \"bgpd\"\n    command = [\"bgpd\"]\n  }\n  epm_agent {\n    name = \"agent\"\n    command = [\"x\"]\n    image = \"localhost/x:1\"\n  }\n}\n",
    );
    ws.init();
    let error = words(&ws.plan_error("plan with an epm_agent without an image on kubernetes"));
    assert!(error.contains("Missing epm_agent image") && error.contains("\"bgpd\""), "{error}");
    assert!(error.contains("Reserved epm_agent name") && error.contains("merak-agent's own container"), "{error}");
    assert_no_topology_namespace(&cluster);
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
    let ws = Workspace::new("k8s-flaky").with_provider(provider_block(&cluster, IMAGE));
    let topology = r#"
resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 2
  hosts_per_rack  = 2
  data_plane_cidr = "10.0.0.0/24"
}
"#;
    ws.write_config(&format!("{topology}{}{}", fixtures::tenant("6"), fixtures::pingall("merak_evm_group.web")));
    ws.init();
    let output = ws.apply();
    assert!(
        fixtures::pingall_whole(&output),
        "every ping answered though the API server refused every 5th request: {output}"
    );
    ws.ok(&["destroy", "-auto-approve"]);
    assert_no_topology_namespace(&cluster);
}

#[test]
fn a_pod_that_cannot_run_is_reported_with_its_node_and_reason() {
    let dir = std::env::temp_dir().join(format!("merak-k8s-image-{}", std::process::id()));
    let cluster = fake_cluster(&dir, &[]);
    kubernetes::a_pod_that_cannot_run_is_reported(&cluster);
}

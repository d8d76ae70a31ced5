//! The kubernetes runtime on a real single-node Kubernetes (tests/real-cluster):
//! a real API server, scheduler, controllers, kubelet, containerd and runc
//! start the agent image built from this tree. The scenarios the fake
//! cluster runs too (merak_acceptance::kubernetes), then what only a real
//! node shows: containerd and the kubelet restarted under a standing
//! topology, and a provider killed mid-apply whose lock the next run takes
//! over at once.
//!
//! One cluster for all scenarios (up about 10 s, down about 12 s), so this
//! test has its own `main` (Cargo.toml: harness = false): it starts the
//! cluster, runs each scenario, tears the cluster down whatever happened,
//! and fails when a scenario did. Where Go is missing (the cluster cannot be
//! built) it says so in one line and passes. Needs root.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use merak_acceptance::kubernetes::{
    self, UnderTest, assert_host_clean, assert_no_topology_namespace, kubectl_ok, provider_block, words,
};
use merak_acceptance::real_cluster::RealCluster;
use merak_acceptance::{Workspace, binary, fixtures};

const IMAGE: &str = "localhost/merak-agent:test";

/// A scenario by name, run against the one cluster of this run.
type Scenario<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// A standing topology with EVMs in one tenant network, and its pingall.
fn small() -> String {
    let topology = r#"
variable "evms" {
  type    = number
  default = 6
}

resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 2
  hosts_per_rack  = 2
  data_plane_cidr = "10.0.0.0/24"
}
"#;
    format!("{topology}{}{}", fixtures::tenant("var.evms"), fixtures::pingall("merak_evm_group.web"))
}

/// containerd, then the kubelet, restarted while a topology stands: the
/// pods live on (or are made anew), the next plan says what changed, apply
/// converges and every EVM answers again.
fn node_restarts_under_a_standing_topology(cluster: &RealCluster) {
    let ws = Workspace::new("rc-restart").with_provider(provider_block(cluster, IMAGE));
    ws.write_config(&small());
    ws.init();
    let output = ws.apply();
    assert!(fixtures::pingall_whole(&output), "{output}");
    let namespace = format!("merak-{}", ws.name);
    let uids = || kubectl_ok(cluster, &["get", "pods", "-n", &namespace, "-o", "jsonpath={.items[*].metadata.uid}"]);
    let before = uids();

    for component in ["containerd", "kubelet"] {
        cluster.restart(component);
        // The kubelet reports the node again before pods count as ready.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = kubectl_ok(
                cluster,
                &["get", "pods", "-n", &namespace, "-o", "jsonpath={.items[*].status.containerStatuses[*].ready}"],
            );
            if !ready.is_empty() && ready.split_whitespace().all(|r| r == "true") {
                break;
            }
            assert!(Instant::now() < deadline, "pods not ready 90 s after restarting {component}: {ready}");
            std::thread::sleep(Duration::from_millis(500));
        }
        let (code, plan) = ws.plan();
        assert!(code == 0 || code == 2, "plan after restarting {component}: {plan}");
        println!("    plan after restarting {component}: {}", if code == 0 { "no changes" } else { "changes" });
        let output = ws.apply();
        assert!(fixtures::pingall_whole(&output), "after restarting {component}: {output}");
        let (code, plan) = plan_once_settled(&ws);
        assert_eq!(code, 0, "converged after restarting {component}: {plan}");
    }
    println!("    pods {} across the restarts", if uids() == before { "lived on" } else { "were made anew" });
    ws.ok(&["destroy", "-auto-approve"]);
    assert_no_topology_namespace(cluster);
}

/// The plan once the node has settled after a restart. For a while after
/// it serves again, the restarted process is still catching up (the kubelet
/// with its pods' probes and the streams every call to an agent crosses),
/// and a plan then may show a pod or an agent as it was for a moment; once
/// in CI a plan right after the apply did. So the plan is asked again while
/// it shows changes, each time printing them, up to a minute: changes that
/// outlast that are a failure, with the plan that shows them.
fn plan_once_settled(ws: &Workspace) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, plan) = ws.plan();
        if code != 2 || Instant::now() >= deadline {
            return (code, plan);
        }
        let changes: Vec<&str> =
            plan.lines().map(str::trim).filter(|l| l.starts_with('#') || l.contains(" -> ")).collect();
        println!("    plan shows changes while the node settles: {}", changes.join("; "));
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The provider killed mid-apply (terraform lives on and fails): its lock in
/// the cluster names a process of this machine that is gone, so the next
/// apply takes it over at once instead of waiting for it to lapse.
fn a_killed_providers_lock_is_taken_over_at_once(cluster: &RealCluster) {
    let ws = Workspace::new("rc-lock").with_provider(provider_block(cluster, IMAGE));
    ws.write_config(&small());
    ws.init();
    let namespace = format!("merak-{}", ws.name);
    let mut child = ws.spawn_terraform(&["apply", "-auto-approve", "-var", "evms=60"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubectl_ok(cluster, &["get", "configmaps", "-n", &namespace, "-o", "name", "--ignore-not-found"])
        .contains("configmap/merak-lock")
    {
        assert!(child.try_wait().ok().flatten().is_none(), "the apply ended before its lock was seen");
        assert!(Instant::now() < deadline, "no lock 60 s into the apply");
        std::thread::sleep(Duration::from_millis(100));
    }
    let killed = merak_acceptance::faults::kill_providers(child.id());
    assert!(killed > 0, "no provider process of the apply to kill");
    let _ = child.wait_with_output();
    let holder =
        kubectl_ok(cluster, &["get", "configmap", "merak-lock", "-n", &namespace, "-o", "jsonpath={.data.holder}"]);
    assert!(holder.contains("terraform-provider-merak pid"), "the dead provider's lock is still there: {holder:?}");

    let output = ws.terraform(&["apply", "-auto-approve", "-var", "evms=60"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the next apply takes the lock over: {}",
        words(&format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)))
    );
    assert!(fixtures::pingall_whole(&stdout), "{stdout}");
    let (code, plan) = ws.plan();
    assert!(code == 0 || plan.contains("evm_count"), "{plan}");
    ws.ok(&["destroy", "-auto-approve", "-var", "evms=60"]);
    assert_no_topology_namespace(cluster);
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cluster = match RealCluster::start(&binary("merak-agent"), IMAGE) {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(unavailable)) => {
            println!("real cluster: not tested here: {}", unavailable.0);
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("real cluster: could not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("real cluster: up in {:.1} s", started.elapsed().as_secs_f64());
    let busybox = match cluster.import_test_image("busybox") {
        Ok(image) => image,
        Err(error) => {
            eprintln!("real cluster: {error}");
            return ExitCode::FAILURE;
        }
    };
    // busybox's httpd serves the EPM's name; wget checks it (without -T:
    // Debian's busybox-static wget crashes with a timeout set).
    let name_server = UnderTest {
        image: &busybox,
        locals: "",
        serve: r#"["sh", "-c", "mkdir -p /tmp/www && printf %s \"$1\" >/tmp/www/index.html && exec httpd -f -vv -p \"$2:$3\" -h /tmp/www", "serve", "$${epm}", "$${epm_ip}", tostring(var.port)]"#,
        ready: r#"["sh", "-c", "[ \"$(wget -q -O - http://$1:$2/)\" = \"$3\" ]", "ready", "$${epm_ip}", tostring(var.port), "$${epm}"]"#,
        served_log: "response:200",
        crash: r#"["sh", "-c", "exit 3"]"#,
    };

    let scenarios: Vec<Scenario> = vec![
        (
            "the_quickstart_runs_repairs_imports_and_goes_away",
            Box::new(|| kubernetes::quickstart_repairs_imports_and_goes_away(&cluster, IMAGE)),
        ),
        (
            "agents_under_test_run_as_containers_of_the_epm_pods",
            Box::new(|| kubernetes::agents_under_test_run_as_containers(&cluster, IMAGE, &name_server)),
        ),
        ("links_are_shaped_by_the_agents", Box::new(|| kubernetes::links_are_shaped_by_the_agents(&cluster, IMAGE))),
        (
            "a_fat_tree_routes_over_every_core",
            Box::new(|| kubernetes::a_fat_tree_routes_over_every_core(&cluster, IMAGE)),
        ),
        (
            "security_groups_are_enforced_in_the_pods",
            Box::new(|| kubernetes::security_groups_are_enforced_in_the_pods(&cluster, IMAGE)),
        ),
        (
            "a_pod_that_cannot_run_is_reported_with_its_node_and_reason",
            Box::new(|| kubernetes::a_pod_that_cannot_run_is_reported(&cluster)),
        ),
        ("node_restarts_under_a_standing_topology", Box::new(|| node_restarts_under_a_standing_topology(&cluster))),
        (
            "a_killed_providers_lock_is_taken_over_at_once",
            Box::new(|| a_killed_providers_lock_is_taken_over_at_once(&cluster)),
        ),
    ];
    // MERAK_REAL_CLUSTER_ONLY=NAME runs the scenarios whose name contains NAME.
    let only = std::env::var("MERAK_REAL_CLUSTER_ONLY").unwrap_or_default();
    let mut failed = Vec::new();
    for (name, scenario) in scenarios.iter().filter(|(name, _)| name.contains(&only)) {
        let begun = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(scenario));
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!("test real_cluster::{name} ... {verdict} ({:.1} s)", begun.elapsed().as_secs_f64());
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    // Whatever failed, the host must be clean of the pods' traces before down.sh.
    let clean = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_host_clean(&cluster))).is_ok();
    if !clean {
        failed.push("host_clean");
    }
    let count = scenarios.len();
    drop(scenarios);
    drop(cluster);
    println!(
        "real cluster: {count} scenarios, {} failed {:?}, {:.0} s with up and down",
        failed.len(),
        failed,
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

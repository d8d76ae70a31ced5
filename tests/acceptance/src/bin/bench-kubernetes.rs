//! Benchmark: the kubernetes runtime building a topology of EPM pods through
//! real terraform against the fake cluster (tests/fake-cluster: its kubelet
//! runs every pod for real, a network namespace with the agent started in
//! it), once per API latency asked for. Prints the wall time of apply and
//! destroy, pods per second, when the last pod ran, and the provider's CPU
//! time per pod, against a floor measured in the same run on the same fake:
//! a bare client making as many pods of the same shape, 32 at a time, and
//! waiting until every one runs, then deleting their namespace. The floor
//! is the fake's own pace; the provider's ratio to it says how much the
//! provider adds.
//!
//! With `real`, the same against the real single-node cluster of
//! tests/real-cluster (started and torn down here): a real kubelet,
//! containerd and runc start every pod.
//!
//! usage: bench-kubernetes [EPMS] [LATENCY_MS ...]   (default 2000 0 20)
//!        bench-kubernetes real [EPMS]                (default 400)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use merak_acceptance::kubernetes::Cluster;
use merak_acceptance::real_cluster::RealCluster;
use merak_acceptance::{Workspace, binary};
use merak_agent::pki::{Authority, Role};
use merak_fake_cluster::Running;
use serde_json::json;

const IMAGE: &str = "localhost/merak-agent:bench";
/// Pods the floor's client makes at once (the provider's own bound).
const IN_FLIGHT: usize = 32;
const NODES: usize = 10;
const PODS_PER_NODE: usize = 253;
const FLOOR_NAMESPACE: &str = "merak-bench-floor";

async fn kube_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Of the pods `selector` picks in `namespace`: how many exist, and how
/// many of them run and are ready.
async fn counted(client: &kube::Client, namespace: &str, selector: &str) -> (usize, usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else { return (0, 0) };
    let running = list
        .items
        .iter()
        .filter(|pod| {
            let status = pod.status.as_ref();
            status.and_then(|s| s.phase.as_deref()) == Some("Running")
                && status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    (list.items.len(), running)
}

async fn running(client: &kube::Client, namespace: &str, selector: &str) -> usize {
    counted(client, namespace, selector).await.1
}

async fn wait_namespace_gone(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    while namespaces.get_opt(name).await?.is_some() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The floor: `count` agent pods as the runtime makes them (privileged,
/// mutual TLS from a Secret, ready when the agent's port answers), made 32
/// at a time by a bare client, until all run; then their namespace deleted
/// until it is gone. Returns (create-to-running, delete-to-gone).
async fn floor(kubeconfig: &Path, count: usize) -> anyhow::Result<(Duration, Duration)> {
    let client = kube_client(kubeconfig).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": FLOOR_NAMESPACE}}))?;
    namespaces.create(&PostParams::default(), &namespace).await?;
    let (authority, _) = Authority::create("bench-floor")?;
    let agent = authority.issue(Role::Agent)?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-tls"},
        "stringData": {"ca.pem": authority.certificate, "agent.pem": agent.certificate, "agent.key": agent.key},
    }))?;
    Api::<Secret>::namespaced(client.clone(), FLOOR_NAMESPACE).create(&PostParams::default(), &secret).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), FLOOR_NAMESPACE);
    let started = Instant::now();
    let created: Vec<Result<Pod, kube::Error>> = futures::stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("floor-{i}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"merak.dev/bench": "floor"}},
                    // The shape of the runtime's EPM pods (objects::pod).
                    "spec": {
                        "terminationGracePeriodSeconds": 5,
                        "enableServiceLinks": false,
                        "automountServiceAccountToken": false,
                        "topologySpreadConstraints": [{
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"merak.dev/bench": "floor"}},
                        }],
                        "containers": [{
                            "name": "agent",
                            "image": IMAGE,
                            "args": ["--epm", name, "--listen", "0.0.0.0:7443", "--tls-dir", "/run/merak/tls"],
                            "ports": [{"name": "agent", "containerPort": 7443, "protocol": "TCP"}],
                            "env": [{"name": "MERAK_AGENT_LOG", "value": "info"}],
                            "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}},
                            "readinessProbe": {"tcpSocket": {"port": 7443}, "periodSeconds": 2},
                            "volumeMounts": [
                                {"name": "tls", "mountPath": "/run/merak/tls", "readOnly": true},
                                {"name": "tun", "mountPath": "/dev/net/tun"},
                            ],
                        }],
                        "volumes": [
                            {"name": "tls", "secret": {"secretName": "agent-tls", "defaultMode": 0o400}},
                            {"name": "tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}},
                        ],
                    },
                }))
                .map_err(kube::Error::SerdeError)?;
                pods.create(&PostParams::default(), &pod).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for result in created {
        result?;
    }
    while running(&client, FLOOR_NAMESPACE, "merak.dev/bench=floor").await < count {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = started.elapsed();
    let started = Instant::now();
    namespaces.delete(FLOOR_NAMESPACE, &DeleteParams::background()).await?;
    wait_namespace_gone(&client, FLOOR_NAMESPACE).await?;
    Ok((up, started.elapsed()))
}

/// CPU seconds (user + system) the provider's processes have used, by pid:
/// read from /proc while terraform runs, since a provider exits with it.
fn provider_cpu(seen: &mut std::collections::HashMap<u32, f64>) {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // comm is in parentheses and may hold spaces: fields after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        if !head.contains("terraform-provi") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are stat's fields 14 and 15: 12 and 13 after comm.
        let (Some(user), Some(system)) =
            (fields.get(11).and_then(|v| v.parse::<f64>().ok()), fields.get(12).and_then(|v| v.parse::<f64>().ok()))
        else {
            continue;
        };
        seen.insert(pid, (user + system) / ticks);
    }
}

/// What a timed terraform run measured.
struct Timed {
    wall: Duration,
    /// The provider's CPU time (user + system), seconds.
    cpu: f64,
    /// When every pod asked for existed, and when every one ran.
    all_created: Option<Duration>,
    all_running: Option<Duration>,
}

/// Runs terraform with `args`, sampling the provider's CPU and (once a
/// second) how many of `pods` exist and run.
fn timed_terraform(ws: &Workspace, args: &[&str], kubeconfig: &Path, namespace: &str, pods: usize) -> Timed {
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = {
        let (done, kubeconfig, namespace) = (done.clone(), kubeconfig.to_path_buf(), namespace.to_string());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let client = runtime.block_on(kube_client(&kubeconfig)).ok();
            let mut cpu = std::collections::HashMap::new();
            let (mut all_created, mut all_running) = (None, None);
            let mut last_count = Instant::now() - Duration::from_secs(1);
            while !done.load(Ordering::Relaxed) {
                provider_cpu(&mut cpu);
                if let Some(client) = &client
                    && all_running.is_none()
                    && pods > 0
                    && last_count.elapsed() >= Duration::from_secs(1)
                {
                    last_count = Instant::now();
                    let (existing, running) = runtime.block_on(counted(
                        client,
                        &namespace,
                        "app.kubernetes.io/managed-by=terraform-provider-merak",
                    ));
                    if existing >= pods && all_created.is_none() {
                        all_created = Some(started.elapsed());
                    }
                    if running >= pods {
                        all_running = Some(started.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (cpu.values().sum::<f64>(), all_created, all_running)
        })
    };
    ws.ok(args);
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (cpu, all_created, all_running) = sampler.join().expect("the sampler");
    Timed { wall, cpu, all_created, all_running }
}

/// One measured run on a cluster: the floor, then apply, no-op plan and
/// destroy of `epms` EPMs through terraform; prints the figures.
fn measure(runtime: &tokio::runtime::Runtime, kubeconfig: &Path, epms: u64, label: &str) -> anyhow::Result<()> {
    let hosts_per_rack = 40.min(epms.max(1));
    let racks = epms.div_ceil(hosts_per_rack);
    let ws = Workspace::new("k8s-bench").with_provider(format!(
        "provider \"merak\" {{\n  runtime = \"kubernetes\"\n  kubernetes {{\n    kubeconfig        = \"{}\"\n    agent_image       = \"{IMAGE}\"\n    pod_ready_timeout = 600\n  }}\n}}\n",
        kubeconfig.display()
    ));
    ws.write_config(&format!(
        "resource \"merak_topology\" \"bench\" {{\n  name = \"{{name}}\"\n  racks = {racks}\n  hosts_per_rack = {hosts_per_rack}\n  hosts = {epms}\n  data_plane_cidr = \"10.96.0.0/12\"\n}}\n"
    ));
    ws.init();
    let namespace = format!("merak-{}", ws.name);

    let pods = usize::try_from(epms)?;
    let (floor_up, floor_down) = runtime.block_on(floor(kubeconfig, pods))?;
    merak_acceptance::host::settle();

    // Its pods: one per EPM, per vswitch and the gateway's.
    let applied = timed_terraform(&ws, &["apply", "-auto-approve"], kubeconfig, &namespace, pods);
    let (apply, apply_cpu) = (applied.wall, applied.cpu);
    let values = ws.resource_values("merak_topology.bench");
    let ready = values["ready_epms"].as_u64().unwrap_or(0);
    let vswitches = values["vswitch_count"].as_u64().unwrap_or(0);
    anyhow::ensure!(ready == epms, "{ready} of {epms} EPMs ready after apply");
    let total = epms + vswitches + 1;
    let started = Instant::now();
    let (code, _) = ws.plan();
    let plan = started.elapsed();
    anyhow::ensure!(code == 0, "the plan after apply is not empty");
    let destroyed = timed_terraform(&ws, &["destroy", "-auto-approve"], kubeconfig, &namespace, 0);
    let (destroy, destroy_cpu) = (destroyed.wall, destroyed.cpu);
    drop(ws);

    let per_second = |pods: u64, time: Duration| pods as f64 / time.as_secs_f64().max(1e-9);
    println!("-- {label}: {epms} EPMs ({racks} racks of {hosts_per_rack})");
    println!(
        "floor (bare client, {pods} pods, {IN_FLIGHT} at once): {:>7.2} s to all running ({:.0} pods/s), {:.2} s to delete",
        floor_up.as_secs_f64(),
        per_second(epms, floor_up),
        floor_down.as_secs_f64()
    );
    println!(
        "terraform apply:   {:>7.2} s  {total} pods ({epms} EPMs, {vswitches} vswitches, gateway): {:.0} pods/s, {:.2}x the floor",
        apply.as_secs_f64(),
        per_second(total, apply),
        apply.as_secs_f64() / floor_up.as_secs_f64().max(1e-9)
    );
    if let Some(at) = applied.all_created {
        println!("  every pod made    {:>6.2} s into the apply (sampled each second)", at.as_secs_f64());
    }
    if let Some(at) = applied.all_running {
        println!("  every pod running {:>6.2} s into the apply; the agents' underlay after that", at.as_secs_f64());
    }
    println!("  provider CPU:    {:>7.2} s  ({:.2} ms per pod)", apply_cpu, apply_cpu * 1000.0 / total as f64);
    println!("no-op plan:        {:>7.2} s", plan.as_secs_f64());
    println!(
        "terraform destroy: {:>7.2} s  ({:.2}x the floor's delete; provider CPU {:.2} s)",
        destroy.as_secs_f64(),
        destroy.as_secs_f64() / floor_down.as_secs_f64().max(1e-9),
        destroy_cpu
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if words.first().map(String::as_str) == Some("real") {
        let epms = words.get(1).and_then(|a| a.parse().ok()).unwrap_or(400);
        let cluster = match RealCluster::start(&binary("merak-agent"), IMAGE).map_err(anyhow::Error::msg)? {
            Ok(cluster) => cluster,
            Err(unavailable) => anyhow::bail!("no real cluster: {}", unavailable.0),
        };
        let result = measure(&runtime, cluster.kubeconfig(), epms, "the real single-node cluster (tests/real-cluster)");
        drop(cluster);
        return result;
    }
    let args: Vec<u64> = words.iter().filter_map(|a| a.parse().ok()).collect();
    let epms = args.first().copied().unwrap_or(2000);
    let latencies: Vec<u64> = if args.len() > 1 { args[1..].to_vec() } else { vec![0, 20] };
    println!("bench-kubernetes: {epms} EPMs on the fake cluster, {NODES} nodes");
    for latency in latencies {
        let dir = std::env::temp_dir().join(format!("merak-bench-k8s-{}-{latency}", std::process::id()));
        let cluster = Running::start(
            &binary("merak-fake-cluster"),
            &dir,
            &[
                "--nodes".into(),
                NODES.to_string(),
                "--pods-per-node".into(),
                PODS_PER_NODE.to_string(),
                "--latency-ms".into(),
                latency.to_string(),
                "--image".into(),
                format!("{IMAGE}={}", binary("merak-agent").display()),
            ],
        )?;
        let result = measure(
            &runtime,
            &cluster.kubeconfig,
            epms,
            &format!("the fake cluster, {latency} ms added to every API call"),
        );
        drop(cluster);
        merak_acceptance::host::settle();
        result?;
    }
    Ok(())
}

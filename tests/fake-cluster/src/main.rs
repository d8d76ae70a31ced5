//! `merak-fake-cluster`: runs the stand-in cluster until SIGTERM or SIGINT,
//! with its kubeconfig at `<dir>/kubeconfig`, then stops its pods and
//! removes what it made.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use merak_fake_cluster::{Config, default_prefix, remove_leftovers, run};

#[derive(Parser)]
#[command(
    about = "A stand-in Kubernetes cluster for tests (API server and kubelets; pods run for real in network namespaces)"
)]
struct Args {
    /// Where the kubeconfig, pod logs and volumes go.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 110)]
    pods_per_node: usize,
    /// An image the nodes have, as REFERENCE=PROGRAM: a pod of that image
    /// runs PROGRAM (the image's entrypoint) with the container's args.
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
    /// Milliseconds added to every resource request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fail every N-th resource request, with 429 and 500 in turn.
    #[arg(long)]
    fail_every: Option<u64>,
    /// Deny a verb on a resource, as VERB:RESOURCE (`create:pods`, `get:secrets`, `*:configmaps`).
    #[arg(long)]
    deny: Vec<String>,
    #[arg(long, default_value_t = 1450)]
    mtu: u32,
    /// Prefix of the network namespaces it makes (default: mkf<pid>).
    #[arg(long)]
    prefix: Option<String>,
}

fn parse_image(text: &str) -> Result<(String, PathBuf), String> {
    let (reference, program) = text.split_once('=').ok_or("expected REFERENCE=PROGRAM")?;
    // The directory made absolute, the name kept: a container's command
    // names the program as the image does (`python3`, not what the link
    // points to).
    let path = std::path::Path::new(program);
    let name = path.file_name().ok_or_else(|| format!("{program}: not a file name"))?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let program = std::fs::canonicalize(parent).map_err(|e| format!("{program}: {e}"))?.join(name);
    if !program.is_file() {
        return Err(format!("{}: no such program", program.display()));
    }
    Ok((reference.to_string(), program))
}

/// Thousands of pods mean thousands of probes, port-forwards and children
/// at once: the open-file limit as high as the hard limit allows, as a
/// container runtime sets it.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> anyhow::Result<()> {
    raise_open_files();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MERAK_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let max_nodes = merak_fake_cluster::network::MAX_NODES;
    anyhow::ensure!(args.nodes > 0 && args.nodes <= max_nodes, "--nodes must be between 1 and {max_nodes}");
    let prefix = args.prefix.unwrap_or_else(default_prefix);
    let config = Config {
        dir: args.dir,
        nodes: args.nodes,
        pods_per_node: args.pods_per_node.min(merak_fake_cluster::network::MAX_PODS_PER_NODE),
        images: args.images,
        latency: Duration::from_millis(args.latency_ms),
        fail_every: args.fail_every.filter(|n| *n > 0),
        deny: args.deny,
        mtu: args.mtu,
        prefix: prefix.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let result = runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let (ready, endpoint) = tokio::sync::oneshot::channel::<merak_fake_cluster::Endpoint>();
        tokio::spawn(async move {
            if let Ok(endpoint) = endpoint.await {
                tracing::info!("kubeconfig: {}", endpoint.kubeconfig.display());
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        run(config, ready, shutdown).await
    });
    remove_leftovers(&prefix);
    result
}

//! `merak`: operating a running emulation from the shell. It finds a
//! topology from the records the provider keeps and reaches every node by
//! the name its plan gave it, through the node's agent:
//!
//!   merak status TOPOLOGY [--json]
//!   merak exec TOPOLOGY NODE -- COMMAND...
//!   merak capture TOPOLOGY NODE[:INTERFACE] [-w FILE] [-c COUNT]
//!
//! A NODE is an EPM (`epm-3`), a switch (`s0-1`, `core-0`) or an EVM
//! (`web-7`, as the `merak_evms` data source lists it).

mod capture;
mod exec;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use merak_provider::controller::Controller;

#[derive(Parser)]
#[command(
    name = "merak",
    version,
    about = "Operate a running merak emulation: its status, commands and packet captures inside any node",
    long_about = "Operate a running merak emulation from the shell. merak finds a topology from the records \
                  the provider keeps (the local runtime: files under --state-dir; kubernetes: objects in the \
                  cluster --kubeconfig names) and reaches every node by the name its plan gave it, through the \
                  node's agent. On kubernetes every call goes through the API server to the topology's \
                  gateway: only the API server must be reachable.\n\n\
                  A NODE is an EPM (epm-3), a switch (s0-1 of a tree; edge-0-1, agg-0-1 or core-0 of a fat \
                  tree) or an EVM (web-7: its group's name and index, as the merak_evms data source lists it)."
)]
struct Cli {
    /// The runtime the topology runs on (default: kubernetes when
    /// --kubeconfig or --context is given, else local).
    #[arg(long, global = true, value_enum)]
    runtime: Option<Runtime>,
    /// The local runtime's state directory (the provider's local.state_dir).
    #[arg(long, global = true, default_value = merak_provider::config::DEFAULT_STATE_DIR, env = "MERAK_STATE_DIR")]
    state_dir: PathBuf,
    /// The kubernetes runtime's kubeconfig (default: KUBECONFIG, then
    /// ~/.kube/config, then the service account of the pod merak runs in).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// How to reach the agents on kubernetes: through the API server
    /// (port-forward to the topology's gateway; works from anywhere the API
    /// server answers), or straight to the pod IPs (from inside the cluster).
    #[arg(long, global = true, value_enum, default_value = "port-forward")]
    access: Access,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    Local,
    Kubernetes,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Access {
    PortForward,
    Direct,
}

#[derive(Subcommand)]
enum Command {
    /// EPMs, switches and EVM groups of a topology, and what is unhealthy.
    /// Exits 1 when anything is.
    Status {
        topology: String,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs a command in a node's network namespace, as `ip netns exec`
    /// would, with its output streamed and its exit code passed through
    /// (stdin is not forwarded). Ctrl-C ends the command.
    Exec {
        topology: String,
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Captures the packets crossing an interface of a node, sent and
    /// received, as pcap: to a file, or to stdout for `| tshark -r -` or
    /// `| wireshark -k -i -`. Ends after --count packets, or on Ctrl-C.
    Capture {
        topology: String,
        /// NODE or NODE:INTERFACE; without an interface, the node's one
        /// interface besides lo (an EPM's NIC, an EVM's eth0).
        target: String,
        /// Write the pcap here instead of to stdout.
        #[arg(short = 'w', long = "write")]
        file: Option<PathBuf>,
        /// Stop after this many packets.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Bytes kept of each packet (default 262144).
        #[arg(short = 's', long)]
        snaplen: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERAK_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("merak: starting tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("merak: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let topology = match &cli.command {
        Command::Status { topology, .. } | Command::Exec { topology, .. } | Command::Capture { topology, .. } => {
            topology.clone()
        }
    };
    let controller = operator(&cli, &topology).await?;
    match cli.command {
        Command::Status { json, .. } => status::run(&controller, &topology, json).await,
        Command::Exec { node, command, .. } => exec::run(&controller, &topology, &node, command).await,
        Command::Capture { target, file, count, snaplen, .. } => {
            let options = capture::Options { file, count: count.unwrap_or(0), snaplen: snaplen.unwrap_or(0) };
            capture::run(&controller, &topology, &target, options).await
        }
    }
}

async fn operator(cli: &Cli, topology: &str) -> anyhow::Result<Controller> {
    let on_kubernetes = cli.kubeconfig.is_some() || cli.context.is_some();
    match cli.runtime.unwrap_or(if on_kubernetes { Runtime::Kubernetes } else { Runtime::Local }) {
        Runtime::Local => local_operator(cli, topology).await,
        Runtime::Kubernetes => kubernetes_operator(cli, topology).await,
    }
}

async fn local_operator(cli: &Cli, topology: &str) -> anyhow::Result<Controller> {
    let reading = || format!("reading topology {topology} under {}", cli.state_dir.display());
    let (controller, installed_agent) =
        merak_provider::config::local_operator(cli.state_dir.clone(), topology).await.with_context(reading)?;
    if controller.topology_spec(topology).await.with_context(reading)?.is_none() {
        anyhow::bail!(
            "there is no topology {topology} under {}: check its name (the merak_topology's name) and the \
             state directory (--state-dir, the provider's local.state_dir); on kubernetes, give --kubeconfig",
            cli.state_dir.display()
        );
    }
    if installed_agent.is_none() && matches!(cli.command, Command::Status { .. }) {
        anyhow::bail!(
            "merak-agent is neither beside merak nor on PATH: status compares the running agents' build with \
             it. Install merak beside the provider's merak-agent"
        );
    }
    Ok(controller)
}

async fn kubernetes_operator(cli: &Cli, topology: &str) -> anyhow::Result<Controller> {
    use merak_provider::runtime::kubernetes::objects;
    let access = match cli.access {
        Access::PortForward => objects::Access::PortForward,
        Access::Direct => objects::Access::Direct,
    };
    let controller = merak_provider::config::kubernetes_operator(cli.kubeconfig.clone(), cli.context.clone(), access)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let found = controller
        .topology_spec(topology)
        .await
        .with_context(|| format!("reading topology {topology} from the cluster"))?;
    if found.is_none() {
        anyhow::bail!(
            "the cluster has no topology {topology} (its records live in namespace merak-{topology}): check its \
             name, and --kubeconfig and --context"
        );
    }
    Ok(controller)
}

/// Resolves when the user presses Ctrl-C (or the process is told to stop).
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

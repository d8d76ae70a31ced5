//! merak-agent: started by a runtime inside an EPM's network namespace; serves
//! the agent API on a unix socket until told to stop (SIGTERM or SIGINT).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use merak_agent::netdev::Netlink;
use merak_agent::server::{AgentService, OverlayService};
use merak_proto::agent::agent_server::AgentServer;
use merak_proto::agent::overlay_server::OverlayServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser)]
#[command(version, about = "The agent inside an Emulated Physical Machine")]
struct Args {
    /// The EPM this agent serves (for reports and logs).
    #[arg(long)]
    epm: String,
    /// The unix socket to serve the agent API on (created with mode 0600).
    #[arg(long)]
    socket: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERAK_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    let netlink = Netlink::current().context("opening a netlink socket")?;
    match fs::remove_file(&args.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", args.socket.display())),
    }
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    fs::set_permissions(&args.socket, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", args.socket.display()))?;
    tracing::info!(epm = %args.epm, socket = %args.socket.display(), "agent serving");

    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentService::new(args.epm.clone(), netlink.clone())))
        .add_service(OverlayServer::new(OverlayService::new(netlink)).max_decoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("serving the agent API")?;
    let _ = fs::remove_file(&args.socket);
    tracing::info!(epm = %args.epm, "agent stopped");
    Ok(())
}

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
    /// A network namespace (its path, e.g. /run/netns/NAME) to enter first;
    /// without it the agent serves the namespace it was started in.
    #[arg(long)]
    netns: Option<PathBuf>,
}

/// Before any thread or descriptor of our own exists: leave the starter's
/// session (the agent outlives it, and a signal to its process group must
/// not reach us), close every descriptor we inherited (a CI runner's or
/// Terraform's pipes would otherwise never close), and enter the EPM's
/// namespace. The runtime starts agents with a plain spawn and leaves this
/// to them (see the provider's runtime::process).
fn detach_into(netns: Option<&std::path::Path>) -> anyhow::Result<()> {
    // SAFETY: setsid(2) and close_range(2) take no pointers; nothing of
    // ours is open above stderr yet.
    unsafe {
        libc::setsid();
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    if let Some(path) = netns {
        let namespace = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns(2) on a descriptor we own; still one thread.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&namespace), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {}", path.display()));
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    detach_into(args.netns.as_deref())?;
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERAK_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();

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

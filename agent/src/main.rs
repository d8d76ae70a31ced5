//! merak-agent: started by a runtime inside an EPM's network namespace; serves
//! the agent API on a unix socket, or on TCP with mutual TLS, until told to
//! stop (SIGTERM or SIGINT).
//! With --host it serves many EPMs' agents from one process instead (the
//! local runtime's way; see merak_agent::host).

use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use merak_agent::host::{self, HostService};
use merak_agent::netdev::Netlink;
use merak_agent::server::EpmNamespace;
use merak_agent::tls;
use merak_proto::agent::host_server::HostServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser)]
#[command(version, about = "The agent inside an Emulated Physical Machine")]
struct Args {
    /// The EPM this agent serves (for reports and logs).
    #[arg(long, required_unless_present_any = ["host", "gateway", "build_id"])]
    epm: Option<String>,
    /// The unix socket to serve the agent API on (created with mode 0600).
    #[arg(long, required_unless_present_any = ["host", "listen", "gateway", "build_id"], conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Serve the agent API on this TCP address instead (e.g. 0.0.0.0:7443),
    /// mutual TLS only, with the certificates in --tls-dir.
    #[arg(long, requires = "tls_dir")]
    listen: Option<std::net::SocketAddr>,
    /// The directory of ca.pem, agent.pem and agent.key: the identity agents
    /// on TCP present, and the CA their clients must be signed by.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// A network namespace (its path, e.g. /run/netns/NAME) to enter first;
    /// without it the agent serves the namespace it was started in.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Host the agents of many EPMs in this one process instead: they are
    /// added and removed over the Host API served on --control.
    #[arg(long, conflicts_with_all = ["epm", "socket", "listen", "netns"], requires = "control")]
    host: bool,
    /// The unix socket of the Host API (with --host; mode 0600).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Forward calls to the agents they name instead (see
    /// merak_agent::gateway), serving on --listen; --tls-dir holds
    /// gateway.pem and gateway.key too, its identity towards the agents.
    #[arg(long, conflicts_with_all = ["epm", "socket", "netns", "host"], requires_all = ["listen", "tls_dir"])]
    gateway: bool,
    /// The port the agents listen on (with --gateway).
    #[arg(long, default_value_t = 7443)]
    agent_port: u16,
    /// Print this build's id (the version and a digest of the executable)
    /// and exit: the provider asks it to know the file is merak-agent of
    /// its own release before it starts anything with it.
    #[arg(long, exclusive = true)]
    build_id: bool,
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

/// A host keeps two descriptors per EPM (its socket and its netlink
/// connection) plus one per client, a gateway one per agent: raise the open-file limit as far as the
/// kernel allows (root may raise the hard limit too).
fn raise_open_files() {
    let ceiling =
        fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1 << 20);
    let wanted = libc::rlimit { rlim_cur: ceiling, rlim_max: ceiling };
    // SAFETY: setrlimit/getrlimit with valid pointers to rlimit structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) == 0 {
                current.rlim_cur = current.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &current);
            }
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERAK_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.build_id {
        let id = merak_agent::build::current();
        anyhow::ensure!(!id.is_empty(), "cannot read this executable (/proc/self/exe) to digest it");
        println!("{id}");
        return Ok(());
    }
    detach_into(args.netns.as_deref())?;
    let tls = match &args.tls_dir {
        Some(dir) => Some(
            tls::acceptor_from_dir(dir).with_context(|| format!("loading the TLS identity in {}", dir.display()))?,
        ),
        None => None,
    };
    if args.gateway {
        // A connection to every agent of the topology, kept.
        raise_open_files();
        let (Some(address), Some(tls), Some(dir)) = (args.listen, tls, args.tls_dir.as_deref()) else {
            anyhow::bail!("--gateway needs --listen and --tls-dir")
        };
        let connector = tls::gateway_connector_from_dir(dir)
            .with_context(|| format!("loading the gateway's identity in {}", dir.display()))?;
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?.block_on(gateway(
            address,
            tls,
            connector,
            args.agent_port,
        ))
    } else if args.host {
        raise_open_files();
        let control = args.control.context("--host needs --control")?;
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting tokio")?
            .block_on(host(control, tls))
    } else {
        let epm = args.epm.context("--epm is required")?;
        let listen = match (args.socket, args.listen, tls) {
            (Some(socket), None, _) => Listen::Unix(socket),
            (None, Some(address), Some(tls)) => Listen::Tcp(address, tls),
            _ => anyhow::bail!("give --socket, or --listen with --tls-dir"),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting tokio")?
            .block_on(standalone(epm, listen))
    }
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Where a standalone agent listens.
enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr, TlsAcceptor),
}

async fn standalone(epm: String, listen: Listen) -> anyhow::Result<()> {
    init_logging();
    let netlink = Netlink::current().context("opening a netlink socket")?;
    let (listener, socket) = match listen {
        Listen::Unix(socket) => (
            host::Listener::Unix(host::bind(&socket).with_context(|| format!("binding {}", socket.display()))?),
            Some(socket),
        ),
        Listen::Tcp(address, tls) => {
            let listener =
                tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
            (host::Listener::Tls(listener, tls), None)
        }
    };
    tracing::info!(%epm, "agent serving");
    host::serve_epm(epm.clone(), EpmNamespace::Held(netlink), listener, shutdown_signal()?)
        .await
        .context("serving the agent API")?;
    if let Some(socket) = socket {
        let _ = fs::remove_file(&socket);
    }
    tracing::info!(%epm, "agent stopped");
    Ok(())
}

async fn gateway(
    address: std::net::SocketAddr,
    tls: TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    agent_port: u16,
) -> anyhow::Result<()> {
    init_logging();
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
    tracing::info!(%address, agent_port, "gateway serving");
    merak_agent::gateway::Gateway::new(connector, agent_port).serve(listener, tls, shutdown_signal()?).await;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn host(control: PathBuf, tls: Option<TlsAcceptor>) -> anyhow::Result<()> {
    init_logging();
    let listener = host::bind(&control).with_context(|| format!("binding {}", control.display()))?;
    let service = HostService::new(tls);
    tracing::info!(control = %control.display(), "agent host serving");
    tonic::transport::Server::builder()
        .add_service(HostServer::new(service.clone()).max_decoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal()?)
        .await
        .context("serving the host API")?;
    service.release_all().await;
    let _ = fs::remove_file(&control);
    tracing::info!("agent host stopped");
    Ok(())
}

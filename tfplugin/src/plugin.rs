//! go-plugin's server side: the magic cookie, the listener (a unix socket by
//! default, as go-plugin itself uses on Unix, or TCP on 127.0.0.1), the
//! handshake line, optional TLS, and the support services around tfplugin6.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use base64::Engine;
use merak_proto::go_plugin::Empty;
use merak_proto::go_plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use merak_proto::tfplugin6::provider_server::ProviderServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::server::ProviderService;
use super::tls;

pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
pub const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin's core protocol version, then tfplugin's major version.
const CORE_PROTOCOL_VERSION: u32 = 1;
const APP_PROTOCOL_VERSION: u32 = 6;
pub const PROVIDER_ADDRESS: &str = "registry.terraform.io/merak/merak";
/// How long open connections may take to finish after Shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub transport: Transport,
    /// Debug mode: no cookie, no TLS, print TF_REATTACH_PROVIDERS, run until
    /// interrupted instead of until the host says Shutdown.
    pub debug: bool,
}

/// Runs the plugin until the host shuts it down.
pub async fn serve<C: Send + Sync + 'static>(
    provider: ProviderService<C>,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let tls = match std::env::var("PLUGIN_CLIENT_CERT") {
        Ok(pem) if !options.debug && !pem.trim().is_empty() => {
            let client = tls::parse_client_certificate(&pem)?;
            let identity = tls::ServerIdentity::generate()?;
            let config = identity.server_config(Some(client))?;
            Some((TlsAcceptor::from(Arc::new(config)), identity.certificate))
        }
        _ => None,
    };

    let (listener, address) = listen(options.transport).await?;
    let network = match options.transport {
        Transport::Unix => "unix",
        Transport::Tcp => "tcp",
    };
    if options.debug {
        print_reattach(network, &address)?;
    } else {
        let certificate = tls
            .as_ref()
            .map(|(_, cert)| base64::engine::general_purpose::STANDARD_NO_PAD.encode(cert))
            .unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|{network}|{address}|grpc|{certificate}")
            .and_then(|()| stdout.flush())
            .context("writing the handshake line")?;
    }

    let (connections_tx, connections_rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, tls.map(|(acceptor, _)| acceptor), connections_tx));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("plugin", tonic_health::ServingStatus::Serving).await;
    let shutdown = Arc::new(Notify::new());
    let controller = Controller { shutdown: Arc::clone(&shutdown) };

    // Stop when the host says Shutdown (or, in debug mode, on Ctrl-C). Open
    // connections get a moment to finish; the host may keep its connection
    // open, and must not keep us alive.
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let release = provider.releaser();
    let stop_signal = async move {
        if options.debug {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            shutdown.notified().await;
        }
        // Before the host's patience runs out (it kills a plugin that
        // lingers): what outlives us must be let go now.
        release().await;
        let _ = stopped_tx.send(true);
    };
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(GrpcControllerServer::new(controller))
        .add_service(
            ProviderServer::new(provider).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(connections_rx), stop_signal);
    let grace_over = async move {
        let mut stopped = stopped_rx;
        let _ = stopped.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result.context("serving gRPC")?,
        () = grace_over => tracing::debug!("connections still open after shutdown; exiting anyway"),
    }
    if let Transport::Unix = options.transport {
        let _ = std::fs::remove_dir_all(PathBuf::from(&address).parent().unwrap_or(&PathBuf::new()));
    }
    Ok(())
}

/// Socket directories are `<tmp>/plugin-merak-<pid>`.
const SOCKET_DIR_PREFIX: &str = "plugin-merak-";

/// A provider that was killed (Terraform's own kill after its grace period,
/// a test's) could not remove its socket directory: the next provider to
/// start removes those whose process is gone, so they do not pile up.
fn remove_dead_providers_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix(SOCKET_DIR_PREFIX)).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

async fn listen(transport: Transport) -> anyhow::Result<(Listener, String)> {
    match transport {
        Transport::Unix => {
            remove_dead_providers_dirs();
            // A private directory: only this user can reach the socket.
            let dir = std::env::temp_dir().join(format!("{SOCKET_DIR_PREFIX}{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            let path = dir.join("plugin.sock");
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
            Ok((Listener::Unix(listener), path.display().to_string()))
        }
        Transport::Tcp => {
            let port = |name: &str, default: u16| -> anyhow::Result<u16> {
                match std::env::var(name) {
                    Ok(text) => text.trim().parse().with_context(|| format!("{name}={text:?} is not a port")),
                    Err(_) => Ok(default),
                }
            };
            let (min, max) = (port("PLUGIN_MIN_PORT", 10000)?, port("PLUGIN_MAX_PORT", 25000)?);
            if min > max {
                bail!("PLUGIN_MIN_PORT {min} is above PLUGIN_MAX_PORT {max}");
            }
            for candidate in min..=max {
                if let Ok(listener) = TcpListener::bind(("127.0.0.1", candidate)).await {
                    return Ok((Listener::Tcp(listener), format!("127.0.0.1:{candidate}")));
                }
            }
            bail!("no free TCP port between PLUGIN_MIN_PORT={min} and PLUGIN_MAX_PORT={max}")
        }
    }
}

fn print_reattach(network: &str, address: &str) -> anyhow::Result<()> {
    let reattach = serde_json::json!({
        PROVIDER_ADDRESS: {
            "Protocol": "grpc",
            "ProtocolVersion": APP_PROTOCOL_VERSION,
            "Pid": std::process::id(),
            "Test": true,
            "Addr": { "Network": network, "String": address },
        }
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "Provider started. To attach Terraform, set in the environment:\n\n    TF_REATTACH_PROVIDERS='{reattach}'\n"
    )
    .and_then(|()| stdout.flush())
    .context("writing reattach instructions")
}

/// Accepts connections, does the TLS handshake off the accept path, and
/// hands finished connections to the gRPC server.
async fn accept_loop(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    connections: mpsc::Sender<Result<Connection, std::io::Error>>,
) {
    loop {
        let accepted: std::io::Result<Box<dyn Stream>> = match &listener {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Stream>),
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Stream>
            }),
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let connections = connections.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let connection = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls_stream) => Connection(Box::pin(tls_stream)),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => Connection(Box::into_pin(stream)),
            };
            let _ = connections.send(Ok(connection)).await;
        });
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// One accepted connection, plain or TLS.
struct Connection(Pin<Box<dyn Stream>>);

impl Connected for Connection {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

/// go-plugin's controller: Shutdown asks the plugin to exit.
struct Controller {
    shutdown: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::debug!("shutdown requested by the host");
        self.shutdown.notify_one();
        Ok(Response::new(Empty {}))
    }
}

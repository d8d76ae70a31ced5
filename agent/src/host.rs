//! Serving agents: one EPM's agent on its unix socket or on TCP with mutual
//! TLS (what a standalone agent does), and the host that serves many EPMs'
//! agents from one process (the Host service of agent.proto, used by the
//! provider's local runtime).
//!
//! A hosted agent is the same as a standalone one to its clients: its own
//! socket, netlink connections opened inside its EPM's namespace (per
//! request: one descriptor per EPM, see `EpmNamespace`), the same Agent and
//! Overlay services. What the host saves is a process per EPM
//! (10,000 of them cost more than their work: exec and relocation, page
//! tables, and the kernel's reverse-map walks over one file mapped 10,000
//! times).

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use merak_proto::agent::agent_server::AgentServer;
use merak_proto::agent::host_server::Host;
use merak_proto::agent::operate_server::OperateServer;
use merak_proto::agent::overlay_server::OverlayServer;
use merak_proto::agent::{HostedEpm, ReleaseReply, ReleaseRequest, ServeReply, ServeRequest};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Mutex, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::netns::{self, NamespaceId};
use crate::operate::OperateService;
use crate::server::{AgentService, EpmNamespace, OverlayService};

/// The largest batch a Serve request may carry (an EPM count; each one
/// costs a descriptor here, its socket).
pub const MAX_HOSTED: usize = 100_000;

/// How long a released agent may take to finish the requests it is serving.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// Binds `socket` for an agent, replacing a stale one, readable by root only.
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Where an agent takes its clients.
pub enum Listener {
    /// A unix socket (mode 0600: root's clients only).
    Unix(UnixListener),
    /// TCP, each connection mutual TLS (see crate::tls).
    Tls(TcpListener, TlsAcceptor),
}

/// Serves one EPM's agent on `listener` until `shutdown` completes.
pub async fn serve_epm(
    epm: String,
    namespace: EpmNamespace,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let agent = AgentService::in_namespace(epm.clone(), namespace.clone());
    let supervisor = agent.supervisor();
    let router = tonic::transport::Server::builder()
        .add_service(AgentServer::new(agent))
        .add_service(
            OverlayServer::new(OverlayService::in_namespace(epm, namespace.clone()))
                .max_decoding_message_size(64 << 20),
        )
        .add_service(OperateServer::new(OperateService::in_namespace(namespace)));
    let served = match listener {
        Listener::Unix(listener) => {
            router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await
        }
        Listener::Tls(listener, acceptor) => {
            router.serve_with_incoming_shutdown(crate::tls::incoming(listener, acceptor), shutdown).await
        }
    };
    // An agent that stops serving stops what it supervises.
    supervisor.stop_all().await;
    served
}

/// Where a hosted agent was asked to listen: (socket or address, TCP).
type Listen = (String, bool);

struct Hosted {
    namespace: NamespaceId,
    /// The prefix of the EPM's router namespaces (`<EPM namespace>.r.`).
    router_prefix: String,
    listen: Listen,
    /// Where it listens: the socket, or the address with the port bound.
    address: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Hosted {
    fn running(&self) -> bool {
        !self.done.is_finished()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(RELEASE_GRACE, self.done).await;
        // The EPM's router namespaces go with it; their nftables contexts
        // must not hold them.
        crate::nftables::forget_prefix(&self.router_prefix);
        if !self.listen.1 {
            let _ = fs::remove_file(&self.address);
        }
    }

    /// Still serving as asked, where it was asked to.
    fn serves(&self, listen: &Listen, namespace: Option<NamespaceId>) -> bool {
        let listening = if listen.1 { true } else { Path::new(&self.address).exists() };
        self.running() && self.listen == *listen && namespace == Some(self.namespace) && listening
    }
}

/// The agents this process hosts, by EPM name.
#[derive(Clone)]
pub struct HostService {
    hosted: Arc<Mutex<HashMap<String, Hosted>>>,
    /// The identity agents on TCP present (none: unix sockets only).
    tls: Option<TlsAcceptor>,
}

impl HostService {
    pub fn new(tls: Option<TlsAcceptor>) -> Self {
        HostService { hosted: Arc::default(), tls }
    }

    /// Starts (or keeps) serving one EPM's agent; where it listens, or why not.
    async fn serve_one(&self, request: HostedEpm) -> Result<String, String> {
        let HostedEpm { epm, netns, socket, tcp } = request;
        crate::goal::hosted(&epm, &netns, &socket, tcp).map_err(|e| e.to_string())?;
        let listen: Listen = (socket.clone(), tcp);
        let netns = PathBuf::from(netns);
        let mut hosted = self.hosted.lock().await;
        if let Some(current) = hosted.get(&epm)
            && current.serves(&listen, netns::id_of(&netns))
        {
            return Ok(current.address.clone());
        }
        if let Some(previous) = hosted.remove(&epm) {
            previous.stop().await;
        }
        let namespace =
            netns::id_of(&netns).ok_or_else(|| format!("network namespace {} does not exist", netns.display()))?;
        let router_prefix = format!("{}.r.", netns.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let (listener, address) = if tcp {
            let acceptor = self.tls.clone().ok_or(
                "this agent host has no TLS identity (--tls-dir): it serves agents over TCP only with mutual TLS",
            )?;
            let listener = TcpListener::bind(&socket).await.map_err(|e| format!("binding {socket}: {e}"))?;
            let address = listener.local_addr().map_err(|e| format!("binding {socket}: {e}"))?.to_string();
            (Listener::Tls(listener, acceptor), address)
        } else {
            (Listener::Unix(bind(Path::new(&socket)).map_err(|e| format!("binding {socket}: {e}"))?), socket.clone())
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let name = epm.clone();
        let done = tokio::spawn(async move {
            if let Err(e) = serve_epm(name.clone(), EpmNamespace::At(netns), listener, async {
                let _ = stopped.await;
            })
            .await
            {
                tracing::warn!(epm = %name, error = %e, "agent stopped serving");
            }
        });
        tracing::info!(%epm, %address, "agent serving");
        hosted.insert(epm, Hosted { namespace, router_prefix, listen, address: address.clone(), stop, done });
        Ok(address)
    }

    /// Stops every hosted agent (the host is exiting).
    pub async fn release_all(&self) {
        let all: Vec<Hosted> = self.hosted.lock().await.drain().map(|(_, h)| h).collect();
        futures::future::join_all(all.into_iter().map(Hosted::stop)).await;
    }
}

#[tonic::async_trait]
impl Host for HostService {
    async fn serve(&self, request: Request<ServeRequest>) -> Result<Response<ServeReply>, Status> {
        let epms = request.into_inner().epms;
        if epms.len() > MAX_HOSTED {
            return Err(Status::invalid_argument(format!("{} EPMs in one request; at most {MAX_HOSTED}", epms.len())));
        }
        let (mut errors, mut addresses) = (Vec::with_capacity(epms.len()), Vec::with_capacity(epms.len()));
        for epm in epms {
            let (error, address) = match self.serve_one(epm).await {
                Ok(address) => (String::new(), address),
                Err(error) => (error, String::new()),
            };
            errors.push(error);
            addresses.push(address);
        }
        Ok(Response::new(ServeReply { errors, addresses }))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        let epms = request.into_inner().epms;
        let leaving: Vec<Hosted> = {
            let mut hosted = self.hosted.lock().await;
            epms.iter().filter_map(|epm| hosted.remove(epm)).collect()
        };
        futures::future::join_all(leaving.into_iter().map(Hosted::stop)).await;
        Ok(Response::new(ReleaseReply { build_id: crate::build::current().to_string() }))
    }
}

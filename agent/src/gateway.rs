//! The gateway: one merak-agent per topology, inside the cluster, that
//! reaches every other agent at its pod IP, so that the provider needs one
//! tunnel into the cluster (a single port-forward) whatever the number of
//! EPMs. Each gRPC call that arrives names its agent in the
//! [`ROUTE_HEADER`]; the gateway forwards the call whole to that agent over
//! mutual TLS with an identity of its own (a client certificate of the
//! topology's CA) and streams the answer back. The calls of one connection
//! run at once as HTTP/2 streams, so the provider's fan-out to many agents
//! stays a fan-out, and the gateway keeps a channel per agent between calls.
//!
//! Agents' goals are declarative, so a call that met a dead connection
//! (its agent's pod was made anew at the same IP) is sent once more on a
//! fresh one; the request is held until it is sent for that reason.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;

/// The header naming the agent a call is for: its IP address.
pub const ROUTE_HEADER: &str = "merak-agent-address";
/// The largest request forwarded (the agents' own limit on a message, and
/// gRPC's five-byte frame header).
const MAX_REQUEST: usize = (64 << 20) + 5;

/// Forwards calls to the agents at `agent_port` of the IPs they name.
#[derive(Clone)]
pub struct Gateway {
    connector: TlsConnector,
    agent_port: u16,
    channels: Arc<Mutex<HashMap<IpAddr, Channel>>>,
}

fn refused(status: tonic::Status) -> http::Response<Body> {
    status.into_http()
}

impl Gateway {
    pub fn new(connector: TlsConnector, agent_port: u16) -> Self {
        Gateway { connector, agent_port, channels: Arc::default() }
    }

    fn cached(&self, agent: IpAddr) -> Option<Channel> {
        self.channels.lock().ok()?.get(&agent).cloned()
    }

    fn forget(&self, agent: IpAddr) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.remove(&agent);
        }
    }

    async fn dial(&self, agent: IpAddr) -> Result<Channel, tonic::transport::Error> {
        let channel = crate::tls::channel(SocketAddr::new(agent, self.agent_port), self.connector.clone()).await?;
        if let Ok(mut channels) = self.channels.lock() {
            channels.insert(agent, channel.clone());
        }
        Ok(channel)
    }

    /// One call, forwarded to the agent it names; any failure is a gRPC
    /// status the caller reads as the agent's.
    pub async fn forward(self, request: http::Request<Incoming>) -> http::Response<Body> {
        let (mut head, body) = request.into_parts();
        let Some(route) = head.headers.remove(ROUTE_HEADER) else {
            return refused(tonic::Status::invalid_argument(format!(
                "the gateway forwards calls that name their agent in {ROUTE_HEADER}"
            )));
        };
        let Some(agent) = route.to_str().ok().and_then(|text| text.parse::<IpAddr>().ok()) else {
            return refused(tonic::Status::invalid_argument(format!("{ROUTE_HEADER} must be an IP address")));
        };
        let body: Bytes = match Limited::new(body, MAX_REQUEST).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => return refused(tonic::Status::resource_exhausted(format!("reading the request: {error}"))),
        };
        let mut fresh = false;
        loop {
            let channel = match self.cached(agent) {
                Some(channel) => channel,
                None => {
                    fresh = true;
                    match self.dial(agent).await {
                        Ok(channel) => channel,
                        Err(error) => {
                            return refused(tonic::Status::unavailable(format!(
                                "the gateway cannot reach the agent at {agent}: {}",
                                crate::error_chain(&error)
                            )));
                        }
                    }
                }
            };
            let request = http::Request::from_parts(head.clone(), Body::new(Full::new(body.clone())));
            match channel.oneshot(request).await {
                Ok(response) => return response,
                Err(error) => {
                    self.forget(agent);
                    if fresh {
                        return refused(tonic::Status::unavailable(format!(
                            "the agent at {agent}: {}",
                            crate::error_chain(&error)
                        )));
                    }
                    tracing::debug!(%agent, error = %crate::error_chain(&error), "a kept connection failed; dialling anew");
                }
            }
        }
    }

    /// Serves the gateway on `listener` (mutual TLS: callers present the
    /// controller's certificate) until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        acceptor: TlsAcceptor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut connections = crate::tls::incoming(listener, acceptor);
        tokio::pin!(shutdown);
        loop {
            let connection = tokio::select! {
                next = connections.next() => match next {
                    Some(Ok(connection)) => connection,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "a connection failed");
                        continue;
                    }
                    None => return,
                },
                () = &mut shutdown => return,
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.forward(request).await) }
                });
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(connection), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "a caller's connection ended");
                }
            });
        }
    }
}

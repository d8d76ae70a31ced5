//! Talking to a merak-agent (or an agent host): over its unix socket, and
//! the channel the controller gets for an EPM's agent, wherever it runs.

use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::host_client::HostClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

pub type Client = AgentClient<AgentChannel>;

/// A channel to one EPM's agent: a connection of its own, or one shared
/// with every agent of the topology through their gateway (see
/// merak_agent::gateway), each call then naming its agent in a header.
#[derive(Clone, Debug)]
pub struct AgentChannel {
    channel: Channel,
    route: Option<http::HeaderValue>,
}

impl AgentChannel {
    /// A channel that reaches the agent itself.
    pub fn direct(channel: Channel) -> Self {
        AgentChannel { channel, route: None }
    }

    /// The gateway's `channel`, for the agent at `address`.
    pub fn through_gateway(channel: Channel, address: std::net::IpAddr) -> Self {
        // An address's text is always a valid header value.
        let route = http::HeaderValue::from_str(&address.to_string()).ok();
        AgentChannel { channel, route }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for AgentChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(route) = &self.route {
            request.headers_mut().insert(merak_agent::gateway::ROUTE_HEADER, route.clone());
        }
        tower::Service::call(&mut self.channel, request)
    }
}

/// Connects to the agent serving `socket`; fails fast when nobody listens.
pub async fn connect(socket: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(AgentClient::new(AgentChannel::direct(channel(socket).await?)))
}

/// Connects to the agent host serving its Host API on `socket`.
pub async fn connect_host(socket: &Path) -> Result<HostClient<Channel>, tonic::transport::Error> {
    Ok(HostClient::new(channel(socket).await?).max_decoding_message_size(64 << 20))
}

/// A channel to the agent serving `socket`, for any of its services.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://merak-agent")
        .connect_timeout(Duration::from_secs(2))
        // Large EVM batches take a while; the agent answers when done.
        .timeout(Duration::from_secs(600))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

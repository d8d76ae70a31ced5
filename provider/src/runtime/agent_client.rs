//! Talking to a merak-agent (or an agent host) over its unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::host_client::HostClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

pub type Client = AgentClient<Channel>;

/// Connects to the agent serving `socket`; fails fast when nobody listens.
pub async fn connect(socket: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(AgentClient::new(channel(socket).await?))
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

//! Talking to a merak-agent over its unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use merak_proto::agent::agent_client::AgentClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

pub type Client = AgentClient<Channel>;

/// Connects to the agent serving `socket`; fails fast when nobody listens.
pub async fn connect(socket: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(AgentClient::new(channel(socket).await?))
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

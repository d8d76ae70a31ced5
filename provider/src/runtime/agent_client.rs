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
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://merak-agent")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}

//! Agents over TCP speak mutual TLS, never plain: the agent presents a
//! certificate of its topology's CA and refuses any client that does not
//! present one of the same CA. The provider makes the CA and issues both
//! certificates; the agent reads them from a directory:
//! `ca.pem`, `agent.pem`, `agent.key` (PEM; the key readable by root only).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The name in every agent certificate (clients check it).
pub const AGENT_NAME: &str = "merak-agent";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, TlsError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn invalid(what: &str, detail: impl ToString) -> TlsError {
    TlsError::Invalid { what: what.to_string(), detail: detail.to_string() }
}

/// The agent's TLS acceptor from the files in `dir`.
pub fn acceptor_from_dir(dir: &Path) -> Result<TlsAcceptor, TlsError> {
    acceptor(&read(dir, "ca.pem")?, &read(dir, "agent.pem")?, &read(dir, "agent.key")?)
}

/// The gateway's connector to the agents from the files in `dir`: the CA
/// and `gateway.pem`, `gateway.key` (see crate::gateway).
pub fn gateway_connector_from_dir(dir: &Path) -> Result<tokio_rustls::TlsConnector, TlsError> {
    connector(&read(dir, "ca.pem")?, &read(dir, "gateway.pem")?, &read(dir, "gateway.key")?)
}

/// A TLS acceptor presenting `certificate` (PEM, with `key`) that demands
/// a client certificate signed by `ca` (PEM).
pub fn acceptor(ca: &[u8], certificate: &[u8], key: &[u8]) -> Result<TlsAcceptor, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca) {
        roots.add(ca.map_err(|e| invalid("ca.pem", e))?).map_err(|e| invalid("ca.pem", e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid("client verification", e))?;
    let chain = CertificateDer::pem_slice_iter(certificate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("agent.pem", e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("agent.key", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("agent.pem", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connections `listener` accepts whose TLS handshake succeeded (done
/// off the accept path, so one slow client does not hold up the others);
/// failed handshakes are logged and dropped.
pub fn incoming(listener: TcpListener, acceptor: TlsAcceptor) -> ReceiverStream<io::Result<TlsConnection>> {
    let (connections, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        continue;
                    }
                },
                // The server is gone: stop accepting.
                () = connections.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, connections) = (acceptor.clone(), connections.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => {
                        let _ = connections.send(Ok(TlsConnection(tls))).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS handshake refused"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// One accepted connection, after its handshake.
pub struct TlsConnection(TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A client's TLS connector: it trusts only agents certified by `ca` (PEM)
/// and presents `certificate` (PEM, with `key`).
pub fn connector(ca: &[u8], certificate: &[u8], key: &[u8]) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca) {
        roots.add(ca.map_err(|e| invalid("the CA", e))?).map_err(|e| invalid("the CA", e))?;
    }
    let chain = CertificateDer::pem_slice_iter(certificate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the client certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("the client key", e))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid("the client certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A channel to the agent at `address` over mutual TLS.
pub async fn channel(
    address: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    channel_over(
        move || async move {
            let stream = TcpStream::connect(address).await?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        },
        connector,
    )
    .await
}

/// A channel to an agent over mutual TLS on streams that `dial` opens
/// (a TCP connection made in another namespace, a port-forward stream).
pub async fn channel_over<D, F, S>(
    dial: D,
    connector: tokio_rustls::TlsConnector,
) -> Result<tonic::transport::Channel, tonic::transport::Error>
where
    D: Fn() -> F + Clone + Send + 'static,
    F: std::future::Future<Output = io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The URI is required by the API but unused: the connector dials.
    tonic::transport::Endpoint::from_static("http://merak-agent")
        .connect_timeout(std::time::Duration::from_secs(2))
        // Large EVM batches take a while; the agent answers when done.
        .timeout(std::time::Duration::from_secs(600))
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, dial) = (connector.clone(), dial.clone());
            async move {
                let stream = dial().await?;
                let name = rustls::pki_types::ServerName::try_from(AGENT_NAME).map_err(io::Error::other)?;
                let tls = connector.connect(name, stream).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

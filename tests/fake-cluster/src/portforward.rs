//! `pods/<name>/portforward` over WebSocket, in the binary channel protocol
//! (`v4.channel.k8s.io`) that the API server speaks and kube's
//! `Api::portforward` uses: port i has data channel 2i and error channel
//! 2i+1; the server opens each channel with a frame holding the port
//! (u16, little-endian); every later frame is `[channel, bytes...]`. The
//! server connects to the pod's ports from the cluster network, one TCP
//! connection per port per session, and ends the session when a pod
//! connection ends.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

use crate::Cluster;
use crate::api::Body;
use crate::store::ApiError;

/// The subprotocols this server speaks, in its order of preference.
const PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

/// The ports of `?ports=80,1234` (also repeated `ports=` pairs).
pub fn parse_ports(query: &str) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        if key != "ports" {
            continue;
        }
        for port in value.replace("%2C", ",").replace("%2c", ",").split(',').filter(|p| !p.is_empty()) {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ApiError::bad_request(format!("invalid port {port:?}")))?;
            ports.push(port);
        }
    }
    if ports.is_empty() || ports.len() > 64 {
        return Err(ApiError::bad_request("at least 1 and at most 64 ports are required"));
    }
    Ok(ports)
}

/// Answers the upgrade and runs the session in the background.
pub fn upgrade(
    cluster: &Arc<Cluster>,
    mut request: Request<Incoming>,
    pod: &Value,
) -> Result<Response<Body>, ApiError> {
    let ports = parse_ports(request.uri().query().unwrap_or_default())?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let ip = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
    let Some(ip) = ip.filter(|_| phase == "Running") else {
        return Err(ApiError::bad_request(format!(
            "unable to forward port because pod is not running. Current status={phase}"
        )));
    };
    let headers = request.headers();
    let is_websocket =
        headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let offered =
        headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let protocol = offered.split(',').map(str::trim).find(|p| PROTOCOLS.contains(p));
    let (Some(accept), true, Some(protocol)) = (key, is_websocket, protocol) else {
        return Err(ApiError::bad_request(format!(
            "port-forward needs a WebSocket upgrade offering one of {PROTOCOLS:?} (offered {offered:?}); SPDY is not served here"
        )));
    };
    let protocol = protocol.to_string();
    let upgraded = hyper::upgrade::on(&mut request);
    let cluster = Arc::clone(cluster);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(io) => {
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                session(&cluster, socket, ip, &ports).await;
            }
            Err(e) => tracing::debug!("port-forward upgrade failed: {e}"),
        }
    });
    let mut response = Response::new(crate::api::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let set = response.headers_mut();
    set.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    set.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    set.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&accept).map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    set.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_str(&protocol).map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    Ok(response)
}

fn framed(channel: u8, bytes: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(bytes.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(bytes);
    Message::Binary(Bytes::from(frame))
}

async fn session<S>(cluster: &Cluster, socket: WebSocketStream<S>, ip: std::net::Ipv4Addr, ports: &[u16])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = socket.split();
    let (from_pod, mut to_client) = tokio::sync::mpsc::channel::<Message>(64);
    let mut writers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        for channel in [data, error] {
            if sink.send(framed(channel, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
        match cluster.network.connect((ip, *port).into()).await {
            Ok(stream) => {
                let (mut reader, writer) = stream.into_split();
                writers.push(Some(writer));
                let from_pod = from_pod.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 32 * 1024];
                    loop {
                        match reader.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if from_pod.send(framed(data, &buffer[..n])).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    // The pod closed the connection: the session ends (v4 cannot half-close).
                    let _ = from_pod.send(Message::Close(None)).await;
                });
            }
            Err(e) => {
                writers.push(None);
                let message =
                    format!("error forwarding port {port} to pod, uid : failed to connect to {ip}:{port}: {e}");
                let _ = sink.send(framed(error, message.as_bytes())).await;
            }
        }
    }
    drop(from_pod);
    loop {
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 => {
                    let channel = bytes[0] as usize;
                    if channel.is_multiple_of(2)
                        && let Some(Some(writer)) = writers.get_mut(channel / 2)
                        && writer.write_all(&bytes[1..]).await.is_err()
                    {
                        writers[channel / 2] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            out = to_client.recv() => match out {
                Some(message @ Message::Close(_)) => {
                    let _ = sink.send(message).await;
                    break;
                }
                Some(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(parse_ports("&ports=80%2C1234").unwrap(), [80, 1234]);
        assert_eq!(parse_ports("ports=7443&ports=22").unwrap(), [7443, 22]);
        assert!(parse_ports("ports=0").is_err());
        assert!(parse_ports("ports=http").is_err());
        assert!(parse_ports("").is_err());
    }
}

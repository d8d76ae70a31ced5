//! Agents on TCP (needs root: the hosted agent lives in a namespace of its
//! own): mutual TLS with the topology's CA, and nothing else. A client with
//! no certificate, or with one from another topology's CA, is refused;
//! so is plain TCP without a TLS identity on the host.

use merak_agent::host::HostService;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::pki::{Authority, Role};
use merak_agent::tls;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::host_server::Host;
use merak_proto::agent::{HealthRequest, HostedEpm, ServeRequest};
use tonic::Request;

/// Deletes the namespace when dropped.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn hosted(namespace: &str) -> HostedEpm {
    HostedEpm {
        epm: "epm-0".into(),
        netns: netns::path_of(namespace).display().to_string(),
        socket: "127.0.0.1:0".into(),
        tcp: true,
    }
}

async fn health(address: std::net::SocketAddr, connector: tokio_rustls::TlsConnector) -> Result<String, String> {
    let channel = tls::channel(address, connector).await.map_err(|e| format!("connect: {e}"))?;
    let reply = AgentClient::new(channel).health(HealthRequest {}).await.map_err(|e| format!("health: {e}"))?;
    Ok(reply.into_inner().build_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_tcp_answers_only_clients_of_its_topology() {
    let namespace = Namespace(format!("merak-test-tls-{}", std::process::id()));
    let _netlink = netns::create(&namespace.0, NetnsOptions::default()).await.unwrap();

    let (ours, _) = Authority::create("blue").unwrap();
    let (theirs, _) = Authority::create("red").unwrap();
    let agent = ours.issue(Role::Agent).unwrap();
    let acceptor =
        tls::acceptor(ours.certificate.as_bytes(), agent.certificate.as_bytes(), agent.key.as_bytes()).unwrap();
    let host = HostService::new(Some(acceptor));
    let reply = host.serve(Request::new(ServeRequest { epms: vec![hosted(&namespace.0)] })).await.unwrap().into_inner();
    assert_eq!(reply.errors, [""]);
    let address: std::net::SocketAddr = reply.addresses[0].parse().expect("the bound address");
    assert_ne!(address.port(), 0);
    // Served again as asked: the same listener, the same port.
    let again = host.serve(Request::new(ServeRequest { epms: vec![hosted(&namespace.0)] })).await.unwrap().into_inner();
    assert_eq!(again.addresses, reply.addresses);

    // A client of this topology: answered, with the agent's build id.
    let controller = ours.issue(Role::Controller).unwrap();
    let connector = |ca: &str, client: &merak_agent::pki::Identity| {
        tls::connector(ca.as_bytes(), client.certificate.as_bytes(), client.key.as_bytes()).unwrap()
    };
    let build =
        health(address, connector(&ours.certificate, &controller)).await.expect("a client of the topology is answered");
    assert!(build.starts_with(env!("CARGO_PKG_VERSION")), "{build}");

    // A client certified by another topology's CA: refused.
    let stranger = theirs.issue(Role::Controller).unwrap();
    let refused = health(address, connector(&ours.certificate, &stranger)).await;
    assert!(refused.is_err(), "a certificate of another CA was accepted");

    // A client with no certificate at all: refused.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ours.certificate.as_bytes()).unwrap()).unwrap();
    let mut anonymous =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let refused = health(address, tokio_rustls::TlsConnector::from(std::sync::Arc::new(anonymous))).await;
    assert!(refused.is_err(), "a client without a certificate was accepted");

    // The rightful client is still answered after the refusals.
    health(address, connector(&ours.certificate, &controller)).await.expect("still answering");

    // A host without a TLS identity never serves TCP in the clear.
    let plain = HostService::new(None);
    let reply =
        plain.serve(Request::new(ServeRequest { epms: vec![hosted(&namespace.0)] })).await.unwrap().into_inner();
    assert!(reply.errors[0].contains("mutual TLS"), "{:?}", reply.errors);
    host.release_all().await;
}

//! The gateway (needs root: the agents behind it live in namespaces of
//! their own): one mutual-TLS connection from the controller reaches every
//! agent, each call going to the agent its header names; a call for an
//! agent that cannot be reached, or that names none, gets a gRPC status
//! saying so; a client of another topology is refused; an agent served anew
//! at the same address is reached again through the gateway's kept channel.

use merak_agent::gateway::{Gateway, ROUTE_HEADER};
use merak_agent::host::HostService;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::pki::{Authority, Identity, Role};
use merak_agent::tls;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::host_server::Host;
use merak_proto::agent::{GetInfoRequest, HostedEpm, ReleaseRequest, ServeRequest};
use tonic::Request;
use tonic::transport::Channel;

/// Deletes the namespace when dropped.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn connector(ca: &str, identity: &Identity) -> tokio_rustls::TlsConnector {
    tls::connector(ca.as_bytes(), identity.certificate.as_bytes(), identity.key.as_bytes()).expect("a connector")
}

/// The EPM whose agent answered a GetInfo sent through `channel` to `address`.
async fn whose(channel: &Channel, address: Option<&str>) -> Result<String, tonic::Status> {
    let mut request = Request::new(GetInfoRequest {});
    if let Some(address) = address {
        request.metadata_mut().insert(ROUTE_HEADER, address.parse().expect("an ASCII header"));
    }
    Ok(AgentClient::new(channel.clone()).get_info(request).await?.into_inner().epm)
}

/// A port free on both loopback addresses the agents listen on.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("its address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_reaches_every_agent_through_the_gateway() {
    let (authority, _) = Authority::create("gw").unwrap();
    let agent = authority.issue(Role::Agent).unwrap();
    let acceptor =
        || tls::acceptor(authority.certificate.as_bytes(), agent.certificate.as_bytes(), agent.key.as_bytes()).unwrap();

    // Two agents, on 127.0.0.1 and 127.0.0.2 at the same port, as pods are
    // at their own IPs and one agent port.
    let port = free_port();
    let namespaces: Vec<Namespace> =
        (0..2).map(|i| Namespace(format!("merak-test-gw-{}-{i}", std::process::id()))).collect();
    for namespace in &namespaces {
        netns::create(&namespace.0, NetnsOptions::default()).await.unwrap();
    }
    let hosted = |i: usize| HostedEpm {
        epm: format!("epm-{i}"),
        netns: netns::path_of(&namespaces[i].0).display().to_string(),
        socket: format!("127.0.0.{}:{port}", i + 1),
        tcp: true,
    };
    let host = HostService::new(Some(acceptor()));
    let served =
        host.serve(Request::new(ServeRequest { epms: vec![hosted(0), hosted(1)] })).await.unwrap().into_inner();
    assert_eq!(served.errors, ["", ""]);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_address = listener.local_addr().unwrap();
    let gateway = Gateway::new(connector(&authority.certificate, &authority.issue(Role::Gateway).unwrap()), port);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(gateway.serve(listener, acceptor(), async move {
        let _ = stopped.await;
    }));

    // One channel (one connection) from the controller, to both agents.
    let controller = authority.issue(Role::Controller).unwrap();
    let channel = tls::channel(gateway_address, connector(&authority.certificate, &controller))
        .await
        .expect("the gateway accepts the controller");
    assert_eq!(whose(&channel, Some("127.0.0.1")).await.unwrap(), "epm-0");
    assert_eq!(whose(&channel, Some("127.0.0.2")).await.unwrap(), "epm-1");
    let at_once: Vec<String> = futures::future::join_all(
        (0..20).map(|i| whose(&channel, Some(if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" }))),
    )
    .await
    .into_iter()
    .map(|answer| answer.expect("concurrent calls are answered"))
    .collect();
    assert_eq!(at_once.iter().filter(|epm| *epm == "epm-1").count(), 10);

    // Calls naming no agent, or one that is not there.
    let unnamed = whose(&channel, None).await.expect_err("a call naming no agent");
    assert_eq!(unnamed.code(), tonic::Code::InvalidArgument, "{unnamed:?}");
    assert!(unnamed.message().contains(ROUTE_HEADER), "{unnamed:?}");
    let garbled = whose(&channel, Some("epm-0")).await.expect_err("a name is not an address");
    assert_eq!(garbled.code(), tonic::Code::InvalidArgument, "{garbled:?}");
    let absent = whose(&channel, Some("127.0.0.3")).await.expect_err("no agent listens there");
    assert_eq!(absent.code(), tonic::Code::Unavailable, "{absent:?}");
    assert!(absent.message().contains("127.0.0.3"), "{absent:?}");

    // An agent stopped and served again at its address (a pod made anew):
    // the gateway's kept channel to it is dead, and the call still lands.
    host.release(Request::new(ReleaseRequest { epms: vec!["epm-1".into()] })).await.unwrap();
    let again = host.serve(Request::new(ServeRequest { epms: vec![hosted(1)] })).await.unwrap().into_inner();
    assert_eq!(again.errors, [""]);
    assert_eq!(whose(&channel, Some("127.0.0.2")).await.expect("reached anew"), "epm-1");

    // A client certified by another topology's CA is refused by the gateway.
    let (stranger, _) = Authority::create("other").unwrap();
    let outsider =
        tls::channel(gateway_address, connector(&authority.certificate, &stranger.issue(Role::Controller).unwrap()))
            .await;
    let refused = match outsider {
        Err(_) => true,
        Ok(channel) => whose(&channel, Some("127.0.0.1")).await.is_err(),
    };
    assert!(refused, "the gateway answered a client of another CA");

    let _ = stop.send(());
    serving.await.expect("the gateway stops");
    host.release_all().await;
}

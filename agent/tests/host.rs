//! The agent host against the real kernel (needs root): one process serving
//! several EPMs' agents, each on its own socket and inside its own
//! namespace. Namespaces and sockets are named per test and removed by a
//! guard, also when the test fails.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use merak_agent::host::HostService;
use merak_agent::netns::{self, NetnsOptions};
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::host_server::Host;
use merak_proto::agent::{GetInfoRequest, HealthRequest, HostedEpm, ReleaseRequest, ServeRequest};
use tokio::net::UnixStream;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

/// Deletes the namespaces and the socket directory when dropped.
struct Fixture {
    namespaces: Vec<String>,
    dir: PathBuf,
}

impl Fixture {
    fn new(test: &str, count: usize) -> Self {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("merak-test-{test}-{id}"));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Fixture { namespaces: (0..count).map(|i| format!("merak-test-{test}-{id}.{i}")).collect(), dir }
    }

    fn hosted(&self, index: usize) -> HostedEpm {
        HostedEpm {
            epm: format!("epm-{index}"),
            netns: netns::path_of(&self.namespaces[index]).display().to_string(),
            socket: self.socket(index).display().to_string(),
            tcp: false,
        }
    }

    fn socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("epm-{index}.sock"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for name in &self.namespaces {
            let _ = netns::delete(name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(socket: &Path) -> Result<AgentClient<Channel>, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://merak-agent")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}

async fn interfaces(client: &mut AgentClient<Channel>) -> Vec<String> {
    let info = client.get_info(GetInfoRequest {}).await.expect("GetInfo").into_inner();
    let mut names: Vec<String> = info.interfaces.into_iter().map(|i| i.name).collect();
    names.sort();
    names
}

async fn serve(host: &HostService, epms: Vec<HostedEpm>) -> Vec<String> {
    host.serve(Request::new(ServeRequest { epms })).await.expect("Serve").into_inner().errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_serves_each_epm_inside_its_own_namespace() {
    let fixture = Fixture::new("host", 2);
    let in_0 = netns::create(&fixture.namespaces[0], NetnsOptions::default()).await.unwrap();
    let in_1 = netns::create(&fixture.namespaces[1], NetnsOptions::default()).await.unwrap();
    in_0.create_bridge("br-zero").await.unwrap();
    in_1.create_bridge("br-one").await.unwrap();

    let host = HostService::new(None);
    assert_eq!(serve(&host, vec![fixture.hosted(0), fixture.hosted(1)]).await, vec![String::new(), String::new()]);

    // Each socket answers as its EPM, with its own namespace's devices.
    let mut zero = connect(&fixture.socket(0)).await.unwrap();
    let mut one = connect(&fixture.socket(1)).await.unwrap();
    assert_eq!(zero.health(HealthRequest {}).await.unwrap().into_inner().epm, "epm-0");
    assert_eq!(one.health(HealthRequest {}).await.unwrap().into_inner().epm, "epm-1");
    assert_eq!(interfaces(&mut zero).await, vec!["br-zero", "lo"]);
    assert_eq!(interfaces(&mut one).await, vec!["br-one", "lo"]);

    // Serving again what is served changes nothing: the open connection lives on.
    assert_eq!(serve(&host, vec![fixture.hosted(0)]).await, vec![String::new()]);
    assert_eq!(interfaces(&mut zero).await, vec!["br-zero", "lo"]);

    // A namespace made anew under the same name is served anew.
    netns::delete(&fixture.namespaces[1]).unwrap();
    let in_1 = netns::create(&fixture.namespaces[1], NetnsOptions::default()).await.unwrap();
    in_1.create_bridge("br-again").await.unwrap();
    assert_eq!(serve(&host, vec![fixture.hosted(1)]).await, vec![String::new()]);
    let mut one = connect(&fixture.socket(1)).await.unwrap();
    assert_eq!(interfaces(&mut one).await, vec!["br-again", "lo"]);

    // Crafted entries are refused one by one, the good ones still served.
    let mut bad_name = fixture.hosted(0);
    bad_name.epm = "../epm".into();
    let mut relative = fixture.hosted(0);
    relative.netns = "run/netns/x".into();
    let mut missing = fixture.hosted(0);
    missing.netns = "/run/netns/merak-test-no-such-namespace".into();
    let errors = serve(&host, vec![bad_name, relative, missing, fixture.hosted(1)]).await;
    assert!(errors[0].contains("not an EPM name"), "{errors:?}");
    assert!(errors[1].contains("absolute path"), "{errors:?}");
    assert!(errors[2].contains("does not exist"), "{errors:?}");
    assert_eq!(errors[3], "");

    // Released: the socket is gone and nobody answers there.
    host.release(Request::new(ReleaseRequest { epms: vec!["epm-0".into(), "epm-unknown".into()] })).await.unwrap();
    assert!(!fixture.socket(0).exists());
    assert!(connect(&fixture.socket(0)).await.is_err());
    assert_eq!(interfaces(&mut one).await, vec!["br-again", "lo"]);

    host.release_all().await;
    assert!(!fixture.socket(1).exists());
}

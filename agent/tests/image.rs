//! The agent's container image (agent/image/build.sh) as a real privileged
//! container (needs root, buildah and podman: `make deps` installs them).
//! Two containers of the image are two EPMs, as pods of the kubernetes
//! runtime will be: their agents answer, take an underlay on a link between
//! them, and build an EVM each that pings the other across the overlay.
//! The image, the containers and the link are named per run and removed by
//! a guard, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::overlay_client::OverlayClient;
use merak_proto::agent::{
    EvmBatch, EvmSpec, GetInfoRequest, HealthRequest, OverlayGoal, PingProbe, PingRequest, SubnetGoal, UnderlayGoal,
    VpcGoal,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

const AGENT: &str = env!("CARGO_BIN_EXE_merak-agent");
const BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/image/build.sh");

fn run(program: &str, args: &[&str]) -> String {
    let output =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e} (run `make deps`)"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The image and its containers; removed when dropped.
struct Fixture {
    image: String,
    archive: PathBuf,
    containers: Vec<String>,
    sockets: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let id = std::process::id();
        let sockets = std::env::temp_dir().join(format!("merak-test-image-{id}"));
        std::fs::create_dir_all(&sockets).expect("create the sockets directory");
        Fixture {
            image: format!("localhost/merak-agent-test:{id}"),
            archive: sockets.join("merak-agent.oci.tar"),
            containers: Vec::new(),
            sockets,
        }
    }

    /// Starts EPM `epm` as a container of the image: no network but its
    /// own loopback, its agent's socket in a directory shared with the test.
    fn start(&mut self, epm: &str) -> (u32, PathBuf) {
        let name = format!("merak-test-image-{}-{epm}", std::process::id());
        let dir = self.sockets.join(epm);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        self.containers.push(name.clone());
        let volume = format!("{}:/run/merak", dir.display());
        // runc rather than crun: crun refuses hosts whose cgroups mix v1
        // and v2 (this one), runc runs on both. Explicit limits: podman's
        // default (open files 1048576) is above what some hosts allow.
        #[rustfmt::skip]
        let args = [
            "run", "--detach", "--name", &name, "--runtime", "runc", "--privileged", "--network", "none",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--volume", &volume,
            &self.image, "--epm", epm, "--socket", "/run/merak/agent.sock",
        ];
        run("podman", &args);
        let pid =
            run("podman", &["inspect", "--format", "{{.State.Pid}}", &name]).parse().expect("the container's pid");
        (pid, dir.join("agent.sock"))
    }

    fn logs(&self) -> String {
        self.containers
            .iter()
            .map(|c| {
                Command::new("podman")
                    .args(["logs", c])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = Command::new("podman").args(["rm", "--force", "--time", "0", container]).output();
        }
        let _ = Command::new("podman").args(["rmi", "--force", &self.image]).output();
        let _ = std::fs::remove_dir_all(&self.sockets);
    }
}

async fn connect(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = socket.to_path_buf();
        let attempt = Endpoint::from_static("http://merak-agent")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await;
        match attempt {
            Ok(channel) => return channel,
            Err(e) if Instant::now() > deadline => {
                panic!("the agent in the container never listened on {}: {e}", socket.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn subnet(other: &str) -> SubnetGoal {
    SubnetGoal {
        vni: 101,
        bridge: "b101".into(),
        vxlan: "x101".into(),
        gateway: "10.0.0.1/24".into(),
        gateway_mac: String::new(),
        flood: vec![other.into()],
        forget: vec![],
    }
}

fn evm(epm: &str, last_octet: u8, gateway_mac: &str) -> EvmSpec {
    EvmSpec {
        namespace: format!("merak-{epm}.e{last_octet}"),
        router_namespace: format!("merak-{epm}.vpc1"),
        bridge: "b101".into(),
        host_port: format!("ve{last_octet}"),
        address: format!("10.0.0.{last_octet}/24"),
        mac: format!("0a:00:00:65:00:{last_octet:02x}"),
        gateway: "10.0.0.1".into(),
        gateway_mac: gateway_mac.into(),
        device_model: "veth".into(),
        leave_unattached: false,
        mtu: 0,
    }
}

#[tokio::test]
async fn the_image_runs_the_agent_as_a_privileged_container() {
    let mut fixture = Fixture::new();
    let archive = fixture.archive.display().to_string();
    let built = run("bash", &[BUILD, AGENT, &archive, &fixture.image]);
    assert!(built.ends_with(&archive), "{built}");
    assert!(std::fs::metadata(&fixture.archive).map(|m| m.len() > 0).unwrap_or(false), "no archive at {archive}");
    // From scratch: the agent and the libraries it links, nothing more.
    let layers: u32 =
        run("podman", &["image", "inspect", "--format", "{{len .RootFS.Layers}}", &fixture.image]).parse().unwrap();
    assert_eq!(layers, 1);

    let (pid_a, socket_a) = fixture.start("a");
    let (pid_b, socket_b) = fixture.start("b");
    // The underlay link between the two containers, as a runtime makes it.
    let (ns_a, ns_b) = (pid_a.to_string(), pid_b.to_string());
    run("ip", &["link", "add", "eth1", "netns", &ns_a, "type", "veth", "peer", "name", "eth1", "netns", &ns_b]);

    let (channel_a, channel_b) = (connect(&socket_a).await, connect(&socket_b).await);
    let health = AgentClient::new(channel_a.clone()).health(HealthRequest {}).await.expect("health").into_inner();
    assert_eq!(health.epm, "a");
    assert!(health.build_id.starts_with(env!("CARGO_PKG_VERSION")), "{}", health.build_id);

    let mut gateway_macs = Vec::new();
    for (channel, epm, own, other, mac) in [
        (&channel_a, "a", "192.168.77.1", "192.168.77.2", "02:00:00:00:77:01"),
        (&channel_b, "b", "192.168.77.2", "192.168.77.1", "02:00:00:00:77:02"),
    ] {
        let mut agent = AgentClient::new(channel.clone());
        let underlay = UnderlayGoal {
            interface: "eth1".into(),
            address: format!("{own}/24"),
            mac: mac.into(),
            tunnel: None,
            gateway: String::new(),
            held_down: false,
            shaping: None,
            routed_prefix: String::new(),
        };
        agent.apply_underlay(underlay).await.unwrap_or_else(|e| panic!("underlay of {epm}: {e}\n{}", fixture.logs()));
        let info = agent.get_info(GetInfoRequest {}).await.unwrap().into_inner();
        let eth1 = info.interfaces.iter().find(|i| i.name == "eth1").expect("eth1 inside the container");
        assert!(eth1.up && eth1.addresses.contains(&format!("{own}/24")), "{eth1:?}");

        let gateway_mac = format!("0a:01:00:00:00:0{}", if epm == "a" { 'a' } else { 'b' });
        let mut subnet = subnet(other);
        subnet.gateway_mac = gateway_mac.clone();
        let goal = OverlayGoal {
            router_prefix: format!("merak-{epm}.vpc"),
            underlay_ip: own.into(),
            vpcs: vec![VpcGoal { namespace: format!("merak-{epm}.vpc1"), subnets: vec![subnet], firewall: None }],
        };
        let mut overlay = OverlayClient::new(channel.clone());
        overlay.apply_overlay(goal).await.unwrap_or_else(|e| panic!("overlay of {epm}: {e}\n{}", fixture.logs()));
        gateway_macs.push(gateway_mac);
    }
    let (on_a, on_b) = (evm("a", 10, &gateway_macs[0]), evm("b", 11, &gateway_macs[1]));
    for (channel, spec) in [(&channel_a, &on_a), (&channel_b, &on_b)] {
        let reply = OverlayClient::new(channel.clone())
            .apply_evms(EvmBatch { create: vec![spec.clone()], delete: vec![] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.created, reply.failures.len()), (1, 0), "{reply:?}\n{}", fixture.logs());
    }
    let probes = vec![
        PingProbe { from_namespace: on_a.namespace.clone(), to: "10.0.0.1".into() }, // its gateway
        PingProbe { from_namespace: on_a.namespace.clone(), to: "10.0.0.11".into() }, // the other container's EVM
    ];
    let reply = OverlayClient::new(channel_a)
        .ping(PingRequest { probes, timeout_ms: 3000, payload_bytes: 0, full_size: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.reached, [true, true], "{:?}", reply.errors);
    // The EVMs live inside the containers: the host sees none of them.
    let host_namespaces = run("ip", &["netns", "list"]);
    assert!(!host_namespaces.contains("merak-a.e10") && !host_namespaces.contains("merak-b.e11"), "{host_namespaces}");
}

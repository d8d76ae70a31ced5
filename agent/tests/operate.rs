//! The Operate service on the real kernel: two namespaces of one topology
//! joined by a veth pair stand for two nodes, served as the local runtime's
//! host serves an EPM (the agent outside the namespace, entering it by path).
//! Commands run where they are sent, their output and exit code come back
//! whole, a call dropped early kills what it started, and a capture holds
//! exactly the pings sent while it ran.

use std::time::{Duration, Instant};

use futures::StreamExt;
use merak_agent::netns::{self, NetnsOptions};
use merak_agent::operate::OperateService;
use merak_agent::pcap;
use merak_agent::server::EpmNamespace;
use merak_proto::agent::exec_output::Output;
use merak_proto::agent::operate_server::Operate;
use merak_proto::agent::{CaptureRequest, ExecRequest};
use tonic::Request;

/// Removes every namespace of this test, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in netns::list_with_prefix(&self.0).unwrap_or_default() {
            let _ = netns::delete(&name);
        }
    }
}

/// Two nodes, `<topology>.a` (10.9.0.1) and `<topology>.b` (10.9.0.2), on
/// one veth pair; the service of node a's agent.
async fn two_nodes(topology: &str) -> (Cleanup, OperateService) {
    let cleanup = Cleanup(format!("{topology}."));
    let options = || NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() };
    let a = netns::create(&format!("{topology}.a"), options()).await.expect("create node a");
    let b = netns::create(&format!("{topology}.b"), options()).await.expect("create node b");
    let b_fd = netns::open_fd(&format!("{topology}.b")).expect("open node b");
    a.create_veth("eth0", "eth0", &b_fd).await.expect("a veth pair between the nodes");
    for (node, ip) in [(&a, "10.9.0.1"), (&b, "10.9.0.2")] {
        let eth0 = node.link("eth0").await.expect("read eth0").expect("eth0 exists");
        node.add_address(eth0.index, ip.parse().expect("an address"), 24).await.expect("address eth0");
        node.set_link(eth0.index, None, None).await.expect("eth0 up");
    }
    let own = netns::path_of(&format!("{topology}.a"));
    (cleanup, OperateService::in_namespace(EpmNamespace::At(own)))
}

/// What a command wrote and how it ended.
#[derive(Debug, Default)]
struct Ran {
    stdout: String,
    stderr: String,
    exit: Option<i32>,
}

async fn exec(service: &OperateService, namespace: &str, argv: &[&str]) -> Ran {
    let request = ExecRequest { namespace: namespace.into(), argv: argv.iter().map(|a| a.to_string()).collect() };
    let mut stream = service.exec(Request::new(request)).await.expect("exec accepted").into_inner();
    let mut ran = Ran::default();
    while let Some(message) = stream.next().await {
        match message.expect("an output message").output.expect("output set") {
            Output::Stdout(bytes) => ran.stdout.push_str(&String::from_utf8_lossy(&bytes)),
            Output::Stderr(bytes) => ran.stderr.push_str(&String::from_utf8_lossy(&bytes)),
            Output::ExitCode(code) => ran.exit = Some(code),
        }
    }
    ran
}

fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_in_the_node_they_are_sent_to() {
    let topology = format!("merak-opx{}", std::process::id());
    let (_cleanup, service) = two_nodes(&topology).await;

    let own = exec(&service, "", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).await;
    assert_eq!(own.exit, Some(0), "{own:?}");
    assert!(own.stdout.contains("10.9.0.1/24"), "{own:?}");
    let other = exec(&service, &format!("{topology}.b"), &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).await;
    assert!(other.stdout.contains("10.9.0.2/24"), "{other:?}");
    // /sys is the namespace's, as under `ip netns exec`.
    let sys = exec(&service, "", &["ls", "/sys/class/net"]).await;
    assert_eq!(sys.stdout.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"], "{sys:?}");

    let both = exec(&service, "", &["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    assert_eq!((both.stdout.as_str(), both.stderr.as_str(), both.exit), ("out\n", "err\n", Some(3)));
    let missing = exec(&service, "", &["no-such-command-here"]).await;
    assert_eq!(missing.exit, Some(127), "{missing:?}");
    assert!(missing.stderr.contains("no-such-command-here"), "{missing:?}");

    let refused = service
        .exec(Request::new(ExecRequest { namespace: "merak-elsewhere.epm-0".into(), argv: vec!["true".into()] }))
        .await
        .expect_err("another topology's namespace");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let empty = service.exec(Request::new(ExecRequest::default())).await.expect_err("no command");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_dropped_early_kills_its_command() {
    let topology = format!("merak-opk{}", std::process::id());
    let (_cleanup, service) = two_nodes(&topology).await;
    let marker = format!("merak-exec-marker-{}", std::process::id());
    // A shell whose child sleeps: the whole process group must go.
    let script = format!("sleep 300 & wait; : {marker}");
    let request = ExecRequest { namespace: String::new(), argv: vec!["sh".into(), "-c".into(), script] };
    let stream = service.exec(Request::new(request)).await.expect("exec accepted").into_inner();
    let started = Instant::now();
    while processes_with(&marker) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    let dropped = Instant::now();
    while processes_with(&marker) > 0 {
        assert!(dropped.elapsed() < Duration::from_secs(10), "the command outlived its call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_holds_the_pings_sent_while_it_ran() {
    let topology = format!("merak-opc{}", std::process::id());
    let (_cleanup, service) = two_nodes(&topology).await;

    let wrong = service
        .capture(Request::new(CaptureRequest { interface: "eth9".into(), ..CaptureRequest::default() }))
        .await
        .expect_err("no such interface");
    assert_eq!(wrong.code(), tonic::Code::NotFound);
    assert!(wrong.message().contains("eth0, lo"), "{wrong:?}");

    // Four echo requests and four replies cross eth0; ARP may come first.
    let request = CaptureRequest { count: 12, snaplen: 128, ..CaptureRequest::default() };
    let mut capture = service.capture(Request::new(request)).await.expect("capture accepted").into_inner();
    let ping =
        exec(&service, &format!("{topology}.b"), &["ping", "-c", "4", "-i", "0.2", "-s", "500", "10.9.0.1"]).await;
    assert_eq!(ping.exit, Some(0), "{ping:?}");

    let mut stream = Vec::new();
    let mut interface = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The capture ends by itself once it has 12 packets; 8 are all the
    // pings make, so take what came within a second of the last.
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), capture.next()).await {
        let chunk = chunk.expect("a capture chunk");
        if interface.is_empty() {
            interface = chunk.interface;
        }
        stream.extend_from_slice(&chunk.pcap);
        assert!(Instant::now() < deadline, "the capture went on");
    }
    assert_eq!(interface, "eth0", "the one interface besides lo is taken");
    let (linktype, records) = pcap::parse(&stream).expect("a pcap stream");
    assert_eq!(linktype, pcap::LINKTYPE_ETHERNET);
    // IPv4 ICMP: ethertype 0x0800 at 12, protocol 1 at 23, type at 34.
    let icmp: Vec<u8> = records
        .iter()
        .filter(|r| r.data.get(12..14) == Some(&[8, 0]) && r.data.get(23) == Some(&1))
        .map(|r| r.data[34])
        .collect();
    assert_eq!(icmp.iter().filter(|t| **t == 8).count(), 4, "echo requests in {records:?}");
    assert_eq!(icmp.iter().filter(|t| **t == 0).count(), 4, "echo replies");
    for record in records.iter().filter(|r| r.data.get(23) == Some(&1)) {
        assert_eq!((record.data.len(), record.original_len), (128, 14 + 20 + 8 + 500), "cut at snaplen");
    }
}

//! The `merak` command on a running topology of the local runtime, built by
//! the real terraform binary: status says what stands, exec reaches an EPM,
//! a switch and EVMs by their plan-time names with output and exit codes
//! passed through, a capture ended by Ctrl-C holds the pings sent while it
//! ran, and an agent that is down is said to be.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use merak_acceptance::{Workspace, binary, fixtures};

fn config() -> String {
    r#"
resource "merak_topology" "dc" {
  name              = "{name}"
  racks             = 2
  hosts_per_rack    = 2
  ports_per_vswitch = 2
  data_plane_cidr   = "10.78.0.0/24"
}
"#
    .to_string()
        + &fixtures::tenant("4")
}

fn merak(ws: &Workspace, args: &[&str]) -> Output {
    Command::new(binary("merak"))
        .arg("--state-dir")
        .arg(&ws.state_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run merak")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn exec(ws: &Workspace, node: &str, command: &[&str]) -> Output {
    let mut args = vec!["exec", ws.name.as_str(), node, "--"];
    args.extend_from_slice(command);
    merak(ws, &args)
}

/// The IPv4 address of a node's eth0, as `ip` inside it says.
fn eth0_address(ws: &Workspace, node: &str) -> String {
    let output = exec(ws, node, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(output.status.success(), "{}", text(&output));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    said.split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address in {said:?}"))
        .to_string()
}

/// ICMP echo requests to `ip` and replies from it in a pcap file.
fn echoes(pcap: &[u8], ip: &str) -> (usize, usize) {
    let ip: Vec<u8> = ip.split('.').map(|octet| octet.parse::<u8>().expect("an IPv4 address")).collect();
    let (linktype, records) = merak_agent::pcap::parse(pcap).expect("a pcap file");
    assert_eq!(linktype, merak_agent::pcap::LINKTYPE_ETHERNET);
    let icmp = |data: &[u8], kind: u8, at: std::ops::Range<usize>| {
        data.get(12..14) == Some(&[8, 0])
            && data.get(23) == Some(&1)
            && data.get(34) == Some(&kind)
            && data.get(at) == Some(ip.as_slice())
    };
    let requests = records.iter().filter(|r| icmp(&r.data, 8, 30..34)).count();
    let replies = records.iter().filter(|r| icmp(&r.data, 0, 26..30)).count();
    (requests, replies)
}

#[test]
fn status_exec_and_capture_reach_every_node_by_name() {
    let ws = Workspace::new("op");
    ws.write_config(&config());
    ws.init();
    ws.apply();

    // Status: the whole topology, healthy.
    let status = merak(&ws, &["status", &ws.name, "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let document: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!(document["epms"], serde_json::json!({ "count": 4, "ready": 4 }), "{document}");
    assert_eq!(document["switches"], serde_json::json!(["s1-0", "s0-0", "s0-1"]));
    assert_eq!(
        (document["groups"][0]["name"].as_str(), document["groups"][0]["ready"].as_u64()),
        (Some("web"), Some(4))
    );
    assert_eq!(document["healthy"], true);
    let status = merak(&ws, &["status", &ws.name]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("EPMs      4 of 4 ready") && said.contains("all healthy"), "{}", text(&status));

    // Exec on an EPM, a switch and EVMs.
    let epm = exec(&ws, "epm-1", &["ip", "-o", "-4", "addr", "show"]);
    assert!(String::from_utf8_lossy(&epm.stdout).contains("10.78.0.2/"), "{}", text(&epm));
    let switch = exec(&ws, "s0-0", &["ls", "/sys/class/net"]);
    let ports = String::from_utf8_lossy(&switch.stdout).split_whitespace().filter(|d| *d != "lo").count();
    assert!(switch.status.success() && ports >= 3, "a bridge and its ports: {}", text(&switch));
    let web1 = eth0_address(&ws, "web-1");
    let ping = exec(&ws, "web-0", &["ping", "-c", "1", "-W", "2", &web1]);
    assert!(ping.status.success(), "web-0 pings web-1: {}", text(&ping));
    let failing = exec(&ws, "web-0", &["sh", "-c", "echo to-stderr >&2; exit 7"]);
    assert_eq!(failing.status.code(), Some(7), "{}", text(&failing));
    assert_eq!(String::from_utf8_lossy(&failing.stderr), "to-stderr\n");
    let unknown = exec(&ws, "web-99", &["true"]);
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && said.contains("no node web-99") && said.contains("web-<k>"), "{said}");

    // Capture on web-1 while web-0 pings it, ended by Ctrl-C.
    let file = ws.dir.join("web-1.pcap");
    let mut capture = Command::new(binary("merak"))
        .arg("--state-dir")
        .arg(&ws.state_dir)
        .args(["capture", &ws.name, "web-1", "-w"])
        .arg(&file)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start merak capture");
    let mut said = BufReader::new(capture.stderr.take().expect("its stderr"));
    let mut first = String::new();
    said.read_line(&mut first).expect("merak capture says it started");
    assert!(first.contains("capturing on web-1 eth0"), "{first:?}");
    let ping = exec(&ws, "web-0", &["ping", "-c", "3", "-i", "0.2", &web1]);
    assert!(ping.status.success(), "{}", text(&ping));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the child just started.
    unsafe { libc::kill(capture.id() as libc::pid_t, libc::SIGINT) };
    let ended = capture.wait().expect("merak capture ends");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut said, &mut rest).expect("the rest of its stderr");
    assert!(ended.success() && rest.contains("packets captured"), "{ended:?}: {rest}");
    let pcap = std::fs::read(&file).expect("the pcap file");
    assert_eq!(echoes(&pcap, &web1), (3, 3), "three pings and their replies, each once");

    // An agent down is said to be, and the next apply brings it back.
    for (pid, _) in ws.agent_processes() {
        // SAFETY: kill(2) on this test's agent host.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(300));
    let down = exec(&ws, "web-0", &["true"]);
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success() && said.contains("cannot reach the agent of epm-"), "{}", text(&down));
    let status = merak(&ws, &["status", &ws.name]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("unhealthy"), "{}", text(&status));
    ws.apply();
    assert!(exec(&ws, "web-0", &["true"]).status.success(), "the agents are back");
}

//! Driving the `merak` command against a running topology, on either
//! runtime, and the checks both runtimes must pass: status says it is
//! healthy, exec reaches an EPM, a switch and EVMs by name with output and
//! exit codes passed through, and a capture ended by Ctrl-C holds exactly
//! the pings sent while it ran.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::binary;

/// `merak` pointed at one topology.
pub struct Merak {
    options: Vec<OsString>,
    topology: String,
}

impl Merak {
    /// A topology of the local runtime whose records are under `state_dir`.
    pub fn local(state_dir: &Path, topology: &str) -> Self {
        Merak { options: vec!["--state-dir".into(), state_dir.into()], topology: topology.into() }
    }

    /// A topology of the cluster `kubeconfig` names.
    pub fn kubernetes(kubeconfig: &Path, topology: &str) -> Self {
        Merak { options: vec!["--kubeconfig".into(), kubeconfig.into()], topology: topology.into() }
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(binary("merak"));
        command.args(&self.options).args([subcommand, &self.topology]).stdin(Stdio::null());
        command
    }

    /// `merak status TOPOLOGY [extra]`.
    pub fn status(&self, extra: &[&str]) -> Output {
        self.command("status").args(extra).output().expect("run merak status")
    }

    /// `merak status TOPOLOGY --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let output = self.status(&["--json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", said(&output)))
    }

    /// `merak exec TOPOLOGY NODE -- COMMAND...`.
    pub fn exec(&self, node: &str, command: &[&str]) -> Output {
        self.command("exec").arg(node).arg("--").args(command).output().expect("run merak exec")
    }

    /// The IPv4 address of a node's eth0, as `ip` inside it says.
    pub fn eth0_address(&self, node: &str) -> String {
        let output = self.exec(node, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(output.status.success(), "{}", said(&output));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|word| *word != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no address in {text:?}"))
            .to_string()
    }

    /// A capture of `node` into `file` while `during` runs, ended by Ctrl-C
    /// as a user ends it; the pcap written.
    pub fn capture_while(&self, node: &str, file: &Path, during: impl FnOnce()) -> Vec<u8> {
        let mut capture = self
            .command("capture")
            .arg(node)
            .arg("-w")
            .arg(file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start merak capture");
        let mut stderr = BufReader::new(capture.stderr.take().expect("its stderr"));
        let mut first = String::new();
        stderr.read_line(&mut first).expect("merak capture says it started");
        assert!(first.contains(&format!("capturing on {node} eth0")), "{first:?}");
        during();
        // The agent sends what it captured every 100 ms.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on the child just started.
        unsafe { libc::kill(capture.id() as libc::pid_t, libc::SIGINT) };
        let ended = capture.wait().expect("merak capture ends");
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).expect("the rest of its stderr");
        assert!(ended.success() && rest.contains("packets captured"), "Ctrl-C ends it cleanly: {ended:?}: {rest}");
        std::fs::read(file).expect("the pcap file")
    }
}

/// A command's exit and output, for assertion messages.
pub fn said(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// ICMP echo requests to `ip` and replies from it in a pcap stream.
pub fn echoes(pcap: &[u8], ip: &str) -> (usize, usize) {
    let ip: Vec<u8> = ip.split('.').map(|octet| octet.parse::<u8>().expect("an IPv4 address")).collect();
    let (linktype, records) = merak_agent::pcap::parse(pcap).expect("a pcap stream");
    assert_eq!(linktype, merak_agent::pcap::LINKTYPE_ETHERNET);
    // IPv4 in Ethernet: ethertype at 12, protocol at 23, source at 26,
    // destination at 30, the ICMP type at 34.
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

/// What both runtimes must do for a healthy topology with `epms` EPMs, an
/// EVM group `web` of two EVMs at least, and switch `s0-0`: `epm-1` is
/// reached and holds `epm1_ip`; the switch has its ports; web-0 pings
/// web-1, and a capture on web-1 holds those pings once each.
pub fn nodes_answer_by_name(merak: &Merak, epms: u64, epm1_ip: &str, scratch: &Path) {
    let status = merak.status_json();
    assert_eq!(status["epms"], serde_json::json!({ "count": epms, "ready": epms }), "{status}");
    assert_eq!(status["healthy"], true, "{status}");
    let text = merak.status(&[]);
    assert!(text.status.success() && String::from_utf8_lossy(&text.stdout).contains("all healthy"), "{}", said(&text));

    let epm = merak.exec("epm-1", &["ip", "-o", "-4", "addr", "show"]);
    assert!(String::from_utf8_lossy(&epm.stdout).contains(&format!("{epm1_ip}/")), "{}", said(&epm));
    let switch = merak.exec("s0-0", &["ip", "-o", "link", "show"]);
    let links = String::from_utf8_lossy(&switch.stdout).lines().filter(|l| !l.contains(" lo:")).count();
    assert!(switch.status.success() && links >= 3, "a bridge and its ports: {}", said(&switch));

    let web1 = merak.eth0_address("web-1");
    let ping = merak.exec("web-0", &["ping", "-c", "1", "-W", "2", &web1]);
    assert!(ping.status.success(), "web-0 pings web-1: {}", said(&ping));
    let failing = merak.exec("web-0", &["sh", "-c", "echo to-stderr >&2; exit 7"]);
    assert_eq!(failing.status.code(), Some(7), "{}", said(&failing));
    assert_eq!(String::from_utf8_lossy(&failing.stderr), "to-stderr\n");
    let unknown = merak.exec("web-99", &["true"]);
    let text = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && text.contains("no node web-99") && text.contains("web-<k>"), "{text}");

    let pcap = merak.capture_while("web-1", &scratch.join("web-1.pcap"), || {
        let ping = merak.exec("web-0", &["ping", "-c", "3", "-i", "0.2", &web1]);
        assert!(ping.status.success(), "{}", said(&ping));
    });
    assert_eq!(echoes(&pcap, &web1), (3, 3), "three pings and their replies, each once");
}

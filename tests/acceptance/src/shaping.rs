//! `link_profile` as a user sees it, on either runtime: a rate measured for
//! real (one TCP stream between two EPMs through their shaped uplinks
//! lands within 10 % of `rate_mbit`), a new rate applied in place, shaping
//! removed behind Terraform's back shown by plan and put back by apply,
//! delay refused at apply naming sch_netem on a kernel without it (this
//! one), the profile removed taking merak's qdiscs off. Each EPM's network
//! namespace is on this host (a pod's too, on the stand-in and the real
//! node), so the measurement runs there directly.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::Workspace;

/// Two EPMs on one top-of-rack vswitch, their uplinks shaped.
const TOPOLOGY: &str = r#"
variable "rate" {
  type    = number
  default = 40
}

variable "delay" {
  type    = number
  default = null
}

resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.86.0.0/24"
  link_profile {
    role      = "epm_uplink"
    rate_mbit = var.rate
    delay_ms  = var.delay
  }
}

output "impaired" {
  value = merak_topology.dc.impaired_links
}
"#;

/// The scenario's configuration: `TOPOLOGY` and an underlay pingall.
pub fn config() -> String {
    format!("{TOPOLOGY}{}", crate::fixtures::underlay_pingall("merak_topology.dc"))
}

const PROFILE: &str =
    "  link_profile {\n    role      = \"epm_uplink\"\n    rate_mbit = var.rate\n    delay_ms  = var.delay\n  }\n";

const PORT: u16 = 5201;
const SENDING: Duration = Duration::from_secs(3);

/// Goodput of one TCP stream from namespace `from` to `to_ip` (listening in
/// namespace `to`), Mbit/s, measured at the receiver from its first byte to
/// the end.
fn tcp_mbit(from: &str, to: &str, to_ip: Ipv4Addr) -> f64 {
    let (from, to) = (from.to_string(), to.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = {
        std::thread::spawn(move || {
            enter(&to);
            let listener = TcpListener::bind(SocketAddr::from((to_ip, PORT))).expect("listen in the EPM");
            ready_tx.send(()).expect("tell the sender");
            let (mut stream, _) = listener.accept().expect("the sender connects");
            let mut buffer = vec![0u8; 1 << 16];
            let mut first = None;
            let mut bytes = 0u64;
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        bytes += n as u64;
                    }
                }
            }
            let seconds = first.map_or(1.0, |f| f.elapsed().as_secs_f64());
            bytes as f64 * 8.0 / seconds / 1e6
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the receiver listens");
    let sender = std::thread::spawn(move || {
        enter(&from);
        let mut stream = TcpStream::connect_timeout(&SocketAddr::from((to_ip, PORT)), Duration::from_secs(5))
            .expect("connect across the data plane");
        let chunk = vec![0x5au8; 1 << 16];
        let start = Instant::now();
        while start.elapsed() < SENDING {
            stream.write_all(&chunk).expect("send");
        }
    });
    sender.join().expect("the sender");
    receiver.join().expect("the receiver")
}

/// Moves this thread into a namespace (its sockets are made there).
fn enter(namespace: &str) {
    let fd = merak_netdev::netns::open_fd(namespace).expect("the EPM's namespace");
    merak_netdev::netns::enter(&fd).expect("enter the EPM's namespace");
}

/// One stream from `from` to `to_ip` in `to` lands within 10 % of `rate`
/// (Mbit/s); the goodput measured. Shaping never lets more through, so a
/// stream above is a failure at once; a busy host (another test's
/// namespaces, a core kept busy) can only slow one, so a stream below is
/// measured again, up to three times, before it counts.
pub fn assert_rate(from: &str, to: &str, to_ip: Ipv4Addr, rate: f64) -> f64 {
    let mut measured = Vec::new();
    for _ in 0..3 {
        let mbit = tcp_mbit(from, to, to_ip);
        eprintln!("{rate} Mbit/s profile: {mbit:.1} Mbit/s measured");
        assert!(mbit <= rate * 1.1, "{mbit:.1} Mbit/s measured, more than 10 % above {rate} Mbit/s configured");
        if mbit >= rate * 0.9 {
            return mbit;
        }
        measured.push(format!("{mbit:.1}"));
    }
    panic!("{measured:?} Mbit/s measured, {rate} Mbit/s configured: more than 10 % below, three times")
}

fn tc_in(namespace: &str, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", namespace, "tc"]).args(args).output().expect("run tc in a namespace")
}

fn root_qdisc_of_eth1(namespace: &str) -> String {
    String::from_utf8_lossy(&tc_in(namespace, &["qdisc", "show", "dev", "eth1"]).stdout).into_owned()
}

/// The scenario in `ws` (initialized, [`config`] written), up to the profile's
/// removal; `namespace_of` names an EPM's network namespace once applied.
/// The caller destroys and checks that nothing is left.
pub fn links_are_shaped(ws: &Workspace, namespace_of: &dyn Fn(&str) -> String) {
    let (epm0, epm1) = (Ipv4Addr::new(10, 86, 0, 1), Ipv4Addr::new(10, 86, 0, 2));
    let output = ws.apply();
    assert!(output.contains("impaired = 2"), "both EPM uplinks: {output}");
    assert!(output.contains("underlay = \"2/2\""), "the EPMs reach each other over the shaped data plane: {output}");
    let (ns0, ns1) = (namespace_of("epm-0"), namespace_of("epm-1"));
    assert_rate(&ns1, &ns0, epm0, 40.0);
    assert_eq!(ws.plan().0, 0, "a fresh apply leaves nothing to do");

    // Another rate is an update in place, measured again the other way.
    let plan = ws.ok(&["plan", "-var", "rate=20"]);
    assert!(plan.contains("updated in-place") && !plan.contains("must be replaced"), "{plan}");
    ws.ok(&["apply", "-auto-approve", "-var", "rate=20"]);
    assert_rate(&ns0, &ns1, epm1, 20.0);

    // Shaping taken off behind Terraform's back is drift; apply puts it back.
    let removed = tc_in(&ns0, &["qdisc", "del", "dev", "eth1", "root"]);
    assert!(removed.status.success(), "tc: {}", String::from_utf8_lossy(&removed.stderr));
    let plan = ws.terraform(&["plan", "-detailed-exitcode", "-var", "rate=20"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "{text}");
    assert!(text.contains("impaired_links"), "{text}");
    let output = ws.ok(&["apply", "-auto-approve", "-var", "rate=20"]);
    assert!(output.contains("impaired = 2"), "{output}");
    let shown = root_qdisc_of_eth1(&ns0);
    assert!(shown.contains("tbf 6d72: root"), "{shown}");

    // A kernel without netem refuses delay at apply, naming it, and no
    // link is touched; the plan keeps showing the change.
    let kernel_has_netem = std::path::Path::new("/sys/module/sch_netem").exists();
    if !kernel_has_netem {
        let output = ws.terraform(&["apply", "-auto-approve", "-var", "rate=20", "-var", "delay=5"]);
        let stderr = crate::kubernetes::words(&String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "a delay without netem must fail");
        assert!(stderr.contains("sch_netem") && stderr.contains("No link was shaped"), "{stderr}");
        assert!(root_qdisc_of_eth1(&ns1).contains("tbf 6d72: root"), "the old shaping stands");
        let plan = ws.terraform(&["plan", "-detailed-exitcode", "-var", "rate=20", "-var", "delay=5"]);
        assert_eq!(plan.status.code(), Some(2), "the delay is not there, and plan says so");
    }

    // Without the profile the links are plain again.
    ws.write_config(&config().replace(PROFILE, ""));
    let output = ws.apply();
    assert!(output.contains("impaired = 0"), "{output}");
    let shown = root_qdisc_of_eth1(&ns0);
    assert!(!shown.contains("6d72"), "{shown}");
}

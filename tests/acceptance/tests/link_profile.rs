//! `link_profile` through the real terraform on the local runtime: a rate
//! measured for real (a TCP stream between two EPMs through their shaped
//! uplinks lands within 10 % of `rate_mbit`), a new rate applied in place,
//! shaping removed behind Terraform's back shown by plan and put back by
//! apply, and delay refused at apply naming sch_netem on this kernel, which
//! has none; `merak_pingall` with `scope = "underlay"` between the EPMs.
//! Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use merak_acceptance::Workspace;

const CONFIG: &str = r#"
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

data "merak_pingall" "underlay" {
  topology_id = merak_topology.dc.id
  scope       = "underlay"
  depends_on  = [merak_topology.dc]
}

output "underlay" {
  value = "${data.merak_pingall.underlay.replies}/${data.merak_pingall.underlay.expected_replies}"
}
"#;

const PORT: u16 = 5201;
const SENDING: Duration = Duration::from_secs(3);

/// Goodput of one TCP stream from EPM `from` to `to_ip` (listening in EPM
/// `to`), Mbit/s, measured at the receiver from its first byte to the end.
fn tcp_mbit(ws: &Workspace, from: &str, to: &str, to_ip: Ipv4Addr) -> f64 {
    let namespace = |epm: &str| format!("merak-{}.{epm}", ws.name);
    let (from, to) = (namespace(from), namespace(to));
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

fn assert_near(measured: f64, rate: f64) {
    assert!(
        (measured - rate).abs() <= rate * 0.1,
        "{measured:.1} Mbit/s measured, {rate} Mbit/s configured: more than 10 % apart"
    );
}

#[test]
fn links_are_shaped_to_their_profile_and_delay_needs_netem() {
    let ws = Workspace::new("shape");
    ws.write_config(CONFIG);
    ws.init();
    let (epm0, epm1) = (Ipv4Addr::new(10, 86, 0, 1), Ipv4Addr::new(10, 86, 0, 2));
    let output = ws.apply();
    assert!(output.contains("impaired = 2"), "both EPM uplinks: {output}");
    assert!(output.contains("underlay = \"2/2\""), "the EPMs reach each other over the shaped data plane: {output}");
    let measured = tcp_mbit(&ws, "epm-1", "epm-0", epm0);
    eprintln!("40 Mbit/s profile: {measured:.1} Mbit/s measured");
    assert_near(measured, 40.0);
    assert_eq!(ws.plan().0, 0, "a fresh apply leaves nothing to do");

    // Another rate is an update in place, measured again the other way.
    let plan = ws.ok(&["plan", "-var", "rate=20"]);
    assert!(plan.contains("updated in-place") && !plan.contains("must be replaced"), "{plan}");
    ws.ok(&["apply", "-auto-approve", "-var", "rate=20"]);
    let measured = tcp_mbit(&ws, "epm-0", "epm-1", epm1);
    eprintln!("20 Mbit/s profile: {measured:.1} Mbit/s measured");
    assert_near(measured, 20.0);

    // Shaping taken off behind Terraform's back is drift; apply puts it back.
    let removed = ws.exec_in("epm-0", &["tc", "qdisc", "del", "dev", "eth1", "root"]);
    assert!(removed.status.success(), "tc: {}", String::from_utf8_lossy(&removed.stderr));
    let plan = ws.terraform(&["plan", "-detailed-exitcode", "-var", "rate=20"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "{text}");
    assert!(text.contains("impaired_links"), "{text}");
    let output = ws.ok(&["apply", "-auto-approve", "-var", "rate=20"]);
    assert!(output.contains("impaired = 2"), "{output}");
    let shown = ws.exec_in("epm-0", &["tc", "qdisc", "show", "dev", "eth1"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("tbf 6d72: root"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );

    // This kernel has no netem: delay is refused at apply, naming it, and
    // no link is touched; the plan keeps showing the change.
    let kernel_has_netem = std::path::Path::new("/sys/module/sch_netem").exists();
    if !kernel_has_netem {
        let output = ws.terraform(&["apply", "-auto-approve", "-var", "rate=20", "-var", "delay=5"]);
        let stderr = String::from_utf8_lossy(&output.stderr).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!output.status.success(), "a delay without netem must fail");
        assert!(stderr.contains("sch_netem") && stderr.contains("No link was shaped"), "{stderr}");
        let shown = ws.exec_in("epm-1", &["tc", "qdisc", "show", "dev", "eth1"]);
        assert!(String::from_utf8_lossy(&shown.stdout).contains("tbf 6d72: root"), "the old shaping stands");
        let plan = ws.terraform(&["plan", "-detailed-exitcode", "-var", "rate=20", "-var", "delay=5"]);
        assert_eq!(plan.status.code(), Some(2), "the delay is not there, and plan says so");
    }

    // Without the profile the links are plain again.
    ws.write_config(&CONFIG.replace(
        "  link_profile {\n    role      = \"epm_uplink\"\n    rate_mbit = var.rate\n    delay_ms  = var.delay\n  }\n",
        "",
    ));
    let output = ws.apply();
    assert!(output.contains("impaired = 0"), "{output}");
    let shown = ws.exec_in("epm-0", &["tc", "qdisc", "show", "dev", "eth1"]);
    assert!(!String::from_utf8_lossy(&shown.stdout).contains("6d72"), "{}", String::from_utf8_lossy(&shown.stdout));
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

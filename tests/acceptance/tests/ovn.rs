//! A real third-party control plane as the system under test:
//! examples/terraform/scenarios/ovn applied for real. OVN's chassis
//! (ovsdb-server, ovs-vswitchd on the userspace datapath, ovn-controller)
//! runs as an epm_agent in every EPM; examples/controllers/ovn/adapter.py
//! runs OVN's databases and northd and is the external controller. The
//! pings, and a TCP stream, cross EPMs through OVN's Geneve tunnels; the
//! other VPC stays apart; scaling adds and removes logical ports; security
//! groups become OVN port groups and ACLs, which OVN enforces as pingall
//! and TCP find they were declared; destroy leaves OVN holding none of them.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use merak_acceptance::{Workspace, repo_root};

/// The adapter (and with it OVN's central part), stopped on drop.
struct Adapter {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Adapter {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_root().join("examples/controllers/ovn/adapter.py"))
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OVN adapter");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("its stdout")).read_line(&mut line).expect("its first line");
        let address = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("the adapter said {line:?}"));
        Adapter { child, url: format!("http://{address}"), dir: dir.to_path_buf() }
    }

    fn nb(&self, args: &[&str]) -> String {
        let output = Command::new("ovn-nbctl")
            .arg(format!("--db=unix:{}/nb.sock", self.dir.display()))
            .args(args)
            .output()
            .expect("run ovn-nbctl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn sb(&self, args: &[&str]) -> String {
        let output = Command::new("ovn-sbctl")
            .arg(format!("--db=unix:{}/sb.sock", self.dir.display()))
            .args(args)
            .output()
            .expect("run ovn-sbctl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The EVMs' logical ports on a switch (not the router's).
    fn evm_ports(&self, switch: &str) -> Vec<String> {
        let mut ports: Vec<String> = self
            .nb(&["lsp-list", switch])
            .lines()
            .filter_map(|l| l.split_once(" (").map(|(_, name)| name.trim_end_matches(')').to_string()))
            .filter(|name| !name.starts_with("sp-"))
            .collect();
        ports.sort();
        ports
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        // SIGTERM: it stops northd and the databases before it exits.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn tools_present() -> Result<(), String> {
    for tool in ["ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovn-northd", "ovn-controller", "ovn-nbctl"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            return Err(format!(
                "{tool} is missing: run tests/acceptance/install-deps.sh (openvswitch-switch, ovn-central, ovn-host)"
            ));
        }
    }
    Ok(())
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Sends 1 MB from `from` (an EVM's namespace) to `to_ip` in `to`, and
/// tells whether it arrived intact.
fn tcp_stream_arrives(from: &str, to: &str, to_ip: &str) -> bool {
    const SERVER: &str = "import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind((sys.argv[1], 7001)); s.listen(); s.settimeout(20); c,_=s.accept(); c.settimeout(20); data=b''\n\
        while True:\n    b=c.recv(65536)\n    if not b: break\n    data+=b\nprint('intact' if data == bytes(range(256))*4096 else f'{len(data)} bytes, corrupt')";
    const CLIENT: &str = "import socket,sys,time\nfor _ in range(50):\n    try: s=socket.create_connection((sys.argv[1], 7001), timeout=10); break\n    except OSError: time.sleep(0.1)\n\
        data=bytes(range(256))*4096; s.sendall(data); s.close()";
    let server = Command::new("ip")
        .args(["netns", "exec", to, "python3", "-c", SERVER, to_ip])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let client = Command::new("ip")
        .args(["netns", "exec", from, "python3", "-c", CLIENT, to_ip])
        .output()
        .expect("run the sender");
    let received = server.wait_with_output().expect("the receiver's answer");
    client.status.success() && String::from_utf8_lossy(&received.stdout).trim() == "intact"
}

/// Whether a TCP connection from `from` (an EVM's namespace) to `ip:port`
/// gets an answer: refused counts (nothing listens, but the SYN got there
/// and the reset came back), silence does not (dropped on the way).
fn tcp_reaches(from: &str, ip: &str, port: u16) -> bool {
    const PROBE: &str = "import socket,sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n\
        except ConnectionRefusedError: print('reached')\nexcept OSError: print('silent')\nelse: print('reached')";
    let output = Command::new("ip")
        .args(["netns", "exec", from, "python3", "-c", PROBE, ip, &port.to_string()])
        .output()
        .expect("run the probe");
    String::from_utf8_lossy(&output.stdout).trim() == "reached"
}

#[test]
fn ovn_programs_the_external_vpcs_and_carries_their_traffic() {
    if let Err(missing) = tools_present() {
        panic!("{missing}");
    }
    let ws = Workspace::new("ovn");
    let adapter = Adapter::start(&ws.dir.join("ovn"));
    let scenario =
        std::fs::read_to_string(repo_root().join("examples/terraform/scenarios/ovn/main.tf")).expect("the scenario");
    std::fs::write(ws.dir.join("main.tf"), scenario).expect("write main.tf");
    ws.init();
    let vars = [
        format!("name={}", ws.name),
        format!("state_dir={}", ws.state_dir.display()),
        format!("controller_url={}", adapter.url),
        format!("ovn_dir={}", adapter.dir.display()),
        format!("chassis_script={}", repo_root().join("examples/controllers/ovn/ovn-chassis.sh").display()),
    ];
    let with_vars = |command: &[&str], web_count: u32| -> Vec<String> {
        let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
        for var in vars.iter().cloned().chain([format!("web_count={web_count}")]) {
            args.extend(["-var".to_string(), var]);
        }
        args
    };
    let run = |command: &[&str], web_count: u32| -> String {
        let args = with_vars(command, web_count);
        ws.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let output = run(&["apply", "-auto-approve"], 4);
    assert!(output.contains("24/24 replies, 1/1 isolation probes blocked, 0 unexpected"), "{output}");
    // It was OVN: both chassis registered, every EVM's port bound, and each
    // device a port of br-int on its EPM's Open vSwitch.
    let chassis = adapter.sb(&["--bare", "--columns=name", "list", "Chassis"]);
    assert_eq!(
        chassis.split_whitespace().collect::<std::collections::BTreeSet<_>>(),
        ["epm-0", "epm-1"].into(),
        "{chassis}"
    );
    let web = format!("{}.blue.web", ws.name);
    assert_eq!(adapter.evm_ports(&web), (0..4).map(|k| format!("{}/web-{k}", ws.name)).collect::<Vec<_>>());
    let bound = adapter.sb(&["--bare", "--columns=logical_port", "find", "Port_Binding", "type=\"\""]);
    assert_eq!(bound.split_whitespace().count(), 8, "{bound}");
    let epm0_db = format!("--db=unix:{}/chassis/epm-0/run/db.sock", adapter.dir.display());
    let on_br_int = Command::new("ovs-vsctl").args([&epm0_db, "list-ports", "br-int"]).output().expect("ovs-vsctl");
    assert!(text(&on_br_int).lines().filter(|p| !p.starts_with("ovn-")).count() >= 4, "{}", text(&on_br_int));
    // TCP across EPMs: the EVMs compute their own checksums and their MTU
    // leaves room for Geneve's header.
    let (web0, web1) = (format!("merak-{}.vm.web.0", ws.name), format!("merak-{}.vm.web.1", ws.name));
    assert!(
        tcp_stream_arrives(&web0, &web1, "10.50.1.3"),
        "1 MB from web-0 (epm-0) to web-1 (epm-1) did not arrive intact"
    );
    let plan = with_vars(&["plan", "-detailed-exitcode"], 4);
    let plan = ws.terraform(&plan.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(plan.status.code(), Some(0), "the plan after apply is not empty: {}", text(&plan));

    // Scaling in place adds and removes logical ports.
    let output = run(&["apply", "-auto-approve"], 6);
    assert!(output.contains("44/44 replies, 1/1 isolation probes blocked, 0 unexpected"), "{output}");
    assert_eq!(adapter.evm_ports(&web).len(), 6);
    run(&["apply", "-auto-approve"], 2);
    assert_eq!(adapter.evm_ports(&web), [format!("{}/web-0", ws.name), format!("{}/web-1", ws.name)]);

    // Security groups, enforced by OVN: the web tier answers only itself
    // (ICMP and TCP 7001); pingall judges OVN by the declared policy.
    let mut secure = with_vars(&["apply", "-auto-approve"], 2);
    secure.extend(["-var".to_string(), "security_groups=true".to_string()]);
    let output = ws.ok(&secure.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.contains(" 0 unexpected"), "{output}");
    let policy = ws.ok(&["output", "-raw", "policy"]);
    let counts = policy.split_once(" denied").and_then(|(counts, _)| counts.split_once('/'));
    assert!(counts.is_some_and(|(kept, probes)| kept == probes && probes != "0"), "{policy}");
    let groups = adapter.nb(&["--bare", "--columns=name", "list", "Port_Group"]);
    assert_eq!(groups.split_whitespace().count(), 2, "the web group and the VPC's default: {groups}");
    let acls = adapter.nb(&["--bare", "--columns=match", "list", "ACL"]);
    assert!(acls.contains("tcp.dst >= 7001 && tcp.dst <= 7001"), "{acls}");
    let db0 = format!("merak-{}.vm.db.0", ws.name);
    assert!(tcp_stream_arrives(&web0, &web1, "10.50.1.3"), "web to web on 7001 is allowed");
    assert!(!tcp_reaches(&db0, "10.50.1.3", 7001), "db to web is dropped");
    assert!(!tcp_reaches(&web0, "10.50.1.3", 7002), "web to web on another port is dropped");

    run(&["destroy", "-auto-approve"], 2);
    assert_eq!(adapter.nb(&["--bare", "--columns=name", "list", "Port_Group"]).trim(), "", "port groups left");
    // The adapter removed what it made once no port was left in it.
    assert_eq!(adapter.nb(&["ls-list"]).trim(), "", "logical switches left");
    assert_eq!(adapter.nb(&["lr-list"]).trim(), "", "logical routers left");
    ws.assert_nothing_left();
}

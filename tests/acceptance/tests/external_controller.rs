//! An external VPC through the real terraform binary, against the recording
//! controller of examples/controllers/recording (a real HTTP server): merak
//! builds the EVMs, leaves their EPM ends for the system under test, and
//! tells the controller about every port in batches; scaling adds and
//! deletes ports; a controller that fails requests, is down, or refuses a
//! port leaves state the next apply converges from; destroy deletes them all.
//! Security groups of an external VPC go to the controller too: the groups,
//! and each port's groups, sent again when they change.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use merak_acceptance::{Workspace, repo_root};
use serde_json::Value;

/// The recording controller, stopped on drop.
struct RecordingController {
    child: Child,
    port: u16,
    state: PathBuf,
    log: PathBuf,
}

impl RecordingController {
    /// Starts it on `port` (0: any free one), keeping its ports in `dir`.
    fn start(dir: &Path, port: u16, faults: &[&str]) -> Self {
        let script = repo_root().join("examples/controllers/recording/controller.py");
        let (state, log) = (dir.join("ports.json"), dir.join("requests.jsonl"));
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state")
            .arg(&state)
            .arg("--log")
            .arg(&log)
            .args(faults)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the recording controller");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("its stdout")).read_line(&mut line).expect("its first line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        RecordingController { child, port, state, log }
    }

    fn restart(self, faults: &[&str]) -> Self {
        let (dir, port) = (self.state.parent().expect("a state dir").to_path_buf(), self.port);
        drop(self);
        Self::start(&dir, port, faults)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The ports it holds, by EVM name.
    fn ports(&self) -> std::collections::BTreeMap<String, Value> {
        let text = std::fs::read_to_string(&self.state).unwrap_or_else(|_| "{}".into());
        let ports: std::collections::BTreeMap<String, Value> =
            serde_json::from_str(&text).expect("the controller's state");
        ports.into_values().map(|p| (p["evm"].as_str().unwrap_or_default().to_string(), p)).collect()
    }

    /// The security groups it holds, by name.
    fn security_groups(&self) -> std::collections::BTreeMap<String, Value> {
        let file = self.state.with_file_name("security-groups.json");
        let text = std::fs::read_to_string(file).unwrap_or_else(|_| "{}".into());
        let groups: std::collections::BTreeMap<String, Value> =
            serde_json::from_str(&text).expect("the controller's groups");
        groups.into_values().map(|g| (g["name"].as_str().unwrap_or_default().to_string(), g)).collect()
    }

    /// The port requests it got, as (method, ids, status), and forgets
    /// every request.
    fn take_requests(&self) -> Vec<(String, Vec<String>, u64)> {
        self.take_all_requests()
            .into_iter()
            .filter(|(path, ..)| path == "/v1/ports")
            .map(|(_, method, ids, status)| (method, ids, status))
            .collect()
    }

    /// Every request it got, as (path, method, ids, status), and forgets them.
    fn take_all_requests(&self) -> Vec<(String, String, Vec<String>, u64)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|r| {
                let ids =
                    r["ids"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from)).collect();
                let text = |key: &str| r[key].as_str().unwrap_or_default().to_string();
                (text("path"), text("method"), ids, r["status"].as_u64().unwrap_or(0))
            })
            .collect()
    }
}

impl Drop for RecordingController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provider(ws: &Workspace, controller: &str) -> String {
    let transport =
        std::env::var("MERAK_AGENT_TRANSPORT").map(|t| format!("    agent_transport = \"{t}\"\n")).unwrap_or_default();
    format!(
        "provider \"merak\" {{\n  local {{\n    state_dir = \"{}\"\n{transport}  }}\n{controller}}}\n",
        ws.state_dir.display()
    )
}

/// The agent under test prints where the controller is.
const SUT: &str = r#"
  epm_agent {
    name    = "sut"
    command = ["sh", "-c", "echo controller=$${controller_url} on $${epm}; exec sleep 100000"]
  }
"#;

fn resources(count: u32) -> String {
    resources_with(count, SUT)
}

fn resources_with(count: u32, agents: &str) -> String {
    format!(
        r#"resource "merak_topology" "dc" {{
  name            = "{{name}}"
  racks           = 1
  hosts_per_rack  = 2
  data_plane_cidr = "10.79.0.0/24"
{agents}}}

resource "merak_vpc" "blue" {{
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.40.0.0/16"
  controller  = "external"
}}

resource "merak_subnet" "web" {{
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.40.1.0/24"
}}

resource "merak_evm_group" "web" {{
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = {count}
}}
"#
    )
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ip_json(args: &[&str]) -> Value {
    let output = Command::new("ip").arg("-j").args(args).output().expect("run ip");
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

#[test]
fn an_external_controller_is_told_every_port_and_converges_through_its_faults() {
    let ws = Workspace::new("extctl");
    let controller = RecordingController::start(&ws.dir, 0, &[]);
    let block = format!("  controller {{\n    url        = \"{}\"\n    batch_size = 3\n  }}\n", controller.url());
    let block = provider(&ws, &block);
    let ws = ws.with_provider(block);
    ws.write_config(&resources(4));
    ws.init();
    ws.apply();
    assert_eq!(ws.resource_values("merak_evm_group.web")["ready_count"], 4);

    // Every port, with what a controller needs to program it.
    let ports = controller.ports();
    assert_eq!(ports.keys().collect::<Vec<_>>(), ["web-0", "web-1", "web-2", "web-3"]);
    let vni = ws.resource_values("merak_vpc.blue")["vni"].clone();
    for (evm, port) in &ports {
        let k: u32 = evm.trim_start_matches("web-").parse().expect("an index");
        let epm = format!("epm-{}", k % 2);
        assert_eq!(port["id"], format!("{}/{evm}", ws.name));
        assert_eq!(
            (port["epm"].as_str(), port["epm_ip"].as_str()),
            (Some(epm.as_str()), Some(format!("10.79.0.{}", k % 2 + 1).as_str())),
            "{port}"
        );
        assert_eq!(
            (port["vpc"].as_str(), port["subnet"].as_str(), port["subnet_cidr"].as_str(), port["gateway"].as_str()),
            (Some("blue"), Some("web"), Some("10.40.1.0/24"), Some("10.40.1.1"))
        );
        assert_eq!(port["vni"], vni);
        // The device waits in the EPM, up and on no bridge; the MAC is eth0's.
        let device = port["device"].as_str().unwrap_or_default();
        let link = ip_json(&["-n", &format!("merak-{}.{epm}", ws.name), "link", "show", "dev", device]);
        assert!(
            link[0]["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "UP")) && link[0]["master"].is_null(),
            "{device}: {link}"
        );
        let eth0 = ip_json(&["-n", &format!("merak-{}.vm.web.{k}", ws.name), "link", "show", "dev", "eth0"]);
        assert_eq!(eth0[0]["address"], port["mac"], "{evm}");
        let address = ip_json(&["-n", &format!("merak-{}.vm.web.{k}", ws.name), "-4", "addr", "show", "dev", "eth0"]);
        assert_eq!(address[0]["addr_info"][0]["local"], port["ip"]);
    }
    // In batches of batch_size; and no overlay of merak's for the VPC.
    let requests = controller.take_requests();
    let mut shape: Vec<(&str, usize)> = requests.iter().map(|(m, ids, _)| (m.as_str(), ids.len())).collect();
    shape.sort_unstable();
    assert_eq!(shape, [("PUT", 1), ("PUT", 3)], "{requests:?}");
    assert!(
        ws.namespaces().iter().all(|n| !n.contains(".r.")),
        "router namespaces for an external VPC: {:?}",
        ws.namespaces()
    );
    // The agent under test was told where the controller is.
    let log = std::fs::read_to_string(ws.state_dir.join(&ws.name).join("epm-1.sut.log")).unwrap_or_default();
    assert!(log.contains(&format!("controller={} on epm-1", controller.url())), "{log}");
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);
    assert!(controller.take_requests().is_empty(), "a plan sends nothing to the controller");

    // Scaling in deletes the ports, in one request.
    ws.write_config(&resources(2));
    ws.apply();
    assert_eq!(controller.ports().keys().collect::<Vec<_>>(), ["web-0", "web-1"]);
    let requests = controller.take_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0].0.as_str(), requests[0].1.len()), ("DELETE", 2));

    // Every second request answered 500: retried, and the apply succeeds.
    let controller = controller.restart(&["--fail-every", "2"]);
    ws.write_config(&resources(6));
    ws.apply();
    assert_eq!(controller.ports().len(), 6);
    assert!(controller.take_requests().iter().any(|(_, _, status)| *status == 500), "no request failed");

    // The controller down: the apply fails naming the EVMs and why; the EVMs
    // are built but not ready, the plan shows it, and once the controller is
    // back the next apply finishes.
    let dir = ws.dir.clone();
    let port = controller.port;
    drop(controller);
    ws.write_config(&resources(8));
    let apply = ws.terraform(&["apply", "-auto-approve"]);
    let stderr = text(&apply);
    assert!(
        !apply.status.success() && stderr.contains("web-6") && stderr.contains("cannot reach the controller"),
        "{stderr}"
    );
    let controller = RecordingController::start(&dir, port, &[]);
    assert_eq!(ws.plan().0, 2);
    ws.apply();
    assert_eq!(controller.ports().len(), 8);
    assert_eq!(ws.resource_values("merak_evm_group.web")["ready_count"], 8);
    assert_eq!(ws.plan().0, 0);

    // A refused port: named with the controller's message, not recorded as
    // built, and sent again by the next apply.
    let controller = controller.restart(&["--refuse", "web-8"]);
    ws.write_config(&resources(9));
    let apply = ws.terraform(&["apply", "-auto-approve"]);
    let stderr = text(&apply);
    assert!(
        !apply.status.success() && stderr.contains("EVM web-8") && stderr.contains("no room for web-8 (--refuse)"),
        "{stderr}"
    );
    assert!(!controller.ports().contains_key("web-8"));
    let controller = controller.restart(&[]);
    controller.take_requests();
    ws.apply();
    assert!(controller.ports().contains_key("web-8"));
    let resent: Vec<Vec<String>> = controller.take_requests().into_iter().map(|(_, ids, _)| ids).collect();
    assert_eq!(resent, [vec![format!("{}/web-8", ws.name)]], "only the refused port is sent again");
    assert_eq!(ws.plan().0, 0);

    // Destroy deletes every port, then the emulation.
    ws.ok(&["destroy", "-auto-approve"]);
    assert!(controller.ports().is_empty(), "{:?}", controller.ports());
    ws.assert_nothing_left();
}

/// `resources(2)` with a security group `ssh` (TCP to `ssh_port` from the
/// VPC and from its own members) when `ssh_port` is given, and the web
/// group in `web_groups`.
fn with_security_group(ssh_port: Option<u16>, web_groups: &str) -> String {
    let group = ssh_port.map_or(String::new(), |port| {
        format!(
            r#"
resource "merak_security_group" "ssh" {{
  vpc_id = merak_vpc.blue.id
  name   = "ssh"
  ingress {{
    protocol    = "tcp"
    from_port   = {port}
    cidr_blocks = ["10.40.0.0/16"]
    self        = true
  }}
}}
"#
        )
    });
    let web = format!("  evm_count = 2\n  security_group_ids = [{web_groups}]\n");
    resources(2).replace("  evm_count = 2\n", &web) + &group
}

#[test]
fn an_external_controller_is_told_security_groups_and_each_ports_groups() {
    let ws = Workspace::new("extsg");
    let controller = RecordingController::start(&ws.dir, 0, &[]);
    let block = provider(&ws, &format!("  controller {{\n    url = \"{}\"\n  }}\n", controller.url()));
    let ws = ws.with_provider(block);
    let port_groups = |controller: &RecordingController| -> Vec<Value> {
        controller.ports().values().map(|p| p["security_groups"].clone()).collect()
    };
    ws.write_config(&with_security_group(None, ""));
    ws.init();
    ws.apply();
    assert_eq!(port_groups(&controller), [serde_json::json!([]), serde_json::json!([])], "no group: unfiltered");
    controller.take_all_requests();

    // The VPC's first group: sent with `default`, then every port again, in
    // `default` now (the web group names none).
    ws.write_config(&with_security_group(Some(22), ""));
    ws.apply();
    let groups = controller.security_groups();
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["default", "ssh"]);
    let ssh = &groups["ssh"];
    assert_eq!(ssh["id"], format!("{}/blue/ssh", ws.name));
    let rule = &ssh["ingress"][0];
    assert_eq!(
        (&rule["protocol"], &rule["protocol_number"], &rule["from_port"], &rule["to_port"]),
        (&serde_json::json!("tcp"), &serde_json::json!(6), &serde_json::json!(22), &serde_json::json!(22))
    );
    assert_eq!(
        (&rule["cidr_blocks"], &rule["remote_groups"]),
        (&serde_json::json!(["10.40.0.0/16"]), &serde_json::json!(["ssh"]))
    );
    assert_eq!(groups["default"]["ingress"][0]["remote_groups"], serde_json::json!(["default"]));
    assert_eq!(port_groups(&controller), [serde_json::json!(["default"]), serde_json::json!(["default"])]);
    let order: Vec<(String, String)> =
        controller.take_all_requests().into_iter().map(|(path, method, ..)| (path, method)).collect();
    let group_put = order.iter().position(|r| r.0 == "/v1/security-groups");
    let port_put = order.iter().position(|r| r.0 == "/v1/ports");
    assert!(group_put.is_some() && group_put < port_put, "the group before the ports in it: {order:?}");

    // Into the group, in place: the ports again, no EVM rebuilt.
    let namespaces = ws.namespaces();
    ws.write_config(&with_security_group(Some(22), "merak_security_group.ssh.id"));
    ws.apply();
    assert_eq!(port_groups(&controller), [serde_json::json!(["ssh"]), serde_json::json!(["ssh"])]);
    assert_eq!(ws.namespaces(), namespaces, "no EVM rebuilt");
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);
    controller.take_all_requests();

    // A rule edited: the group alone is sent again.
    ws.write_config(&with_security_group(Some(2222), "merak_security_group.ssh.id"));
    ws.apply();
    assert_eq!(controller.security_groups()["ssh"]["ingress"][0]["from_port"], 2222);
    let paths: Vec<String> = controller.take_all_requests().into_iter().map(|(path, ..)| path).collect();
    assert_eq!(paths, ["/v1/security-groups"], "a rule changes no port");

    // Out of the group, then the group gone (two applies: Terraform
    // destroys a resource before it updates what stops naming it, as with
    // every cloud's security groups): the ports leave every group before
    // the controller is told to delete it, and `default` with it.
    ws.write_config(&with_security_group(Some(2222), ""));
    ws.apply();
    assert_eq!(port_groups(&controller), [serde_json::json!(["default"]), serde_json::json!(["default"])]);
    controller.take_all_requests();
    ws.write_config(&with_security_group(None, ""));
    ws.apply();
    assert!(controller.security_groups().is_empty(), "{:?}", controller.security_groups());
    assert_eq!(port_groups(&controller), [serde_json::json!([]), serde_json::json!([])]);
    let order: Vec<(String, String)> =
        controller.take_all_requests().into_iter().map(|(path, method, ..)| (path, method)).collect();
    let group_delete = order.iter().position(|r| r.0 == "/v1/security-groups" && r.1 == "DELETE");
    let last_port_put = order.iter().rposition(|r| r.0 == "/v1/ports");
    assert!(group_delete > last_port_put, "ports out before the group goes: {order:?}");
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);

    ws.ok(&["destroy", "-auto-approve"]);
    assert!(controller.ports().is_empty(), "{:?}", controller.ports());
    ws.assert_nothing_left();
}

#[test]
fn external_vpcs_and_the_controller_block_are_checked_at_plan() {
    let ws = Workspace::new("extbad");
    let with_controller = |block: &str| provider(&ws, block);
    let bare = resources_with(1, "");
    let cases = [
        (with_controller(""), bare.clone(), "No external controller"),
        (with_controller(""), resources(1), "No controller to name"),
        (
            with_controller("  controller {\n    url = \"ftp://127.0.0.1:9\"\n  }\n"),
            bare.clone(),
            "Invalid controller url",
        ),
        (
            with_controller("  controller {\n    url = \"http://127.0.0.1:9\"\n    batch_size = 0\n  }\n"),
            bare.clone(),
            "Invalid batch_size",
        ),
        (
            with_controller("  controller {\n    url = \"http://127.0.0.1:9\"\n  }\n"),
            bare.replace("\"external\"", "\"ovn\""),
            "Unsupported controller",
        ),
    ];
    let mut ws = ws;
    for (provider, resources, says) in cases {
        ws = ws.with_provider(provider);
        ws.write_config(&resources);
        if !ws.dir.join(".terraform").exists() {
            ws.init();
        }
        let stderr = ws.plan_error(says).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(stderr.contains(says), "expected {says:?}: {stderr}");
    }
    assert!(ws.namespaces().is_empty(), "a refused plan built something: {:?}", ws.namespaces());
}

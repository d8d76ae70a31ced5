//! The `merak` command on a running topology of the local runtime, built by
//! the real terraform binary: status, exec and capture reach every node by
//! its plan-time name (the checks the kubernetes scenarios make too), and an
//! agent that is down is said to be until the next apply revives it.

use std::time::Duration;

use merak_acceptance::operate::{self, Merak, said};
use merak_acceptance::{Workspace, fixtures};

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

#[test]
fn status_exec_and_capture_reach_every_node_by_name() {
    let ws = Workspace::new("op");
    ws.write_config(&config());
    ws.init();
    ws.apply();
    let merak = Merak::local(&ws.state_dir, &ws.name);

    operate::nodes_answer_by_name(&merak, 4, "10.78.0.2", &ws.dir);
    let status = merak.status_json();
    assert_eq!(status["switches"], serde_json::json!(["s1-0", "s0-0", "s0-1"]), "{status}");
    assert_eq!((status["groups"][0]["name"].as_str(), status["groups"][0]["ready"].as_u64()), (Some("web"), Some(4)));
    // The local runtime's switches are namespaces with /sys of their own.
    let switch = merak.exec("s0-0", &["ls", "/sys/class/net"]);
    assert!(String::from_utf8_lossy(&switch.stdout).contains("lo"), "{}", said(&switch));

    // An agent down is said to be, and the next apply brings it back.
    for (pid, _) in ws.agent_processes() {
        // SAFETY: kill(2) on this test's agent host.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(300));
    let down = merak.exec("web-0", &["true"]);
    let text = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success() && text.contains("cannot reach the agent of epm-"), "{}", said(&down));
    let status = merak.status(&[]);
    assert_eq!(status.status.code(), Some(1), "{}", said(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("unhealthy"), "{}", said(&status));
    ws.apply();
    assert!(merak.exec("web-0", &["true"]).status.success(), "the agents are back");
}

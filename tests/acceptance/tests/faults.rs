//! Faults through the real terraform binary: terraform and its provider, or
//! the provider alone, or the agents' host, killed (SIGKILL) at random moments of an
//! apply or a destroy; then the next apply must converge (an empty plan, a
//! clean pingall, every EVM wired as the kernel sees it) and the next
//! destroy must leave nothing. And two applies of one topology at once.
//!
//! MERAK_FAULT_RUNS sets the number of randomized runs (default 20),
//! MERAK_FAULT_SEED replays a run sequence (each run prints its seed).

use std::collections::BTreeMap;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use merak_acceptance::Workspace;

/// A small xorshift generator: reproducible from the printed seed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const EPMS: u32 = 4;

fn config(evms: u32) -> String {
    format!(
        r#"
resource "merak_topology" "dc" {{
  name            = "{{name}}"
  racks           = 2
  hosts_per_rack  = 2
  data_plane_cidr = "10.211.0.0/24"
}}

resource "merak_vpc" "blue" {{
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.0.0.0/16"
}}

resource "merak_subnet" "web" {{
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.0.0.0/21"
}}

resource "merak_evm_group" "web" {{
  subnet_id = merak_subnet.web.id
  name      = "web"
  evm_count = {evms}
}}

data "merak_pingall" "check" {{
  topology_id = merak_topology.dc.id
  depends_on  = [merak_evm_group.web]
}}

output "unexpected" {{
  value = data.merak_pingall.check.unexpected
}}

output "failures" {{
  value = data.merak_pingall.check.failures
}}
"#
    )
}

/// What a run kills, and when.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// terraform and the provider together (its whole process group).
    Terraform,
    /// The provider process alone; terraform sees its plugin vanish.
    Provider,
    /// The process serving every EPM's agent (the topology's agent host).
    AgentHost,
}

fn pids_in_group(group: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let comm = head.split_once('(').map(|(_, c)| c.to_string()).unwrap_or_default();
        // After the command: state, ppid, pgrp.
        if rest.split_whitespace().nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(group) {
            found.push((pid, comm));
        }
    }
    found
}

fn kill(pid: i32) {
    // SAFETY: kill(2) on processes this test started (or their group).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Injects `fault` into the running terraform `child` after `delay`;
/// returns what terraform printed, and whether the fault was injected
/// before it finished by itself.
fn inject(ws: &Workspace, mut child: Child, fault: Fault, delay: Duration) -> (Output, bool) {
    let started = Instant::now();
    let mut injected = false;
    while started.elapsed() < delay {
        if child.try_wait().ok().flatten().is_some() {
            return (child.wait_with_output().expect("terraform output"), false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let group = child.id();
    match fault {
        Fault::Terraform => {
            kill(-(group as i32));
            injected = true;
        }
        Fault::Provider => {
            for (pid, comm) in pids_in_group(group) {
                if comm.starts_with("terraform-provi") {
                    kill(pid as i32);
                    injected = true;
                }
            }
        }
        Fault::AgentHost => {
            for (pid, _) in ws.agent_processes() {
                kill(pid as i32);
                injected = true;
            }
        }
    }
    (child.wait_with_output().expect("terraform output"), injected)
}

/// Runs apply until it succeeds (at most three times): after a fault the
/// first may still fail, e.g. when terraform was killed after the provider
/// had finished a create that terraform could not record; then the
/// diagnostic names the import to run, and this follows it.
fn converge(ws: &Workspace, context: &str) -> String {
    let mut last = String::new();
    for _ in 0..3 {
        let output = ws.terraform(&["apply", "-auto-approve"]);
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            return stdout.into_owned();
        }
        last = format!("{stdout}\n{stderr}");
        let stderr = flat(&stderr);
        for import in stderr.split("terraform import ").skip(1) {
            let mut words = import.split_whitespace();
            let address = if words.next().is_some_and(|a| a.starts_with("merak_topology")) { "merak_topology.dc" } else { "merak_evm_group.web" };
            if let Some(id) = words.next() {
                ws.ok(&["import", address, id]);
            }
        }
    }
    panic!("{context}: apply did not converge:\n{last}");
}

/// Terraform's output with its diagnostic frames and line wrapping undone.
fn flat(text: &str) -> String {
    text.replace('│', " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// EVMs of the topology that the kernel shows fully wired: the namespace's
/// eth0 up with an IPv4 address and a default route, and, in the router
/// namespaces, as many EVM ports up on a bridge. Read with `ip`, not with
/// the provider's code.
fn wired_evms(ws: &Workspace) -> usize {
    let prefix = format!("merak-{}.", ws.name);
    let mut evm_side = 0;
    let mut router_ports = 0;
    for namespace in ws.namespaces() {
        let object = namespace.strip_prefix(&prefix).unwrap_or_default();
        if object.starts_with("vm.") {
            let addr = Command::new("ip").args(["-j", "-n", &namespace, "addr", "show", "dev", "eth0"]).output().expect("ip addr");
            let addr: serde_json::Value = serde_json::from_slice(&addr.stdout).unwrap_or_default();
            let up = addr[0]["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "UP"));
            let ipv4 = addr[0]["addr_info"].as_array().is_some_and(|a| a.iter().any(|a| a["family"] == "inet"));
            let route = Command::new("ip").args(["-n", &namespace, "route", "show", "default"]).output().expect("ip route");
            if up && ipv4 && !route.stdout.is_empty() {
                evm_side += 1;
            }
        } else if object.contains(".r.") {
            let links = Command::new("ip").args(["-j", "-n", &namespace, "link", "show", "type", "veth"]).output().expect("ip link");
            let links: serde_json::Value = serde_json::from_slice(&links.stdout).unwrap_or_default();
            for link in links.as_array().into_iter().flatten() {
                let name = link["ifname"].as_str().unwrap_or_default();
                // Leaf bridges' links (u…/w…) are not EVM ports.
                let evm_port = !name.starts_with('u') && !name.starts_with('w');
                let up = link["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "UP"));
                if evm_port && up && link["master"].is_string() {
                    router_ports += 1;
                }
            }
        }
    }
    evm_side.min(router_ports)
}

fn output_number(ws: &Workspace, name: &str) -> i64 {
    let text = ws.ok(&["output", "-json", name]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("output {name}: {e}: {text}"))
}

fn random_fault(random: &mut Random) -> Fault {
    match random.below(3) {
        0 => Fault::Terraform,
        1 => Fault::Provider,
        _ => Fault::AgentHost,
    }
}

#[test]
fn kills_at_random_moments_converge_and_destroy_cleanly() {
    let runs: u64 = std::env::var("MERAK_FAULT_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("MERAK_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
    });
    let mut random = Random(seed);
    let mut injected: BTreeMap<String, u32> = BTreeMap::new();
    for run in 0..runs {
        let run_seed = random.0;
        let ws = Workspace::new(&format!("fault{run}"));
        // A fresh apply or a scale of an existing group.
        let scaling = random.below(2) == 0;
        ws.write_config(&config(100));
        ws.init();
        if scaling {
            ws.apply();
        }
        let evms = 300 + 100 * random.below(6) as u32;
        ws.write_config(&config(evms));
        let fault = random_fault(&mut random);
        let delay = Duration::from_millis(300 + random.below(4000));
        let context = format!("run {run} (seed {run_seed}): {fault:?} after {delay:?} of an apply of {evms} EVMs{}", if scaling { " (scaling from 100)" } else { "" });
        eprintln!("{context}");
        let (_, hit) = inject(&ws, ws.spawn_terraform(&["apply", "-auto-approve"]), fault, delay);
        *injected.entry(format!("apply {fault:?}: {}", if hit { "injected" } else { "missed (apply had finished)" })).or_default() += 1;

        let output = converge(&ws, &context);
        assert_eq!(ws.plan().0, 0, "{context}: plan after converging: {}", ws.plan().1);
        assert_eq!(output_number(&ws, "unexpected"), 0, "{context}: {output}");
        assert_eq!(wired_evms(&ws), evms as usize, "{context}: EVMs wired, as the kernel shows");

        // A destroy with a fault of its own, then a destroy that must finish.
        let fault = random_fault(&mut random);
        let delay = Duration::from_millis(200 + random.below(2500));
        eprintln!("{context}; then {fault:?} after {delay:?} of a destroy");
        let (_, hit) = inject(&ws, ws.spawn_terraform(&["destroy", "-auto-approve"]), fault, delay);
        *injected.entry(format!("destroy {fault:?}: {}", if hit { "injected" } else { "missed (destroy had finished)" })).or_default() += 1;
        ws.ok(&["destroy", "-auto-approve"]);
        ws.assert_nothing_left();
    }
    eprintln!("faults: {injected:#?}");
}

#[test]
fn two_applies_of_one_topology_at_once_have_one_winner() {
    let first = Workspace::new("race");
    let second = first.sibling("b");
    for ws in [&first, &second] {
        ws.write_config(&config(20));
        ws.init();
    }
    let runs = [first.spawn_terraform(&["apply", "-auto-approve"]), second.spawn_terraform(&["apply", "-auto-approve"])];
    let outputs: Vec<Output> = runs.into_iter().map(|c| c.wait_with_output().expect("terraform output")).collect();
    let winners: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
    let text = |i: usize| format!("{}{}", String::from_utf8_lossy(&outputs[i].stdout), String::from_utf8_lossy(&outputs[i].stderr));
    assert_eq!(winners.len(), 1, "exactly one apply succeeds:\n--- first\n{}\n--- second\n{}", text(0), text(1));
    let (winner, loser) = if winners[0] == 0 { (&first, 1) } else { (&second, 0) };
    let refusal = flat(&text(loser));
    assert!(
        refusal.contains("holds its lock") || refusal.contains("already exists on this host"),
        "the other apply is refused, saying why: {refusal}"
    );
    assert_eq!(first.agents().len(), EPMS as usize, "one agent per EPM");
    assert_eq!(first.agent_processes().len(), 1, "one agent host");
    assert_eq!(winner.plan().0, 0);
    // The refused one must not take the topology over later either.
    let again = if loser == 0 { first.terraform(&["apply", "-auto-approve"]) } else { second.terraform(&["apply", "-auto-approve"]) };
    let again_text = flat(&String::from_utf8_lossy(&again.stderr));
    assert!(!again.status.success() && again_text.contains("terraform import merak_topology.NAME"), "{again_text}");
    assert_eq!(first.agents().len(), EPMS as usize, "still one agent per EPM");
    assert_eq!(first.agent_processes().len(), 1, "still one agent host");
    winner.ok(&["destroy", "-auto-approve"]);
    first.assert_nothing_left();
}

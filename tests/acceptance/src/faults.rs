//! Fault cycles through the real terraform binary, shared by the fault test
//! (`tests/faults.rs`, a few cycles in `make test`) and the soak
//! (`src/bin/soak.rs`, hundreds of cycles in `make soak`).
//!
//! A cycle: an apply (fresh, or scaling an existing group) with a kill
//! (SIGKILL) of terraform and its provider, of the provider alone, or of the
//! agents' host, at a random moment; then applies until one converges (an
//! empty plan, a clean pingall, every EVM wired as the kernel sees it); then
//! a destroy with a kill of its own, and a destroy that must leave nothing.
//! Everything random comes from one seed, printed with each cycle, and each
//! kill says the step the provider was in (the last thing it logged).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::Workspace;

/// A small xorshift generator: reproducible from the printed seed.
#[derive(Debug, Clone, Copy)]
pub struct Random(pub u64);

impl Random {
    /// A seed from $MERAK_FAULT_SEED (a cycle's printed seed replays it),
    /// else from the clock.
    pub fn from_env() -> Self {
        let seed = std::env::var("MERAK_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        // Zero is xorshift's one fixed point.
        Random(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub const EPMS: u32 = 4;

pub fn config(evms: u32) -> String {
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

/// What a run kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// terraform and the provider together (its whole process group).
    Terraform,
    /// The provider process alone; terraform sees its plugin vanish.
    Provider,
    /// The process serving every EPM's agent (the topology's agent host).
    AgentHost,
}

impl Fault {
    fn random(random: &mut Random) -> Self {
        match random.below(3) {
            0 => Fault::Terraform,
            1 => Fault::Provider,
            _ => Fault::AgentHost,
        }
    }
}

/// A kill as it happened: after how long, and in which step of the provider.
#[derive(Debug, Clone)]
pub struct Injection {
    pub fault: Fault,
    pub delay: Duration,
    /// None when nothing was killed: see `finished`.
    pub kill_point: Option<String>,
    /// Whether the command had finished before the delay ran out (else
    /// no process of the kind was running at that moment).
    pub finished: bool,
}

impl std::fmt::Display for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} after {:?}", self.fault, self.delay)?;
        match &self.kill_point {
            Some(point) => write!(f, " (provider's last step: {point})"),
            None if self.finished => write!(f, " (missed: the command had finished)"),
            None => write!(f, " (missed: no {:?} process was running then)", self.fault),
        }
    }
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

/// Kills (SIGKILL) the provider processes in process `group` (a terraform
/// of [`Workspace::spawn_terraform`]); how many there were.
pub fn kill_providers(group: u32) -> usize {
    let providers: Vec<u32> = pids_in_group(group)
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("terraform-provi"))
        .map(|(pid, _)| pid)
        .collect();
    for pid in &providers {
        kill(*pid as i32);
    }
    providers.len()
}

fn kill(pid: i32) {
    // SAFETY: kill(2) on processes this harness started (or their group).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The provider's last log line in a terraform log (TF_LOG_PROVIDER), its
/// message and fields: where the provider was when it was killed.
pub fn last_provider_step(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|line| line.split_once("provider.terraform-provider-merak").map(|(_, rest)| rest))
        .map(|rest| {
            // "_v0.1.0: message: field=value timestamp=..." without the
            // plugin's version and the timestamp.
            let rest = rest.split_once(": ").map_or(rest, |(_, message)| message);
            rest.split(" timestamp=").next().unwrap_or(rest).trim().to_string()
        })
        .unwrap_or_else(|| "nothing logged yet".into())
}

/// Injects `fault` into the running terraform `child` after `delay`.
fn inject(ws: &Workspace, mut child: Child, log: &Path, fault: Fault, delay: Duration) -> Injection {
    let started = Instant::now();
    while started.elapsed() < delay {
        if child.try_wait().ok().flatten().is_some() {
            let _ = child.wait_with_output();
            return Injection { fault, delay, kill_point: None, finished: true };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let group = child.id();
    let mut injected = false;
    match fault {
        Fault::Terraform => {
            kill(-(group as i32));
            injected = true;
        }
        Fault::Provider => injected = kill_providers(group) > 0,
        Fault::AgentHost => {
            for (pid, _) in ws.agent_processes() {
                kill(pid as i32);
                injected = true;
            }
        }
    }
    let _ = child.wait_with_output();
    Injection { fault, delay, kill_point: injected.then(|| last_provider_step(log)), finished: false }
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
            let address = if words.next().is_some_and(|a| a.starts_with("merak_topology")) {
                "merak_topology.dc"
            } else {
                "merak_evm_group.web"
            };
            if let Some(id) = words.next() {
                ws.ok(&["import", address, id]);
            }
        }
    }
    panic!("{context}: apply did not converge:\n{last}");
}

/// Terraform's output with its diagnostic frames and line wrapping undone.
pub fn flat(text: &str) -> String {
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
            let addr = Command::new("ip")
                .args(["-j", "-n", &namespace, "addr", "show", "dev", "eth0"])
                .output()
                .expect("ip addr");
            let addr: serde_json::Value = serde_json::from_slice(&addr.stdout).unwrap_or_default();
            let up = addr[0]["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "UP"));
            let ipv4 = addr[0]["addr_info"].as_array().is_some_and(|a| a.iter().any(|a| a["family"] == "inet"));
            let route =
                Command::new("ip").args(["-n", &namespace, "route", "show", "default"]).output().expect("ip route");
            if up && ipv4 && !route.stdout.is_empty() {
                evm_side += 1;
            }
        } else if object.contains(".r.") {
            let links = Command::new("ip")
                .args(["-j", "-n", &namespace, "link", "show", "type", "veth"])
                .output()
                .expect("ip link");
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

/// How often each kind of kill landed, and how often it missed.
pub type Tally = BTreeMap<String, u32>;

/// One cycle, named `label` (its workspace and topology take the name).
/// Panics, saying the seed and the kills, when anything does not hold.
pub fn cycle(label: &str, random: &mut Random, tally: &mut Tally) {
    let seed = random.0;
    let ws = Workspace::new(label);
    // A fresh apply or a scale of an existing group.
    let scaling = random.below(2) == 0;
    ws.write_config(&config(100));
    ws.init();
    if scaling {
        ws.apply();
    }
    let evms = 300 + 100 * random.below(6) as u32;
    ws.write_config(&config(evms));
    let fault = Fault::random(random);
    let delay = Duration::from_millis(300 + random.below(4000));
    let log = ws.dir.join("apply.log");
    let apply = inject(&ws, ws.spawn_terraform_logged(&["apply", "-auto-approve"], &log), &log, fault, delay);
    let context = format!(
        "{label} (seed {seed}): {apply} of an apply of {evms} EVMs{}",
        if scaling { " (scaling from 100)" } else { "" }
    );
    eprintln!("{context}");
    count(tally, "apply", &apply);

    let output = converge(&ws, &context);
    assert_eq!(ws.plan().0, 0, "{context}: plan after converging: {}", ws.plan().1);
    assert_eq!(output_number(&ws, "unexpected"), 0, "{context}: {output}");
    assert_eq!(wired_evms(&ws), evms as usize, "{context}: EVMs wired, as the kernel shows");

    // A destroy with a fault of its own, then a destroy that must finish.
    let fault = Fault::random(random);
    let delay = Duration::from_millis(200 + random.below(2500));
    let log = ws.dir.join("destroy.log");
    let destroy = inject(&ws, ws.spawn_terraform_logged(&["destroy", "-auto-approve"], &log), &log, fault, delay);
    let context = format!("{context}; then {destroy} of a destroy");
    eprintln!("{context}");
    count(tally, "destroy", &destroy);
    if destroy.fault == Fault::Terraform && destroy.kill_point.is_some() && recover_emptied_state(&ws) {
        eprintln!("{context}: Terraform's state file was left empty by the kill; restored from its backup");
        *tally.entry("destroy Terraform: state file left empty, restored from backup".into()).or_default() += 1;
    }
    let known = state_resources(&ws);
    let output = ws.terraform(&["destroy", "-auto-approve"]);
    assert!(
        output.status.success(),
        "{context}: the last destroy failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    ws.check_nothing_left().unwrap_or_else(|left| {
        panic!("{context}: the last destroy succeeded, yet {left}; Terraform's state before it: {known}")
    });
}

/// Terraform writes its local state file in place, truncating it and then
/// writing the new snapshot (statemgr.Filesystem.WriteState, in every
/// version), so a kill between the two leaves it empty, and the next
/// command knows of nothing: a window of Terraform's, not the provider's,
/// which no provider is told of. A user recovers from the copy Terraform
/// made before the command (`terraform.tfstate.backup`), as this does;
/// whether it had to.
fn recover_emptied_state(ws: &Workspace) -> bool {
    let state = ws.dir.join("terraform.tfstate");
    let emptied = std::fs::metadata(&state).is_ok_and(|m| m.len() == 0);
    if emptied {
        std::fs::copy(ws.dir.join("terraform.tfstate.backup"), &state).expect("restore the state from its backup");
    }
    emptied
}

/// What Terraform's state file holds, for a failure's report: its size and
/// the resources it lists.
fn state_resources(ws: &Workspace) -> String {
    let text = std::fs::read_to_string(ws.dir.join("terraform.tfstate")).unwrap_or_default();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let resources: Vec<String> = state["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{}.{}", r["type"].as_str().unwrap_or("?"), r["name"].as_str().unwrap_or("?")))
        .collect();
    format!("{} bytes, resources {resources:?}", text.len())
}

fn count(tally: &mut Tally, command: &str, injection: &Injection) {
    let outcome = if injection.kill_point.is_some() { "injected" } else { "missed" };
    *tally.entry(format!("{command} {:?}: {outcome}", injection.fault)).or_default() += 1;
}

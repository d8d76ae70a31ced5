//! Benchmark: a tree or fat-tree topology through real terraform. Prints the
//! wall time of apply, a no-op plan and destroy, and the memory one EPM costs
//! (kernel + agent, from MemAvailable, and the agents' own proportional RSS;
//! a fat tree's routers count in the first).
//!
//! usage: bench-topology [RACKS] [HOSTS_PER_RACK]   (default 8 8)
//!        bench-topology fat_tree K                 (k³/4 EPMs, 5k²/4 routers)

use std::time::Instant;

use merak_acceptance::Workspace;
use merak_acceptance::host::{mem_available_kib, settled_mem_available};

fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let fat_tree = std::env::args().nth(1).is_some_and(|a| a == "fat_tree");
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (shape, hosts, config) = if fat_tree {
        let k = args.first().copied().unwrap_or(8);
        let attributes = format!("type = \"fat_tree\"\n  k = {k}");
        (format!("fat tree k = {k}"), k * k * k / 4, attributes)
    } else {
        let (racks, per_rack) = (args.first().copied().unwrap_or(8), args.get(1).copied().unwrap_or(8));
        (
            format!("{racks} racks x {per_rack} hosts"),
            racks * per_rack,
            format!("racks = {racks}\n  hosts_per_rack = {per_rack}"),
        )
    };
    let ws = Workspace::new("bench");
    ws.write_config(&format!("resource \"merak_topology\" \"bench\" {{\n  name = \"{{name}}\"\n  {config}\n  data_plane_cidr = \"10.99.0.0/16\"\n}}\n"));
    ws.init();

    let before = mem_available_kib();
    let started = Instant::now();
    ws.apply();
    let apply = started.elapsed();
    let after = settled_mem_available();
    let agents = ws.agents().len();
    let processes = ws.agent_processes();
    let vswitches = ws.resource_values("merak_topology.bench")["vswitch_count"].clone();
    let agent_pss: u64 = processes.iter().map(|(pid, _)| pss_kib(*pid)).sum();

    let started = Instant::now();
    let (code, _) = ws.plan();
    let plan = started.elapsed();
    assert_eq!(code, 0, "the plan after apply is not empty");
    let state_bytes = std::fs::metadata(ws.dir.join("terraform.tfstate")).map(|m| m.len()).unwrap_or(0);

    let started = Instant::now();
    ws.ok(&["destroy", "-auto-approve"]);
    let destroy = started.elapsed();
    ws.assert_nothing_left();

    println!(
        "topology: {shape} = {hosts} EPMs, {vswitches} switches, {agents} agents served by {} process(es)",
        processes.len()
    );
    println!(
        "terraform apply:   {:>7.2} s  ({:.1} ms per EPM)",
        apply.as_secs_f64(),
        apply.as_secs_f64() * 1000.0 / f64::from(hosts)
    );
    println!("no-op plan:        {:>7.2} s", plan.as_secs_f64());
    println!(
        "terraform destroy: {:>7.2} s  ({:.1} ms per EPM)",
        destroy.as_secs_f64(),
        destroy.as_secs_f64() * 1000.0 / f64::from(hosts)
    );
    println!(
        "memory per EPM:    {:>7.2} MiB  (MemAvailable drop / EPMs: kernel + agent)",
        before.saturating_sub(after) as f64 / 1024.0 / f64::from(hosts)
    );
    println!("agent PSS per EPM: {:>7.2} MiB", agent_pss as f64 / 1024.0 / agents.max(1) as f64);
    println!("state file:        {:>7} bytes", state_bytes);
}

//! Faults through the real terraform binary: terraform and its provider, or
//! the provider alone, or the agents' host, killed (SIGKILL) at random moments of an
//! apply or a destroy; then the next apply must converge (an empty plan, a
//! clean pingall, every EVM wired as the kernel sees it) and the next
//! destroy must leave nothing. And two applies of one topology at once.
//! `make soak` runs the same cycles by the hundred (`src/faults.rs`).
//!
//! MERAK_FAULT_RUNS sets the number of randomized runs (default 20),
//! MERAK_FAULT_SEED replays a run sequence (each run prints its seed).

use std::process::Output;

use merak_acceptance::faults::{self, EPMS, Random, Tally, config, flat};
use merak_acceptance::{Workspace, binary};

#[test]
fn kills_at_random_moments_converge_and_destroy_cleanly() {
    let runs: u64 = std::env::var("MERAK_FAULT_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let mut random = Random::from_env();
    let mut tally = Tally::new();
    for run in 0..runs {
        faults::cycle(&format!("fault{run}"), &mut random, &mut tally);
    }
    eprintln!("faults: {tally:#?}");
}

#[test]
fn two_applies_of_one_topology_at_once_have_one_winner() {
    let first = Workspace::new("race");
    let second = first.sibling("b");
    for ws in [&first, &second] {
        ws.write_config(&config(20));
        ws.init();
    }
    let runs =
        [first.spawn_terraform(&["apply", "-auto-approve"]), second.spawn_terraform(&["apply", "-auto-approve"])];
    let outputs: Vec<Output> = runs.into_iter().map(|c| c.wait_with_output().expect("terraform output")).collect();
    let winners: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
    let text = |i: usize| {
        format!("{}{}", String::from_utf8_lossy(&outputs[i].stdout), String::from_utf8_lossy(&outputs[i].stderr))
    };
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
    let again = if loser == 0 {
        first.terraform(&["apply", "-auto-approve"])
    } else {
        second.terraform(&["apply", "-auto-approve"])
    };
    let again_text = flat(&String::from_utf8_lossy(&again.stderr));
    assert!(!again.status.success() && again_text.contains("terraform import merak_topology.NAME"), "{again_text}");
    assert_eq!(first.agents().len(), EPMS as usize, "still one agent per EPM");
    assert_eq!(first.agent_processes().len(), 1, "still one agent host");
    winner.ok(&["destroy", "-auto-approve"]);
    first.assert_nothing_left();
}

/// The state the fault suite once caught: a topology's records gone while
/// its namespaces remain (a teardown abandoned part-way, or records lost).
/// Refresh used to drop the topology from the state, so the next destroy
/// "succeeded" with nothing to do and left the namespaces to no one. Now
/// the topology stays in the state with no EPM ready, and destroy finishes
/// the teardown from the namespaces alone.
#[test]
fn namespaces_left_without_records_are_kept_in_the_state_and_destroyed() {
    let ws = Workspace::new("abandoned");
    ws.write_config(&config(20));
    ws.init();
    ws.apply();
    for (pid, _) in ws.agent_processes() {
        // SAFETY: kill(2) on this test's agent host.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let records = ws.state_dir.join(&ws.name);
    for record in ["topology.json", "overlay.json"] {
        std::fs::remove_file(records.join(record)).expect("remove a record");
    }
    assert!(!ws.namespaces().is_empty());

    let (code, plan) = ws.plan();
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("merak_topology.dc will be updated in-place"), "the topology stays, to be rebuilt: {plan}");
    let state = ws.ok(&["state", "list"]);
    assert!(state.contains("merak_topology.dc"), "kept in the state: {state}");

    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

/// The soak's cycle 452 (seed 17474367874749150803): Terraform and its
/// provider killed during a destroy after the records were removed and
/// before the lock was let go. Nothing of the topology was left but its lock
/// file, naming a dead process; the next destroy succeeded (refresh found
/// the topology gone) and the file stayed. Now the refresh that finds the
/// topology gone removes a lock file nobody holds.
#[test]
fn a_lock_file_a_killed_destroy_left_goes_with_the_next_run() {
    let ws = Workspace::new("lockleft");
    ws.write_config(&config(20));
    ws.init();
    ws.apply();
    // That state, built deterministically: everything torn down, then the
    // lock file as the dead holder left it.
    let torn_down = std::process::Command::new(binary("terraform-provider-merak"))
        .args(["--destroy-topology", &ws.name, "--state-dir"])
        .arg(&ws.state_dir)
        .output()
        .expect("run --destroy-topology");
    assert!(torn_down.status.success(), "{}", String::from_utf8_lossy(&torn_down.stderr));
    let finished = std::process::Command::new("true").spawn().and_then(|mut c| c.wait().map(|_| c.id()));
    let dead_pid = finished.expect("run true");
    let lock = ws.state_dir.join(format!("{}.lock", ws.name));
    std::fs::write(&lock, format!("{dead_pid}\n")).expect("write the lock file");
    assert!(ws.namespaces().is_empty());

    ws.ok(&["destroy", "-auto-approve"]);
    assert!(!lock.exists(), "the abandoned lock file is gone");
    ws.assert_nothing_left();
}

//! Soak: the fault test's cycles by the hundred (not a test: about ten
//! seconds a cycle). Each cycle kills terraform, the provider or the agents'
//! host at a random moment of an apply and of a destroy, then checks that
//! the next apply converges and the next destroy leaves nothing
//! (`merak_acceptance::faults::cycle`). A failure prints its seed, the kill
//! points and what was left, and the soak goes on.
//!
//! usage: soak [CYCLES]   (default 500; MERAK_TERRAFORM picks the Terraform)
//! replay: MERAK_FAULT_SEED=<a failed cycle's seed> soak 1

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use merak_acceptance::faults::{self, Random, Tally};

fn main() {
    let cycles: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let mut random = Random::from_env();
    let mut tally = Tally::new();
    let mut failures = Vec::new();
    // The failure is printed below, with its seed; not twice.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    for cycle in 0..cycles {
        let seed = random.0;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            faults::cycle(&format!("soak{cycle}"), &mut random, &mut tally)
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            println!("FAILED cycle {cycle} (replay: MERAK_FAULT_SEED={seed} soak 1): {message}");
            failures.push(seed);
            // A cycle that failed part-way used up an unknown number of
            // draws; the next one starts from its own seed all the same.
            random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).max(1));
        }
        let done = cycle + 1;
        if done % 10 == 0 || done == cycles {
            println!(
                "soak: {done} of {cycles} cycles, {} failed, {:.1} s a cycle",
                failures.len(),
                started.elapsed().as_secs_f64() / done as f64
            );
        }
    }
    println!("kills: {tally:#?}");
    if !failures.is_empty() {
        println!("failed seeds: {failures:?}");
    }
    println!("soak: {} passed, {} failed", cycles - failures.len() as u64, failures.len());
    std::process::exit(if failures.is_empty() { 0 } else { 1 });
}

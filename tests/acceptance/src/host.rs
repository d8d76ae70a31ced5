//! Readings of the host the benchmarks need: free memory, and when the
//! kernel has finished the background work a phase left behind.

use std::time::{Duration, Instant};

/// MemAvailable, in KiB.
pub fn mem_available_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Network namespaces the kernel holds, including those it is still
/// freeing (their slab objects), or None where slabinfo is unreadable.
fn kernel_namespaces() -> Option<u64> {
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let line = slabinfo.lines().find(|l| l.starts_with("net_namespace "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until the kernel has finished freeing namespaces: it does so in
/// the background for many seconds after a big deletion, and one phase's
/// teardown would otherwise slow the next one down and skew its ratio.
/// Settled = the kernel's namespace count unchanged for two seconds, or
/// 120 s at most. Not idle CPUs: a busy neighbour process (this machine may
/// have one) kept a core busy and made one 10,000-EVM run wait 8 minutes.
pub fn settle() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = kernel_namespaces();
    let mut steady_seconds = 0;
    while steady_seconds < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now = kernel_namespaces();
        steady_seconds = if now == last { steady_seconds + 1 } else { 0 };
        last = now;
    }
}

/// Settles, then reads MemAvailable.
pub fn settled_mem_available() -> u64 {
    settle();
    mem_available_kib()
}

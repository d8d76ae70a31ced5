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

/// (idle, total) jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().take(8).sum())
}

/// Waits until the kernel has finished freeing namespaces: it does so in
/// the background for many seconds after a big deletion (namespace objects
/// first, then RCU reclaim work that keeps the CPUs busy), and one phase's
/// teardown would otherwise slow the next one down and skew its ratio.
/// Settled = the namespace count steady and the CPUs 90 % idle for a second.
pub fn settle() {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = kernel_namespaces();
    let mut quiet_seconds = 0;
    while quiet_seconds < 1 && Instant::now() < deadline {
        let (idle_before, total_before) = cpu_times();
        std::thread::sleep(Duration::from_secs(1));
        let (idle_after, total_after) = cpu_times();
        let idle = (idle_after - idle_before) as f64 / (total_after - total_before).max(1) as f64;
        let now = kernel_namespaces();
        quiet_seconds = if now == last && idle >= 0.9 { quiet_seconds + 1 } else { 0 };
        last = now;
    }
}

/// Settles, then reads MemAvailable.
pub fn settled_mem_available() -> u64 {
    settle();
    mem_available_kib()
}

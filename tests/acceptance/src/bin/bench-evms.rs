//! Benchmark: N EVMs over M EPMs through real terraform, against the floor.
//!
//! usage: bench-evms [EVMS] [EPMS] [--pingall] [--no-floor]   (default 10000 100)
//!
//! Prints, for terraform: the EVM apply, a no-op plan, a sampled pingall
//! (with --pingall) and the EVM destroy; for the floor (the same devices made
//! by the fewest netlink calls in this process, nothing around them): create
//! and delete; the ratios; memory per EVM (kernel + agents, from
//! MemAvailable); the state file's size; the provider's peak RSS.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use merak_acceptance::Workspace;
use merak_acceptance::floor::{self, FloorEvm, FloorRouter};
use merak_acceptance::host::{settle, settled_mem_available};

/// Peak RSS of any terraform-provider-merak process while it runs.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak_kib));
        // Cheap enough not to skew what it watches: reading every process's
        // status every 20 ms took a seventh of the CPU during a 50,000-EVM
        // apply. Providers are found by their command name once a second;
        // only their status is read in between.
        let thread = std::thread::spawn(move || {
            let mut providers: Vec<std::path::PathBuf> = Vec::new();
            let mut scanned = Instant::now() - Duration::from_secs(1);
            while !s.load(Ordering::Relaxed) {
                if scanned.elapsed() >= Duration::from_secs(1) {
                    scanned = Instant::now();
                    providers = std::fs::read_dir("/proc")
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|e| {
                            std::fs::read_to_string(e.path().join("comm"))
                                .is_ok_and(|c| c.starts_with("terraform-provi"))
                        })
                        .map(|e| e.path().join("status"))
                        .collect();
                }
                for status in &providers {
                    let Ok(status) = std::fs::read_to_string(status) else { continue };
                    let hwm = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
                    if let Some(hwm) = hwm {
                        p.fetch_max(hwm, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch { stop, peak_kib, thread: Some(thread) }
    }

    fn peak_mib(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

struct FloorResult {
    create: Duration,
    delete: Duration,
    mem_per_evm_kib: f64,
}

fn floor_run(evms: u32, epms: u32) -> std::io::Result<FloorResult> {
    let prefix = format!("merak-floor-{}", std::process::id());
    floor::prepare()?;
    let home = floor::home_namespace()?;
    let routers: Vec<FloorRouter> =
        (0..epms).map(|i| FloorRouter::new(&format!("{prefix}.r{i}"))).collect::<Result<_, _>>()?;
    let list: Vec<FloorEvm> = (0..evms)
        .map(|k| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + k);
            let [a, b, c, d] = ip.octets();
            FloorEvm {
                namespace: format!("{prefix}.e{k}"),
                port: format!("v{k}"),
                ip,
                prefix_len: 8,
                mac: [0x0a, 0, a, b, c, d],
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                gateway_mac: [0x0a, 1, 0, 0, 0, 1],
            }
        })
        .collect();
    let before = settled_mem_available();
    let started = Instant::now();
    for (k, evm) in list.iter().enumerate() {
        routers[k % routers.len()].create(evm, &home)?;
    }
    let create = started.elapsed();
    let after = settled_mem_available();
    let started = Instant::now();
    for evm in &list {
        floor::delete_namespace(&evm.namespace)?;
    }
    for router in &routers {
        while router.ports()? > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let delete = started.elapsed();
    for router in &routers {
        floor::delete_namespace(&router.namespace)?;
    }
    Ok(FloorResult { create, delete, mem_per_evm_kib: before.saturating_sub(after) as f64 / f64::from(evms) })
}

fn config(epms: u32, evms: u32, with_group: bool, with_pingall: bool) -> String {
    let racks = epms.div_ceil(10);
    let subnet_prefix = 32 - (u64::from(evms) + 3).next_power_of_two().trailing_zeros().max(2);
    let mut text = format!(
        "resource \"merak_topology\" \"dc\" {{\n  name = \"{{name}}\"\n  racks = {racks}\n  hosts_per_rack = 10\n  hosts = {epms}\n  data_plane_cidr = \"10.99.0.0/16\"\n}}\n"
    );
    if with_group {
        text += &format!(
            "resource \"merak_vpc\" \"v\" {{\n  topology_id = merak_topology.dc.id\n  name = \"bench\"\n  cidr = \"10.0.0.0/8\"\n}}\n\
             resource \"merak_subnet\" \"s\" {{\n  vpc_id = merak_vpc.v.id\n  name = \"s\"\n  cidr = \"10.0.0.0/{subnet_prefix}\"\n}}\n\
             resource \"merak_evm_group\" \"g\" {{\n  subnet_id = merak_subnet.s.id\n  name = \"g\"\n  evm_count = {evms}\n}}\n"
        );
    }
    if with_pingall {
        text += "data \"merak_pingall\" \"p\" {\n  topology_id = merak_topology.dc.id\n  samples = 50\n  timeout_ms = 5000\n  depends_on = [merak_evm_group.g]\n}\n\
                 output \"pingall\" {\n  value = \"${data.merak_pingall.p.replies}/${data.merak_pingall.p.expected_replies} replies, ${data.merak_pingall.p.isolation_kept}/${data.merak_pingall.p.isolation_probes} isolation probes blocked, ${data.merak_pingall.p.unexpected} unexpected\"\n}\n";
    }
    text
}

fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let result = work();
    (result, started.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (evms, epms) = (numbers.first().copied().unwrap_or(10_000), numbers.get(1).copied().unwrap_or(100));
    let pingall = args.iter().any(|a| a == "--pingall");
    let with_floor = !args.iter().any(|a| a == "--no-floor");

    settle();
    let floor = if with_floor {
        println!("== floor: {evms} EVMs over {epms} bridges, one process, batched netlink");
        match floor_run(evms, epms) {
            Ok(floor) => floor,
            Err(error) => {
                eprintln!("floor failed: {error}");
                std::process::exit(1);
            }
        }
    } else {
        // Ratios print as NaN without a floor.
        FloorResult { create: Duration::ZERO, delete: Duration::ZERO, mem_per_evm_kib: f64::NAN }
    };
    println!(
        "create {:>8.2} s   delete {:>8.2} s   memory {:.3} MiB/EVM",
        floor.create.as_secs_f64(),
        floor.delete.as_secs_f64(),
        floor.mem_per_evm_kib / 1024.0
    );

    println!("== terraform: {evms} EVMs over {epms} EPMs");
    let ws = Workspace::new("bench3");
    ws.write_config(&config(epms, evms, false, false));
    ws.init();
    let (_, topology_time) = timed(|| ws.apply());
    println!("topology apply ({epms} EPMs): {:.2} s", topology_time.as_secs_f64());

    ws.write_config(&config(epms, evms, true, false));
    let before = settled_mem_available();
    let watch = RssWatch::start();
    let (_, apply) = timed(|| ws.apply());
    let peak = watch.peak_mib();
    let after = settled_mem_available();
    let ready = ws.resource_values("merak_evm_group.g")["ready_count"].clone();
    let (code, plan) = timed(|| ws.plan().0);
    assert_eq!(code, 0, "the plan after apply is not empty");
    let state_bytes = std::fs::metadata(ws.dir.join("terraform.tfstate")).map(|m| m.len()).unwrap_or(0);
    if pingall {
        ws.write_config(&config(epms, evms, true, true));
        let (output, took) = timed(|| ws.apply());
        let line = output.lines().find(|l| l.starts_with("pingall")).unwrap_or("pingall = ?");
        println!("{line} ({:.2} s)", took.as_secs_f64());
        ws.write_config(&config(epms, evms, true, false));
    }
    settle();
    let (_, destroy) = timed(|| ws.ok(&["destroy", "-auto-approve", "-target=merak_evm_group.g"]));
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();

    let per_evm = before.saturating_sub(after) as f64 / 1024.0 / f64::from(evms);
    println!(
        "EVM apply   {:>8.2} s   ({:.2}x floor; ready_count {ready})",
        apply.as_secs_f64(),
        apply.as_secs_f64() / floor.create.as_secs_f64()
    );
    println!("no-op plan  {:>8.2} s", plan.as_secs_f64());
    println!(
        "EVM destroy {:>8.2} s   ({:.2}x floor)",
        destroy.as_secs_f64(),
        destroy.as_secs_f64() / floor.delete.as_secs_f64()
    );
    println!("memory      {:>8.3} MiB per EVM (kernel + agents; floor {:.3})", per_evm, floor.mem_per_evm_kib / 1024.0);
    println!("state file  {:>8} bytes", state_bytes);
    println!("provider    {:>8.1} MiB peak RSS", peak);
}

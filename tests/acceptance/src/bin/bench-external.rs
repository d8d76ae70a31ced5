//! Benchmark: N EVMs in an external VPC against the same EVMs in a builtin
//! one, through real terraform, in one run.
//!
//! usage: bench-external [EVMS] [EPMS]   (default 5000 50)
//!
//! The external controller is a minimal HTTP server in this process that
//! accepts every port at once (an empty 200), so what is measured is the
//! provider's side: building the devices, batching the ports, the round
//! trips. Prints each apply, the ratio (the goal: at most 1.20), the no-op
//! plan and destroy, and the HTTP requests made (batched, not one per EVM).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use merak_acceptance::Workspace;
use merak_acceptance::host::settle;

/// Requests and ports the controller was sent.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    ports: AtomicU64,
}

/// Serves `PUT`/`DELETE /v1/ports` with an empty 200 (every port accepted),
/// one thread per connection; returns the port it listens on.
fn start_controller(counts: Arc<Counts>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                });
                let mut stream = stream;
                // HTTP/1.1 keep-alive: requests one after another.
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            first = false;
                            continue;
                        }
                        let header = line.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length.min(64 << 20)];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let ports = serde_json::from_slice::<serde_json::Value>(&body)
                        .map(|b| b["ports"].as_array().or(b["ids"].as_array()).map_or(0, Vec::len))
                        .unwrap_or(0);
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    counts.ports.fetch_add(ports as u64, Ordering::Relaxed);
                    if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn config(epms: u32, evms: u32, controller: Option<&str>) -> String {
    let racks = epms.div_ceil(10);
    let mut text = format!(
        "resource \"merak_topology\" \"dc\" {{\n  name = \"{{name}}\"\n  racks = {racks}\n  hosts_per_rack = 10\n  hosts = {epms}\n  data_plane_cidr = \"10.99.0.0/16\"\n}}\n"
    );
    if let Some(controller) = controller {
        let subnet_prefix = 32 - (u64::from(evms) + 3).next_power_of_two().trailing_zeros().max(2);
        text += &format!(
            "resource \"merak_vpc\" \"v\" {{\n  topology_id = merak_topology.dc.id\n  name = \"bench\"\n  cidr = \"10.0.0.0/8\"\n  controller = \"{controller}\"\n}}\n\
             resource \"merak_subnet\" \"s\" {{\n  vpc_id = merak_vpc.v.id\n  name = \"s\"\n  cidr = \"10.0.0.0/{subnet_prefix}\"\n}}\n\
             resource \"merak_evm_group\" \"g\" {{\n  subnet_id = merak_subnet.s.id\n  name = \"g\"\n  evm_count = {evms}\n}}\n"
        );
    }
    text
}

fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let result = work();
    (result, started.elapsed())
}

struct Run {
    apply: Duration,
    plan: Duration,
    destroy: Duration,
}

/// Applies the VPC, subnet and group, plans, and destroys them (the topology stays).
fn run(ws: &Workspace, epms: u32, evms: u32, controller: &str) -> Run {
    settle();
    ws.write_config(&config(epms, evms, Some(controller)));
    let (_, apply) = timed(|| ws.apply());
    let ready = ws.resource_values("merak_evm_group.g")["ready_count"].as_u64();
    assert_eq!(ready, Some(u64::from(evms)), "not every EVM is ready");
    let (code, plan) = timed(|| ws.plan().0);
    assert_eq!(code, 0, "the plan after apply is not empty");
    settle();
    ws.write_config(&config(epms, evms, None));
    let (_, destroy) = timed(|| ws.apply());
    Run { apply, plan, destroy }
}

fn main() {
    let numbers: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (evms, epms) = (numbers.first().copied().unwrap_or(5_000), numbers.get(1).copied().unwrap_or(50));
    let counts = Arc::new(Counts::default());
    let port = match start_controller(Arc::clone(&counts)) {
        Ok(port) => port,
        Err(error) => {
            eprintln!("cannot start the controller: {error}");
            std::process::exit(1);
        }
    };

    println!(
        "== external vs builtin VPC: {evms} EVMs over {epms} EPMs (controller on 127.0.0.1:{port}, batch_size 500)"
    );
    let ws = Workspace::new("benchx");
    let transport =
        std::env::var("MERAK_AGENT_TRANSPORT").map(|t| format!("    agent_transport = \"{t}\"\n")).unwrap_or_default();
    let block = format!(
        "provider \"merak\" {{\n  local {{\n    state_dir = \"{}\"\n{transport}  }}\n  controller {{\n    url = \"http://127.0.0.1:{port}\"\n    batch_size = 500\n  }}\n}}\n",
        ws.state_dir.display()
    );
    let ws = ws.with_provider(block);
    ws.write_config(&config(epms, evms, None));
    ws.init();
    let (_, topology) = timed(|| ws.apply());
    println!("topology apply ({epms} EPMs): {:.2} s", topology.as_secs_f64());

    let builtin = run(&ws, epms, evms, "builtin");
    let external = run(&ws, epms, evms, "external");
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();

    let ratio = |e: Duration, b: Duration| e.as_secs_f64() / b.as_secs_f64();
    println!("              builtin    external");
    println!(
        "EVM apply   {:>8.2} s {:>8.2} s   ({:.2}x builtin; goal <= 1.20x)",
        builtin.apply.as_secs_f64(),
        external.apply.as_secs_f64(),
        ratio(external.apply, builtin.apply)
    );
    println!("no-op plan  {:>8.2} s {:>8.2} s", builtin.plan.as_secs_f64(), external.plan.as_secs_f64());
    println!(
        "EVM destroy {:>8.2} s {:>8.2} s   ({:.2}x builtin)",
        builtin.destroy.as_secs_f64(),
        external.destroy.as_secs_f64(),
        ratio(external.destroy, builtin.destroy)
    );
    println!(
        "controller  {} HTTP requests for {} port creations and deletions ({:.0} ports per request)",
        counts.requests.load(Ordering::Relaxed),
        counts.ports.load(Ordering::Relaxed),
        counts.ports.load(Ordering::Relaxed) as f64 / counts.requests.load(Ordering::Relaxed).max(1) as f64
    );
}

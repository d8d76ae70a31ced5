//! `merak status`: a topology at a glance, as text or JSON; exits 1 when
//! anything of it is unhealthy.

use std::process::ExitCode;

use merak_provider::controller::{Controller, Failure, Overview};
use serde_json::json;

pub async fn run(controller: &Controller, topology: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let overview = controller.overview(topology).await?;
    let unhealthy = unhealthy(&overview);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&document(topology, &overview, &unhealthy))?);
    } else {
        print!("{}", text(topology, &overview, &unhealthy));
    }
    Ok(if unhealthy.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Everything not as it should be, by object.
fn unhealthy(overview: &Overview) -> Vec<Failure> {
    let view = &overview.topology;
    let mut found = view.status.failures.clone();
    let epms = view.spec.hosts;
    if view.status.ready_epms < epms && found.is_empty() {
        found.push(Failure {
            object: "EPMs".into(),
            error: format!(
                "{} of {epms} not ready (their namespaces, NICs or agents are not all there); `terraform apply` \
                 repairs them",
                epms - view.status.ready_epms
            ),
        });
    }
    found.extend(
        view.agents_status
            .failures
            .iter()
            .map(|f| Failure { object: f.object.clone(), error: format!("agents under test: {}", f.error) }),
    );
    for (spec, status) in &overview.groups {
        found.extend(status.failures.iter().cloned());
        if status.ready < spec.count {
            found.push(Failure {
                object: format!("group {}", spec.name),
                error: format!("{} of {} EVMs ready", status.ready, spec.count),
            });
        }
    }
    found
}

fn shape(overview: &Overview) -> String {
    let spec = &overview.topology.spec;
    match &spec.fabric {
        Some(fabric) => format!("a k={} fat tree", fabric.k),
        None => format!("a tree of {} racks of {} EPMs", spec.racks, spec.hosts_per_rack),
    }
}

fn text(topology: &str, overview: &Overview, unhealthy: &[Failure]) -> String {
    let view = &overview.topology;
    let mut out = format!(
        "topology {topology} ({}, {} runtime)\n  EPMs      {} of {} ready\n  switches  {}\n",
        shape(overview),
        overview.runtime,
        view.status.ready_epms,
        view.spec.hosts,
        names(&overview.switches),
    );
    if !view.agents.is_empty() {
        out +=
            &format!("  agents under test: ready on {} of {} EPMs\n", view.agents_status.ready_epms, view.spec.hosts);
    }
    if overview.groups.is_empty() {
        out += "  groups    none\n";
    }
    for (i, (spec, status)) in overview.groups.iter().enumerate() {
        let placed: Vec<String> = status.per_epm.iter().map(|(epm, n)| format!("{epm} ({n})")).collect();
        out += &format!(
            "  {}{}: {} of {} EVMs ready, in {}/{}, on {}\n",
            if i == 0 { "groups    " } else { "          " },
            spec.name,
            status.ready,
            spec.count,
            spec.vpc,
            spec.subnet,
            if placed.is_empty() { "no EPM".into() } else { placed.join(", ") },
        );
    }
    if unhealthy.is_empty() {
        out += "  all healthy\n";
    } else {
        out += "  unhealthy\n";
        for failure in unhealthy {
            out += &format!("    {}: {}\n", failure.object, failure.error);
        }
    }
    out
}

fn names(names: &[String]) -> String {
    match names {
        [] => "none".into(),
        [first, .., last] if names.len() > 4 => format!("{} ({first} … {last})", names.len()),
        _ => names.join(", "),
    }
}

fn document(topology: &str, overview: &Overview, unhealthy: &[Failure]) -> serde_json::Value {
    let view = &overview.topology;
    let failures = |list: &[Failure]| -> Vec<serde_json::Value> {
        list.iter().map(|f| json!({ "object": f.object, "error": f.error })).collect()
    };
    json!({
        "topology": topology,
        "runtime": overview.runtime,
        "shape": shape(overview),
        "epms": { "count": view.spec.hosts, "ready": view.status.ready_epms },
        "switches": overview.switches,
        "agents_under_test": (!view.agents.is_empty()).then(|| json!({
            "ready_epms": view.agents_status.ready_epms,
            "failures": failures(&view.agents_status.failures),
        })),
        "groups": overview.groups.iter().map(|(spec, status)| json!({
            "name": spec.name,
            "vpc": spec.vpc,
            "subnet": spec.subnet,
            "count": spec.count,
            "ready": status.ready,
            "per_epm": status.per_epm,
        })).collect::<Vec<_>>(),
        "healthy": unhealthy.is_empty(),
        "unhealthy": failures(unhealthy),
    })
}

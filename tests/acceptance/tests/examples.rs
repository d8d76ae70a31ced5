//! Every example configuration is applied for real, then destroyed.

use merak_acceptance::{Workspace, repo_root};

/// The examples' pingall line, "A/B replies, [C/D denied by security
/// groups,] E/F isolation probes blocked", must say every reply came and
/// every denied or isolation probe was blocked.
fn assert_pingall_clean(output: &str) {
    let line = output
        .lines()
        .find(|l| l.contains("isolation probes blocked"))
        .unwrap_or_else(|| panic!("no pingall output: {output}"));
    let fractions: Vec<(u64, u64)> = line
        .split_whitespace()
        .filter_map(|word| word.trim_matches(|c: char| !c.is_ascii_digit() && c != '/').split_once('/'))
        .filter_map(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .collect();
    assert!((2..=3).contains(&fractions.len()), "{line}");
    assert!(fractions.iter().all(|(got, of)| got == of) && fractions[0].1 > 0, "{line}");
}

#[test]
fn quickstart_applies_and_destroys() {
    let ws = Workspace::new("quick");
    let example = std::fs::read_to_string(repo_root().join("examples/terraform/quickstart/main.tf")).unwrap();
    std::fs::write(ws.dir.join("main.tf"), example).unwrap();
    ws.init();
    let name_var = format!("name={}", ws.name);
    let state_var = format!("state_dir={}", ws.state_dir.display());
    let vars = ["-var", name_var.as_str(), "-var", state_var.as_str()];
    let apply: Vec<&str> = ["apply", "-auto-approve"].into_iter().chain(vars).collect();
    let output = ws.ok(&apply);
    assert!(output.contains("6 of 6 EPMs ready, 3 vswitches, 8 links"), "{output}");
    assert!(output.contains("38/38 replies, 1/1 isolation probes blocked"), "{output}");
    assert!(ws.pings("epm-0", "10.0.0.6"));
    let destroy: Vec<&str> = ["destroy", "-auto-approve"].into_iter().chain(vars).collect();
    ws.ok(&destroy);
    ws.assert_nothing_left();
}

/// Applies a scenario (which calls the tenant module, so init must install it).
fn apply_scenario(test: &str, scenario: &str, extra_vars: &[&str]) -> (Workspace, String) {
    let ws = Workspace::new(test);
    let source = repo_root().join("examples/terraform/scenarios").join(scenario);
    // The scenario refers to ../../modules: keep that layout in the workspace.
    let scenario_dir = ws.dir.join("scenarios").join(scenario);
    std::fs::create_dir_all(&scenario_dir).expect("create the scenario directory");
    std::fs::copy(source.join("main.tf"), scenario_dir.join("main.tf")).expect("copy the scenario");
    std::os::unix::fs::symlink(repo_root().join("examples/terraform/modules"), ws.dir.join("modules"))
        .expect("link the modules");
    let chdir = format!("-chdir={}", scenario_dir.display());
    ws.ok(&[&chdir, "init"]);
    let name_var = format!("name={}", ws.name);
    let state_var = format!("state_dir={}", ws.state_dir.display());
    let mut apply = vec![chdir.as_str(), "apply", "-auto-approve", "-var", &name_var, "-var", &state_var];
    apply.extend(extra_vars);
    let output = ws.ok(&apply);
    let mut destroy = vec![chdir.as_str(), "destroy", "-auto-approve", "-var", &name_var, "-var", &state_var];
    destroy.extend(extra_vars);
    ws.ok(&destroy);
    ws.assert_nothing_left();
    (ws, output)
}

#[test]
fn multi_tenant_scenario_isolates_overlapping_vpcs() {
    let (_ws, output) = apply_scenario("multi", "multi-tenant", &[]);
    assert!(output.contains("evms = 15"), "{output}");
    assert_pingall_clean(&output);
}

#[test]
fn large_scenario_reuses_the_module_at_another_size() {
    // Smaller than its default so the test stays quick; the module is the same.
    let (_ws, output) = apply_scenario("large", "large", &["-var", "web_evms=20"]);
    assert!(output.contains("evms = 360"), "{output}");
    assert_pingall_clean(&output);
}

#[test]
fn documentation_examples_apply_and_destroy() {
    let ws = Workspace::new("docex");
    let dir = repo_root().join("examples/terraform/resources");
    let files = [
        "merak_topology.tf",
        "merak_vpc.tf",
        "merak_subnet.tf",
        "merak_security_group.tf",
        "merak_evm_group.tf",
        "data_merak_evms.tf",
        "data_merak_pingall.tf",
        "data_merak_topology_graph.tf",
    ];
    let example: String = files.iter().map(|f| std::fs::read_to_string(dir.join(f)).unwrap() + "\n").collect();
    // The example's topology name becomes this test's unique one.
    let example: Vec<String> = example
        .lines()
        .map(|line| {
            if line.starts_with("  name            = \"lab\"") {
                "  name = \"{name}\"".to_string()
            } else {
                line.to_string()
            }
        })
        .collect();
    ws.write_config(&example.join("\n"));
    ws.init();
    let output = ws.apply();
    assert!(output.contains("epm-7"), "{output}");
    assert_pingall_clean(&output);
    assert!(output.contains("graph TD"), "{output}");
    assert_eq!(ws.resource_values("merak_topology.lab")["ready_epms"], 8);
    assert_eq!(ws.resource_values("merak_evm_group.db")["epm_counts"], serde_json::json!({"epm-6": 4}));

    // The fault's example, on top (apart: it cuts what pingall checks).
    let fault = std::fs::read_to_string(dir.join("merak_fault.tf")).expect("the fault's example");
    ws.write_config(&format!("{}\n{fault}", example.join("\n")));
    ws.apply();
    assert_eq!(ws.resource_values("merak_fault.rack_1")["down_links"], serde_json::json!(["s1-0--s0-1"]));
    assert!(!ws.pings("epm-0", "10.10.0.8"), "rack 1 is cut off from rack 0");
    assert!(ws.pings("epm-4", "10.10.0.8"), "within rack 1 the EPMs still reach each other");
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

//! Every example configuration is applied for real, then destroyed.

use merak_acceptance::{Workspace, repo_root};

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
    assert!(ws.pings("epm-0", "10.0.0.6"));
    let destroy: Vec<&str> = ["destroy", "-auto-approve"].into_iter().chain(vars).collect();
    ws.ok(&destroy);
    ws.assert_nothing_left();
}

#[test]
fn documentation_examples_apply_and_destroy() {
    let ws = Workspace::new("docex");
    let dir = repo_root().join("examples/terraform/resources");
    let files = ["merak_topology.tf", "merak_vpc.tf", "merak_subnet.tf", "merak_evm_group.tf", "data_merak_evms.tf", "data_merak_pingall.tf"];
    let example: String = files.iter().map(|f| std::fs::read_to_string(dir.join(f)).unwrap() + "\n").collect();
    // The example's topology name becomes this test's unique one.
    let example: Vec<String> = example
        .lines()
        .map(|line| if line.starts_with("  name            = \"lab\"") { "  name = \"{name}\"".to_string() } else { line.to_string() })
        .collect();
    ws.write_config(&example.join("\n"));
    ws.init();
    let output = ws.apply();
    assert!(output.contains("epm-7"), "{output}");
    assert!(output.contains(" 0 unexpected"), "{output}");
    assert_eq!(ws.resource_values("merak_topology.lab")["ready_epms"], 8);
    assert_eq!(ws.resource_values("merak_evm_group.db")["epm_counts"], serde_json::json!({"epm-6": 4}));
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

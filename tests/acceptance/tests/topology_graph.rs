//! `merak_topology_graph` through the real terraform binary: known at plan,
//! its `dot` accepted by Graphviz, its node and edge counts the topology's,
//! its Mermaid in the form GitHub renders, big topologies collapsed, and
//! links a profile impairs drawn dashed with their impairment.

use std::io::Write;
use std::process::{Command, Stdio};

use merak_acceptance::Workspace;

fn config(racks: u32, hosts_per_rack: u32, hosts: Option<u32>) -> String {
    let hosts = hosts.map(|h| format!("  hosts           = {h}\n")).unwrap_or_default();
    format!(
        "data \"merak_topology_graph\" \"dc\" {{\n  name            = \"{{name}}\"\n  racks           = {racks}\n  hosts_per_rack  = {hosts_per_rack}\n{hosts}  ports_per_vswitch = 4\n  data_plane_cidr = \"10.0.0.0/16\"\n}}\n\n\
         output \"dot\" {{\n  value = data.merak_topology_graph.dc.dot\n}}\n\
         output \"mermaid\" {{\n  value = data.merak_topology_graph.dc.mermaid\n}}\n\
         output \"counts\" {{\n  value = \"${{data.merak_topology_graph.dc.node_count}} ${{data.merak_topology_graph.dc.edge_count}}\"\n}}\n"
    )
}

/// Renders `dot` text with Graphviz; the SVG.
fn render(dot: &str) -> String {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dot (Debian's graphviz)");
    child.stdin.take().expect("stdin").write_all(dot.as_bytes()).expect("write to dot");
    let output = child.wait_with_output().expect("dot's answer");
    assert!(output.status.success(), "dot refused the graph: {}\n{dot}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_graph_is_known_at_plan_renders_and_matches_the_topology() {
    let ws = Workspace::new("graph");
    // 9 racks of 4 under aggregation switches of 4: 9 + 3 + 1 switches.
    ws.write_config(&config(9, 4, Some(34)));
    ws.init();
    let (code, plan) = ws.plan();
    assert!(code == 2 && plan.contains("graph TD") && !plan.contains("known after apply"), "not known at plan: {plan}");
    ws.apply();
    let dot = ws.ok(&["output", "-raw", "dot"]);
    let svg = render(&dot);
    assert_eq!(svg.matches("class=\"node\"").count(), 13 + 34, "{svg}");
    assert_eq!(svg.matches("class=\"edge\"").count(), 12 + 34);
    assert_eq!(ws.ok(&["output", "-raw", "counts"]), "47 46");
    let mermaid = ws.ok(&["output", "-raw", "mermaid"]);
    assert!(mermaid.starts_with("graph TD\n"), "{mermaid}");
    let nodes = mermaid.lines().skip(1).filter(|l| !l.contains("---")).collect::<Vec<_>>();
    assert_eq!(nodes.len(), 47);
    assert!(nodes.iter().all(|l| l.contains("[\"") || l.contains("([\"")), "every label quoted: {mermaid}");
    assert_eq!(mermaid.lines().filter(|l| l.contains(" --- ")).count(), 46);

    // Above collapse_above (64 EPMs), one node per rack with its count.
    ws.write_config(&config(10, 20, Some(190)));
    ws.apply();
    let dot = ws.ok(&["output", "-raw", "dot"]);
    let svg = render(&dot);
    assert!(dot.contains("rack 9: 10 EPMs (epm-180 to epm-189)"), "{dot}");
    // 10 + 3 + 1 switches and 10 racks; 13 switch links and 10 rack links.
    assert_eq!(svg.matches("class=\"node\"").count(), 24);
    assert_eq!(ws.ok(&["output", "-raw", "counts"]), "24 23");

    // Links a profile impairs are dashed and labelled, in both languages.
    let shaped = config(2, 3, None).replace(
        "  data_plane_cidr = \"10.0.0.0/16\"\n}",
        "  data_plane_cidr = \"10.0.0.0/16\"\n  link_profile {\n    role      = \"epm_uplink\"\n    rate_mbit = 40\n  }\n}",
    );
    assert!(shaped.contains("link_profile"), "{shaped}");
    ws.write_config(&shaped);
    ws.apply();
    let dot = ws.ok(&["output", "-raw", "dot"]);
    render(&dot);
    assert_eq!(dot.matches("[label=\"40 Mbit/s\", style=dashed").count(), 6, "{dot}");
    let mermaid = ws.ok(&["output", "-raw", "mermaid"]);
    assert_eq!(mermaid.matches("---|\"40 Mbit/s\"|").count(), 6, "{mermaid}");

    // A fat tree, level by level: 20 switches and 16 EPMs, 48 links.
    let fat = "data \"merak_topology_graph\" \"dc\" {\n  name            = \"{name}\"\n  type            = \"fat_tree\"\n  k               = 4\n  data_plane_cidr = \"10.0.0.0/16\"\n}\n\n\
               output \"dot\" {\n  value = data.merak_topology_graph.dc.dot\n}\n\
               output \"counts\" {\n  value = \"${data.merak_topology_graph.dc.node_count} ${data.merak_topology_graph.dc.edge_count}\"\n}\n";
    ws.write_config(fat);
    ws.apply();
    let svg = render(&ws.ok(&["output", "-raw", "dot"]));
    assert_eq!(svg.matches("class=\"node\"").count(), 36);
    assert_eq!(ws.ok(&["output", "-raw", "counts"]), "36 48");
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

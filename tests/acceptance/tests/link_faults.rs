//! `merak_fault` through the real terraform on the local runtime, on a tree
//! of 2 racks of 2 EPMs: a fault cuts exactly its link (both ends down, the
//! EPM behind it unreachable, every other EPM pair answering), the
//! topology's plan stays empty while it stands, a link brought back by hand
//! is drift that apply takes down again, a node fault cuts a vswitch's
//! every link, a link named twice or not at all is refused at plan, and
//! destroying the faults heals the underlay. Needs root.

use merak_acceptance::{Workspace, fixtures};

const TOPOLOGY: &str = r#"
resource "merak_topology" "dc" {
  name            = "{name}"
  racks           = 2
  hosts_per_rack  = 2
  data_plane_cidr = "10.87.0.0/24"
}
"#;

fn fault(name: &str, links: &[&str], nodes: &[&str]) -> String {
    let list = |names: &[&str]| names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
resource "merak_fault" "{name}" {{
  topology_id = merak_topology.dc.id
  name        = "{name}"
  links       = [{}]
  nodes       = [{}]
}}
"#,
        list(links),
        list(nodes)
    )
}

/// The underlay's pingall, read after the topology and the fault.
fn after_the_fault() -> String {
    fixtures::underlay_pingall("merak_topology.dc, merak_fault.cut")
}

/// Whether a device of a node is administratively up.
fn is_up(ws: &Workspace, node: &str, device: &str) -> bool {
    let shown = ws.exec_in(node, &["ip", "-o", "link", "show", "dev", device]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{node} has no {device}: {}", String::from_utf8_lossy(&shown.stderr));
    let flags = text.split('<').nth(1).and_then(|rest| rest.split('>').next()).unwrap_or_default();
    flags.split(',').any(|flag| flag == "UP")
}

#[test]
fn a_fault_cuts_exactly_its_links_until_it_is_destroyed() {
    let ws = Workspace::new("cut");
    ws.write_config(&format!("{TOPOLOGY}{}{}", fault("cut", &["epm-3--s0-1"], &[]), after_the_fault()));
    ws.init();
    let output = ws.apply();
    assert!(output.contains("underlay = \"6/12\""), "epm-3 answers none of 3 and asks none of 3: {output}");
    let pingall = ws.resource_values("data.merak_pingall.underlay");
    let failures = pingall["failures"].as_array().cloned().unwrap_or_default();
    assert!(
        !failures.is_empty() && failures.iter().all(|f| f.as_str().is_some_and(|f| f.contains("epm-3"))),
        "only epm-3's pairs fail: {pingall}"
    );
    let values = ws.resource_values("merak_fault.cut");
    assert_eq!(values["down_links"], serde_json::json!(["s0-1--epm-3"]), "{values}");
    assert!(!is_up(&ws, "epm-3", "eth1") && !is_up(&ws, "s0-1", "e3"), "both ends of the link are down");
    assert!(is_up(&ws, "epm-2", "eth1") && is_up(&ws, "s0-1", "e2"), "the rack's other link is not touched");
    let (code, plan) = ws.plan();
    assert_eq!(code, 0, "the topology counts a link held down as built: {plan}");

    // Brought back by hand: drift, which apply takes down again.
    for (node, device) in [("epm-3", "eth1"), ("s0-1", "e3")] {
        assert!(ws.exec_in(node, &["ip", "link", "set", device, "up"]).status.success());
    }
    let (code, plan) = ws.plan();
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("down_links") && plan.contains("updated in-place"), "{plan}");
    let output = ws.apply();
    assert!(output.contains("underlay = \"6/12\""), "{output}");
    assert!(!is_up(&ws, "epm-3", "eth1") && !is_up(&ws, "s0-1", "e3"));

    // A second fault may not take a link the first holds; nor a link or
    // node the topology does not have.
    ws.write_config(&format!(
        "{TOPOLOGY}{}{}{}",
        fault("cut", &["epm-3--s0-1"], &[]),
        fault("rack", &[], &["s0-1"]),
        after_the_fault()
    ));
    let refused = ws.plan_error("a link held by two faults");
    assert!(refused.contains("Link already failed") && refused.contains("s0-1--epm-3"), "{refused}");
    ws.write_config(&format!(
        "{TOPOLOGY}{}{}",
        fault("cut", &["epm-3--s0-0", "epm-9--s0-1"], &["s9-9"]),
        after_the_fault()
    ));
    let refused = ws.plan_error("links and nodes the topology has not");
    for named in ["No such link", "epm-3--s0-0", "epm-9--s0-1", "No such node", "s9-9", "s0-0--epm-0"] {
        assert!(refused.contains(named), "{named} not in: {refused}");
    }

    // Renamed, the fault is replaced: the old one lets go of the link before
    // the new one holds it.
    let rename = |config: String| config.replace("name        = \"cut\"", "name        = \"cut-again\"");
    ws.write_config(&format!("{TOPOLOGY}{}{}", rename(fault("cut", &["epm-3--s0-1"], &[])), after_the_fault()));
    let output = ws.apply();
    assert!(output.contains("underlay = \"6/12\""), "{output}");
    assert_eq!(ws.resource_values("merak_fault.cut")["id"], format!("{}/cut-again", ws.name));

    // The fault moves to a node, in place: all of s0-0's links, so
    // epm-0 and epm-1 reach each other no more, nor anyone else; epm-3 is back.
    ws.write_config(&format!("{TOPOLOGY}{}{}", rename(fault("cut", &[], &["s0-0"])), after_the_fault()));
    let (code, plan) = ws.plan();
    assert!(code == 2 && plan.contains("updated in-place") && !plan.contains("must be replaced"), "{plan}");
    let output = ws.apply();
    assert!(output.contains("underlay = \"2/12\""), "only epm-2 and epm-3 answer each other: {output}");
    let values = ws.resource_values("merak_fault.cut");
    let expected = ["s0-0--epm-0", "s0-0--epm-1", "s1-0--s0-0"];
    assert_eq!(values["down_links"], serde_json::json!(expected), "{values}");
    assert!(is_up(&ws, "epm-3", "eth1") && is_up(&ws, "s0-1", "e3"), "the link let go is up again");
    assert_eq!(ws.plan().0, 0, "nothing left to do");

    // Without the fault the underlay is whole again (pingall, read before
    // the fault's destroy, is read again after it).
    ws.write_config(&format!("{TOPOLOGY}{}", fixtures::underlay_pingall("merak_topology.dc")));
    ws.apply();
    let output = ws.ok(&["apply", "-refresh-only", "-auto-approve"]);
    assert!(output.contains("underlay = \"12/12\""), "{output}");
    for (node, device) in [("s1-0", "d0"), ("s0-0", "up"), ("s0-0", "e0"), ("epm-0", "eth1")] {
        assert!(is_up(&ws, node, device), "{node} {device} is up again");
    }
    assert_eq!(ws.plan().0, 0, "nothing left to do");
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

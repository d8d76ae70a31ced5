//! merak_topology through the real terraform binary: the whole lifecycle,
//! and every bad input.

use std::path::Path;

use merak_acceptance::{PROVIDER_VERSION, Workspace};

fn topology(racks: u32, hosts_per_rack: u32, extra: &str) -> String {
    format!(
        "resource \"merak_topology\" \"lab\" {{\n  name = \"{{name}}\"\n  racks = {racks}\n  hosts_per_rack = {hosts_per_rack}\n  \
         ports_per_vswitch = 2\n  data_plane_cidr = \"10.77.0.0/24\"\n{extra}}}\n"
    )
}

fn inode(path: &str) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("the file exists"))
}

#[test]
fn lifecycle_apply_refresh_import_scale_repair_destroy() {
    let ws = Workspace::new("life");
    ws.write_config(&topology(2, 3, ""));
    ws.init();

    // Create: 6 EPMs, 2 top-of-rack switches and a core.
    ws.apply();
    let state = ws.resource_values("merak_topology.lab");
    assert_eq!(state["ready_epms"], 6);
    assert_eq!(state["vswitch_count"], 3);
    assert_eq!(state["link_count"], 8);
    assert_eq!(state["epms"]["epm-5"]["ip"], "10.77.0.6");
    assert_eq!(ws.namespaces().len(), 9);
    assert_eq!(ws.agents().len(), 6);
    assert!(ws.pings("epm-0", "10.77.0.6"), "epm-0 reaches epm-5 across racks");

    // Unchanged: no diff, also after a refresh; a second apply changes nothing.
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);
    ws.ok(&["refresh"]);
    assert_eq!(ws.plan().0, 0);
    assert!(ws.apply().contains("0 added, 0 changed, 0 destroyed"));

    // Import into an empty state reproduces the same attributes.
    {
        let imported = ws.sibling("import");
        imported.write_config(&topology(2, 3, ""));
        imported.init();
        imported.ok(&["import", "merak_topology.lab", &ws.name]);
        assert_eq!(imported.resource_values("merak_topology.lab"), state);
        assert_eq!(imported.plan().0, 0);
    }

    // Grow in place: existing EPMs keep their namespace and agent.
    let epm0 = format!("/run/netns/merak-{}.epm-0", ws.name);
    let (inode_before, agents_before) = (inode(&epm0), ws.agents());
    ws.write_config(&topology(5, 3, ""));
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("update in-place") && !plan.contains("must be replaced"), "{plan}");
    ws.apply();
    let grown = ws.resource_values("merak_topology.lab");
    assert_eq!(grown["ready_epms"], 15);
    assert_eq!(grown["vswitch_count"], 5 + 3 + 2 + 1);
    assert_eq!(inode(&epm0), inode_before);
    let agents_after = ws.agents();
    assert!(agents_before.iter().all(|a| agents_after.contains(a)), "existing agents were restarted");
    assert!(ws.pings("epm-14", "10.77.0.1"), "a new EPM reaches an old one through the new core");
    assert_eq!(ws.plan().0, 0);

    // Shrink in place, to a partial last rack.
    ws.write_config(&topology(2, 3, "  hosts = 5\n"));
    ws.apply();
    let shrunk = ws.resource_values("merak_topology.lab");
    assert_eq!(shrunk["ready_epms"], 5);
    assert_eq!(ws.namespaces().len(), 5 + 3);
    assert_eq!(ws.agents().len(), 5);
    assert_eq!(inode(&epm0), inode_before);
    assert_eq!(ws.plan().0, 0);

    // Every EPM's agent is served by one process, the topology's agent host.
    let hosts = ws.agent_processes();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert!(ws.agents().iter().all(|(pid, _)| *pid == hosts[0].0), "{:?}", ws.agents());

    // Drift: a deleted EPM namespace shows in the plan...
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "delete", &format!("merak-{}.epm-1", ws.name)])
            .status()
            .unwrap()
            .success()
    );
    let (code, plan) = ws.plan();
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("ready_epms") && plan.contains("4 -> 5"), "{plan}");
    // ...so does a killed agent host (no EPM has an agent then)...
    // SAFETY: kill(2) on this test's agent host.
    unsafe { libc::kill(hosts[0].0 as i32, libc::SIGKILL) };
    let (code, plan) = ws.plan();
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("ready_epms") && plan.contains("0 -> 5"), "{plan}");
    // ...and apply repairs them.
    ws.apply();
    assert_eq!(ws.plan().0, 0);
    assert_eq!(ws.agents().len(), 5);
    assert_eq!(ws.agent_processes().len(), 1);
    assert!(ws.pings("epm-1", "10.77.0.3"));

    // Links that exist but carry nothing, as a kill between creating a
    // veth and putting it on its bridge leaves them: an EPM's port on its
    // top-of-rack switch, and a switch's uplink. Both show, and apply wires them.
    let ip =
        |args: &[&str]| assert!(std::process::Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    // Rack 1 (EPMs 3 and 4) hangs off top-of-rack switch s0-1; EPM 3's port there is e3.
    let tor1 = format!("merak-{}.s0-1", ws.name);
    ip(&["-n", &tor1, "link", "set", "e3", "nomaster"]);
    let (code, plan) = ws.plan();
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("ready_epms") && plan.contains("4 -> 5"), "{plan}");
    ip(&["-n", &tor1, "link", "set", "dev", "up", "down"]);
    let (code, plan) = ws.plan();
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("ready_epms") && plan.contains("3 -> 5"), "rack 1's uplink down cuts off its EPMs: {plan}");
    ws.apply();
    assert_eq!(ws.plan().0, 0);
    assert!(ws.pings("epm-3", "10.77.0.1") && ws.pings("epm-4", "10.77.0.1"), "rack 1 reaches rack 0 again");

    // Replacement attributes say so in the plan.
    ws.write_config(&topology(2, 3, "  hosts = 5\n").replace("10.77.0.0/24", "10.78.0.0/24"));
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("forces replacement") && plan.contains("data_plane_cidr"), "{plan}");

    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

#[test]
fn agents_are_restarted_after_the_agent_binary_is_upgraded() {
    let ws = Workspace::new("upgrade").with_agent_copy();
    ws.write_config(&topology(1, 2, ""));
    ws.init();
    ws.apply();
    let before = ws.agents();
    assert_eq!(before.len(), 2);
    assert_eq!(ws.plan().0, 0);

    // Old agents still run: the plan says so, and the apply restarts them.
    ws.upgrade_agent();
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("ready_epms") && plan.contains("0 -> 2"), "{plan}");
    ws.apply();
    let after = ws.agents();
    assert_eq!(after.len(), 2);
    assert!(before.iter().all(|old| !after.contains(old)), "{before:?} -> {after:?}");
    assert_eq!(ws.plan().0, 0);
    assert!(ws.pings("epm-0", "10.77.0.2"));

    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

#[test]
fn bad_input_is_a_plan_time_diagnostic_on_the_attribute() {
    let ws = Workspace::new("bad");
    ws.write_config(&topology(1, 1, ""));
    ws.init();
    let long_name = format!("name = \"{}\"", "a".repeat(63));
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"{name}\"", "name = \"Not_A_Label\"", "Invalid topology name"),
        ("racks = 1", "racks = 0", "Invalid racks"),
        ("hosts_per_rack = 1", "hosts_per_rack = 0", "Invalid hosts_per_rack"),
        ("hosts_per_rack = 1", "hosts_per_rack = 2000", "Invalid hosts_per_rack"),
        ("ports_per_vswitch = 2", "ports_per_vswitch = 1", "Invalid ports_per_vswitch"),
        ("ports_per_vswitch = 2", "ports_per_vswitch = 2\n  hosts = 7", "Hosts do not fill the racks"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"10.77.0.0/33\"", "Invalid data-plane CIDR"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"10.77.0.9/24\"", "Invalid data-plane CIDR"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"fd00::/64\"", "Invalid data-plane CIDR"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"10.77.0.0/31\"", "Data-plane CIDR too small"),
        // A prefix length the provider would have to rewrite.
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"10.77.0.0/+24\"", "Invalid data-plane CIDR"),
        // Ranges where EPMs could not reach each other.
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"0.0.0.0/0\"", "Reserved data-plane CIDR"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"127.0.0.0/24\"", "Reserved data-plane CIDR"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"224.0.0.0/24\"", "Reserved data-plane CIDR"),
        ("data_plane_cidr = \"10.77.0.0/24\"", "data_plane_cidr = \"169.254.0.0/24\"", "Reserved data-plane CIDR"),
        // A million EPMs would take gigabytes to plan.
        (
            "racks = 1\n  hosts_per_rack = 1",
            "racks = 1000\n  hosts_per_rack = 1000\n  hosts = 1000000",
            "Too many hosts",
        ),
        // A valid name, too long for the agent sockets under this state_dir.
        ("name = \"{name}\"", long_name.as_str(), "Topology does not fit this runtime"),
        // Fat trees: k's rules, and each type's attributes kept to it.
        ("racks = 1\n  hosts_per_rack = 1", "type = \"mesh\"", "Unknown topology type"),
        ("racks = 1\n  hosts_per_rack = 1", "type = \"fat_tree\"\n  k = 5", "Invalid k"),
        ("racks = 1\n  hosts_per_rack = 1", "type = \"fat_tree\"\n  k = 4\n  hosts = 17", "Invalid hosts"),
        ("racks = 1\n  hosts_per_rack = 1", "type = \"fat_tree\"\n  k = 4\n  racks = 2", "racks is for a tree"),
        ("racks = 1\n  hosts_per_rack = 1", "racks = 1\n  hosts_per_rack = 1\n  k = 4", "k is for a fat tree"),
        (
            "racks = 1\n  hosts_per_rack = 1",
            "type = \"fat_tree\"\n  k = 4\n  fabric_cidr = \"10.77.0.0/24\"",
            "fabric_cidr overlaps data_plane_cidr",
        ),
        (
            "racks = 1\n  hosts_per_rack = 1",
            "type = \"fat_tree\"\n  k = 4\n  fabric_cidr = \"100.64.0.0/28\"",
            "fabric_cidr too small",
        ),
    ];
    for (from, to, summary) in cases {
        let config = topology(1, 1, "").replace(from, to);
        ws.write_config(&config);
        let stderr = ws.plan_error(to);
        assert!(stderr.contains(summary), "{to}: wanted {summary:?} in {stderr}");
        // The diagnostic points at the attribute's line in the configuration.
        let attribute_line = to.lines().last().unwrap().replace("{name}", &ws.name);
        assert!(stderr.contains(attribute_line.trim()), "{to}: not pinned to its attribute: {stderr}");
    }
    assert!(ws.namespaces().is_empty(), "a bad plan created something");

    let provider_cases = [
        ("local {\n    state_dir = \"relative/dir\"\n  }", "state_dir must be an absolute path", "relative/dir"),
        ("runtime = \"cloud\"", "Unsupported runtime", "runtime = \"cloud\""),
    ];
    for (settings, summary, pinned) in provider_cases {
        let main = format!(
            "terraform {{\n  required_providers {{\n    merak = {{ source = \"merak/merak\" }}\n  }}\n}}\n\n\
             provider \"merak\" {{\n  {settings}\n}}\n\n{}",
            topology(1, 1, "").replace("{name}", &ws.name)
        );
        std::fs::write(ws.dir.join("main.tf"), main).unwrap();
        let stderr = ws.plan_error(settings);
        assert!(stderr.contains(summary) && stderr.contains(pinned), "wanted {summary:?} at {pinned:?} in {stderr}");
    }

    // Something that is not merak-agent: refused at plan, on the attribute,
    // before anything is made.
    let with_agent = |agent: &Path| {
        let main = format!(
            "terraform {{\n  required_providers {{\n    merak = {{ source = \"merak/merak\" }}\n  }}\n}}\n\n\
             provider \"merak\" {{\n  local {{\n    state_dir  = \"{}\"\n    agent_path = \"{}\"\n  }}\n}}\n\n{}",
            ws.state_dir.display(),
            agent.display(),
            topology(1, 1, "").replace("{name}", &ws.name)
        );
        std::fs::write(ws.dir.join("main.tf"), main).expect("write main.tf");
    };
    with_agent(Path::new("/bin/true"));
    let stderr = ws.plan_error("agent_path = /bin/true");
    assert!(
        stderr.contains("Not the merak-agent of this provider")
            && stderr.contains("agent_path")
            && stderr.contains("/bin/true"),
        "{stderr}"
    );
    assert!(ws.namespaces().is_empty(), "a refused agent made {:?}", ws.namespaces());

    // One that answers as merak-agent of this version but does not serve:
    // the apply says why.
    let impostor = ws.dir.join("impostor-agent");
    std::fs::write(
        &impostor,
        format!("#!/bin/sh\n[ \"$1\" = --build-id ] && echo {PROVIDER_VERSION}-0123456789abcdef\nexit 0\n"),
    )
    .expect("write the impostor");
    std::fs::set_permissions(&impostor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    with_agent(&impostor);
    let output = ws.terraform(&["apply", "-auto-approve"]);
    let stderr =
        String::from_utf8_lossy(&output.stderr).replace('│', " ").split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("did not start: it exited with status 0") && stderr.contains("impostor-agent"), "{stderr}");
    ws.write_config(&topology(1, 1, ""));
    ws.ok(&["destroy", "-auto-approve"]);

    // Without the capabilities the local runtime needs, configure says so.
    ws.write_config(&topology(1, 1, ""));
    let output = ws.terraform_via(&["setpriv", "--bounding-set", "-net_admin,-sys_admin"], &["plan"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("The local runtime needs root"), "{stderr}");
    ws.assert_nothing_left();
}

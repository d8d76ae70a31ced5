//! VPCs, subnets and EVM groups through the real terraform binary: traffic
//! inside subnets and across them, isolation between VPCs with overlapping
//! CIDRs, scaling that keeps addresses, drift repair, import, bad input.

use merak_acceptance::Workspace;

/// The topology `dc` and VPC `blue` (10.0.0.0/16) every fixture starts with.
fn datacenter(racks: u32, hosts_per_rack: u32, data_plane_cidr: &str) -> String {
    format!(
        r#"
resource "merak_topology" "dc" {{
  name            = "{{name}}"
  racks           = {racks}
  hosts_per_rack  = {hosts_per_rack}
  data_plane_cidr = "{data_plane_cidr}"
}}

resource "merak_vpc" "blue" {{
  topology_id = merak_topology.dc.id
  name        = "blue"
  cidr        = "10.0.0.0/16"
}}
"#
    )
}

/// A pingall over the topology once `groups` exist, its result as outputs
/// `unexpected` and `failures`, and `merak_evms` of group `listed`.
fn checks(groups: &str, listed: &str) -> String {
    format!(
        r#"
data "merak_pingall" "check" {{
  topology_id = merak_topology.dc.id
  depends_on  = [{groups}]
}}

data "merak_evms" "{listed}" {{
  topology_id = merak_topology.dc.id
  group       = merak_evm_group.{listed}.name
}}

output "unexpected" {{
  value = data.merak_pingall.check.unexpected
}}

output "failures" {{
  value = data.merak_pingall.check.failures
}}
"#
    )
}

/// A 2×2 topology; VPCs blue and red share 10.0.0.0/16; blue has web and
/// db, red has web (same CIDR as blue's web).
fn tenants(blue_web: u32, red_web: u32) -> String {
    let groups = format!(
        r#"
resource "merak_vpc" "red" {{
  topology_id = merak_topology.dc.id
  name        = "red"
  cidr        = "10.0.0.0/16"
}}

resource "merak_subnet" "blue_web" {{
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.0.1.0/24"
}}

resource "merak_subnet" "blue_db" {{
  vpc_id = merak_vpc.blue.id
  name   = "db"
  cidr   = "10.0.2.0/24"
}}

resource "merak_subnet" "red_web" {{
  vpc_id = merak_vpc.red.id
  name   = "web"
  cidr   = "10.0.1.0/24"
}}

resource "merak_evm_group" "bweb" {{
  subnet_id = merak_subnet.blue_web.id
  name      = "bweb"
  evm_count = {blue_web}
}}

resource "merak_evm_group" "bdb" {{
  subnet_id    = merak_subnet.blue_db.id
  name         = "bdb"
  evm_count    = 3
  device_model = "hybrid"
}}

resource "merak_evm_group" "rweb" {{
  subnet_id = merak_subnet.red_web.id
  name      = "rweb"
  evm_count = {red_web}
}}
"#
    );
    datacenter(2, 2, "10.201.0.0/24")
        + &groups
        + &checks("merak_evm_group.bweb, merak_evm_group.bdb, merak_evm_group.rweb", "bweb")
}

fn output(ws: &Workspace, name: &str) -> serde_json::Value {
    let text = ws.ok(&["output", "-json", name]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("output {name}: {e}: {text}"))
}

fn evms(ws: &Workspace) -> Vec<serde_json::Value> {
    evms_of(ws, "data.merak_evms.bweb")
}

fn evms_of(ws: &Workspace, address: &str) -> Vec<serde_json::Value> {
    let show: serde_json::Value = serde_json::from_str(&ws.ok(&["show", "-json"])).expect("show -json is JSON");
    let resources = show["values"]["root_module"]["resources"].as_array().cloned().unwrap_or_default();
    let source =
        resources.into_iter().find(|r| r["address"] == address).unwrap_or_else(|| panic!("{address} in state"));
    source["values"]["evms"].as_array().cloned().unwrap_or_default()
}

fn inode(path: &str) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("the file exists"))
}

#[test]
fn tenants_connect_scale_repair_import_and_go_away() {
    let ws = Workspace::new("ovl");
    ws.write_config(&tenants(6, 4));
    ws.init();
    ws.apply();
    // The agents are reached the way this run asks: over TCP no EPM has a
    // socket, and the topology's keys are root's alone.
    let topology_dir = ws.state_dir.join(&ws.name);
    let sockets = std::fs::read_dir(&topology_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("epm-"))
        .count();
    if Workspace::transport() == "tcp" {
        assert_eq!(sockets, 0, "agents on TCP have no unix sockets");
        for key in ["ca.key", "agent.key", "controller.key"] {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(topology_dir.join("tls").join(key)).unwrap().permissions(),
            );
            assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
        }
    } else {
        assert_eq!(sockets, 4, "one socket per EPM");
    }

    // Connectivity, checked from inside the EVMs by the provider...
    assert_eq!(output(&ws, "unexpected"), 0, "{}", output(&ws, "failures"));
    // ...and by hand: same subnet across EPMs, across subnets, not across VPCs.
    let bweb = evms(&ws);
    assert_eq!(bweb.len(), 6);
    assert_ne!(bweb[0]["epm"], bweb[1]["epm"], "spread puts neighbours on different EPMs");
    let bdb0 = ws.resource_values("merak_evm_group.bdb")["address_ranges"][0]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_string();
    assert!(ws.pings("vm.bweb.0", bweb[1]["ip"].as_str().unwrap()));
    assert!(ws.pings("vm.bweb.0", &bdb0), "blue web reaches blue db");
    assert!(!ws.pings("vm.rweb.0", &bdb0), "red reaches nothing of blue");
    // The hybrid group's plugs: a per-EVM bridge with a tap on each EPM that holds one.
    let hybrid = ws.exec_in("epm-0.r.blue", &["ip", "-o", "link", "show", "type", "tun"]);
    assert_eq!(String::from_utf8_lossy(&hybrid.stdout).lines().count(), 1, "one tap for bdb-0 on epm-0");
    let bridges = ws.exec_in("epm-0.r.blue", &["ip", "-o", "link", "show", "type", "bridge"]);
    assert_eq!(String::from_utf8_lossy(&bridges.stdout).lines().count(), 3, "two subnet bridges and bdb-0's own");
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);

    // Scale in place: existing EVMs keep namespace, address and MAC.
    let first = format!("/run/netns/merak-{}.vm.bweb.0", ws.name);
    let inode_before = inode(&first);
    ws.write_config(&tenants(10, 2));
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("update in-place") && !plan.contains("must be replaced"), "{plan}");
    ws.apply();
    let grown = evms(&ws);
    assert_eq!(grown.len(), 10);
    assert_eq!(&grown[..6], &bweb[..], "existing EVMs changed");
    assert_eq!(inode(&first), inode_before);
    assert_eq!(ws.resource_values("merak_evm_group.rweb")["ready_count"], 2);
    assert!(!std::path::Path::new(&format!("/run/netns/merak-{}.vm.rweb.2", ws.name)).exists());
    assert_eq!(output(&ws, "unexpected"), 0, "{}", output(&ws, "failures"));
    assert_eq!(ws.plan().0, 0);

    // Drift: a deleted EVM shows in the plan, and apply brings it back.
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "delete", &format!("merak-{}.vm.bweb.3", ws.name)])
            .status()
            .unwrap()
            .success()
    );
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("ready_count") && plan.contains("9 -> 10"), "{plan}");
    ws.apply();
    assert_eq!(ws.plan().0, 0);
    assert!(ws.pings("vm.bweb.3", &bdb0));

    // Import of every resource into an empty state reproduces it.
    {
        let imported = ws.sibling("import");
        imported.write_config(&tenants(10, 2));
        imported.init();
        let topology = ws.name.clone();
        let imports = [
            ("merak_topology.dc", topology.clone()),
            ("merak_vpc.blue", format!("{topology}/blue")),
            ("merak_vpc.red", format!("{topology}/red")),
            ("merak_subnet.blue_web", format!("{topology}/blue/web")),
            ("merak_subnet.blue_db", format!("{topology}/blue/db")),
            ("merak_subnet.red_web", format!("{topology}/red/web")),
            ("merak_evm_group.bweb", format!("{topology}/blue/web/bweb")),
            ("merak_evm_group.bdb", format!("{topology}/blue/db/bdb")),
            ("merak_evm_group.rweb", format!("{topology}/red/web/rweb")),
        ];
        for (address, id) in &imports {
            imported.ok(&["import", address, id]);
            assert_eq!(imported.resource_values(address), ws.resource_values(address), "{address}");
        }
        // Only the outputs, which an import does not bring, are new.
        let (_, plan) = imported.plan();
        assert!(!plan.contains("# merak_") && !plan.contains("# data.merak"), "{plan}");
    }

    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

/// A 1×2 topology `dc`, VPC `blue` and its subnet `web` (10.0.1.0/24).
fn web_subnet(data_plane_cidr: &str) -> String {
    datacenter(1, 2, data_plane_cidr)
        + "\nresource \"merak_subnet\" \"web\" {\n  vpc_id = merak_vpc.blue.id\n  name   = \"web\"\n  cidr   = \"10.0.1.0/24\"\n}\n"
}

#[test]
fn bad_tenant_input_is_refused_before_anything_is_built() {
    let ws = Workspace::new("ovlbad");
    let base = &web_subnet("10.202.0.0/24");
    ws.write_config(base);
    ws.init();
    ws.apply();
    let cases = [
        (
            "resource \"merak_subnet\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  cidr = \"10.9.0.0/24\"\n}",
            "Subnet outside its VPC",
            "cidr = \"10.9.0.0/24\"",
        ),
        (
            "resource \"merak_subnet\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  cidr = \"10.0.3.0/24\"\n  gateway_ip = \"10.0.4.1\"\n}",
            "Gateway outside the subnet",
            "gateway_ip = \"10.0.4.1\"",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 300\n}",
            "Group does not fit its subnet",
            "evm_count = 300",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 2\n  epms = [\"epm-9\"]\n}",
            "No such EPM",
            "epms = [\"epm-9\"]",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 2\n  placement = \"random\"\n}",
            "Invalid placement",
            "placement = \"random\"",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  epm_counts = { \"epm-9\" = 1 }\n}",
            "No such EPM",
            "epm_counts = { \"epm-9\" = 1 }",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 2\n  epms = [\"epm-0\", \"epm-0\"]\n}",
            "EPM listed twice",
            "epms = [\"epm-0\", \"epm-0\"]",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  placement = \"pack\"\n  epm_counts = { \"epm-0\" = 1 }\n}",
            "placement conflicts with epm_counts",
            "placement = \"pack\"",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 3\n  epm_counts = { \"epm-0\" = 1 }\n}",
            "evm_count disagrees with epm_counts",
            "evm_count = 3",
        ),
        (
            "resource \"merak_vpc\" \"x\" {\n  topology_id = merak_topology.dc.id\n  name = \"x\"\n  cidr = \"10.0.0.0/16\"\n  vni = 0\n}",
            "Invalid vni",
            "vni = 0",
        ),
    ];
    for (extra, summary, pinned) in cases {
        ws.write_config(&format!("{base}\n{extra}\n"));
        let stderr = ws.plan_error(extra);
        assert!(
            stderr.contains(summary) && stderr.contains(pinned),
            "{extra}: wanted {summary:?} at {pinned:?} in {stderr}"
        );
    }
    // An overlapping sibling is refused at plan too, once the sibling exists.
    ws.write_config(&format!("{base}\nresource \"merak_subnet\" \"x\" {{\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  cidr = \"10.0.1.128/25\"\n}}\n"));
    let stderr = ws.plan_error("overlapping sibling");
    assert!(stderr.contains("Subnet overlaps a sibling") && stderr.contains("cidr = \"10.0.1.128/25\""), "{stderr}");
    let state = ws.ok(&["state", "list"]);
    assert!(!state.contains("merak_subnet.x"), "{state}");

    // A subnet with groups cannot go before its groups: Terraform orders the
    // destroy, and the runtime refuses otherwise.
    ws.write_config(base);
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

/// One subnet on three EPMs; group `pin` placed by a count per EPM, group
/// `crowd` with more EVMs on one EPM than one bridge holds.
fn counted(placement: &str) -> String {
    let groups = format!(
        r#"
resource "merak_subnet" "web" {{
  vpc_id = merak_vpc.blue.id
  name   = "web"
  cidr   = "10.0.0.0/24"
}}

resource "merak_subnet" "big" {{
  vpc_id = merak_vpc.blue.id
  name   = "big"
  cidr   = "10.0.4.0/22"
}}

resource "merak_evm_group" "pin" {{
  subnet_id = merak_subnet.web.id
  name      = "pin"
  {placement}
}}

resource "merak_evm_group" "crowd" {{
  subnet_id  = merak_subnet.big.id
  name       = "crowd"
  epm_counts = {{ "epm-2" = 1001 }}
}}
"#
    );
    datacenter(1, 3, "10.203.0.0/24") + &groups + &checks("merak_evm_group.pin, merak_evm_group.crowd", "pin")
}

/// (name, EPM, IP) of each EVM of `pin`.
fn placed(ws: &Workspace) -> Vec<(String, String, String)> {
    let field = |evm: &serde_json::Value, name: &str| evm[name].as_str().unwrap_or_default().to_string();
    evms_of(ws, "data.merak_evms.pin").iter().map(|e| (field(e, "name"), field(e, "epm"), field(e, "ip"))).collect()
}

#[test]
fn evms_placed_by_count_per_epm_stay_put_and_crowds_get_more_bridges() {
    let ws = Workspace::new("ovlcnt");
    ws.write_config(&counted(r#"epm_counts = { "epm-0" = 3, "epm-1" = 2 }"#));
    ws.init();
    ws.apply();
    assert_eq!(output(&ws, "unexpected"), 0, "{}", output(&ws, "failures"));
    let before = placed(&ws);
    let on = |placed: &[(String, String, String)], epm: &str| placed.iter().filter(|(_, e, _)| e == epm).count();
    assert_eq!((on(&before, "epm-0"), on(&before, "epm-1"), on(&before, "epm-2")), (3, 2, 0));
    assert_eq!(ws.resource_values("merak_evm_group.pin")["evm_count"], 5);
    assert_eq!(ws.resource_values("merak_evm_group.crowd")["ready_count"], 1001);
    // 1001 EVMs of a subnet on epm-2: the trunk bridge and one leaf.
    let bridges = ws.exec_in("epm-2.r.blue", &["ip", "-o", "link", "show", "type", "bridge"]);
    let bridges: Vec<String> = String::from_utf8_lossy(&bridges.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(String::from))
        .collect();
    assert_eq!(bridges.len(), 3, "the two subnets' trunks and a leaf: {bridges:?}");
    assert_eq!(bridges.iter().filter(|name| name.contains('.')).count(), 1, "{bridges:?}");
    assert_eq!(ws.plan().0, 0, "{}", ws.plan().1);

    // epm-0 gives up two EVMs, epm-1 and epm-2 gain: in place, and whatever
    // stays keeps its EPM and address; the moved addresses answer at once.
    ws.write_config(&counted(r#"epm_counts = { "epm-0" = 1, "epm-1" = 4, "epm-2" = 1 }"#));
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("update in-place") && !plan.contains("must be replaced"), "{plan}");
    ws.apply();
    let after = placed(&ws);
    assert_eq!((on(&after, "epm-0"), on(&after, "epm-1"), on(&after, "epm-2")), (1, 4, 1));
    let kept = before.iter().filter(|evm| after.contains(evm)).count();
    assert_eq!(kept, 3, "epm-0 keeps one, epm-1 keeps both: {before:?} -> {after:?}");
    // The EVMs that moved are wired where they now are, and nowhere else.
    let ports = |epm: &str| {
        let links = ws.exec_in(&format!("{epm}.r.blue"), &["ip", "-o", "link", "show"]);
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.split(": ").nth(1).is_some_and(|name| name.starts_with('v')))
            .count()
    };
    assert_eq!((ports("epm-0"), ports("epm-1"), ports("epm-2")), (1, 4, 1 + 1001));
    assert_eq!(output(&ws, "unexpected"), 0, "{}", output(&ws, "failures"));
    assert_eq!(ws.plan().0, 0);
    {
        let imported = ws.sibling("import");
        imported.write_config(&counted(r#"epm_counts = { "epm-0" = 1, "epm-1" = 4, "epm-2" = 1 }"#));
        imported.init();
        let id = format!("{}/blue/web/pin", ws.name);
        imported.ok(&["import", "merak_evm_group.pin", &id]);
        assert_eq!(imported.resource_values("merak_evm_group.pin"), ws.resource_values("merak_evm_group.pin"));
    }

    // Placement by formula instead replaces the group.
    ws.write_config(&counted("evm_count = 4"));
    let (code, plan) = ws.plan();
    assert_eq!(code, 2);
    assert!(plan.contains("must be replaced"), "{plan}");

    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

/// Everything new in one configuration: the checks that need a parent use
/// the parent this same plan creates, so nothing is built before they fail.
#[test]
fn bad_input_is_refused_at_plan_when_the_parents_are_new_too() {
    let ws = Workspace::new("ovlnew");
    let base = &(web_subnet("10.203.0.0/24")
        + "\nresource \"merak_subnet\" \"wide\" {\n  vpc_id = merak_vpc.blue.id\n  name   = \"wide\"\n  cidr   = \"10.0.128.0/17\"\n}\n");
    ws.write_config(base);
    ws.init();
    let cases = [
        (
            "resource \"merak_subnet\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  cidr = \"10.9.0.0/24\"\n}",
            "Subnet outside its VPC",
            "cidr = \"10.9.0.0/24\"",
        ),
        (
            "resource \"merak_subnet\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  cidr = \"10.0.1.128/25\"\n}",
            "Subnet overlaps a sibling",
            "10.0.1.128/25",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 1e9\n}",
            "Group does not fit its subnet",
            "evm_count = 1e9",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = -1\n}",
            "cannot be negative",
            "evm_count = -1",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.wide.id\n  name = \"x\"\n  evm_count = 3000\n  placement = \"pack\"\n}",
            "Group does not fit on its EPMs",
            "evm_count = 3000",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 2\n  epms = [\"epm-2\"]\n}",
            "No such EPM",
            "epms = [\"epm-2\"]",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = \"{name}/blue/nowhere\"\n  name = \"x\"\n  evm_count = 2\n}",
            "No such subnet",
            "subnet_id = ",
        ),
        (
            "resource \"merak_vpc\" \"x\" {\n  topology_id = merak_topology.dc.id\n  name = \"x\"\n  cidr = \"10.0.0.0/16\"\n  vni = 1.5\n}",
            "Invalid vni",
            "vni = 1.5",
        ),
        (
            "resource \"merak_security_group\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  ingress {\n    protocol = \"tcp\"\n    from_port = 22\n    cidr_blocks = [\"10.0.0.1/8\"]\n  }\n}",
            "Invalid cidr_blocks",
            "cidr_blocks = [\"10.0.0.1/8\"]",
        ),
        (
            "resource \"merak_security_group\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  ingress {\n    protocol = \"tcp\"\n    from_port = 90\n    to_port = 80\n    self = true\n  }\n}",
            "Port range reversed",
            "from_port = 90",
        ),
        (
            "resource \"merak_security_group\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  egress {\n    protocol = \"icmp\"\n    from_port = 8\n    self = true\n  }\n}",
            "Ports with a protocol that has none",
            "from_port = 8",
        ),
        (
            "resource \"merak_security_group\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  ingress {\n    protocol = \"all\"\n    source_security_group_ids = [\"{name}/red/db\"]\n  }\n}",
            "Security group of another VPC",
            "source_security_group_ids = ",
        ),
        (
            "resource \"merak_security_group\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"x\"\n  ingress {\n    protocol = \"all\"\n    source_security_group_ids = [\"{name}/blue/ghost\"]\n  }\n}",
            "No such security group",
            "source_security_group_ids = ",
        ),
        (
            "resource \"merak_security_group\" \"x\" {\n  vpc_id = merak_vpc.blue.id\n  name = \"default\"\n}",
            "Reserved security group name",
            "name = \"default\"",
        ),
        (
            "resource \"merak_evm_group\" \"x\" {\n  subnet_id = merak_subnet.web.id\n  name = \"x\"\n  evm_count = 2\n  security_group_ids = [\"{name}/blue/ghost\"]\n}",
            "No such security group",
            "security_group_ids = ",
        ),
        (
            "data \"merak_pingall\" \"x\" {\n  topology_id = merak_topology.dc.id\n  timeout_ms = 1e30\n}",
            "Invalid timeout_ms",
            "timeout_ms = 1e30",
        ),
        (
            "data \"merak_pingall\" \"x\" {\n  topology_id = merak_topology.dc.id\n  timeout_ms = 5.5\n}",
            "Invalid timeout_ms",
            "timeout_ms = 5.5",
        ),
        (
            "data \"merak_pingall\" \"x\" {\n  topology_id = merak_topology.dc.id\n  samples = -1\n}",
            "Invalid samples",
            "samples = -1",
        ),
        (
            "data \"merak_pingall\" \"x\" {\n  topology_id = merak_topology.dc.id\n  samples = 1099511627776\n}",
            "Invalid samples",
            "samples = 1099511627776",
        ),
    ];
    // (Two new siblings that overlap are planned in either order: the
    // diagnostic lands on whichever is planned second.)
    for (extra, summary, pinned) in cases {
        ws.write_config(&format!("{base}\n{extra}\n"));
        let stderr = ws.plan_error(extra);
        assert!(
            stderr.contains(summary) && stderr.contains(pinned),
            "{extra}: wanted {summary:?} at {pinned:?} in {stderr}"
        );
        let apply = ws.terraform(&["apply", "-auto-approve"]);
        assert!(!apply.status.success(), "{extra}: apply went ahead");
        assert!(ws.namespaces().is_empty(), "{extra}: something was built");
    }
    ws.assert_nothing_left();
}

/// Replacing a group (veth to hybrid) frees its subnet's VNI on each EPM
/// before the new group needs it: the first apply succeeds.
#[test]
fn a_replaced_group_is_rebuilt_in_one_apply() {
    let ws = Workspace::new("ovlrepl");
    let config = |model: &str| {
        datacenter(1, 2, "10.204.0.0/24")
            + &format!(
                "resource \"merak_subnet\" \"web\" {{\n  vpc_id = merak_vpc.blue.id\n  name = \"web\"\n  cidr = \"10.0.1.0/24\"\n}}\n\n\
                 resource \"merak_evm_group\" \"web\" {{\n  subnet_id = merak_subnet.web.id\n  name = \"web\"\n  evm_count = 4\n  device_model = \"{model}\"\n}}\n"
            )
            + &checks("merak_evm_group.web", "web")
    };
    ws.write_config(&config("veth"));
    ws.init();
    ws.apply();
    assert_eq!(output(&ws, "unexpected"), 0, "{}", output(&ws, "failures"));
    for _ in 0..2 {
        for model in ["hybrid", "veth"] {
            ws.write_config(&config(model));
            let (code, plan) = ws.plan();
            assert!(code == 2 && plan.contains("must be replaced"), "{plan}");
            ws.apply();
            assert_eq!(output(&ws, "unexpected"), 0, "{}", output(&ws, "failures"));
            assert_eq!(ws.plan().0, 0);
        }
    }
    ws.ok(&["destroy", "-auto-approve"]);
    ws.assert_nothing_left();
}

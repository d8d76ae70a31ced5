//! The controller's EVM-group paths (apply, scale, delete, rebuild) and
//! their failures, over the fake substrate and the in-memory record store:
//! no root, milliseconds each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::fake_substrate::FakeSubstrate;
use super::{Controller, GroupStatus, Intent, RuntimeError};
use crate::model::overlay::{GroupInput, GroupSpec, SubnetSpec, VpcSpec};
use crate::model::security_group::SecurityGroupSpec;
use crate::model::{TreeInput, TreeSpec};
use crate::store::MemoryStore;

/// A controller over a fresh fake with a topology of `hosts` EPMs (two
/// racks), a VPC and a subnet; the subnet to put groups in.
async fn lab(hosts: i64) -> (Controller, Arc<FakeSubstrate>, SubnetSpec) {
    let fake = Arc::new(FakeSubstrate::start().await);
    let controller = Controller::new(fake.clone(), Arc::new(MemoryStore::default()));
    let tree = TreeSpec::validate(&TreeInput {
        name: "lab",
        racks: 2,
        hosts_per_rack: hosts / 2,
        hosts: Some(hosts),
        ports_per_vswitch: 4,
        data_plane_cidr: "10.77.0.0/24",
    })
    .expect("a valid tree");
    controller.apply_topology(&tree, &[], &[], Intent::Create).await.expect("topology applied");
    let vpc = VpcSpec::validate("lab", "blue", "10.0.0.0/16", None).expect("a valid VPC");
    controller.apply_vpc(&vpc).await.expect("VPC applied");
    let subnet = SubnetSpec::validate(&vpc, "web", "10.0.1.0/24", None).expect("a valid subnet");
    controller.apply_subnet(&subnet).await.expect("subnet applied");
    (controller, fake, subnet)
}

fn group(subnet: &SubnetSpec, count: i64) -> GroupSpec {
    let input = GroupInput {
        name: "web".into(),
        evm_count: Some(count),
        placement: None,
        epms: Vec::new(),
        epm_counts: None,
        device_model: "veth".into(),
        security_group_ids: Vec::new(),
    };
    GroupSpec::validate(subnet, input).expect("a valid group")
}

/// EVMs per EPM as the fake holds them (EPMs holding none left out).
fn held(fake: &FakeSubstrate) -> BTreeMap<String, u32> {
    let state = fake.state();
    state.evms.iter().filter(|(_, evms)| !evms.is_empty()).map(|(epm, evms)| (epm.clone(), evms.len() as u32)).collect()
}

fn ready(status: &GroupStatus) -> (u32, bool, usize) {
    (status.ready, status.confirmed, status.failures.len())
}

#[tokio::test]
async fn a_group_is_built_on_its_epms_and_confirmed() {
    let (controller, fake, subnet) = lab(4).await;
    let status = controller.apply_group(&group(&subnet, 10), Intent::Create).await.expect("group applied");
    assert_eq!(ready(&status), (10, true, 0), "{:?}", status.failures);
    // Spread: 3, 3, 2, 2 over the four EPMs, as recorded and as built.
    assert_eq!(status.per_epm.values().sum::<u32>(), 10);
    assert_eq!(held(&fake), status.per_epm);
    // Every EPM holding EVMs was given the VPC's router with the subnet.
    let state = fake.state();
    for epm in status.per_epm.keys() {
        let goal = state.goals.get(epm).unwrap_or_else(|| panic!("{epm} got no overlay goal"));
        assert_eq!(goal.vpcs.len(), 1, "{epm}: {goal:?}");
        assert_eq!(goal.vpcs[0].subnets.len(), 1, "{epm}: {goal:?}");
    }
}

#[tokio::test]
async fn scaling_builds_only_what_is_missing_and_deletes_what_leaves() {
    let (controller, fake, subnet) = lab(4).await;
    controller.apply_group(&group(&subnet, 10), Intent::Create).await.expect("created");
    let grown = controller.apply_group(&group(&subnet, 14), Intent::Update).await.expect("grown");
    assert_eq!(ready(&grown), (14, true, 0));
    assert_eq!(fake.state().created, 14, "the ten that stood were not built again");

    let shrunk = controller.apply_group(&group(&subnet, 6), Intent::Update).await.expect("shrunk");
    assert_eq!(ready(&shrunk), (6, true, 0));
    assert_eq!(fake.state().all_evms().len(), 6);
    let (_, read) = controller.read_group("lab", "web").await.expect("read").expect("the group exists");
    assert_eq!((read.ready, read.per_epm), (6, held(&fake)));
}

#[tokio::test]
async fn a_failed_create_stays_unconfirmed_and_the_next_create_finishes_it() {
    let (controller, fake, subnet) = lab(4).await;
    let evms = controller.list_evms("lab", None, None).await.expect("listed");
    assert!(evms.is_empty());
    // The namespaces the group's first two EVMs get (names are pure).
    controller.apply_group(&group(&subnet, 2), Intent::Create).await.expect("probe applied");
    let doomed: Vec<String> = fake.state().all_evms().into_iter().collect();
    controller.delete_group("lab", "web").await.expect("probe deleted");
    fake.state().refused.extend(doomed.iter().cloned());

    let failed = controller.apply_group(&group(&subnet, 10), Intent::Create).await.expect("applied with failures");
    assert_eq!(ready(&failed), (8, false, 2), "{:?}", failed.failures);
    assert!(
        failed.failures.iter().all(|f| doomed.iter().any(|d| f.object.ends_with(d.as_str()))),
        "{:?}",
        failed.failures
    );

    // Terraform's state holds nothing of a failed create: the next apply
    // creates again, adopts the unconfirmed record, builds the two missing.
    fake.state().refused.clear();
    let created_before = fake.state().created;
    let finished = controller.apply_group(&group(&subnet, 10), Intent::Create).await.expect("finished");
    assert_eq!(ready(&finished), (10, true, 0));
    assert_eq!(fake.state().created - created_before, 2);
}

#[tokio::test]
async fn a_create_over_a_confirmed_group_is_refused_with_the_import_to_run() {
    let (controller, fake, subnet) = lab(2).await;
    controller.apply_group(&group(&subnet, 4), Intent::Create).await.expect("created");
    let refused = controller.apply_group(&group(&subnet, 6), Intent::Create).await;
    match refused {
        Err(RuntimeError::Conflict(message)) => {
            assert!(message.contains("terraform import merak_evm_group.NAME lab/blue/web/web"), "{message}")
        }
        other => panic!("a second create was not refused: {other:?}"),
    }
    assert_eq!(fake.state().all_evms().len(), 4, "the refused create changed nothing");
}

#[tokio::test]
async fn an_agent_that_stopped_answering_is_revived_and_gets_its_evms() {
    let (controller, fake, subnet) = lab(4).await;
    fake.state().dead.insert("epm-1".into());
    let status = controller.apply_group(&group(&subnet, 8), Intent::Create).await.expect("applied");
    assert_eq!(ready(&status), (8, true, 0), "{:?}", status.failures);
    assert_eq!(fake.state().revived, ["epm-1"]);
    assert_eq!(held(&fake).get("epm-1"), Some(&2));
}

#[tokio::test]
async fn a_group_is_deleted_even_where_its_agent_is_down() {
    let (controller, fake, subnet) = lab(4).await;
    controller.apply_group(&group(&subnet, 8), Intent::Create).await.expect("created");
    fake.state().dead.insert("epm-2".into());
    controller.delete_group("lab", "web").await.expect("deleted");
    assert!(fake.state().all_evms().is_empty(), "left: {:?}", fake.state().all_evms());
    assert_eq!(fake.state().deleted_without_agent, 2, "epm-2's EVMs went without its agent");
    assert!(controller.read_group("lab", "web").await.expect("read").is_none());
    // The router devices no group needs went from the EPMs that answer.
    let state = fake.state();
    assert!(state.goals.iter().filter(|(epm, _)| *epm != "epm-2").all(|(_, goal)| goal.vpcs.is_empty()));
}

#[tokio::test]
async fn epms_made_anew_get_their_evms_back_in_the_same_topology_apply() {
    let (controller, fake, subnet) = lab(4).await;
    controller.apply_group(&group(&subnet, 8), Intent::Create).await.expect("created");
    let before = held(&fake);
    fake.state().remake.push("epm-0".into());
    let tree = controller.topology_spec("lab").await.expect("read").expect("the topology exists");
    let view = controller.apply_topology(&tree, &[], &[], Intent::Update).await.expect("topology applied");
    assert_eq!(view.status.remade, ["epm-0"]);
    assert!(view.status.failures.is_empty(), "{:?}", view.status.failures);
    assert_eq!(held(&fake), before, "epm-0's EVMs were rebuilt");
    assert!(fake.state().goals.contains_key("epm-0"), "epm-0 got its overlay goal again");
}

#[tokio::test]
async fn a_run_killed_while_building_is_finished_by_the_next() {
    let (controller, fake, subnet) = lab(4).await;
    // An agent that never answers; the run is abandoned (as a kill does)
    // while it waits, after the record says what should exist.
    fake.state().stalled.insert("epm-3".into());
    let eight = group(&subnet, 8);
    let killed = tokio::time::timeout(Duration::from_millis(500), controller.apply_group(&eight, Intent::Create));
    assert!(killed.await.is_err(), "the stalled apply finished");
    let (_, leftover) = controller.read_group("lab", "web").await.expect("read").expect("recorded before building");
    assert!(!leftover.confirmed && leftover.ready < 8, "{leftover:?}");

    fake.state().stalled.clear();
    let finished = controller.apply_group(&group(&subnet, 8), Intent::Create).await.expect("finished");
    assert_eq!(ready(&finished), (8, true, 0), "{:?}", finished.failures);
    assert_eq!(fake.state().all_evms().len(), 8);
}

#[tokio::test]
async fn what_a_runtime_does_not_offer_is_refused_by_name() {
    use crate::runtime::capability::{Capability, Unsupported};
    let (controller, _fake, _subnet) = lab(2).await;
    match controller.check_link_profiles() {
        Err(RuntimeError::Unsupported(refused)) => {
            assert_eq!(refused, Unsupported { capability: Capability::LinkShaping, runtime: "fake" });
            assert!(refused.to_string().contains("on the fake runtime"), "{refused}");
        }
        other => panic!("link shaping was not refused: {other:?}"),
    }
    // The resources name the attribute and take the capability's summary.
    let diagnostic = crate::resources::refusal(
        &["link_profile"],
        "fallback",
        &controller.check_link_profiles().expect_err("still refused"),
    );
    assert_eq!(diagnostic.summary, Capability::LinkShaping.summary());
    assert_eq!(diagnostic.attribute, ["link_profile"]);

    // Faults likewise; with none held, reading and letting go find nothing.
    match controller.check_link_faults() {
        Err(RuntimeError::Unsupported(refused)) => {
            assert_eq!(refused, Unsupported { capability: Capability::LinkFaults, runtime: "fake" });
            assert!(refused.to_string().contains("merak_fault"), "{refused}");
        }
        other => panic!("faults were not refused: {other:?}"),
    }
    assert_eq!(controller.read_fault("lab", "cut").await.expect("read"), None);
    controller.delete_fault("lab", "cut").await.expect("nothing to let go of");
    assert!(controller.faults("lab").await.expect("faults").is_empty());
}

#[tokio::test]
async fn a_ping_without_a_reply_is_sent_once_more_before_it_counts() {
    let (controller, fake, subnet) = lab(2).await;
    controller.apply_group(&group(&subnet, 4), Intent::Create).await.expect("created");
    let evms = controller.list_evms("lab", None, None).await.expect("listed");
    let probe = |from: usize, expect_reply: bool| super::Probe {
        from: (&evms[from]).into(),
        to: evms[(from + 1) % evms.len()].ip,
        to_name: evms[(from + 1) % evms.len()].name.clone(),
        expect_reply,
    };
    let namespace = |i: usize| evms[i].namespace.clone();
    {
        let mut state = fake.state();
        state.unanswered.insert(namespace(0), 1); // one packet lost
        state.unanswered.insert(namespace(1), u32::MAX); // a broken path
        state.unanswered.insert(namespace(2), 1); // must not answer, and does not
    }
    let probes = [probe(0, true), probe(1, true), probe(2, false), probe(3, true)];
    let outcomes = controller.ping("lab", &probes, 100, false).await.expect("pinged");
    assert_eq!(outcomes, vec![Ok(true), Ok(false), Ok(false), Ok(true)]);
    let pings = fake.state().pings.clone();
    let sent = |i: usize| pings.get(&namespace(i)).copied().unwrap_or(0);
    assert_eq!(
        (sent(0), sent(1), sent(2), sent(3)),
        (2, 2, 1, 1),
        "only pings that must get through and did not are sent again, once"
    );
}

fn security_group(name: &str, ingress: &[crate::model::security_group::RuleInput]) -> SecurityGroupSpec {
    SecurityGroupSpec::validate("lab", "blue", name, "", ingress, &[]).expect("a valid security group")
}

/// The firewall EPM `epm` was last given for the VPC.
fn firewall_of(fake: &FakeSubstrate, epm: &str) -> Option<merak_proto::agent::Firewall> {
    fake.state().goals.get(epm).and_then(|goal| goal.vpcs.first()).and_then(|vpc| vpc.firewall.clone())
}

#[tokio::test]
async fn security_groups_reach_every_epm_of_the_vpc_without_rebuilding_evms() {
    use crate::model::security_group::RuleInput;
    let (controller, fake, subnet) = lab(2).await;
    controller.apply_group(&group(&subnet, 4), Intent::Create).await.expect("created");
    assert_eq!(firewall_of(&fake, "epm-0"), None, "a VPC without groups has no firewall");

    let ssh = RuleInput { protocol: "tcp".into(), from_port: Some(22), include_self: true, ..RuleInput::default() };
    controller.apply_security_group(&security_group("ssh", &[ssh])).await.expect("group applied");
    let firewall = firewall_of(&fake, "epm-1").expect("pushed with the group");
    assert!(firewall.enforce);
    // The EVM group names none: the VPC's default group holds its ports.
    assert_eq!(firewall.ports.len(), 1);
    assert_eq!(firewall.ports[0].addresses, ["10.0.1.2-10.0.1.5"]);
    assert_eq!(firewall.ports[0].groups, ["default"]);
    let ssh = firewall.groups.iter().find(|g| g.name == "ssh").expect("the group");
    assert_eq!((ssh.ingress[0].protocol, ssh.ingress[0].from_port, ssh.ingress[0].to_port), (6, 22, 22));
    assert_eq!(ssh.ingress[0].groups, ["ssh"], "self is the group itself");

    // A rule changed: the firewall alone, to every EPM of the VPC.
    let overlays = fake.state().overlays_applied;
    let ssh = RuleInput { protocol: "tcp".into(), from_port: Some(2222), include_self: true, ..RuleInput::default() };
    controller.apply_security_group(&security_group("ssh", std::slice::from_ref(&ssh))).await.expect("rule changed");
    assert_eq!(fake.state().overlays_applied, overlays, "no whole overlay pushed for a rule");
    for epm in ["epm-0", "epm-1"] {
        let firewall = firewall_of(&fake, epm).expect("a firewall");
        let rule = &firewall.groups.iter().find(|g| g.name == "ssh").expect("the group").ingress[0];
        assert_eq!((rule.from_port, rule.to_port), (2222, 2222), "{epm}");
    }
    // An EPM that lost its overlay (a pod made anew) gets it whole.
    fake.state().goals.remove("epm-1");
    let ssh = RuleInput { from_port: Some(22), ..ssh };
    controller.apply_security_group(&security_group("ssh", &[ssh])).await.expect("rule changed back");
    assert_eq!(fake.state().overlays_applied, overlays + 1, "epm-1's whole overlay, and only its");
    assert_eq!(firewall_of(&fake, "epm-1").map(|f| f.groups.len()), Some(2), "epm-1 filters again");

    // Into the group, in place: the same EVMs, new members.
    let created = fake.state().created;
    let mut web = group(&subnet, 4);
    web.security_groups = vec!["ssh".into()];
    controller.apply_group(&web, Intent::Update).await.expect("group joined");
    assert_eq!(fake.state().created, created, "no EVM rebuilt");
    let firewall = firewall_of(&fake, "epm-0").expect("pushed again");
    assert_eq!(firewall.ports[0].groups, ["ssh"]);
    let ssh = firewall.groups.iter().find(|g| g.name == "ssh").expect("the group");
    assert_eq!(ssh.members, ["10.0.1.2-10.0.1.5"]);

    // Refused while used; a group that does not exist cannot be joined.
    let refused = controller.delete_security_group("lab", "blue", "ssh").await.unwrap_err().to_string();
    assert!(refused.contains("EVM group web is still in security group ssh"), "{refused}");
    let mut lost = group(&subnet, 4);
    lost.security_groups = vec!["nope".into()];
    let refused = controller.apply_group(&lost, Intent::Update).await.unwrap_err().to_string();
    assert!(refused.contains("security group nope of VPC blue does not exist"), "{refused}");
    let dangling =
        RuleInput { protocol: "all".into(), group_ids: vec!["lab/blue/nope".into()], ..RuleInput::default() };
    let refused = controller.apply_security_group(&security_group("db", &[dangling])).await.unwrap_err().to_string();
    assert!(refused.contains("names group nope"), "{refused}");

    // Out of the group, then the group gone: the rules are lifted everywhere.
    controller.apply_group(&group(&subnet, 4), Intent::Update).await.expect("group left");
    controller.delete_security_group("lab", "blue", "ssh").await.expect("deleted");
    assert!(controller.read_security_group("lab", "blue", "ssh").await.expect("read").is_none());
    for epm in ["epm-0", "epm-1"] {
        assert_eq!(firewall_of(&fake, epm).map(|f| f.enforce), Some(false), "{epm}");
    }
}

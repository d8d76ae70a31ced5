//! Failures declared as resources (`merak_fault`): which links a fault
//! holds down. A link is named by its two ends, the upper one first
//! (`s0-1--epm-3`, `core-0--agg-1-0`), a name that follows from the
//! topology's spec alone and so is known at plan; either order is accepted.
//! A node fault holds down every link of the node.

use std::collections::{BTreeMap, BTreeSet};

use super::link_profile::{LinkEnd, ROLES, links};
use super::{SpecError, TreeSpec};

/// The separator between a link's two ends in its name.
pub const SEPARATOR: &str = "--";

/// How many valid names a diagnostic suggests.
const SUGGESTED: usize = 4;

/// A link of a topology: its name and its two ends, lower first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedLink {
    pub name: String,
    pub ends: [LinkEnd; 2],
}

/// A link's name: `<upper>--<lower>`.
pub fn link_name(ends: &[LinkEnd; 2]) -> String {
    format!("{}{SEPARATOR}{}", ends[1].object, ends[0].object)
}

/// Every link of the topology, of every role.
pub fn all_links(spec: &TreeSpec) -> Vec<NamedLink> {
    ROLES
        .into_iter()
        .flat_map(|(_, role)| links(spec, role))
        .map(|ends| NamedLink { name: link_name(&ends), ends })
        .collect()
}

/// What a `merak_fault` fails, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSpec {
    pub topology: String,
    pub name: String,
    /// Links by name, in either order of their ends.
    pub links: BTreeSet<String>,
    /// EPMs and switches, every link of each.
    pub nodes: BTreeSet<String>,
}

impl FaultSpec {
    /// The links the fault holds down, by their names, checked against the
    /// topology: every link and node it names must be there.
    pub fn resolve(&self, spec: &TreeSpec) -> Result<BTreeSet<String>, Vec<SpecError>> {
        let all = all_links(spec);
        let by_name: BTreeMap<&str, &NamedLink> = all.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut held = BTreeSet::new();
        let mut errors = Vec::new();
        for wanted in &self.links {
            match canonical(&by_name, wanted) {
                Some(link) => {
                    held.insert(link.name.clone());
                }
                None => errors.push(SpecError::new(
                    "links",
                    "No such link",
                    format!(
                        "Topology {:?} has no link {wanted:?}. A link is named by its two ends, the upper first, e.g. {}.",
                        spec.name,
                        examples(all.iter().map(|l| l.name.as_str()))
                    ),
                )),
            }
        }
        for node in &self.nodes {
            let of_node: Vec<&NamedLink> = all.iter().filter(|l| l.ends.iter().any(|e| &e.object == node)).collect();
            if of_node.is_empty() {
                errors.push(SpecError::new(
                    "nodes",
                    "No such node",
                    format!(
                        "Topology {:?} has no EPM or switch {node:?}; its nodes are named like {}.",
                        spec.name,
                        examples(nodes(&all).iter().map(String::as_str))
                    ),
                ));
            }
            held.extend(of_node.into_iter().map(|l| l.name.clone()));
        }
        if self.links.is_empty() && self.nodes.is_empty() {
            errors.push(SpecError::new(
                "links",
                "Nothing to fail",
                "Name at least one link (links) or node (nodes) for the fault to take down.",
            ));
        }
        if errors.is_empty() { Ok(held) } else { Err(errors) }
    }
}

/// A fault's name: a DNS label, as every name in a topology.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    super::tree::check_label(name, "fault", "core-0-down")
}

/// The link a name means, in either order of its ends.
fn canonical<'a>(by_name: &BTreeMap<&str, &'a NamedLink>, wanted: &str) -> Option<&'a NamedLink> {
    if let Some(link) = by_name.get(wanted) {
        return Some(link);
    }
    let (lower, upper) = wanted.split_once(SEPARATOR)?;
    by_name.get(format!("{upper}{SEPARATOR}{lower}").as_str()).copied()
}

/// Every node that ends a link, switches and EPMs, in link order.
fn nodes(all: &[NamedLink]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    all.iter()
        .flat_map(|l| l.ends.iter().rev())
        .filter(|e| seen.insert(e.object.clone()))
        .map(|e| e.object.clone())
        .collect()
}

fn examples<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.take(SUGGESTED).map(|n| format!("{n:?}")).collect();
    names.join(", ")
}

/// The first link that two faults would both hold, with the other fault's
/// name: a link is held down by one fault at most.
pub fn overlap<'a>(
    held: &BTreeSet<String>,
    others: impl IntoIterator<Item = (&'a str, &'a BTreeSet<String>)>,
) -> Option<(String, &'a str)> {
    others.into_iter().find_map(|(other, links)| held.intersection(links).next().map(|link| (link.clone(), other)))
}

/// Every end of the named links (names not of the topology are skipped:
/// a topology reshaped under a fault no longer has them).
pub fn ends_of<'a>(spec: &TreeSpec, names: impl IntoIterator<Item = &'a String>) -> Vec<LinkEnd> {
    let wanted: BTreeSet<&String> = names.into_iter().collect();
    all_links(spec).into_iter().filter(|l| wanted.contains(&l.name)).flat_map(|l| l.ends).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TreeInput;
    use crate::model::fat_tree::FatTree;

    fn tree() -> TreeSpec {
        TreeSpec::validate(&TreeInput {
            name: "lab",
            racks: 2,
            hosts_per_rack: 2,
            hosts: Some(4),
            ports_per_vswitch: 2,
            data_plane_cidr: "10.0.0.0/24",
        })
        .expect("a valid tree")
    }

    fn fault(links: &[&str], nodes: &[&str]) -> FaultSpec {
        FaultSpec {
            topology: "lab".into(),
            name: "cut".into(),
            links: links.iter().map(|l| l.to_string()).collect(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn every_link_has_one_name_upper_end_first() {
        let names: Vec<String> = all_links(&tree()).into_iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            ["s0-0--epm-0", "s0-0--epm-1", "s0-1--epm-2", "s0-1--epm-3", "s1-0--s0-0", "s1-0--s0-1"],
            "EPM uplinks, then switch uplinks"
        );
    }

    #[test]
    fn a_link_is_found_in_either_order_and_a_node_takes_all_its_links() {
        let held = fault(&["epm-3--s0-1"], &["s0-0"]).resolve(&tree()).expect("valid fault");
        let expected = ["s0-0--epm-0", "s0-0--epm-1", "s0-1--epm-3", "s1-0--s0-0"];
        assert_eq!(held, expected.iter().map(|n| n.to_string()).collect());
        let ends = ends_of(&tree(), &BTreeSet::from(["s0-1--epm-3".to_string()]));
        assert_eq!(
            ends,
            [
                LinkEnd { object: "epm-3".into(), device: "eth1".into() },
                LinkEnd { object: "s0-1".into(), device: crate::model::naming::host_port(3) },
            ]
        );
    }

    #[test]
    fn unknown_links_and_nodes_are_refused_with_names_that_exist() {
        let errors = fault(&["s0-0--epm-3", "nonsense"], &["s7-7"]).resolve(&tree()).expect_err("refused");
        let attributes: Vec<&str> = errors.iter().map(|e| e.attribute).collect();
        assert_eq!(attributes, ["links", "links", "nodes"]);
        assert!(errors[0].detail.contains("\"s0-0--epm-0\""), "{}", errors[0].detail);
        assert!(
            errors[2].detail.contains("\"s0-0\"") && errors[2].detail.contains("\"epm-0\""),
            "{}",
            errors[2].detail
        );
        let empty = fault(&[], &[]).resolve(&tree()).expect_err("refused");
        assert_eq!(empty[0].summary, "Nothing to fail");
    }

    #[test]
    fn a_fat_tree_core_takes_its_links_to_every_pod() {
        let fabric =
            FatTree::validate(4, None, "10.0.0.0/16".parse().expect("a prefix"), None).expect("a valid fat tree");
        let spec = TreeSpec::fat_tree("ft", fabric);
        let held = fault(&[], &["core-0"]).resolve(&spec).expect("valid fault");
        assert_eq!(held.len(), 4, "{held:?}");
        assert!(held.iter().all(|l| l.starts_with("core-0--agg-")), "{held:?}");
    }

    #[test]
    fn two_faults_may_not_hold_one_link() {
        let mine = BTreeSet::from(["a--b".to_string(), "c--d".to_string()]);
        let theirs = BTreeSet::from(["c--d".to_string()]);
        let elsewhere = BTreeSet::from(["e--f".to_string()]);
        assert_eq!(overlap(&mine, [("other", &elsewhere), ("cut", &theirs)]), Some(("c--d".into(), "cut")));
        assert_eq!(overlap(&mine, [("other", &elsewhere)]), None);
    }
}

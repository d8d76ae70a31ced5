//! A picture of a topology, from its spec alone (so it is known at plan):
//! its switches, EPMs and links as a graph, written as Graphviz `dot` or
//! GitHub's Mermaid. Above a size, each rack's EPMs collapse into one node
//! that says how many there are. Links a `link_profile` impairs are drawn
//! dashed and labelled with their impairment.

use std::fmt::Write;

use super::fat_tree::Switch;
use super::link_profile::{LinkProfileSpec, LinkRole};
use super::{Epm, TreeSpec};

/// EPMs drawn one by one up to this many; above it, one node per rack.
pub const DEFAULT_COLLAPSE_ABOVE: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Switch,
    Epm,
    /// A rack's EPMs, collapsed.
    Rack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Unique in the graph, safe in both languages (letters, digits, `_`).
    pub id: String,
    pub label: String,
    pub kind: NodeKind,
}

/// A link, as indexes into `nodes` (parent, child).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// What a `link_profile` does to it, e.g. `40 Mbit/s`.
    pub impairment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Whether racks were collapsed.
    pub collapsed: bool,
}

impl Graph {
    /// The tree of `spec`: switches root first, each EPM (or each rack's
    /// EPMs, when there are more than `collapse_above`) under its top-of-rack switch.
    pub fn of_tree(spec: &TreeSpec, collapse_above: u32, profiles: &[LinkProfileSpec]) -> Graph {
        let impairment = |role: LinkRole| profiles.iter().find(|p| p.role() == Some(role)).map(describe);
        let (epm_link, switch_link) = (impairment(LinkRole::EpmUplink), impairment(LinkRole::SwitchUplink));
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        let mut index_of = std::collections::HashMap::new();
        for switch in spec.vswitches() {
            let name = switch.name();
            let at = nodes.len();
            index_of.insert((switch.level, switch.index), at);
            nodes.push(Node { id: node_id(&name), label: name, kind: NodeKind::Switch });
            if let Some(parent) = switch.parent.and_then(|p| index_of.get(&(switch.level + 1, p))) {
                edges.push(Edge { from: *parent, to: at, impairment: switch_link.clone() });
            }
        }
        let collapsed = spec.hosts > collapse_above;
        if collapsed {
            for rack in 0..spec.racks {
                let first = rack * spec.hosts_per_rack;
                let count = spec.hosts.saturating_sub(first).min(spec.hosts_per_rack);
                if count == 0 {
                    continue;
                }
                let at = nodes.len();
                let label = format!("rack {rack}: {count} EPMs (epm-{first} to epm-{})", first + count - 1);
                nodes.push(Node { id: format!("rack_{rack}"), label, kind: NodeKind::Rack });
                if let Some(tor) = index_of.get(&(0, rack)) {
                    edges.push(Edge { from: *tor, to: at, impairment: epm_link.clone() });
                }
            }
        } else {
            for epm in spec.epms() {
                let at = nodes.len();
                nodes.push(Node {
                    id: node_id(&epm.name),
                    label: format!("{}\n{}", epm.name, epm.ip),
                    kind: NodeKind::Epm,
                });
                if let Some(tor) = index_of.get(&(0, epm.rack)) {
                    edges.push(Edge { from: *tor, to: at, impairment: epm_link.clone() });
                }
            }
        }
        Graph { nodes, edges, collapsed }
    }

    /// The fat tree of `spec`: core, aggregation and edge switches, each
    /// EPM (or each edge switch's EPMs, above `collapse_above`) under its
    /// edge, and a tree's graph for anything else.
    pub fn of(spec: &TreeSpec, collapse_above: u32, profiles: &[LinkProfileSpec]) -> Graph {
        let Some(fabric) = &spec.fabric else { return Graph::of_tree(spec, collapse_above, profiles) };
        let impairment = |role: LinkRole| profiles.iter().find(|p| p.role() == Some(role)).map(describe);
        let mut nodes = Vec::new();
        let mut index_of = std::collections::HashMap::new();
        for switch in fabric.switches() {
            let name = switch.name();
            index_of.insert(switch, nodes.len());
            nodes.push(Node { id: node_id(&name), label: name, kind: NodeKind::Switch });
        }
        let mut edges = Vec::new();
        for link in fabric.fabric_links() {
            let role = if matches!(link.lower, Switch::Edge { .. }) {
                LinkRole::EdgeAggregation
            } else {
                LinkRole::AggregationCore
            };
            edges.push(Edge { from: index_of[&link.upper], to: index_of[&link.lower], impairment: impairment(role) });
        }
        let uplink = impairment(LinkRole::EpmUplink);
        let collapsed = spec.hosts > collapse_above;
        let mut epms_of: std::collections::BTreeMap<Switch, Vec<Epm>> = std::collections::BTreeMap::new();
        for epm in spec.epms() {
            epms_of.entry(fabric.host_port(epm.index).edge).or_default().push(epm);
        }
        for (edge, epms) in epms_of {
            let under = index_of[&edge];
            if collapsed {
                let (first, last) = (&epms[0].name, &epms[epms.len() - 1].name);
                let label = format!("{}: {} EPMs ({first} to {last})", edge.name(), epms.len());
                edges.push(Edge { from: under, to: nodes.len(), impairment: uplink.clone() });
                nodes.push(Node { id: format!("rack_{}", node_id(&edge.name())), label, kind: NodeKind::Rack });
                continue;
            }
            for epm in epms {
                edges.push(Edge { from: under, to: nodes.len(), impairment: uplink.clone() });
                nodes.push(Node {
                    id: node_id(&epm.name),
                    label: format!("{}\n{}", epm.name, epm.ip),
                    kind: NodeKind::Epm,
                });
            }
        }
        Graph { nodes, edges, collapsed }
    }

    /// Graphviz, top to bottom: switches as boxes, EPMs as ellipses, racks as folders.
    pub fn dot(&self, title: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "graph {} {{", quoted(title));
        let _ = writeln!(out, "  rankdir=TB;\n  node [fontname=\"Helvetica\"];");
        for node in &self.nodes {
            let shape = match node.kind {
                NodeKind::Switch => "box",
                NodeKind::Epm => "ellipse",
                NodeKind::Rack => "folder",
            };
            let _ = writeln!(out, "  {} [label={}, shape={shape}];", node.id, quoted(&node.label.replace('\n', "\\n")));
        }
        for edge in &self.edges {
            let (from, to) = (&self.nodes[edge.from].id, &self.nodes[edge.to].id);
            let _ = match &edge.impairment {
                Some(what) => writeln!(
                    out,
                    "  {from} -- {to} [label={}, style=dashed, color=\"#c0392b\", fontcolor=\"#c0392b\"];",
                    quoted(what)
                ),
                None => writeln!(out, "  {from} -- {to};"),
            };
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid in the form GitHub renders: `graph TD`, every label quoted.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("graph TD\n");
        for node in &self.nodes {
            let label = node.label.replace('"', "'").replace('\n', "<br/>");
            let _ = match node.kind {
                NodeKind::Switch => writeln!(out, "  {}[\"{label}\"]", node.id),
                NodeKind::Epm => writeln!(out, "  {}([\"{label}\"])", node.id),
                NodeKind::Rack => writeln!(out, "  {}[[\"{label}\"]]", node.id),
            };
        }
        for edge in &self.edges {
            let (from, to) = (&self.nodes[edge.from].id, &self.nodes[edge.to].id);
            let _ = match &edge.impairment {
                Some(what) => writeln!(out, "  {from} ---|\"{}\"| {to}", what.replace('"', "'")),
                None => writeln!(out, "  {from} --- {to}"),
            };
        }
        out
    }
}

/// A profile in words: `40 Mbit/s, 5 ms ± 1 ms, 0.1 % loss`.
fn describe(profile: &LinkProfileSpec) -> String {
    let mut parts = Vec::new();
    if let Some(rate) = profile.rate_mbit {
        parts.push(format!("{rate} Mbit/s"));
    }
    match (profile.delay_ms, profile.jitter_ms) {
        (Some(delay), Some(jitter)) => parts.push(format!("{delay} ms ± {jitter} ms")),
        (Some(delay), None) => parts.push(format!("{delay} ms")),
        (None, Some(jitter)) => parts.push(format!("± {jitter} ms")),
        (None, None) => {}
    }
    if let Some(loss) = profile.loss_percent {
        parts.push(format!("{loss} % loss"));
    }
    parts.join(", ")
}

/// Names like `epm-3` and `s1-0` as identifiers: `epm_3`, `s1_0`.
fn node_id(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// A dot string: quoted, with quotes and backslashes escaped (but `\n`
/// line breaks kept).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' if chars.peek() == Some(&'n') => out.push('\\'),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TreeInput;

    fn tree(racks: i64, hosts_per_rack: i64, hosts: Option<i64>) -> TreeSpec {
        let input = TreeInput {
            name: "lab",
            racks,
            hosts_per_rack,
            hosts,
            ports_per_vswitch: 4,
            data_plane_cidr: "10.0.0.0/16",
        };
        TreeSpec::validate(&input).expect("a valid tree")
    }

    #[test]
    fn nodes_and_edges_are_the_topologys_switches_epms_and_links() {
        for (racks, per_rack, hosts) in [(2, 3, None), (9, 4, Some(34)), (1, 1, None)] {
            let spec = tree(racks, per_rack, hosts);
            let graph = Graph::of_tree(&spec, DEFAULT_COLLAPSE_ABOVE, &[]);
            assert_eq!(graph.nodes.len() as u64, spec.vswitch_count() + u64::from(spec.hosts));
            assert_eq!(graph.edges.len() as u64, spec.link_count());
            assert!(!graph.collapsed);
        }
    }

    #[test]
    fn big_topologies_collapse_to_one_node_per_rack() {
        let spec = tree(10, 10, Some(95));
        let graph = Graph::of_tree(&spec, 64, &[]);
        assert!(graph.collapsed);
        let racks: Vec<&Node> = graph.nodes.iter().filter(|n| n.kind == NodeKind::Rack).collect();
        assert_eq!(racks.len(), 10);
        assert_eq!(racks[9].label, "rack 9: 5 EPMs (epm-90 to epm-94)");
        assert_eq!(graph.edges.len() as u64, spec.vswitch_count() - 1 + 10);
    }

    #[test]
    fn a_fat_tree_is_drawn_level_by_level() {
        let fabric = crate::model::fat_tree::FatTree::validate(4, None, "10.0.0.0/24".parse().unwrap(), None).unwrap();
        let spec = TreeSpec::fat_tree("lab", fabric);
        let core = LinkProfileSpec {
            role: "aggregation_core".into(),
            rate_mbit: Some(100.0),
            delay_ms: None,
            jitter_ms: None,
            loss_percent: None,
        };
        let graph = Graph::of(&spec, DEFAULT_COLLAPSE_ABOVE, std::slice::from_ref(&core));
        assert_eq!((graph.nodes.len(), graph.edges.len()), (20 + 16, 32 + 16));
        assert_eq!(graph.edges.iter().filter(|e| e.impairment.is_some()).count(), 16, "the aggregation-core links");
        assert!(graph.dot("lab").contains("core_0 -- agg_0_0 [label=\"100 Mbit/s\""), "{}", graph.dot("lab"));
        let collapsed = Graph::of(&spec, 8, &[]);
        assert_eq!(collapsed.nodes.iter().filter(|n| n.kind == NodeKind::Rack).count(), 8, "one node per edge switch");
        assert!(collapsed.nodes.iter().any(|n| n.label == "edge-3-1: 2 EPMs (epm-14 to epm-15)"));
    }

    #[test]
    fn impaired_links_are_dashed_and_labelled() {
        let profile = LinkProfileSpec {
            role: "epm_uplink".into(),
            rate_mbit: Some(40.0),
            delay_ms: Some(5.0),
            jitter_ms: Some(1.0),
            loss_percent: Some(0.1),
        };
        let spec = tree(2, 2, None);
        let graph = Graph::of_tree(&spec, DEFAULT_COLLAPSE_ABOVE, std::slice::from_ref(&profile));
        let impaired = graph.edges.iter().filter(|e| e.impairment.is_some()).count();
        assert_eq!(impaired, 4, "the four EPM uplinks, not the switch links");
        let dot = graph.dot("lab");
        assert!(dot.contains("s0_0 -- epm_0 [label=\"40 Mbit/s, 5 ms ± 1 ms, 0.1 % loss\", style=dashed"), "{dot}");
        let mermaid = graph.mermaid();
        assert!(mermaid.contains("  s0_0 ---|\"40 Mbit/s, 5 ms ± 1 ms, 0.1 % loss\"| epm_0"), "{mermaid}");
    }

    #[test]
    fn both_languages_quote_their_labels() {
        let graph = Graph::of_tree(&tree(2, 2, None), DEFAULT_COLLAPSE_ABOVE, &[]);
        let dot = graph.dot("lab \"x\"");
        assert!(
            dot.starts_with("graph \"lab \\\"x\\\"\" {")
                && dot.contains("epm_0 [label=\"epm-0\\n10.0.0.1\", shape=ellipse];"),
            "{dot}"
        );
        assert!(dot.contains("s1_0 -- s0_1;"), "{dot}");
        let mermaid = graph.mermaid();
        assert!(
            mermaid.starts_with("graph TD\n")
                && mermaid.contains("  epm_0([\"epm-0<br/>10.0.0.1\"])")
                && mermaid.contains("  s0_0 --- epm_1"),
            "{mermaid}"
        );
    }
}

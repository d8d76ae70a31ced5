//! Reaching a running topology's nodes by the names its plan gave them, for
//! the `merak` command: an EPM (`epm-3`), a switch (`s0-1`, `core-0`) or an
//! EVM (`web-7`, as `merak_evms` lists it), each found through the agent
//! that can enter its namespace; and the topology's state at a glance.

use merak_proto::agent::operate_client::OperateClient;

use super::goals::evms;
use super::{Controller, GroupStatus, TopologyView};
use crate::model::TreeSpec;
use crate::model::overlay::GroupSpec;
use crate::runtime::agent_client::AgentChannel;
use crate::runtime::{NodeRoute, RuntimeError};

/// What kind of node a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Epm,
    Switch,
    Evm,
}

/// A node found by name: what it is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// On an EVM: the EPM it lives on.
    pub epm: Option<String>,
    pub route: NodeRoute,
}

/// A topology at a glance: its underlay, and every EVM group.
#[derive(Debug, Clone)]
pub struct Overview {
    pub runtime: &'static str,
    pub topology: TopologyView,
    pub switches: Vec<String>,
    pub groups: Vec<(GroupSpec, GroupStatus)>,
}

impl Controller {
    /// The node of `topology` named `name`; an error that names the nodes
    /// there are when there is none.
    pub async fn node(&self, topology: &str, name: &str) -> Result<Node, RuntimeError> {
        let tree = self.existing_tree(topology).await?;
        let route = |node: &str| self.substrate.node_route(topology, &tree, node);
        if tree.epms().any(|epm| epm.name == name) {
            return Ok(Node { name: name.into(), kind: NodeKind::Epm, epm: None, route: route(name) });
        }
        if tree.switch_names().iter().any(|switch| switch == name) {
            return Ok(Node { name: name.into(), kind: NodeKind::Switch, epm: None, route: route(name) });
        }
        let record = self.load_overlay(topology).await?;
        // An EVM is `<group>-<k>`; a group's name may hold '-' itself.
        let group = name.rsplit_once('-').and_then(|(group, _)| record.groups.get(group).map(|g| (group, g)));
        if let Some((group_name, group)) = group
            && let Some(evm) = evms(&tree, &record, group_name, group)?.into_iter().find(|e| e.info.name == name)
        {
            let agent = evm.info.epm.clone();
            return Ok(Node {
                name: name.into(),
                kind: NodeKind::Evm,
                epm: Some(evm.info.epm),
                route: NodeRoute { agent, namespace: evm.info.namespace },
            });
        }
        let groups: Vec<String> = record.groups.keys().map(|g| format!("{g}-<k>")).collect();
        Err(RuntimeError::Conflict(format!(
            "topology {topology} has no node {name}: its nodes are {}{}{}",
            span(&tree.epms().map(|e| e.name).collect::<Vec<_>>()),
            match tree.switch_names().as_slice() {
                [] => String::new(),
                switches => format!(", switches {}", span(switches)),
            },
            if groups.is_empty() {
                String::new()
            } else {
                format!(" and the EVMs of groups named {} (see the merak_evms data source)", groups.join(", "))
            },
        )))
    }

    /// A client of the Operate service of the agent that reaches `route`.
    pub async fn operate(
        &self,
        topology: &str,
        route: &NodeRoute,
    ) -> Result<OperateClient<AgentChannel>, RuntimeError> {
        let channel = self.substrate.agent_channel(topology, &route.agent).await?;
        Ok(OperateClient::new(channel).max_decoding_message_size(4 << 20))
    }

    /// The topology as it stands and each of its EVM groups.
    pub async fn overview(&self, topology: &str) -> Result<Overview, RuntimeError> {
        let view = self.read_topology(topology).await?.ok_or_else(|| missing(topology))?;
        let record = self.load_overlay(topology).await?;
        let mut groups = Vec::new();
        for name in record.groups.keys() {
            if let Some(group) = self.read_group(topology, name).await? {
                groups.push(group);
            }
        }
        Ok(Overview {
            runtime: self.substrate.runtime_name(),
            switches: view.spec.switch_names(),
            topology: view,
            groups,
        })
    }

    async fn existing_tree(&self, topology: &str) -> Result<TreeSpec, RuntimeError> {
        self.substrate.topology_spec(topology).await?.ok_or_else(|| missing(topology))
    }
}

fn missing(topology: &str) -> RuntimeError {
    RuntimeError::Conflict(format!("there is no topology {topology} in this runtime's records"))
}

/// `epm-0 … epm-15` for a run of names, or the names themselves when few.
fn span(names: &[String]) -> String {
    match names {
        [] => "none".into(),
        [first, .., last] if names.len() > 4 => format!("{first} … {last}"),
        _ => names.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn long_runs_of_names_are_shown_by_their_ends() {
        let names: Vec<String> = (0..16).map(|i| format!("epm-{i}")).collect();
        assert_eq!(span(&names), "epm-0 … epm-15");
        assert_eq!(span(&names[..3]), "epm-0, epm-1, epm-2");
        assert_eq!(span(&[]), "none");
    }
}

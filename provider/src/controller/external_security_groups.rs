//! Security groups of external VPCs: the user's controller enforces them,
//! so it is told the groups (`/v1/security-groups`) and each port's groups
//! (`Port.security_groups`), in the order Neutron hands them to its
//! drivers: a group before any port in it, ports out of a group before it
//! is deleted. Nothing of merak's filters these VPCs' traffic.

use super::Controller;
use super::goals::{Evm, evms};
use super::port_api::{SecurityGroup, SecurityRule};
use super::records::{OverlayRecord, SecurityGroupRecord};
use crate::model::TreeSpec;
use crate::model::ranges::Ranges;
use crate::model::security_group::{self, DEFAULT_GROUP, Rule, default_rules};
use crate::runtime::RuntimeError;

fn rule(rule: &Rule, own_group: &str) -> SecurityRule {
    let mut remote_groups = rule.groups.clone();
    if rule.include_self {
        remote_groups.push(own_group.to_string());
    }
    SecurityRule {
        protocol: rule.protocol.name(),
        protocol_number: rule.protocol.number(),
        from_port: rule.from_port,
        to_port: rule.ports().map(|(_, to)| to),
        cidr_blocks: rule.cidr_blocks.clone(),
        remote_groups,
    }
}

/// A group as the controller gets it.
fn document(
    topology: &str,
    vpc: &str,
    name: &str,
    description: &str,
    ingress: &[Rule],
    egress: &[Rule],
) -> SecurityGroup {
    SecurityGroup {
        id: security_group::id(topology, vpc, name),
        topology: topology.into(),
        vpc: vpc.into(),
        name: name.into(),
        description: description.into(),
        ingress: ingress.iter().map(|r| rule(r, name)).collect(),
        egress: egress.iter().map(|r| rule(r, name)).collect(),
    }
}

/// The VPC's implicit group: egress anywhere, ingress from its members.
fn default_document(topology: &str, vpc: &str) -> SecurityGroup {
    let (ingress, egress) = default_rules();
    document(topology, vpc, DEFAULT_GROUP, "the VPC's implicit group", &ingress, &egress)
}

fn first_refusal(outcomes: Vec<(String, Result<(), String>)>, doing: &str) -> Result<(), RuntimeError> {
    match outcomes.into_iter().find_map(|(id, outcome)| outcome.err().map(|e| (id, e))) {
        None => Ok(()),
        Some((id, error)) => Err(RuntimeError::Unavailable(format!("the controller did not {doing} {id}: {error}"))),
    }
}

impl Controller {
    /// Sends the group, with the VPC's `default`, then every port of the
    /// VPC whose groups this changed (the VPC's first group puts every
    /// port in `default`).
    pub(super) async fn tell_security_group(
        &self,
        tree: &TreeSpec,
        record: &mut OverlayRecord,
        group: &SecurityGroupRecord,
    ) -> Result<(), RuntimeError> {
        let network = self.network_or_refuse(&group.vpc)?;
        let documents = vec![
            default_document(&tree.name, &group.vpc),
            document(&tree.name, &group.vpc, &group.name, &group.description, &group.ingress, &group.egress),
        ];
        first_refusal(network.put_security_groups(documents).await, "take security group")?;
        self.regroup_ports(tree, record, &group.vpc).await
    }

    /// Takes the ports out of a group that `record` no longer has (out of
    /// every group, when it was the VPC's last), then deletes it (and the
    /// VPC's `default` with the last).
    pub(super) async fn untell_security_group(
        &self,
        tree: &TreeSpec,
        record: &mut OverlayRecord,
        vpc: &str,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let network = self.network_or_refuse(vpc)?;
        self.regroup_ports(tree, record, vpc).await?;
        let mut ids = vec![security_group::id(&tree.name, vpc, name)];
        if !record.security_groups.values().any(|g| g.vpc == vpc) {
            ids.push(security_group::id(&tree.name, vpc, DEFAULT_GROUP));
        }
        first_refusal(network.delete_security_groups(ids).await, "delete security group")
    }

    /// Sends again, with their groups now, the ports the controller holds
    /// in other groups; records what it accepted.
    async fn regroup_ports(&self, tree: &TreeSpec, record: &mut OverlayRecord, vpc: &str) -> Result<(), RuntimeError> {
        let stale: Vec<String> = record
            .groups
            .iter()
            .filter(|(_, g)| g.vpc == vpc && g.announced_groups != record.port_security_groups(g))
            .map(|(name, _)| name.clone())
            .collect();
        let mut failures = Vec::new();
        for name in stale {
            let Some(group) = record.groups.get(&name).cloned() else { continue };
            let all = evms(tree, record, &name, &group)?;
            let held: Vec<&Evm> = all.iter().filter(|e| group.announced.contains(e.host_index)).collect();
            let (accepted, refused) = self.announce(tree, record, vpc, &held).await?;
            failures.extend(refused);
            let port_groups = record.port_security_groups(&group);
            if let Some(saved) = record.groups.get_mut(&name) {
                saved.announced = Ranges::from_indexes(accepted);
                saved.announced_groups = port_groups;
            }
        }
        match failures.first() {
            None => Ok(()),
            Some(failure) => Err(RuntimeError::Unavailable(format!(
                "{} ports were not moved to their new security groups, first {}: {}",
                failures.len(),
                failure.object,
                failure.error
            ))),
        }
    }
}

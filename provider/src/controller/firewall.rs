//! The firewall every EPM enforces in a VPC's router namespace, from the
//! tenant record alone: the VPC's security groups with their rules and
//! members, and each EVM group's addresses with the groups its ports are in
//! (the implicit `default` for groups naming none). Every EPM of the VPC
//! gets the same one; what it holds grows with EVM groups and rules, not
//! with EVMs (a group's addresses are a few ranges).

use std::collections::HashMap;

use merak_proto::agent::{Firewall, PortSet, SecurityGroup, SecurityRule};

use super::records::{OverlayRecord, subnet_key};
use crate::model::security_group::{DEFAULT_GROUP, Rule, VpcPolicy, default_rules};
use crate::runtime::RuntimeError;

/// `None` for a VPC that never had a security group (its agents leave the
/// firewall alone); not enforced once its last group is gone.
pub(super) fn firewall(topology: &str, record: &OverlayRecord, vpc: &str) -> Result<Option<Firewall>, RuntimeError> {
    if !record.vpcs.get(vpc).is_some_and(|v| v.firewalled) {
        return Ok(None);
    }
    let declared: Vec<_> = record.security_groups.values().filter(|g| g.vpc == vpc).collect();
    if declared.is_empty() {
        return Ok(Some(Firewall { enforce: false, ..Firewall::default() }));
    }
    let mut members: HashMap<&str, Vec<String>> = HashMap::new();
    let mut ports = Vec::new();
    for (name, group) in record.groups.iter().filter(|(_, g)| g.vpc == vpc) {
        let subnet = record
            .subnets
            .get(&subnet_key(vpc, &group.subnet))
            .ok_or_else(|| RuntimeError::Conflict(format!("subnet {} of group {name} is gone", group.subnet)))?
            .spec(topology)?;
        let addresses: Vec<String> = group
            .ranges
            .0
            .iter()
            .filter(|(_, len)| *len > 0)
            .filter_map(|&(start, len)| {
                Some(format!("{}-{}", subnet.cidr.host(start)?, subnet.cidr.host(start + len - 1)?))
            })
            .collect();
        let groups = match group.security_groups.is_empty() {
            true => vec![DEFAULT_GROUP.to_string()],
            false => group.security_groups.clone(),
        };
        for in_group in &group.security_groups {
            members.entry(in_group).or_default().extend(addresses.iter().cloned());
        }
        if group.security_groups.is_empty() {
            members.entry(DEFAULT_GROUP).or_default().extend(addresses.iter().cloned());
        }
        ports.push(PortSet { name: name.clone(), addresses, groups });
    }
    let mut groups: Vec<SecurityGroup> = declared
        .iter()
        .map(|group| SecurityGroup {
            name: group.name.clone(),
            ingress: group.ingress.iter().map(|r| rule(r, &group.name)).collect(),
            egress: group.egress.iter().map(|r| rule(r, &group.name)).collect(),
            members: members.remove(group.name.as_str()).unwrap_or_default(),
        })
        .collect();
    let (ingress, egress) = default_rules();
    groups.push(SecurityGroup {
        name: DEFAULT_GROUP.into(),
        ingress: ingress.iter().map(|r| rule(r, DEFAULT_GROUP)).collect(),
        egress: egress.iter().map(|r| rule(r, DEFAULT_GROUP)).collect(),
        members: members.remove(DEFAULT_GROUP).unwrap_or_default(),
    });
    Ok(Some(Firewall { enforce: true, groups, ports }))
}

fn rule(rule: &Rule, own_group: &str) -> SecurityRule {
    let (from_port, to_port) = rule.ports().map_or((0, 0), |(from, to)| (u32::from(from), u32::from(to)));
    let mut groups = rule.groups.clone();
    if rule.include_self && !groups.iter().any(|g| g == own_group) {
        groups.push(own_group.into());
    }
    SecurityRule {
        protocol: u32::from(rule.protocol.number()),
        from_port,
        to_port,
        cidrs: rule.cidr_blocks.clone(),
        groups,
    }
}

/// What the VPC's security groups allow, for checking traffic against
/// them (by merak, or in an external VPC by the user's controller);
/// `None` when nothing is enforced there.
pub(super) fn policy(record: &OverlayRecord, vpc: &str) -> Option<VpcPolicy> {
    let declared: Vec<_> = record.security_groups.values().filter(|g| g.vpc == vpc).collect();
    if declared.is_empty() {
        return None;
    }
    let mut rules: HashMap<String, (Vec<Rule>, Vec<Rule>)> =
        declared.iter().map(|g| (g.name.clone(), (g.ingress.clone(), g.egress.clone()))).collect();
    rules.insert(DEFAULT_GROUP.into(), default_rules());
    let membership = record
        .groups
        .iter()
        .filter(|(_, g)| g.vpc == vpc)
        .map(|(name, g)| {
            let groups =
                if g.security_groups.is_empty() { vec![DEFAULT_GROUP.into()] } else { g.security_groups.clone() };
            (name.clone(), groups)
        })
        .collect();
    Some(VpcPolicy { rules, membership })
}

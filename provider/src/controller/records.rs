//! The controller's record of a topology's tenant networks (VPCs, subnets,
//! EVM groups) and what follows from it alone, without I/O: every EVM of a
//! group with its devices, and each EPM's overlay goal.

use std::collections::{BTreeMap, HashMap};

use merak_agent::netdev;
use merak_proto::agent::{EvmSpec, OverlayGoal, SubnetGoal, VpcGoal};
use serde::{Deserialize, Serialize};

use super::EvmInfo;
use crate::model::overlay::{self, DeviceModel, GroupSpec, Placement, Ranges, SubnetSpec};
use crate::model::{Epm, TreeSpec, naming};
use crate::runtime::RuntimeError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverlayRecord {
    pub(super) next_id: u32,
    pub(super) vpcs: BTreeMap<String, VpcRecord>,
    /// Keyed `vpc/subnet`.
    pub(super) subnets: BTreeMap<String, SubnetRecord>,
    /// Keyed by group name (unique in the topology: it names EVM namespaces).
    pub(super) groups: BTreeMap<String, GroupRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VpcRecord {
    pub(super) cidr: String,
    pub(super) vni: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SubnetRecord {
    pub(super) vpc: String,
    pub(super) name: String,
    pub(super) cidr: String,
    pub(super) gateway: String,
    pub(super) vni: u32,
    pub(super) id: u32,
    /// One past the highest host index any EVM ever had here: below it, an
    /// address may have lived on another EPM (see push_overlay's `forget`).
    #[serde(default)]
    pub(super) used_below: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct GroupRecord {
    pub(super) vpc: String,
    pub(super) subnet: String,
    pub(super) count: u32,
    pub(super) placement: String,
    pub(super) epms: Vec<String>,
    /// The EPMs the group was placed on when created (its `epms`, or every
    /// EPM then): growing the topology later must not move its EVMs.
    #[serde(default)]
    pub(super) placed_on: Vec<String>,
    #[serde(default = "veth")]
    pub(super) device_model: String,
    pub(super) id: u32,
    pub(super) ranges: Ranges,
    /// Placement by counts: the counts as configured, and which EVM
    /// indexes each EPM holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) counts: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) slots: BTreeMap<String, Ranges>,
    /// A create of the group succeeded (records from before this field
    /// existed were made by successful creates). An unconfirmed group, left
    /// by a create that failed or was interrupted, is adopted by the next
    /// create and deleted with its subnet.
    #[serde(default = "confirmed")]
    pub(super) confirmed: bool,
}

fn confirmed() -> bool {
    true
}

impl OverlayRecord {
    /// EVMs of all groups.
    pub fn evm_count(&self) -> u64 {
        self.groups.values().map(|g| u64::from(g.count)).sum()
    }

    /// EVMs in the most populated subnet.
    pub fn largest_subnet(&self) -> u64 {
        let mut per_subnet: HashMap<(&str, &str), u64> = HashMap::new();
        for group in self.groups.values() {
            *per_subnet.entry((&group.vpc, &group.subnet)).or_default() += u64::from(group.count);
        }
        per_subnet.into_values().max().unwrap_or(0)
    }
}

fn veth() -> String {
    "veth".into()
}

pub(super) fn subnet_key(vpc: &str, subnet: &str) -> String {
    format!("{vpc}/{subnet}")
}

impl SubnetRecord {
    pub(super) fn spec(&self, topology: &str) -> Result<SubnetSpec, RuntimeError> {
        let corrupt = || RuntimeError::Conflict(format!("the record of subnet {} is unreadable", self.name));
        Ok(SubnetSpec {
            topology: topology.into(),
            vpc: self.vpc.clone(),
            name: self.name.clone(),
            cidr: self.cidr.parse().map_err(|_| corrupt())?,
            gateway: self.gateway.parse().map_err(|_| corrupt())?,
            vni: self.vni,
        })
    }
}

impl GroupRecord {
    pub(super) fn placement_epms(&self) -> &[String] {
        if self.placed_on.is_empty() { &self.epms } else { &self.placed_on }
    }

    /// Each EVM's index and EPM, in index order.
    pub(super) fn layout(&self, tree: &TreeSpec, name: &str) -> Result<Vec<(u32, Epm)>, RuntimeError> {
        if self.placement == "counts" {
            let mut layout = Vec::with_capacity(self.count as usize);
            for (epm_name, held) in &self.slots {
                let epm = epm_named(tree, epm_name)?;
                layout.extend(held.iter().map(|k| (k as u32, epm.clone())));
            }
            layout.sort_unstable_by_key(|(k, _)| *k);
            return Ok(layout);
        }
        let spec = self.spec(&tree.name, name);
        let candidates = candidates(tree, self.placement_epms())?;
        Ok((0..self.count).filter_map(|k| Some((k, candidates.get(spec.epm_of(k, candidates.len())?)?.clone()))).collect())
    }

    /// EVMs per EPM, by name, as the resource reports them.
    pub(super) fn per_epm(&self, evms: &[Evm]) -> BTreeMap<String, u32> {
        if self.placement == "counts" {
            return self.counts.clone();
        }
        let mut per_epm = BTreeMap::new();
        for evm in evms {
            *per_epm.entry(evm.info.epm.clone()).or_insert(0) += 1;
        }
        per_epm
    }

    pub(super) fn spec(&self, topology: &str, name: &str) -> GroupSpec {
        GroupSpec {
            topology: topology.into(),
            vpc: self.vpc.clone(),
            subnet: self.subnet.clone(),
            name: name.into(),
            count: self.count,
            placement: match self.placement.as_str() {
                "pack" => Placement::Pack,
                "counts" => Placement::Counts(self.counts.clone()),
                _ => Placement::Spread,
            },
            epms: self.epms.clone(),
            device_model: if self.device_model == "hybrid" { DeviceModel::Hybrid } else { DeviceModel::Veth },
        }
    }
}

/// Per subnet (keyed `vpc/subnet`), MAC ranges whose learned locations the
/// EPMs drop before EVMs with them are created.
pub(super) type Forget = HashMap<String, Vec<String>>;

/// One EVM as the runtime builds it.
pub(super) struct Evm {
    pub(super) info: EvmInfo,
    pub(super) epm_index: u32,
    /// Its address's host index in the subnet.
    pub(super) host_index: u64,
    pub(super) spec: EvmSpec,
}

/// The EPMs a group may use, in placement order.
pub(super) fn candidates(tree: &TreeSpec, names: &[String]) -> Result<Vec<Epm>, RuntimeError> {
    if names.is_empty() {
        return Ok(tree.epms().collect());
    }
    names.iter().map(|name| epm_named(tree, name)).collect()
}

pub(super) fn epm_named(tree: &TreeSpec, name: &str) -> Result<Epm, RuntimeError> {
    tree.epms()
        .find(|epm| epm.name == name)
        .ok_or_else(|| RuntimeError::Conflict(format!("EPM {name:?} is not in topology {}", tree.name)))
}

/// Every EVM of a group, in index order.
pub(super) fn evms(tree: &TreeSpec, record: &OverlayRecord, name: &str, group: &GroupRecord) -> Result<Vec<Evm>, RuntimeError> {
    let subnet = record
        .subnets
        .get(&subnet_key(&group.vpc, &group.subnet))
        .ok_or_else(|| RuntimeError::Conflict(format!("subnet {} of group {name} is gone", group.subnet)))?;
    let subnet_spec = subnet.spec(&tree.name)?;
    let device_model = group.spec(&tree.name, name).device_model;
    let mut evms = Vec::with_capacity(group.count as usize);
    for (k, epm) in group.layout(tree, name)? {
        let Some((index, ip)) = group.ranges.index_of(u64::from(k)).and_then(|i| Some((i, subnet_spec.cidr.host(i)?))) else { break };
        let namespace = naming::evm_namespace(&tree.name, name, k);
        let mac = overlay::evm_mac(ip);
        evms.push(Evm {
            epm_index: epm.index,
            host_index: index,
            spec: EvmSpec {
                namespace: namespace.clone(),
                router_namespace: naming::router_namespace(&tree.name, &epm.name, &group.vpc),
                bridge: naming::subnet_bridge(subnet.id),
                host_port: match device_model {
                    DeviceModel::Veth => naming::evm_port(group.id, k),
                    DeviceModel::Hybrid => naming::hybrid_port(group.id, k),
                },
                address: format!("{ip}/{}", subnet_spec.cidr.prefix_len()),
                mac: netdev::format_mac(&mac),
                gateway: subnet_spec.gateway.to_string(),
                gateway_mac: netdev::format_mac(&overlay::gateway_mac(epm.index)),
                device_model: device_model.name().into(),
            },
            info: EvmInfo {
                name: naming::evm_name(name, k),
                group: name.into(),
                vpc: group.vpc.clone(),
                subnet: group.subnet.clone(),
                epm: epm.name.clone(),
                ip,
                mac,
                namespace,
            },
        });
    }
    Ok(evms)
}

/// Every EPM's overlay goal: the VPCs with EVMs on it, each with all its
/// subnets (routing between them is local, so a subnet's gateway must be
/// wherever its VPC is), each subnet flooding only to the other EPMs that
/// hold EVMs of that subnet.
pub(super) fn overlay_goals(tree: &TreeSpec, record: &OverlayRecord, forget: &Forget) -> Result<Vec<(Epm, OverlayGoal)>, RuntimeError> {
    // EPM indexes holding EVMs, per VPC and per subnet.
    let mut vpc_hosts: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut subnet_hosts: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
    for (name, group) in &record.groups {
        let used: Vec<u32> = match group.placement.as_str() {
            "counts" => group.slots.keys().map(|name| epm_named(tree, name).map(|e| e.index)).collect::<Result<_, _>>()?,
            _ => {
                let candidates = candidates(tree, group.placement_epms())?;
                let names: Vec<String> = candidates.iter().map(|e| e.name.clone()).collect();
                let counts = group.spec(&tree.name, name).per_epm_counts(&names);
                candidates.iter().filter(|e| counts.contains_key(&e.name)).map(|e| e.index).collect()
            }
        };
        vpc_hosts.entry(group.vpc.as_str()).or_default().extend(&used);
        subnet_hosts.entry((group.vpc.as_str(), group.subnet.as_str())).or_default().extend(&used);
    }
    for indexes in vpc_hosts.values_mut().chain(subnet_hosts.values_mut()) {
        indexes.sort_unstable();
        indexes.dedup();
    }
    let mut goals = Vec::with_capacity(tree.hosts as usize);
    for epm in tree.epms() {
        let mut vpcs = Vec::new();
        for (vpc, indexes) in &vpc_hosts {
            if indexes.binary_search(&epm.index).is_err() {
                continue;
            }
            let subnets = record
                .subnets
                .values()
                .filter(|s| s.vpc == *vpc)
                .map(|s| {
                    let flood = subnet_hosts
                        .get(&(s.vpc.as_str(), s.name.as_str()))
                        .into_iter()
                        .flatten()
                        .filter(|i| **i != epm.index)
                        .map(|i| tree.epm(*i).ip.to_string())
                        .collect();
                    let prefix = s.cidr.split_once('/').map(|(_, p)| p).unwrap_or("32");
                    SubnetGoal {
                        vni: s.vni,
                        bridge: naming::subnet_bridge(s.id),
                        vxlan: naming::subnet_vxlan(s.id),
                        gateway: format!("{}/{prefix}", s.gateway),
                        gateway_mac: netdev::format_mac(&overlay::gateway_mac(epm.index)),
                        flood,
                        forget: forget.get(&subnet_key(&s.vpc, &s.name)).cloned().unwrap_or_default(),
                    }
                })
                .collect();
            vpcs.push(VpcGoal { namespace: naming::router_namespace(&tree.name, &epm.name, vpc), subnets });
        }
        vpcs.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        let goal = OverlayGoal {
            router_prefix: naming::router_prefix(&tree.name, &epm.name),
            underlay_ip: epm.ip.to_string(),
            vpcs,
        };
        goals.push((epm, goal));
    }
    Ok(goals)
}

//! What follows from a topology's tenant record alone, without I/O: every
//! EVM of a group with its devices (names, addresses, MACs, the EPM it is
//! on), and each EPM's overlay goal (its VPCs' routers and subnets, where
//! each subnet floods, and the VPC's firewall).

use std::collections::HashMap;

use merak_netdev::netdev;
use merak_proto::agent::{EvmSpec, OverlayGoal, SubnetGoal, VpcGoal};

use super::EvmInfo;
use super::records::{GroupRecord, OverlayRecord, candidates, epm_named, subnet_key};
use crate::model::overlay::{self, DeviceModel};
use crate::model::{Epm, TreeSpec, naming};
use crate::runtime::RuntimeError;

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

/// Every EVM of a group, in index order.
pub(super) fn evms(
    tree: &TreeSpec,
    record: &OverlayRecord,
    name: &str,
    group: &GroupRecord,
) -> Result<Vec<Evm>, RuntimeError> {
    let subnet = record
        .subnets
        .get(&subnet_key(&group.vpc, &group.subnet))
        .ok_or_else(|| RuntimeError::Conflict(format!("subnet {} of group {name} is gone", group.subnet)))?;
    let subnet_spec = subnet.spec(&tree.name)?;
    let device_model = group.spec(&tree.name, name).device_model;
    let external = record.is_external(&group.vpc);
    let mut evms = Vec::with_capacity(group.count as usize);
    for (k, epm) in group.layout(tree, name)? {
        let Some((index, ip)) = group.ranges.index_of(u64::from(k)).and_then(|i| Some((i, subnet_spec.cidr.host(i)?)))
        else {
            break;
        };
        let namespace = naming::evm_namespace(&tree.name, name, k);
        let mac = overlay::evm_mac(ip);
        evms.push(Evm {
            epm_index: epm.index,
            host_index: index,
            spec: EvmSpec {
                namespace: namespace.clone(),
                // External: the EPM end waits in the EPM for the system under test.
                router_namespace: if external {
                    naming::namespace(&tree.name, &epm.name)
                } else {
                    naming::router_namespace(&tree.name, &epm.name, &group.vpc)
                },
                bridge: if external { String::new() } else { naming::subnet_bridge(subnet.id) },
                host_port: match device_model {
                    DeviceModel::Veth => naming::evm_port(group.id, k),
                    DeviceModel::Hybrid => naming::hybrid_port(group.id, k),
                },
                address: format!("{ip}/{}", subnet_spec.cidr.prefix_len()),
                mac: netdev::format_mac(&mac),
                gateway: subnet_spec.gateway.to_string(),
                gateway_mac: if external {
                    String::new()
                } else {
                    netdev::format_mac(&overlay::gateway_mac(epm.index))
                },
                device_model: device_model.name().into(),
                leave_unattached: external,
                mtu: record.vpcs.get(&group.vpc).and_then(|v| v.mtu).unwrap_or(0),
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
pub(super) fn overlay_goals(
    tree: &TreeSpec,
    record: &OverlayRecord,
    forget: &Forget,
) -> Result<Vec<(Epm, OverlayGoal)>, RuntimeError> {
    // EPM indexes holding EVMs, per VPC and per subnet.
    let mut vpc_hosts: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut subnet_hosts: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
    // External VPCs have no overlay of merak's.
    for (name, group) in record.groups.iter().filter(|(_, g)| !record.is_external(&g.vpc)) {
        let used: Vec<u32> = match group.placement.as_str() {
            "counts" => {
                group.slots.keys().map(|name| epm_named(tree, name).map(|e| e.index)).collect::<Result<_, _>>()?
            }
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
    let mut firewalls = HashMap::new();
    for vpc in vpc_hosts.keys() {
        firewalls.insert(*vpc, super::firewall::firewall(&tree.name, record, vpc)?);
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
            vpcs.push(VpcGoal {
                namespace: naming::router_namespace(&tree.name, &epm.name, vpc),
                subnets,
                firewall: firewalls.get(vpc).cloned().flatten(),
            });
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

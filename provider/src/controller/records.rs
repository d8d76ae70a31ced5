//! The controller's record of a topology's tenant networks (VPCs, subnets,
//! EVM groups): what is kept, and the rules for changing it (placement,
//! address ranges, VNIs), without I/O. What follows from a record (every
//! EVM with its devices, each EPM's goal) is computed in `goals`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::goals::Evm;
use crate::model::network_controller::VpcController;
use crate::model::overlay::{self, DeviceModel, GroupSpec, Placement, SubnetSpec, VpcSpec};
use crate::model::ranges::{self, Ranges};
use crate::model::security_group::{DEFAULT_GROUP, Rule, SecurityGroupSpec};
use crate::model::{Epm, TreeSpec};
use crate::runtime::RuntimeError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverlayRecord {
    pub(super) next_id: u32,
    pub(super) vpcs: BTreeMap<String, VpcRecord>,
    /// Keyed `vpc/subnet`.
    pub(super) subnets: BTreeMap<String, SubnetRecord>,
    /// Keyed by group name (unique in the topology: it names EVM namespaces).
    pub(super) groups: BTreeMap<String, GroupRecord>,
    /// Keyed `vpc/name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) security_groups: BTreeMap<String, SecurityGroupRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SecurityGroupRecord {
    pub(super) vpc: String,
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) description: String,
    pub(super) ingress: Vec<Rule>,
    pub(super) egress: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VpcRecord {
    pub(super) cidr: String,
    pub(super) vni: u32,
    /// Its ports are the external controller's (see VpcController).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) external: bool,
    /// Its EVMs' MTU, when not the overlay's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mtu: Option<u32>,
    /// It has had a security group: its EPMs' goals carry its firewall from
    /// then on (enforced or not), so removing the last group removes the
    /// rules; a VPC that never had one costs its agents nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) firewalled: bool,
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
    /// In an external VPC: the host indexes of the EVMs whose ports the
    /// controller accepted (an EVM is ready when it is whole and here).
    #[serde(default, skip_serializing_if = "Ranges::is_empty")]
    pub(super) announced: Ranges,
    /// Names of the security groups of its VPC its ports are in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) security_groups: Vec<String>,
    /// In an external VPC: the security groups the `announced` ports were
    /// accepted with. When the ports' groups differ, they are sent again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) announced_groups: Vec<String>,
}

fn confirmed() -> bool {
    true
}

impl OverlayRecord {
    /// Whether the VPC's ports are the external controller's.
    pub(super) fn is_external(&self, vpc: &str) -> bool {
        self.vpcs.get(vpc).is_some_and(|v| v.external)
    }

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

/// Changes to the record, each checked against what it already holds.
impl OverlayRecord {
    /// Records a VPC (new, or the same again); its VNI must be its own.
    pub(super) fn put_vpc(&mut self, spec: &VpcSpec) -> Result<(), RuntimeError> {
        if let Some((other, _)) = self.vpcs.iter().find(|(name, v)| **name != spec.name && v.vni == spec.vni) {
            return Err(RuntimeError::Conflict(format!(
                "VNI {} is already VPC {other}'s; set a different vni",
                spec.vni
            )));
        }
        if let Some(existing) = self.vpcs.get(&spec.name)
            && (existing.external != (spec.controller == VpcController::External) || existing.mtu != spec.mtu)
            && self.subnets.values().any(|s| s.vpc == spec.name)
        {
            return Err(RuntimeError::Conflict(format!(
                "VPC {} already exists with another controller or MTU; replace it",
                spec.name
            )));
        }
        let external = spec.controller == VpcController::External;
        let firewalled = self.vpcs.get(&spec.name).is_some_and(|v| v.firewalled);
        self.vpcs.insert(
            spec.name.clone(),
            VpcRecord { cidr: spec.cidr.to_string(), vni: spec.vni, external, mtu: spec.mtu, firewalled },
        );
        Ok(())
    }

    /// Forgets a VPC that has no subnets; whether there was one.
    pub(super) fn remove_vpc(&mut self, name: &str) -> Result<bool, RuntimeError> {
        if let Some(subnet) = self.subnets.values().find(|s| s.vpc == name) {
            return Err(RuntimeError::Conflict(format!(
                "VPC {name} still has subnet {}; delete it first",
                subnet.name
            )));
        }
        if let Some(group) = self.security_groups.values().find(|g| g.vpc == name) {
            return Err(RuntimeError::Conflict(format!(
                "VPC {name} still has security group {}; delete it first",
                group.name
            )));
        }
        Ok(self.vpcs.remove(name).is_some())
    }

    /// Records a security group of a recorded VPC whose rules name only
    /// groups that are recorded (or itself).
    pub(super) fn put_security_group(&mut self, spec: &SecurityGroupSpec) -> Result<(), RuntimeError> {
        let Some(vpc) = self.vpcs.get_mut(&spec.vpc) else {
            return Err(RuntimeError::Conflict(format!("VPC {} does not exist", spec.vpc)));
        };
        if let Some(missing) = spec
            .peer_groups()
            .find(|peer| *peer != spec.name && !self.security_groups.contains_key(&subnet_key(&spec.vpc, peer)))
        {
            return Err(RuntimeError::Conflict(format!(
                "a rule of security group {} names group {missing}, which VPC {} does not have",
                spec.name, spec.vpc
            )));
        }
        vpc.firewalled = true;
        self.security_groups.insert(
            subnet_key(&spec.vpc, &spec.name),
            SecurityGroupRecord {
                vpc: spec.vpc.clone(),
                name: spec.name.clone(),
                description: spec.description.clone(),
                ingress: spec.ingress.clone(),
                egress: spec.egress.clone(),
            },
        );
        Ok(())
    }

    /// The security groups an EVM group's ports are in, as an external
    /// controller is told: none while the VPC has no group, else the EVM
    /// group's own or the VPC's `default`.
    pub(super) fn port_security_groups(&self, group: &GroupRecord) -> Vec<String> {
        if !self.security_groups.values().any(|g| g.vpc == group.vpc) {
            return Vec::new();
        }
        match group.security_groups.is_empty() {
            true => vec![DEFAULT_GROUP.to_string()],
            false => group.security_groups.clone(),
        }
    }

    /// Forgets a security group no EVM group and no other group's rule
    /// names; whether there was one.
    pub(super) fn remove_security_group(&mut self, vpc: &str, name: &str) -> Result<bool, RuntimeError> {
        if let Some((group, _)) =
            self.groups.iter().find(|(_, g)| g.vpc == vpc && g.security_groups.iter().any(|s| s == name))
        {
            return Err(RuntimeError::Conflict(format!(
                "EVM group {group} is still in security group {name}; take it out first"
            )));
        }
        if let Some(other) = self.security_groups.values().find(|g| {
            g.vpc == vpc
                && g.name != name
                && g.ingress.iter().chain(&g.egress).any(|r| r.groups.iter().any(|p| p == name))
        }) {
            return Err(RuntimeError::Conflict(format!(
                "a rule of security group {} names group {name}; change it first",
                other.name
            )));
        }
        Ok(self.security_groups.remove(&subnet_key(vpc, name)).is_some())
    }

    /// Records a subnet of a recorded VPC: no overlap with its siblings, a
    /// VNI of its own. A subnet recorded again keeps its id.
    pub(super) fn put_subnet(&mut self, spec: &SubnetSpec) -> Result<(), RuntimeError> {
        if !self.vpcs.contains_key(&spec.vpc) {
            return Err(RuntimeError::Conflict(format!("VPC {} does not exist", spec.vpc)));
        }
        let key = subnet_key(&spec.vpc, &spec.name);
        for (other_key, other) in &self.subnets {
            if *other_key == key {
                continue;
            }
            let other_cidr: crate::model::Ipv4Cidr =
                other.cidr.parse().map_err(|_| RuntimeError::Conflict("unreadable subnet record".into()))?;
            if other.vpc == spec.vpc && other_cidr.overlaps(&spec.cidr) {
                return Err(RuntimeError::Conflict(format!(
                    "{} overlaps subnet {} ({other_cidr}) of the same VPC",
                    spec.cidr, other.name
                )));
            }
            if other.vni == spec.vni {
                return Err(RuntimeError::Conflict(format!("VNI {} is already subnet {}'s", spec.vni, other.name)));
            }
        }
        let (id, used_below) = match self.subnets.get(&key) {
            Some(existing) => (existing.id, existing.used_below),
            None => {
                self.next_id += 1;
                (self.next_id, 0)
            }
        };
        self.subnets.insert(
            key,
            SubnetRecord {
                vpc: spec.vpc.clone(),
                name: spec.name.clone(),
                cidr: spec.cidr.to_string(),
                gateway: spec.gateway.to_string(),
                vni: spec.vni,
                id,
                used_below,
            },
        );
        Ok(())
    }

    /// Records a group as `spec` asks, on the EPMs of `tree`: where its
    /// EVMs go (an existing group's stay where they are), which addresses
    /// of its subnet it holds. Returns the subnet's high-water mark before
    /// this change: addresses below it may be remembered elsewhere.
    pub(super) fn put_group(&mut self, tree: &TreeSpec, spec: &GroupSpec) -> Result<u64, RuntimeError> {
        let key = subnet_key(&spec.vpc, &spec.subnet);
        let subnet_record = self
            .subnets
            .get(&key)
            .ok_or_else(|| {
                RuntimeError::Conflict(format!("subnet {} of VPC {} does not exist", spec.subnet, spec.vpc))
            })?
            .clone();
        let subnet = subnet_record.spec(&tree.name)?;
        if let Some(missing) =
            spec.security_groups.iter().find(|g| !self.security_groups.contains_key(&subnet_key(&spec.vpc, g)))
        {
            return Err(RuntimeError::Conflict(format!(
                "security group {missing} of VPC {} does not exist; create it first",
                spec.vpc
            )));
        }
        let previous = self.groups.get(&spec.name).cloned();
        if let Some(previous) = &previous {
            let moved = previous.vpc != spec.vpc || previous.subnet != spec.subnet;
            if moved || previous.device_model != spec.device_model.name() || previous.placement != spec.placement.name()
            {
                return Err(RuntimeError::Conflict(format!(
                    "group {} already exists with another subnet, device model or placement; replace it",
                    spec.name
                )));
            }
        }
        // Where the EVMs go. By formula: on the EPMs the group was first
        // placed on (growing the topology must not move them); by counts:
        // the recorded slots, adjusted.
        let (placed_on, counts, slots) = match &spec.placement {
            Placement::Counts(counts) => {
                for name in counts.keys() {
                    epm_named(tree, name)?;
                }
                let mut slots = previous.as_ref().map(|g| g.slots.clone()).unwrap_or_default();
                ranges::assign_slots(&mut slots, counts);
                (Vec::new(), counts.clone(), slots)
            }
            _ => {
                let placed_on: Vec<String> = match &previous {
                    Some(previous) if !previous.placed_on.is_empty() => previous.placed_on.clone(),
                    _ => candidates(tree, &spec.epms)?.into_iter().map(|e| e.name).collect(),
                };
                spec.check_fits(placed_on.len()).map_err(|e| RuntimeError::Conflict(e.detail))?;
                (placed_on, BTreeMap::new(), BTreeMap::new())
            }
        };
        let id = previous.as_ref().map(|g| g.id).unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id
        });
        // Addresses: one per EVM index in use (by counts, indexes freed on
        // one EPM and not yet taken by another leave holes).
        let indexes = match &spec.placement {
            Placement::Counts(_) => slots.values().map(Ranges::end).max().unwrap_or(0),
            _ => u64::from(spec.count),
        };
        let mut ranges = previous.as_ref().map(|g| g.ranges.clone()).unwrap_or_default();
        let taken: Vec<&Ranges> = self
            .groups
            .iter()
            .filter(|(name, g)| **name != spec.name && g.vpc == spec.vpc && g.subnet == spec.subnet)
            .map(|(_, g)| &g.ranges)
            .collect();
        let gateway_index = subnet.cidr.index_of(subnet.gateway);
        if ranges::grow(&mut ranges, indexes, subnet.cidr.host_capacity(), gateway_index, &taken).is_none() {
            return Err(RuntimeError::Conflict(format!(
                "subnet {} ({}) has no room for {indexes} EVMs of group {}",
                subnet.name, subnet.cidr, spec.name
            )));
        }
        ranges.truncate(indexes);
        let group = GroupRecord {
            vpc: spec.vpc.clone(),
            subnet: spec.subnet.clone(),
            count: spec.count,
            placement: spec.placement.name().into(),
            epms: spec.epms.clone(),
            placed_on,
            device_model: spec.device_model.name().into(),
            id,
            ranges: ranges.clone(),
            counts,
            slots,
            confirmed: previous.as_ref().is_some_and(|g| g.confirmed),
            announced: previous.as_ref().map(|g| g.announced.clone()).unwrap_or_default(),
            security_groups: spec.security_groups.clone(),
            announced_groups: previous.as_ref().map(|g| g.announced_groups.clone()).unwrap_or_default(),
        };
        // Addresses below the subnet's high-water mark may be remembered by
        // some EPM as living elsewhere (see push_overlay's `forget`).
        let used_before = self
            .groups
            .values()
            .filter(|g| g.vpc == spec.vpc && g.subnet == spec.subnet)
            .map(|g| g.ranges.end())
            .fold(subnet_record.used_below, u64::max);
        self.groups.insert(spec.name.clone(), group);
        check_bridges(tree, self, &spec.vpc, &spec.subnet)?;
        if let Some(subnet) = self.subnets.get_mut(&key) {
            subnet.used_below = used_before.max(ranges.end());
        }
        Ok(used_before)
    }
}

/// Refuses more EVMs of one subnet on one EPM, over all its groups,
/// than that EPM's bridges hold.
fn check_bridges(tree: &TreeSpec, record: &OverlayRecord, vpc: &str, subnet: &str) -> Result<(), RuntimeError> {
    let mut per_epm: BTreeMap<String, u64> = BTreeMap::new();
    for (name, group) in record.groups.iter().filter(|(_, g)| g.vpc == vpc && g.subnet == subnet) {
        for (_, epm) in group.layout(tree, name)? {
            *per_epm.entry(epm.name).or_default() += 1;
        }
    }
    match per_epm.into_iter().find(|(_, n)| *n > u64::from(overlay::MAX_EVMS_PER_SUBNET_PER_EPM)) {
        Some((epm, n)) => Err(RuntimeError::Conflict(format!(
            "{n} EVMs of subnet {subnet} on {epm}, over all its groups: an EPM holds at most {} EVMs of a subnet. Place some elsewhere.",
            overlay::MAX_EVMS_PER_SUBNET_PER_EPM
        ))),
        None => Ok(()),
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
        Ok((0..self.count)
            .filter_map(|k| Some((k, candidates.get(spec.epm_of(k, candidates.len())?)?.clone())))
            .collect())
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
            security_groups: self.security_groups.clone(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use merak_proto::agent::OverlayGoal;

    use crate::controller::goals::{Forget, evms, overlay_goals};
    use crate::model::TreeInput;
    use crate::model::overlay::GroupInput;
    use crate::store::{self, MemoryStore};

    fn tree(hosts: i64) -> TreeSpec {
        let input = TreeInput {
            name: "lab",
            racks: 1,
            hosts_per_rack: 8,
            hosts: Some(hosts),
            ports_per_vswitch: 8,
            data_plane_cidr: "10.9.0.0/24",
        };
        TreeSpec::validate(&input).expect("valid topology")
    }

    fn vpc(name: &str, cidr: &str, vni: i64) -> VpcSpec {
        VpcSpec::validate("lab", name, cidr, Some(vni)).expect("valid VPC")
    }

    fn subnet(vpc: &VpcSpec, name: &str, cidr: &str) -> SubnetSpec {
        SubnetSpec::validate(vpc, name, cidr, None).expect("valid subnet")
    }

    fn group(subnet: &SubnetSpec, name: &str, count: i64, epms: &[&str]) -> GroupSpec {
        let input = GroupInput {
            name: name.into(),
            evm_count: Some(count),
            epms: epms.iter().map(|e| e.to_string()).collect(),
            device_model: "veth".into(),
            ..GroupInput::default()
        };
        GroupSpec::validate(subnet, input).expect("valid group")
    }

    fn conflict(result: Result<impl std::fmt::Debug, RuntimeError>) -> String {
        match result {
            Err(RuntimeError::Conflict(text)) => text,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn vpcs_and_subnets_keep_their_vnis_and_addresses_apart() {
        let mut record = OverlayRecord::default();
        let blue = vpc("blue", "10.0.0.0/16", 100);
        record.put_vpc(&blue).unwrap();
        record.put_vpc(&blue).unwrap();
        assert!(conflict(record.put_vpc(&vpc("red", "10.0.0.0/16", 100))).contains("already VPC blue's"));

        let web = subnet(&blue, "web", "10.0.1.0/24");
        record.put_subnet(&web).unwrap();
        let id = record.subnets["blue/web"].id;
        record.put_subnet(&web).unwrap();
        assert_eq!(record.subnets["blue/web"].id, id, "recorded again, a subnet keeps its id");
        assert!(conflict(record.put_subnet(&subnet(&blue, "db", "10.0.1.128/25"))).contains("overlaps subnet web"));
        let orphan = subnet(&vpc("green", "10.1.0.0/16", 7), "x", "10.1.0.0/24");
        assert!(conflict(record.put_subnet(&orphan)).contains("VPC green does not exist"));

        assert!(conflict(record.remove_vpc("blue")).contains("still has subnet web"));
        assert!(!record.remove_vpc("never").unwrap());
    }

    #[test]
    fn a_group_stays_on_its_epms_when_the_topology_grows_and_fits_its_subnet() {
        let mut record = OverlayRecord::default();
        let blue = vpc("blue", "10.0.0.0/16", 100);
        let web = subnet(&blue, "web", "10.0.1.0/28");
        record.put_vpc(&blue).unwrap();
        record.put_subnet(&web).unwrap();

        let small = tree(2);
        assert_eq!(record.put_group(&small, &group(&web, "g", 4, &[])).unwrap(), 0);
        let placed = |record: &OverlayRecord, tree: &TreeSpec| -> Vec<String> {
            evms(tree, record, "g", &record.groups["g"]).unwrap().into_iter().map(|e| e.info.epm).collect()
        };
        assert_eq!(placed(&record, &small), ["epm-0", "epm-1", "epm-0", "epm-1"]);

        // Four EPMs now, and two more EVMs: the old ones stay where they are.
        let grown = tree(4);
        let mark = record.groups["g"].ranges.end();
        assert_eq!(record.put_group(&grown, &group(&web, "g", 6, &[])).unwrap(), mark, "the high-water mark before");
        assert_eq!(placed(&record, &grown), ["epm-0", "epm-1", "epm-0", "epm-1", "epm-0", "epm-1"]);

        // A /28 holds 13 EVMs besides the gateway: 14 do not fit.
        let refused = conflict(record.put_group(&grown, &group(&web, "h", 8, &[])));
        assert!(refused.contains("has no room for 8 EVMs"), "{refused}");
        assert!(!record.groups.contains_key("h"), "a refused group is not recorded");
        // Another shape of an existing group is a replacement, not a change.
        let mut packed = group(&web, "g", 6, &[]);
        packed.placement = Placement::Pack;
        assert!(conflict(record.put_group(&grown, &packed)).contains("replace it"));
    }

    #[test]
    fn each_epm_gets_the_vpcs_it_hosts_and_floods_to_the_others() {
        let mut record = OverlayRecord::default();
        let blue = vpc("blue", "10.0.0.0/16", 100);
        let (web, db) = (subnet(&blue, "web", "10.0.1.0/24"), subnet(&blue, "db", "10.0.2.0/24"));
        record.put_vpc(&blue).unwrap();
        record.put_subnet(&web).unwrap();
        record.put_subnet(&db).unwrap();
        let lab = tree(3);
        record.put_group(&lab, &group(&web, "w", 2, &["epm-0", "epm-1"])).unwrap();
        record.put_group(&lab, &group(&db, "d", 1, &["epm-1"])).unwrap();

        let goals = overlay_goals(&lab, &record, &Forget::new()).unwrap();
        let of = |epm: &str| goals.iter().find(|(e, _)| e.name == epm).map(|(_, g)| g.clone()).unwrap();
        assert!(of("epm-2").vpcs.is_empty(), "an EPM without EVMs of a VPC has none of its devices");
        let epm0 = of("epm-0");
        assert_eq!(epm0.vpcs.len(), 1);
        // Every subnet of the VPC has its gateway there (routing is local)...
        assert_eq!(epm0.vpcs[0].subnets.len(), 2);
        let flood =
            |goal: &OverlayGoal, vni: u32| goal.vpcs[0].subnets.iter().find(|s| s.vni == vni).unwrap().flood.clone();
        // ...each flooding to the other EPMs holding EVMs of that subnet.
        assert_eq!(flood(&epm0, web.vni), [lab.epm(1).ip.to_string()]);
        assert_eq!(flood(&epm0, db.vni), [lab.epm(1).ip.to_string()]);
        assert_eq!(flood(&of("epm-1"), web.vni), [lab.epm(0).ip.to_string()]);
        assert!(flood(&of("epm-1"), db.vni).is_empty());
    }

    #[tokio::test]
    async fn a_record_survives_its_store() {
        let mut record = OverlayRecord::default();
        let blue = vpc("blue", "10.0.0.0/16", 100);
        let web = subnet(&blue, "web", "10.0.1.0/24");
        record.put_vpc(&blue).unwrap();
        record.put_subnet(&web).unwrap();
        record.put_group(&tree(2), &group(&web, "g", 3, &[])).unwrap();
        let memory = MemoryStore::default();
        store::save_json(&memory, "lab", "overlay", &record).await.unwrap();
        let back: OverlayRecord = store::load_json(&memory, "lab", "overlay").await.unwrap().unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&record).unwrap());
        let lab = tree(2);
        let (before, after) = (
            evms(&lab, &record, "g", &record.groups["g"]).unwrap(),
            evms(&lab, &back, "g", &back.groups["g"]).unwrap(),
        );
        assert_eq!(
            before.iter().map(|e| &e.spec).collect::<Vec<_>>(),
            after.iter().map(|e| &e.spec).collect::<Vec<_>>()
        );
    }
}

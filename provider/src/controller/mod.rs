//! The controller: one for every runtime. It owns the records of a
//! topology's tenant networks (VPCs, subnets, EVM groups) through a
//! [`RecordStore`], computes each EPM's goal from them, pushes goals and EVM
//! batches to the agents, and reads back what stands. Where EPMs live and
//! how their agents are reached is the [`Substrate`]'s business (the local
//! runtime: namespaces on this host). The resources only talk to this.
//!
//! The pure part (records, EVM layouts, goals) is in [`records`] and tested
//! without I/O; [`agents`] is the traffic with the agents.

mod agents;
mod records;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::Mutex;

use self::records::{Evm, Forget, GroupRecord, OverlayRecord, SubnetRecord, VpcRecord, candidates, epm_named, evms, subnet_key};
use crate::model::TreeSpec;
use crate::model::overlay::{self, GroupSpec, Placement, Ranges, SubnetSpec, VpcSpec};
pub use crate::runtime::{Failure, Intent, RuntimeError, Substrate, TopologyStatus, owned_elsewhere};
use crate::store::{self, RecordStore};

/// The record kind of the tenant networks (`overlay.json` in a file store).
const OVERLAY: &str = "overlay";

/// How much of an EVM group is up, and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub ready: u32,
    /// Host indexes of its subnet the group holds.
    pub ranges: Ranges,
    /// EPM name → EVMs placed there.
    pub per_epm: BTreeMap<String, u32>,
    /// The EPMs the group spreads or packs over (fixed when it is created).
    pub placed_on: Vec<String>,
    pub failures: Vec<Failure>,
    /// A create of the group succeeded once (see [`Intent`]).
    pub confirmed: bool,
}

/// One EVM, as the `merak_evms` data source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmInfo {
    pub name: String,
    pub group: String,
    pub vpc: String,
    pub subnet: String,
    pub epm: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: [u8; 6],
    pub namespace: String,
}

/// A ping from one EVM to an address, and whether it should get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: EvmInfo,
    pub to: std::net::Ipv4Addr,
    pub to_name: String,
    pub expect_reply: bool,
}

/// What became of a probe: it got a reply or not, or it could not be sent
/// (e.g. its EVM's namespace is gone), and why.
pub type ProbeOutcome = Result<bool, String>;

#[derive(Debug)]
pub struct Controller {
    substrate: Arc<dyn Substrate>,
    store: Arc<dyn RecordStore>,
    /// Serializes changes to the tenant-network records (Terraform applies
    /// resources in parallel).
    overlay_lock: Mutex<()>,
}

impl Controller {
    pub fn new(substrate: Arc<dyn Substrate>, store: Arc<dyn RecordStore>) -> Self {
        Controller { substrate, store, overlay_lock: Mutex::new(()) }
    }

    /// Refuses a topology the runtime cannot hold as configured (e.g. a
    /// name too long for the paths it becomes), before anything is built.
    pub fn check_fits(&self, spec: &TreeSpec) -> Result<(), RuntimeError> {
        self.substrate.check_fits(spec)
    }

    /// Makes the runtime match `spec`: creates what is missing, repairs what
    /// drifted and removes what the spec no longer has. Failures of single
    /// objects are reported in the status; an `Err` means nothing could be done.
    pub async fn apply_topology(&self, spec: &TreeSpec, intent: Intent) -> Result<TopologyStatus, RuntimeError> {
        self.store.lock(&spec.name)?;
        self.substrate.apply_topology(spec, intent).await
    }

    /// The recorded spec of a topology and how much of it is up; `None` when
    /// the runtime has no such topology.
    pub async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError> {
        self.substrate.read_topology(name).await
    }

    /// The recorded spec of a topology, without checking its EPMs (cheap).
    pub async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError> {
        self.substrate.topology_spec(name).await
    }

    /// Removes everything of the topology, its records last, and waits
    /// until its devices are gone.
    pub async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError> {
        self.store.lock(name)?;
        self.substrate.destroy_topology(name).await?;
        self.store.remove(name)?;
        self.store.unlock(name);
        Ok(())
    }

    /// The topology's spec; its tenant networks need it to exist.
    async fn tree(&self, topology: &str) -> Result<TreeSpec, RuntimeError> {
        self.substrate
            .topology_spec(topology)
            .await?
            .ok_or_else(|| RuntimeError::Conflict(format!("topology {topology:?} does not exist")))
    }

    async fn topology_exists(&self, topology: &str) -> Result<bool, RuntimeError> {
        Ok(self.substrate.topology_spec(topology).await?.is_some())
    }

    fn load_overlay(&self, topology: &str) -> Result<OverlayRecord, RuntimeError> {
        Ok(store::load_json(self.store.as_ref(), topology, OVERLAY)?.unwrap_or_default())
    }

    fn save_overlay(&self, topology: &str, record: &OverlayRecord) -> Result<(), RuntimeError> {
        Ok(store::save_json(self.store.as_ref(), topology, OVERLAY, record)?)
    }

    /// The EVMs (by namespace) that are whole, as the substrate reads them.
    async fn whole_evms(&self, topology: &str, evms: &[Evm]) -> Result<HashSet<String>, RuntimeError> {
        let specs: Vec<&merak_proto::agent::EvmSpec> = evms.iter().map(|e| &e.spec).collect();
        self.substrate.whole_evms(topology, &specs).await
    }

    pub async fn ping(&self, topology: &str, probes: &[Probe], timeout_ms: u32) -> Result<Vec<ProbeOutcome>, RuntimeError> {
        self.ping_agents(topology, probes, timeout_ms).await
    }

fn group_status(group: &GroupRecord, evms: &[Evm], whole: &HashSet<String>) -> GroupStatus {
        let ready = evms.iter().filter(|e| whole.contains(&e.info.namespace)).count() as u32;
        GroupStatus {
            ready,
            ranges: group.ranges.clone(),
            per_epm: group.per_epm(evms),
            placed_on: Vec::new(),
            failures: Vec::new(),
            confirmed: group.confirmed,
        }
    }

    pub async fn apply_vpc(&self, spec: &VpcSpec) -> Result<(), RuntimeError> {
        self.store.lock(&spec.topology)?;
        let _guard = self.overlay_lock.lock().await;
        self.tree(&spec.topology).await?;
        let mut record = self.load_overlay(&spec.topology)?;
        if let Some((other, _)) = record.vpcs.iter().find(|(name, v)| **name != spec.name && v.vni == spec.vni) {
            return Err(RuntimeError::Conflict(format!("VNI {} is already VPC {other}'s; set a different vni", spec.vni)));
        }
        record.vpcs.insert(spec.name.clone(), VpcRecord { cidr: spec.cidr.to_string(), vni: spec.vni });
        self.save_overlay(&spec.topology, &record)
    }

    pub async fn read_vpc(&self, topology: &str, name: &str) -> Result<Option<VpcSpec>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(None);
        }
        let record = self.load_overlay(topology)?;
        Ok(record.vpcs.get(name).and_then(|v| VpcSpec::validate(topology, name, &v.cidr, Some(i64::from(v.vni))).ok()))
    }

    pub async fn delete_vpc(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        self.store.lock(topology)?;
        let _guard = self.overlay_lock.lock().await;
        let mut record = self.load_overlay(topology)?;
        if let Some(subnet) = record.subnets.values().find(|s| s.vpc == name) {
            return Err(RuntimeError::Conflict(format!("VPC {name} still has subnet {}; delete it first", subnet.name)));
        }
        if record.vpcs.remove(name).is_some() && self.topology_exists(topology).await? {
            self.save_overlay(topology, &record)?;
        }
        Ok(())
    }

    pub async fn apply_subnet(&self, spec: &SubnetSpec) -> Result<(), RuntimeError> {
        self.store.lock(&spec.topology)?;
        let _guard = self.overlay_lock.lock().await;
        let tree = self.tree(&spec.topology).await?;
        let mut record = self.load_overlay(&spec.topology)?;
        if !record.vpcs.contains_key(&spec.vpc) {
            return Err(RuntimeError::Conflict(format!("VPC {} does not exist", spec.vpc)));
        }
        let key = subnet_key(&spec.vpc, &spec.name);
        for (other_key, other) in &record.subnets {
            if *other_key == key {
                continue;
            }
            let other_cidr: crate::model::Ipv4Cidr = other.cidr.parse().map_err(|_| RuntimeError::Conflict("unreadable subnet record".into()))?;
            if other.vpc == spec.vpc && other_cidr.overlaps(&spec.cidr) {
                return Err(RuntimeError::Conflict(format!("{} overlaps subnet {} ({other_cidr}) of the same VPC", spec.cidr, other.name)));
            }
            if other.vni == spec.vni {
                return Err(RuntimeError::Conflict(format!("VNI {} is already subnet {}'s", spec.vni, other.name)));
            }
        }
        let (id, used_below) = match record.subnets.get(&key) {
            Some(existing) => (existing.id, existing.used_below),
            None => {
                record.next_id += 1;
                (record.next_id, 0)
            }
        };
        record.subnets.insert(
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
        self.save_overlay(&spec.topology, &record)?;
        // EPMs hosting the VPC get the new subnet's gateway too.
        if record.groups.values().any(|g| g.vpc == spec.vpc) {
            let failures = self.push_overlay(&tree, &record, &Forget::new()).await?;
            if let Some(failure) = failures.first() {
                return Err(RuntimeError::Unavailable(format!("{}: {}", failure.object, failure.error)));
            }
        }
        Ok(())
    }

    pub async fn read_subnet(&self, topology: &str, vpc: &str, name: &str) -> Result<Option<SubnetSpec>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(None);
        }
        let record = self.load_overlay(topology)?;
        record.subnets.get(&subnet_key(vpc, name)).map(|s| s.spec(topology)).transpose()
    }

    pub async fn list_subnets(&self, topology: &str) -> Result<Vec<SubnetSpec>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(Vec::new());
        }
        self.load_overlay(topology)?.subnets.values().map(|s| s.spec(topology)).collect()
    }

    pub async fn delete_subnet(&self, topology: &str, vpc: &str, name: &str) -> Result<(), RuntimeError> {
        self.store.lock(topology)?;
        let _guard = self.overlay_lock.lock().await;
        let mut record = self.load_overlay(topology)?;
        let of_subnet = |g: &GroupRecord| g.vpc == vpc && g.subnet == name;
        if let Some((group, _)) = record.groups.iter().find(|(_, g)| of_subnet(g) && g.confirmed) {
            return Err(RuntimeError::Conflict(format!("subnet {name} still has EVM group {group}; delete it first")));
        }
        // Groups no Terraform state holds (their create failed or was
        // interrupted) go with their subnet.
        let orphans: Vec<String> = record.groups.iter().filter(|(_, g)| of_subnet(g)).map(|(n, _)| n.clone()).collect();
        if !orphans.is_empty() {
            let tree = self.tree(topology).await?;
            for orphan in orphans {
                self.remove_group(&tree, &mut record, &orphan).await?;
            }
            record = self.load_overlay(topology)?;
        }
        if record.subnets.remove(&subnet_key(vpc, name)).is_some() && self.topology_exists(topology).await? {
            self.save_overlay(topology, &record)?;
        }
        Ok(())
    }

    pub async fn apply_group(&self, spec: &GroupSpec, intent: Intent) -> Result<GroupStatus, RuntimeError> {
        self.store.lock(&spec.topology)?;
        let _guard = self.overlay_lock.lock().await;
        let topology = &spec.topology;
        let tree = self.tree(topology).await?;
        let mut record = self.load_overlay(topology)?;
        if let Some(existing) = record.groups.get(&spec.name) {
            let incompatible = existing.vpc != spec.vpc
                || existing.subnet != spec.subnet
                || existing.device_model != spec.device_model.name()
                || existing.placement != spec.placement.name();
            if intent == Intent::Create && existing.confirmed {
                let id = format!("{topology}/{}/{}/{}", existing.vpc, existing.subnet, spec.name);
                return Err(owned_elsewhere("merak_evm_group", "EVM group", &id));
            }
            // Left by a failed create with another shape: start over.
            if incompatible && !existing.confirmed {
                self.remove_group(&tree, &mut record, &spec.name).await?;
                record = self.load_overlay(topology)?;
            }
        }
        let key = subnet_key(&spec.vpc, &spec.subnet);
        let subnet_record = record
            .subnets
            .get(&key)
            .ok_or_else(|| RuntimeError::Conflict(format!("subnet {} of VPC {} does not exist", spec.subnet, spec.vpc)))?
            .clone();
        let subnet = subnet_record.spec(topology)?;
        let previous = record.groups.get(&spec.name).cloned();
        if let Some(previous) = &previous {
            let moved = previous.vpc != spec.vpc || previous.subnet != spec.subnet;
            if moved || previous.device_model != spec.device_model.name() || previous.placement != spec.placement.name() {
                return Err(RuntimeError::Conflict(format!("group {} already exists with another subnet, device model or placement; replace it", spec.name)));
            }
        }
        // Where the EVMs go. By formula: on the EPMs the group was first
        // placed on (growing the topology must not move them); by counts:
        // the recorded slots, adjusted.
        let (placed_on, counts, slots) = match &spec.placement {
            Placement::Counts(counts) => {
                for name in counts.keys() {
                    epm_named(&tree, name)?;
                }
                let mut slots = previous.as_ref().map(|g| g.slots.clone()).unwrap_or_default();
                overlay::assign_slots(&mut slots, counts);
                (Vec::new(), counts.clone(), slots)
            }
            _ => {
                let placed_on: Vec<String> = match &previous {
                    Some(previous) if !previous.placed_on.is_empty() => previous.placed_on.clone(),
                    _ => candidates(&tree, &spec.epms)?.into_iter().map(|e| e.name).collect(),
                };
                spec.check_fits(placed_on.len()).map_err(|e| RuntimeError::Conflict(e.detail))?;
                (placed_on, BTreeMap::new(), BTreeMap::new())
            }
        };
        let id = previous.as_ref().map(|g| g.id).unwrap_or_else(|| {
            record.next_id += 1;
            record.next_id
        });
        let old_evms = match &previous {
            Some(previous) => evms(&tree, &record, &spec.name, previous)?,
            None => Vec::new(),
        };
        // Addresses: one per EVM index in use (by counts, indexes freed on
        // one EPM and not yet taken by another leave holes).
        let indexes = match &spec.placement {
            Placement::Counts(_) => slots.values().map(Ranges::end).max().unwrap_or(0),
            _ => u64::from(spec.count),
        };
        let mut ranges = previous.as_ref().map(|g| g.ranges.clone()).unwrap_or_default();
        let taken: Vec<&Ranges> = record
            .groups
            .iter()
            .filter(|(name, g)| **name != spec.name && g.vpc == spec.vpc && g.subnet == spec.subnet)
            .map(|(_, g)| &g.ranges)
            .collect();
        let gateway_index = subnet.cidr.index_of(subnet.gateway);
        if overlay::grow(&mut ranges, indexes, subnet.cidr.host_capacity(), gateway_index, &taken).is_none() {
            return Err(RuntimeError::Conflict(format!("subnet {} ({}) has no room for {indexes} EVMs of group {}", subnet.name, subnet.cidr, spec.name)));
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
        };
        // Addresses below the subnet's high-water mark may be remembered by
        // some EPM as living elsewhere (see push_overlay's `forget`).
        let used_before = record
            .groups
            .values()
            .filter(|g| g.vpc == spec.vpc && g.subnet == spec.subnet)
            .map(|g| g.ranges.end())
            .fold(subnet_record.used_below, u64::max);
        record.groups.insert(spec.name.clone(), group.clone());
        let evms = evms(&tree, &record, &spec.name, &group)?;
        Self::check_bridges(&tree, &record, &spec.vpc, &spec.subnet)?;
        if let Some(subnet) = record.subnets.get_mut(&key) {
            subnet.used_below = used_before.max(ranges.end());
        }
        self.substrate.make_room(topology, u64::from(tree.hosts), record.evm_count(), record.largest_subnet()).await?;

        // EVMs that leave, or leave their EPM (by counts, an index one EPM
        // gave up may go to another in the same apply), go first. Until
        // they are gone the old record stands, so an interrupted or failed
        // deletion is retried by the next apply.
        let staying: HashSet<(&str, u32)> = evms.iter().map(|e| (e.info.namespace.as_str(), e.epm_index)).collect();
        let leaving: Vec<&Evm> = old_evms.iter().filter(|e| !staying.contains(&(e.info.namespace.as_str(), e.epm_index))).collect();
        let failures = self.push_evms(topology, &tree, Vec::new(), leaving).await;
        if let Some(failure) = failures.first() {
            return Err(RuntimeError::Unavailable(format!("removing {} EVMs failed, first {}: {}", failures.len(), failure.object, failure.error)));
        }
        // The record says what should exist before anything is built, so an
        // interrupted apply is finished by the next one.
        self.save_overlay(topology, &record)?;

        let whole = self.whole_evms(topology, &evms).await?;
        let missing: Vec<&Evm> = evms.iter().filter(|e| !whole.contains(&e.info.namespace)).collect();
        tracing::info!(group = %spec.name, evms = evms.len(), to_build = missing.len(), "EVM group");
        let reused = missing.iter().filter(|e| e.host_index < used_before).map(|e| e.info.mac);
        let forget = Forget::from([(key, merak_agent::overlay::mac_ranges(reused))]);
        let mut failures = self.push_overlay(&tree, &record, &forget).await?;
        failures.extend(self.push_evms(topology, &tree, missing, Vec::new()).await);

        let whole = self.whole_evms(topology, &evms).await?;
        let mut status = Self::group_status(&group, &evms, &whole);
        status.failures = failures;
        if !group.confirmed && status.failures.is_empty() && status.ready == group.count {
            if let Some(saved) = record.groups.get_mut(&spec.name) {
                saved.confirmed = true;
            }
            self.save_overlay(topology, &record)?;
            status.confirmed = true;
        }
        Ok(status)
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

    pub async fn read_group(&self, topology: &str, name: &str) -> Result<Option<(GroupSpec, GroupStatus)>, RuntimeError> {
        let Ok(tree) = self.tree(topology).await else { return Ok(None) };
        let record = self.load_overlay(topology)?;
        let Some(group) = record.groups.get(name) else { return Ok(None) };
        let evms = evms(&tree, &record, name, group)?;
        let whole = self.whole_evms(topology, &evms).await?;
        let mut status = Self::group_status(group, &evms, &whole);
        status.placed_on = group.placement_epms().to_vec();
        Ok(Some((group.spec(topology, name), status)))
    }

    pub async fn delete_group(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        self.store.lock(topology)?;
        let _guard = self.overlay_lock.lock().await;
        let Ok(tree) = self.tree(topology).await else { return Ok(()) };
        let mut record = self.load_overlay(topology)?;
        self.remove_group(&tree, &mut record, name).await
    }

    /// Deletes a group's EVMs, then its record, then the router devices no
    /// group needs any more. Idempotent; works with agents down (the EVMs
    /// are deleted from here, and router namespaces an unreachable EPM
    /// keeps go with the topology).
    async fn remove_group(&self, tree: &TreeSpec, record: &mut OverlayRecord, name: &str) -> Result<(), RuntimeError> {
        let topology = &tree.name;
        let Some(group) = record.groups.get(name).cloned() else { return Ok(()) };
        let evms = evms(tree, record, name, &group)?;
        tracing::info!(group = name, evms = evms.len(), "deleting EVM group");
        let failures = self.push_evms(topology, tree, Vec::new(), evms.iter().collect()).await;
        if let Some(failure) = failures.first() {
            return Err(RuntimeError::Unavailable(format!("deleting {} EVMs failed, first {}: {}", failures.len(), failure.object, failure.error)));
        }
        record.groups.remove(name);
        self.save_overlay(topology, record)?;
        for failure in self.push_overlay(tree, record, &Forget::new()).await? {
            tracing::warn!(epm = failure.object, error = failure.error, "could not remove router devices the group left; they go with the topology");
        }
        Ok(())
    }

    pub async fn list_evms(&self, topology: &str, group: Option<&str>, epm: Option<&str>) -> Result<Vec<EvmInfo>, RuntimeError> {
        let tree = self.tree(topology).await?;
        let record = self.load_overlay(topology)?;
        let mut all = Vec::new();
        for (name, g) in &record.groups {
            if group.is_some_and(|wanted| wanted != name) {
                continue;
            }
            all.extend(evms(&tree, &record, name, g)?.into_iter().map(|e| e.info).filter(|e| epm.is_none_or(|wanted| wanted == e.epm)));
        }
        Ok(all)
    }
}

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
mod external_security_groups;
#[cfg(test)]
mod fake_substrate;
mod faults;
mod firewall;
mod goals;
pub mod network;
mod operate;
mod planned;
pub mod port_api;
mod ports;
mod records;
mod security_groups;
#[cfg(test)]
mod tests;
mod under_test;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::Mutex;

pub use self::faults::FaultStatus;
use self::goals::{Evm, Forget, evms};
use self::network::NetworkController;
pub use self::operate::{Node, NodeKind, Overview};
pub use self::planned::Planned;
use self::records::{GroupRecord, OverlayRecord, subnet_key};
pub use self::under_test::UnderTestStatus;
use crate::model::TreeSpec;
use crate::model::epm_agent::{AgentHost, EpmAgentSpec};
use crate::model::link_profile::LinkProfileSpec;
use crate::model::network_controller::VpcController;
use crate::model::overlay::{GroupSpec, SubnetSpec, VpcSpec};
use crate::model::ranges::Ranges;
use crate::runtime::capability::{Capability, LinkShaping, Unsupported};
use crate::runtime::link_profiles;
pub use crate::runtime::{
    Failure, Intent, NodeRoute, RuntimeError, Substrate, TopologyStatus, UnderTest, owned_elsewhere,
};
use crate::store::{self, RecordStore};

/// The record kind of the tenant networks (`overlay.json` in a file store).
const OVERLAY: &str = "overlay";

/// A topology as it stands: its underlay and its agents under test.
#[derive(Debug, Clone)]
pub struct TopologyView {
    pub spec: TreeSpec,
    pub status: TopologyStatus,
    pub agents: Vec<EpmAgentSpec>,
    pub agents_status: UnderTestStatus,
    pub profiles: Vec<LinkProfileSpec>,
    /// Links carrying their profile's shaping.
    pub impaired_links: u64,
}

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

/// Where a ping is sent from: an EVM, or an EPM itself (across the underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingSource {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    /// The EPM whose agent sends it.
    pub epm: String,
    /// The namespace it is sent from, as that agent names it.
    pub namespace: String,
}

impl From<&EvmInfo> for PingSource {
    fn from(evm: &EvmInfo) -> Self {
        PingSource { name: evm.name.clone(), ip: evm.ip, epm: evm.epm.clone(), namespace: evm.namespace.clone() }
    }
}

/// A ping from an EVM or EPM to an address, and whether it should get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: PingSource,
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
    /// Changes to tenant networks wait for a change to the underlay in
    /// progress: Terraform may apply an EVM group while the topology it
    /// depends on through unchanged resources is being repaired (1.0.3 does
    /// not order updates through resources without changes), and must find
    /// the rebuilt EPMs whole.
    underlay_lock: tokio::sync::RwLock<()>,
    /// The user's network controller (the provider's `controller` block),
    /// which programs the ports of external VPCs.
    network: Option<Arc<NetworkController>>,
    /// What this provider has planned (parents planned before their
    /// children, in the same plan).
    planned: Planned,
}

impl Controller {
    pub fn new(substrate: Arc<dyn Substrate>, store: Arc<dyn RecordStore>) -> Self {
        Controller {
            substrate,
            store,
            overlay_lock: Mutex::new(()),
            underlay_lock: tokio::sync::RwLock::new(()),
            network: None,
            planned: Planned::default(),
        }
    }

    /// What this provider has planned so far.
    pub fn planned(&self) -> &Planned {
        &self.planned
    }

    pub fn with_network_controller(mut self, network: NetworkController) -> Self {
        self.network = Some(Arc::new(network));
        self
    }

    /// The network controller's base URL (what `${controller_url}` names).
    pub fn network_controller_url(&self) -> Option<&str> {
        self.network.as_deref().map(NetworkController::url)
    }

    /// Refuses an external VPC that nothing could program: no `controller`
    /// block, or a runtime that cannot leave EVMs to a system under test.
    pub fn check_external_vpc(&self) -> Result<(), RuntimeError> {
        if self.network.is_none() {
            return Err(RuntimeError::Conflict(
                "controller is \"external\", but the provider block has no controller { url = \"http://...\" } to program the VPC's ports. \
                 Add one to the provider block, or use controller = \"builtin\"."
                    .into(),
            ));
        }
        if !self.substrate.leaves_ports_to_agents_under_test() {
            return Err(self.unsupported(Capability::ExternalVpcs));
        }
        Ok(())
    }

    fn unsupported(&self, capability: Capability) -> RuntimeError {
        Unsupported { capability, runtime: self.substrate.runtime_name() }.into()
    }

    /// Refuses a topology the runtime cannot hold as configured (e.g. a
    /// name too long for the paths it becomes, or agents under test it
    /// cannot run), before anything is built.
    pub fn check_fits(&self, spec: &TreeSpec) -> Result<(), RuntimeError> {
        self.substrate.check_fits(spec)
    }

    /// Refuses link profiles where the runtime cannot shape links.
    pub fn check_link_profiles(&self) -> Result<(), RuntimeError> {
        self.shaping().map(|_| ())
    }

    fn shaping(&self) -> Result<&dyn LinkShaping, RuntimeError> {
        self.substrate.link_shaping().ok_or_else(|| self.unsupported(Capability::LinkShaping))
    }

    /// How the runtime runs agents under test (whether they need an image).
    pub fn agent_host(&self) -> AgentHost {
        self.substrate.agents_under_test().host()
    }

    /// Makes the runtime match `spec`: creates what is missing, repairs what
    /// drifted and removes what the spec no longer has, then runs `agents`
    /// in every EPM. Failures of single objects are reported in the status;
    /// an `Err` means nothing could be done.
    pub async fn apply_topology(
        &self,
        spec: &TreeSpec,
        agents: &[EpmAgentSpec],
        profiles: &[LinkProfileSpec],
        intent: Intent,
    ) -> Result<TopologyView, RuntimeError> {
        self.store.lock(&spec.name).await?;
        let _underlay = self.underlay_lock.write().await;
        self.record_epm_agents(spec, agents).await?;
        let under_test = UnderTest { agents, controller_url: self.network_controller_url() };
        let mut status = self.substrate.apply_topology(spec, under_test, intent).await?;
        if !status.remade.is_empty() {
            status.failures.extend(self.rebuild_evms(spec, &status.remade).await?);
        }
        let impaired_links = self.apply_link_profiles(spec, profiles, &mut status.failures).await?;
        let agents_status = self.apply_epm_agents(spec, agents, status.ready_epms).await?;
        Ok(TopologyView {
            spec: spec.clone(),
            status,
            agents: agents.to_vec(),
            agents_status,
            profiles: profiles.to_vec(),
            impaired_links,
        })
    }

    /// Has the substrate shape the links and records the profiles; how many
    /// links carry their shaping after it. Shaping refused whole is one
    /// failure, and leaves the record as it was: no link was touched, and a
    /// runtime whose agents shape (kubernetes) puts the recorded profiles in
    /// every goal it pushes.
    async fn apply_link_profiles(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
        failures: &mut Vec<Failure>,
    ) -> Result<u64, RuntimeError> {
        let recorded = self.load_link_profiles(&spec.name).await?;
        if profiles.is_empty() && recorded.is_empty() {
            return Ok(0);
        }
        let shaping = match self.shaping() {
            Ok(shaping) => shaping,
            Err(e) => {
                failures.push(Failure { object: "link_profile".into(), error: e.to_string() });
                return Ok(0);
            }
        };
        match shaping.apply_link_profiles(spec, profiles).await {
            Ok(refused) => {
                failures.extend(refused);
                if recorded != profiles {
                    link_profiles::save(self.store.as_ref(), &spec.name, profiles).await?;
                }
            }
            Err(e) => failures.push(Failure { object: "link_profile".into(), error: e.to_string() }),
        }
        shaping.impaired_links(spec, profiles).await
    }

    async fn load_link_profiles(&self, topology: &str) -> Result<Vec<LinkProfileSpec>, RuntimeError> {
        link_profiles::load(self.store.as_ref(), topology).await
    }

    /// Builds again the EVMs of EPMs the substrate made anew (a replaced
    /// pod takes its namespaces with it): the overlay goals, then every
    /// group's EVMs placed there, announced again where a controller
    /// programs their VPC. Their groups' plans stay empty.
    async fn rebuild_evms(&self, tree: &TreeSpec, remade: &[String]) -> Result<Vec<Failure>, RuntimeError> {
        let _guard = self.overlay_lock.lock().await;
        let record = self.load_overlay(&tree.name).await?;
        if record.groups.is_empty() {
            return Ok(Vec::new());
        }
        let remade: HashSet<&str> = remade.iter().map(String::as_str).collect();
        let mut failures = self.push_overlay(tree, &record, &Forget::default()).await?;
        for (name, group) in &record.groups {
            let rebuilt: Vec<Evm> = evms(tree, &record, name, group)?
                .into_iter()
                .filter(|e| remade.contains(tree.epm(e.epm_index).name.as_str()))
                .collect();
            if rebuilt.is_empty() {
                continue;
            }
            tracing::info!(topology = %tree.name, group = %name, evms = rebuilt.len(), "rebuilding the EVMs of EPMs made anew");
            let rebuilt: Vec<&Evm> = rebuilt.iter().collect();
            failures.extend(self.push_evms(&tree.name, tree, rebuilt.clone(), Vec::new()).await);
            if record.is_external(&group.vpc) {
                failures.extend(self.announce(tree, &record, &group.vpc, &rebuilt).await?.1);
            }
        }
        Ok(failures)
    }

    /// The recorded topology and how much of it is up; `None` when the
    /// runtime has no such topology.
    pub async fn read_topology(&self, name: &str) -> Result<Option<TopologyView>, RuntimeError> {
        let Some((spec, status)) = self.substrate.read_topology(name).await? else {
            // A destroy killed after removing the records (or half-way
            // through), before letting go of the lock: its teardown ends here.
            self.store.finish_abandoned_removal(name).await;
            return Ok(None);
        };
        let agents = self.load_epm_agents(name).await?;
        let agents_status = if agents.is_empty() {
            UnderTestStatus { ready_epms: status.ready_epms, failures: Vec::new() }
        } else {
            self.epm_agents_status(&spec, &agents).await
        };
        let profiles = self.load_link_profiles(name).await?;
        let impaired_links = match self.substrate.link_shaping() {
            Some(shaping) if !profiles.is_empty() => shaping.impaired_links(&spec, &profiles).await?,
            _ => 0,
        };
        Ok(Some(TopologyView { spec, status, agents, agents_status, profiles, impaired_links }))
    }

    /// Whether pieces of a topology without records are still there.
    pub async fn topology_remains(&self, name: &str) -> Result<bool, RuntimeError> {
        self.substrate.remains_without_record(name).await
    }

    /// The recorded spec of a topology, without checking its EPMs (cheap).
    pub async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError> {
        self.substrate.topology_spec(name).await
    }

    /// Removes everything of the topology, its records last, and waits
    /// until its devices are gone.
    pub async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError> {
        self.store.lock(name).await?;
        let _underlay = self.underlay_lock.write().await;
        self.substrate.destroy_topology(name).await?;
        self.store.remove(name).await?;
        self.store.unlock(name).await;
        Ok(())
    }

    /// Lets go of the topology locks this process holds where its exit does
    /// not release them (in a cluster); Terraform is done with the provider.
    pub async fn release(&self) {
        self.store.release_all().await;
    }

    /// The topology's spec; its tenant networks need it to exist.
    async fn tree(&self, topology: &str) -> Result<TreeSpec, RuntimeError> {
        self.substrate
            .topology_spec(topology)
            .await?
            .ok_or_else(|| RuntimeError::Conflict(format!("topology {topology:?} does not exist")))
    }

    /// Takes the topology's lock for a change of its tenant networks;
    /// whether the topology exists. One that is gone (destroyed meanwhile,
    /// e.g. by another run) is not left with a lock of ours.
    async fn lock_tenants(&self, topology: &str) -> Result<bool, RuntimeError> {
        self.store.lock(topology).await?;
        if self.topology_exists(topology).await? {
            return Ok(true);
        }
        self.store.unlock(topology).await;
        Ok(false)
    }

    async fn topology_exists(&self, topology: &str) -> Result<bool, RuntimeError> {
        Ok(self.substrate.topology_spec(topology).await?.is_some())
    }

    async fn load_overlay(&self, topology: &str) -> Result<OverlayRecord, RuntimeError> {
        Ok(store::load_json(self.store.as_ref(), topology, OVERLAY).await?.unwrap_or_default())
    }

    async fn save_overlay(&self, topology: &str, record: &OverlayRecord) -> Result<(), RuntimeError> {
        Ok(store::save_json(self.store.as_ref(), topology, OVERLAY, record).await?)
    }

    /// The EVMs (by namespace) that are whole, as the substrate reads them.
    async fn whole_evms(&self, topology: &str, evms: &[Evm]) -> Result<HashSet<String>, RuntimeError> {
        let specs: Vec<&merak_proto::agent::EvmSpec> = evms.iter().map(|e| &e.spec).collect();
        self.substrate.whole_evms(topology, &specs).await
    }

    /// An EPM as the source of pings across the underlay.
    pub fn epm_ping_source(&self, topology: &str, tree: &TreeSpec, epm: &crate::model::Epm) -> PingSource {
        PingSource {
            name: epm.name.clone(),
            ip: epm.ip,
            epm: epm.name.clone(),
            namespace: self.substrate.node_route(topology, tree, &epm.name).namespace,
        }
    }

    /// Pings from inside EVMs; `full_size`: each as large as its EVM's MTU allows, DF set.
    /// Sends each probe's ping. A probe that must get through and did not
    /// is sent once more before it counts: one lost packet (an ARP request
    /// dropped, a reply later than the timeout on a busy host) is not a
    /// broken path, and a check that flapped on it would show as drift in
    /// the next plan. Probes that must not get through are sent once.
    pub async fn ping(
        &self,
        topology: &str,
        probes: &[Probe],
        timeout_ms: u32,
        full_size: bool,
    ) -> Result<Vec<ProbeOutcome>, RuntimeError> {
        let mut outcomes = self.ping_agents(topology, probes, timeout_ms, full_size).await?;
        let unanswered: Vec<usize> = (0..probes.len())
            .filter(|&i| probes[i].expect_reply && matches!(outcomes.get(i), Some(Ok(false))))
            .collect();
        if unanswered.is_empty() {
            return Ok(outcomes);
        }
        tracing::debug!(topology, probes = unanswered.len(), "pings without a reply; sending them once more");
        let again: Vec<Probe> = unanswered.iter().map(|&i| probes[i].clone()).collect();
        let second = self.ping_agents(topology, &again, timeout_ms, full_size).await?;
        for (i, outcome) in unanswered.into_iter().zip(second) {
            // A second ping that could not be sent leaves the first one's answer.
            if let Ok(reached) = outcome {
                outcomes[i] = Ok(reached);
            }
        }
        Ok(outcomes)
    }

    /// The EVMs (by namespace) that are ready: whole, and in an external
    /// VPC with their ports accepted by the controller.
    fn ready_evms(
        record: &OverlayRecord,
        group: &GroupRecord,
        evms: &[Evm],
        whole: HashSet<String>,
    ) -> HashSet<String> {
        if !record.is_external(&group.vpc) {
            return whole;
        }
        evms.iter()
            .filter(|e| whole.contains(&e.info.namespace) && group.announced.contains(e.host_index))
            .map(|e| e.info.namespace.clone())
            .collect()
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
        self.lock_tenants(&spec.topology).await?;
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        self.tree(&spec.topology).await?;
        let mut record = self.load_overlay(&spec.topology).await?;
        record.put_vpc(spec)?;
        self.save_overlay(&spec.topology, &record).await
    }

    pub async fn read_vpc(&self, topology: &str, name: &str) -> Result<Option<VpcSpec>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(None);
        }
        let record = self.load_overlay(topology).await?;
        Ok(record.vpcs.get(name).and_then(|v| {
            let mut spec = VpcSpec::validate(topology, name, &v.cidr, Some(i64::from(v.vni))).ok()?;
            spec.controller = if v.external { VpcController::External } else { VpcController::Builtin };
            spec.mtu = v.mtu;
            Some(spec)
        }))
    }

    pub async fn delete_vpc(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        if !self.lock_tenants(topology).await? {
            return Ok(());
        }
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let mut record = self.load_overlay(topology).await?;
        if record.remove_vpc(name)? && self.topology_exists(topology).await? {
            self.save_overlay(topology, &record).await?;
        }
        Ok(())
    }

    pub async fn apply_subnet(&self, spec: &SubnetSpec) -> Result<(), RuntimeError> {
        self.lock_tenants(&spec.topology).await?;
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let tree = self.tree(&spec.topology).await?;
        let mut record = self.load_overlay(&spec.topology).await?;
        record.put_subnet(spec)?;
        self.save_overlay(&spec.topology, &record).await?;
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
        let record = self.load_overlay(topology).await?;
        record.subnets.get(&subnet_key(vpc, name)).map(|s| s.spec(topology)).transpose()
    }

    pub async fn list_subnets(&self, topology: &str) -> Result<Vec<SubnetSpec>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(Vec::new());
        }
        self.load_overlay(topology).await?.subnets.values().map(|s| s.spec(topology)).collect()
    }

    pub async fn delete_subnet(&self, topology: &str, vpc: &str, name: &str) -> Result<(), RuntimeError> {
        if !self.lock_tenants(topology).await? {
            return Ok(());
        }
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let mut record = self.load_overlay(topology).await?;
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
            record = self.load_overlay(topology).await?;
        }
        if record.subnets.remove(&subnet_key(vpc, name)).is_some() && self.topology_exists(topology).await? {
            self.save_overlay(topology, &record).await?;
        }
        Ok(())
    }

    pub async fn apply_group(&self, spec: &GroupSpec, intent: Intent) -> Result<GroupStatus, RuntimeError> {
        self.lock_tenants(&spec.topology).await?;
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let topology = &spec.topology;
        let tree = self.tree(topology).await?;
        let mut record = self.load_overlay(topology).await?;
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
                record = self.load_overlay(topology).await?;
            }
        }
        let key = subnet_key(&spec.vpc, &spec.subnet);
        let previous = record.groups.get(&spec.name).cloned();
        let used_before = record.put_group(&tree, spec)?;
        let old_evms = match &previous {
            Some(previous) => evms(&tree, &record, &spec.name, previous)?,
            None => Vec::new(),
        };
        let group = record
            .groups
            .get(&spec.name)
            .cloned()
            .ok_or_else(|| RuntimeError::Conflict(format!("group {} vanished from its record", spec.name)))?;
        let evms = evms(&tree, &record, &spec.name, &group)?;
        self.substrate.make_room(topology, u64::from(tree.hosts), record.evm_count(), record.largest_subnet()).await?;

        // EVMs that leave, or leave their EPM (by counts, an index one EPM
        // gave up may go to another in the same apply), go first. Until
        // they are gone the old record stands, so an interrupted or failed
        // deletion is retried by the next apply.
        let staying: HashSet<(&str, u32)> = evms.iter().map(|e| (e.info.namespace.as_str(), e.epm_index)).collect();
        let leaving: Vec<&Evm> =
            old_evms.iter().filter(|e| !staying.contains(&(e.info.namespace.as_str(), e.epm_index))).collect();
        let external = record.is_external(&spec.vpc);
        if external && !leaving.is_empty() {
            // The controller lets go of the ports first; the record on disk
            // forgets it had them before anything else can fail.
            self.withdraw(&tree, &spec.vpc, &leaving).await?;
            let mut on_disk = self.load_overlay(topology).await?;
            for group in on_disk.groups.get_mut(&spec.name).into_iter().chain(record.groups.get_mut(&spec.name)) {
                group.announced = ports::without(&group.announced, &leaving);
            }
            self.save_overlay(topology, &on_disk).await?;
        }
        let failures = self.push_evms(topology, &tree, Vec::new(), leaving).await;
        if let Some(failure) = failures.first() {
            return Err(RuntimeError::Unavailable(format!(
                "removing {} EVMs failed, first {}: {}",
                failures.len(),
                failure.object,
                failure.error
            )));
        }
        // The record says what should exist before anything is built, so an
        // interrupted apply is finished by the next one.
        self.save_overlay(topology, &record).await?;

        let whole = self.whole_evms(topology, &evms).await?;
        let missing: Vec<&Evm> = evms.iter().filter(|e| !whole.contains(&e.info.namespace)).collect();
        tracing::info!(group = %spec.name, evms = evms.len(), to_build = missing.len(), "EVM group");
        let reused = missing.iter().filter(|e| e.host_index < used_before).map(|e| e.info.mac);
        let forget = Forget::from([(key, merak_agent::overlay::mac_ranges(reused))]);
        let mut failures = if external { Vec::new() } else { self.push_overlay(&tree, &record, &forget).await? };
        failures.extend(self.push_evms(topology, &tree, missing, Vec::new()).await);

        let whole = self.whole_evms(topology, &evms).await?;
        if external {
            // Whole EVMs the controller has not accepted yet (new, refused
            // before, or accepted in other security groups) are announced;
            // what it accepts is recorded at once.
            let port_groups = record.groups.get(&spec.name).map(|g| record.port_security_groups(g)).unwrap_or_default();
            let announced = match record.groups.get(&spec.name) {
                Some(group) if group.announced_groups == port_groups => group.announced.clone(),
                _ => Ranges::default(),
            };
            let unannounced: Vec<&Evm> = evms
                .iter()
                .filter(|e| whole.contains(&e.info.namespace) && !announced.contains(e.host_index))
                .collect();
            let (accepted, refused) = self.announce(&tree, &record, &spec.vpc, &unannounced).await?;
            failures.extend(refused);
            if let Some(saved) = record.groups.get_mut(&spec.name)
                && (!accepted.is_empty() || saved.announced_groups != port_groups)
            {
                saved.announced = Ranges::from_indexes(announced.iter().chain(accepted));
                saved.announced_groups = port_groups;
                self.save_overlay(topology, &record).await?;
            }
        }
        let group = record.groups.get(&spec.name).cloned().unwrap_or(group);
        let ready = Self::ready_evms(&record, &group, &evms, whole);
        let mut status = Self::group_status(&group, &evms, &ready);
        status.failures = failures;
        if !group.confirmed && status.failures.is_empty() && status.ready == group.count {
            if let Some(saved) = record.groups.get_mut(&spec.name) {
                saved.confirmed = true;
            }
            self.save_overlay(topology, &record).await?;
            status.confirmed = true;
        }
        Ok(status)
    }

    pub async fn read_group(
        &self,
        topology: &str,
        name: &str,
    ) -> Result<Option<(GroupSpec, GroupStatus)>, RuntimeError> {
        let Ok(tree) = self.tree(topology).await else { return Ok(None) };
        let record = self.load_overlay(topology).await?;
        let Some(group) = record.groups.get(name) else { return Ok(None) };
        let evms = evms(&tree, &record, name, group)?;
        let whole = self.whole_evms(topology, &evms).await?;
        let ready = Self::ready_evms(&record, group, &evms, whole);
        let mut status = Self::group_status(group, &evms, &ready);
        status.placed_on = group.placement_epms().to_vec();
        Ok(Some((group.spec(topology, name), status)))
    }

    pub async fn delete_group(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        if !self.lock_tenants(topology).await? {
            return Ok(());
        }
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let Ok(tree) = self.tree(topology).await else { return Ok(()) };
        let mut record = self.load_overlay(topology).await?;
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
        let external = record.is_external(&group.vpc);
        if external {
            // Until the controller confirms, the group stays recorded.
            self.withdraw(tree, &group.vpc, &evms.iter().collect::<Vec<_>>()).await?;
        }
        let failures = self.push_evms(topology, tree, Vec::new(), evms.iter().collect()).await;
        if let Some(failure) = failures.first() {
            return Err(RuntimeError::Unavailable(format!(
                "deleting {} EVMs failed, first {}: {}",
                failures.len(),
                failure.object,
                failure.error
            )));
        }
        record.groups.remove(name);
        self.save_overlay(topology, record).await?;
        if external {
            return Ok(());
        }
        for failure in self.push_overlay(tree, record, &Forget::new()).await? {
            tracing::warn!(
                epm = failure.object,
                error = failure.error,
                "could not remove router devices the group left; they go with the topology"
            );
        }
        Ok(())
    }

    pub async fn list_evms(
        &self,
        topology: &str,
        group: Option<&str>,
        epm: Option<&str>,
    ) -> Result<Vec<EvmInfo>, RuntimeError> {
        let tree = self.tree(topology).await?;
        let record = self.load_overlay(topology).await?;
        let mut all = Vec::new();
        for (name, g) in &record.groups {
            if group.is_some_and(|wanted| wanted != name) {
                continue;
            }
            all.extend(
                evms(&tree, &record, name, g)?
                    .into_iter()
                    .map(|e| e.info)
                    .filter(|e| epm.is_none_or(|wanted| wanted == e.epm)),
            );
        }
        Ok(all)
    }
}

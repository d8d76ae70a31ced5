//! The local runtime's tenant networks: records of VPCs, subnets and EVM
//! groups, each EPM's overlay goal computed from them (the provider is the
//! controller), and EVM batches pushed to the agents, many EPMs at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;

use futures::StreamExt;
use merak_agent::netdev;
use merak_agent::netns;
use merak_proto::agent::overlay_client::OverlayClient;
use merak_proto::agent::{EvmBatch, EvmSpec, OverlayGoal, PingProbe, PingReply, PingRequest, SubnetGoal, VpcGoal};
use serde::{Deserialize, Serialize};

use super::LocalRuntime;
use crate::model::overlay::{self, DeviceModel, GroupSpec, Placement, Ranges, SubnetSpec, VpcSpec};
use crate::model::{Epm, TreeSpec, naming};
use crate::runtime::{EvmInfo, Failure, GroupStatus, Intent, Probe, ProbeOutcome, RuntimeError, agent_client};

/// EPMs talked to at once.
const PARALLEL_EPMS: usize = 16;
/// EPMs pinging at once (each agent runs 2 pings at a time; see
/// host_limits::PINGS_AT_ONCE): every first ping floods an ARP request to the
/// whole subnet, and many at once overflow the kernel's backlog.
const PINGING_EPMS: usize = 2;
/// EPMs deleting EVMs at once (see push_evms).
const DELETING_EPMS: usize = 128;
/// EVMs per request to one agent.
const BATCH: usize = 2000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct OverlayRecord {
    next_id: u32,
    vpcs: BTreeMap<String, VpcRecord>,
    /// Keyed `vpc/subnet`.
    subnets: BTreeMap<String, SubnetRecord>,
    /// Keyed by group name (unique in the topology: it names EVM namespaces).
    groups: BTreeMap<String, GroupRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VpcRecord {
    cidr: String,
    vni: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SubnetRecord {
    vpc: String,
    name: String,
    cidr: String,
    gateway: String,
    vni: u32,
    id: u32,
    /// One past the highest host index any EVM ever had here: below it, an
    /// address may have lived on another EPM (see push_overlay's `forget`).
    #[serde(default)]
    used_below: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupRecord {
    vpc: String,
    subnet: String,
    count: u32,
    placement: String,
    epms: Vec<String>,
    /// The EPMs the group was placed on when created (its `epms`, or every
    /// EPM then): growing the topology later must not move its EVMs.
    #[serde(default)]
    placed_on: Vec<String>,
    #[serde(default = "veth")]
    device_model: String,
    id: u32,
    ranges: Ranges,
    /// Placement by counts: the counts as configured, and which EVM
    /// indexes each EPM holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    counts: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    slots: BTreeMap<String, Ranges>,
    /// A create of the group succeeded (records from before this field
    /// existed were made by successful creates). An unconfirmed group, left
    /// by a create that failed or was interrupted, is adopted by the next
    /// create and deleted with its subnet.
    #[serde(default = "confirmed")]
    confirmed: bool,
}

fn confirmed() -> bool {
    true
}

impl OverlayRecord {
    /// EVMs of all groups.
    pub(super) fn evm_count(&self) -> u64 {
        self.groups.values().map(|g| u64::from(g.count)).sum()
    }

    /// EVMs in the most populated subnet.
    pub(super) fn largest_subnet(&self) -> u64 {
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

fn subnet_key(vpc: &str, subnet: &str) -> String {
    format!("{vpc}/{subnet}")
}

impl SubnetRecord {
    fn spec(&self, topology: &str) -> Result<SubnetSpec, RuntimeError> {
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
    fn placement_epms(&self) -> &[String] {
        if self.placed_on.is_empty() { &self.epms } else { &self.placed_on }
    }

    /// Each EVM's index and EPM, in index order.
    fn layout(&self, tree: &TreeSpec, name: &str) -> Result<Vec<(u32, Epm)>, RuntimeError> {
        if self.placement == "counts" {
            let mut layout = Vec::with_capacity(self.count as usize);
            for (epm_name, held) in &self.slots {
                let epm = LocalRuntime::epm_named(tree, epm_name)?;
                layout.extend(held.iter().map(|k| (k as u32, epm.clone())));
            }
            layout.sort_unstable_by_key(|(k, _)| *k);
            return Ok(layout);
        }
        let spec = self.spec(&tree.name, name);
        let candidates = LocalRuntime::candidates(tree, self.placement_epms())?;
        Ok((0..self.count).filter_map(|k| Some((k, candidates.get(spec.epm_of(k, candidates.len())?)?.clone()))).collect())
    }

    /// EVMs per EPM, by name, as the resource reports them.
    fn per_epm(&self, evms: &[Evm]) -> BTreeMap<String, u32> {
        if self.placement == "counts" {
            return self.counts.clone();
        }
        let mut per_epm = BTreeMap::new();
        for evm in evms {
            *per_epm.entry(evm.info.epm.clone()).or_insert(0) += 1;
        }
        per_epm
    }

    fn spec(&self, topology: &str, name: &str) -> GroupSpec {
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
type Forget = HashMap<String, Vec<String>>;

/// One EVM as the runtime builds it.
struct Evm {
    info: EvmInfo,
    epm_index: u32,
    /// Its address's host index in the subnet.
    host_index: u64,
    spec: EvmSpec,
}

impl LocalRuntime {
    fn overlay_path(&self, topology: &str) -> std::path::PathBuf {
        self.topology_dir(topology).join("overlay.json")
    }

    pub(super) fn load_overlay(&self, topology: &str) -> Result<OverlayRecord, RuntimeError> {
        let path = self.overlay_path(topology);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RuntimeError::CorruptRecord {
                topology: topology.into(),
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(OverlayRecord::default()),
            Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn save_overlay(&self, topology: &str, record: &OverlayRecord) -> Result<(), RuntimeError> {
        let path = self.overlay_path(topology);
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| RuntimeError::io("encoding the overlay record", io::Error::other(e)))?;
        fs::write(&temporary, bytes)
            .and_then(|()| fs::rename(&temporary, &path))
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
    }

    /// The topology's spec; its tenant networks need it to exist.
    pub(super) fn tree(&self, topology: &str) -> Result<TreeSpec, RuntimeError> {
        let record = self
            .load_record(topology)?
            .ok_or_else(|| RuntimeError::Conflict(format!("topology {topology:?} does not exist")))?;
        record.spec.to_spec().map_err(|detail| RuntimeError::CorruptRecord {
            topology: topology.into(),
            path: self.record_path(topology).display().to_string(),
            detail,
        })
    }

    /// The EPMs a group may use, in placement order.
    fn candidates(tree: &TreeSpec, names: &[String]) -> Result<Vec<Epm>, RuntimeError> {
        if names.is_empty() {
            return Ok(tree.epms().collect());
        }
        names.iter().map(|name| Self::epm_named(tree, name)).collect()
    }

    fn epm_named(tree: &TreeSpec, name: &str) -> Result<Epm, RuntimeError> {
        tree.epms()
            .find(|epm| epm.name == name)
            .ok_or_else(|| RuntimeError::Conflict(format!("EPM {name:?} is not in topology {}", tree.name)))
    }

    /// Every EVM of a group, in index order.
    fn evms(tree: &TreeSpec, record: &OverlayRecord, name: &str, group: &GroupRecord) -> Result<Vec<Evm>, RuntimeError> {
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
    fn overlay_goals(tree: &TreeSpec, record: &OverlayRecord, forget: &Forget) -> Result<Vec<(Epm, OverlayGoal)>, RuntimeError> {
        // EPM indexes holding EVMs, per VPC and per subnet.
        let mut vpc_hosts: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut subnet_hosts: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
        for (name, group) in &record.groups {
            let used: Vec<u32> = match group.placement.as_str() {
                "counts" => group.slots.keys().map(|name| Self::epm_named(tree, name).map(|e| e.index)).collect::<Result<_, _>>()?,
                _ => {
                    let candidates = Self::candidates(tree, group.placement_epms())?;
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

    async fn overlay_client(&self, topology: &str, epm: &str) -> Result<OverlayClient<tonic::transport::Channel>, RuntimeError> {
        let socket = self.agent_socket(topology, epm);
        let channel = agent_client::channel(&socket)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("agent of {epm}: {e}")))?;
        Ok(OverlayClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
    }

    async fn send_overlay(&self, topology: &str, epm: &str, goal: OverlayGoal) -> Result<(), RuntimeError> {
        let mut client = self.overlay_client(topology, epm).await?;
        client.apply_overlay(goal).await.map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(())
    }

    async fn send_evms(&self, topology: &str, epm: &str, batch: EvmBatch) -> Result<merak_proto::agent::EvmReply, RuntimeError> {
        let mut client = self.overlay_client(topology, epm).await?;
        let reply = client.apply_evms(batch).await.map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(reply.into_inner())
    }

    /// Pushes every EPM's overlay goal; returns the EPMs that failed.
    async fn push_overlay(&self, tree: &TreeSpec, record: &OverlayRecord, forget: &Forget) -> Result<Vec<Failure>, RuntimeError> {
        let goals = Self::overlay_goals(tree, record, forget)?;
        let failures: Vec<Failure> = futures::stream::iter(goals)
            .map(|(epm, goal)| async move {
                // An agent that stopped answering is restarted and gets the goal again.
                let result = match self.send_overlay(&tree.name, &epm.name, goal.clone()).await {
                    Err(_) if self.revive_agent(&tree.name, &epm.name).await.is_ok() => self.send_overlay(&tree.name, &epm.name, goal).await,
                    result => result,
                };
                result.err().map(|e| Failure { object: epm.name.clone(), error: format!("overlay: {e}") })
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        Ok(failures)
    }

    /// Sends EVM batches, grouped by EPM; returns the failures.
    async fn push_evms(&self, topology: &str, tree: &TreeSpec, create: Vec<&Evm>, delete: Vec<&Evm>) -> Vec<Failure> {
        let deleting = create.is_empty();
        let mut by_epm: BTreeMap<u32, (Vec<EvmSpec>, Vec<EvmSpec>)> = BTreeMap::new();
        for evm in create {
            by_epm.entry(evm.epm_index).or_default().0.push(evm.spec.clone());
        }
        for evm in delete {
            by_epm.entry(evm.epm_index).or_default().1.push(evm.spec.clone());
        }
        let mut requests = Vec::new();
        for (epm_index, (mut create, mut delete)) in by_epm {
            while !create.is_empty() || !delete.is_empty() {
                let create_now: Vec<_> = create.drain(..create.len().min(BATCH)).collect();
                let delete_now: Vec<_> = delete.drain(..delete.len().min(BATCH)).collect();
                requests.push((tree.epm(epm_index).name, EvmBatch { create: create_now, delete: delete_now }));
            }
        }
        // Deleting: every agent at once. The kernel tears namespaces down in
        // batches, and one large batch costs far less than many small waves
        // (measured: 5000 EVMs in 8.3 s at once, 15 s in waves of 16 EPMs).
        let parallel = if deleting { DELETING_EPMS } else { PARALLEL_EPMS };
        // Progress for long applies, at INFO (TF_LOG=info shows it).
        let total: usize = requests.iter().map(|(_, b)| b.create.len() + b.delete.len()).sum();
        let done = &std::sync::atomic::AtomicUsize::new(0);
        let verb = if deleting { "deleted" } else { "built" };
        futures::stream::iter(requests)
            .map(|(epm, batch)| async move {
                let size = batch.create.len() + batch.delete.len();
                let reply = match self.send_evms(topology, &epm, batch.clone()).await {
                    Ok(reply) => Ok(reply),
                    // Deleting needs no agent: this host can remove what the
                    // agent would (its namespaces and ports), so a dead agent
                    // never blocks a destroy.
                    Err(e) if deleting => {
                        tracing::warn!(epm, error = %e, "agent unreachable; deleting its EVMs from the provider");
                        Ok(merak_agent::evm::apply(&batch).await)
                    }
                    // An agent that stopped answering is restarted, once.
                    Err(e) => match self.revive_agent(topology, &epm).await {
                        Ok(()) => self.send_evms(topology, &epm, batch).await,
                        Err(revival) => Err(RuntimeError::Unavailable(format!("{e}; restarting it failed: {revival}"))),
                    },
                };
                let finished = done.fetch_add(size, std::sync::atomic::Ordering::Relaxed) + size;
                tracing::info!(topology, "EVMs {verb}: {finished} of {total}");
                match reply {
                    Ok(reply) => reply.failures.into_iter().map(|f| Failure { object: format!("{epm}: {}", f.namespace), error: f.error }).collect(),
                    Err(e) => vec![Failure { object: epm, error: e.to_string() }],
                }
            })
            .buffer_unordered(parallel)
            .flat_map(futures::stream::iter)
            .collect()
            .await
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

    /// The EVMs (by namespace) that are whole, read from the kernel: the
    /// namespace exists and the EVM's port is up on a bridge in its router
    /// namespace, the last step of building one (see merak_agent::evm). A
    /// namespace alone may be a half-built EVM left by a kill.
    async fn whole_evms(topology: &str, evms: &[Evm]) -> Result<HashSet<String>, RuntimeError> {
        let present = Self::present_namespaces(topology)?;
        let mut by_router: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for evm in evms.iter().filter(|e| present.contains(&e.info.namespace)) {
            let port = merak_agent::evm::eth0_peer(&evm.spec);
            by_router.entry(evm.spec.router_namespace.clone()).or_default().push((evm.info.namespace.clone(), port));
        }
        let whole: Vec<Vec<String>> = futures::stream::iter(by_router)
            .map(|(router, evms): (String, Vec<(String, String)>)| async move {
                // A router that is gone or unreadable holds no whole EVM.
                let Ok(netlink) = netns::open(&router).await else { return Vec::new() };
                let Ok(links) = netlink.links().await else { return Vec::new() };
                let ports: HashMap<&str, &netdev::LinkState> = links.iter().map(|l| (l.name.as_str(), l)).collect();
                evms.into_iter()
                    .filter(|(_, port)| ports.get(port.as_str()).is_some_and(|l| merak_agent::evm::is_whole(l)))
                    .map(|(namespace, _)| namespace)
                    .collect()
            })
            .buffer_unordered(PARALLEL_EPMS)
            .collect()
            .await;
        Ok(whole.into_iter().flatten().collect())
    }

    fn present_namespaces(topology: &str) -> Result<HashSet<String>, RuntimeError> {
        netns::list_with_prefix(&naming::namespace(topology, "vm."))
            .map(|names| names.into_iter().collect())
            .map_err(|e| RuntimeError::io("listing namespaces", e))
    }

    pub(super) async fn apply_vpc_impl(&self, spec: &VpcSpec) -> Result<(), RuntimeError> {
        self.lock(&spec.topology)?;
        let _guard = self.overlay_lock.lock().await;
        self.tree(&spec.topology)?;
        let mut record = self.load_overlay(&spec.topology)?;
        if let Some((other, _)) = record.vpcs.iter().find(|(name, v)| **name != spec.name && v.vni == spec.vni) {
            return Err(RuntimeError::Conflict(format!("VNI {} is already VPC {other}'s; set a different vni", spec.vni)));
        }
        record.vpcs.insert(spec.name.clone(), VpcRecord { cidr: spec.cidr.to_string(), vni: spec.vni });
        self.save_overlay(&spec.topology, &record)
    }

    pub(super) async fn read_vpc_impl(&self, topology: &str, name: &str) -> Result<Option<VpcSpec>, RuntimeError> {
        if self.load_record(topology)?.is_none() {
            return Ok(None);
        }
        let record = self.load_overlay(topology)?;
        Ok(record.vpcs.get(name).and_then(|v| VpcSpec::validate(topology, name, &v.cidr, Some(i64::from(v.vni))).ok()))
    }

    pub(super) async fn delete_vpc_impl(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        self.lock(topology)?;
        let _guard = self.overlay_lock.lock().await;
        let mut record = self.load_overlay(topology)?;
        if let Some(subnet) = record.subnets.values().find(|s| s.vpc == name) {
            return Err(RuntimeError::Conflict(format!("VPC {name} still has subnet {}; delete it first", subnet.name)));
        }
        if record.vpcs.remove(name).is_some() && self.topology_dir(topology).exists() {
            self.save_overlay(topology, &record)?;
        }
        Ok(())
    }

    pub(super) async fn apply_subnet_impl(&self, spec: &SubnetSpec) -> Result<(), RuntimeError> {
        self.lock(&spec.topology)?;
        let _guard = self.overlay_lock.lock().await;
        let tree = self.tree(&spec.topology)?;
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

    pub(super) async fn read_subnet_impl(&self, topology: &str, vpc: &str, name: &str) -> Result<Option<SubnetSpec>, RuntimeError> {
        if self.load_record(topology)?.is_none() {
            return Ok(None);
        }
        let record = self.load_overlay(topology)?;
        record.subnets.get(&subnet_key(vpc, name)).map(|s| s.spec(topology)).transpose()
    }

    pub(super) async fn list_subnets_impl(&self, topology: &str) -> Result<Vec<SubnetSpec>, RuntimeError> {
        if self.load_record(topology)?.is_none() {
            return Ok(Vec::new());
        }
        self.load_overlay(topology)?.subnets.values().map(|s| s.spec(topology)).collect()
    }

    pub(super) async fn delete_subnet_impl(&self, topology: &str, vpc: &str, name: &str) -> Result<(), RuntimeError> {
        self.lock(topology)?;
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
            let tree = self.tree(topology)?;
            for orphan in orphans {
                self.remove_group(&tree, &mut record, &orphan).await?;
            }
            record = self.load_overlay(topology)?;
        }
        if record.subnets.remove(&subnet_key(vpc, name)).is_some() && self.topology_dir(topology).exists() {
            self.save_overlay(topology, &record)?;
        }
        Ok(())
    }

    pub(super) async fn apply_group_impl(&self, spec: &GroupSpec, intent: Intent) -> Result<GroupStatus, RuntimeError> {
        self.lock(&spec.topology)?;
        let _guard = self.overlay_lock.lock().await;
        let topology = &spec.topology;
        let tree = self.tree(topology)?;
        let mut record = self.load_overlay(topology)?;
        if let Some(existing) = record.groups.get(&spec.name) {
            let incompatible = existing.vpc != spec.vpc
                || existing.subnet != spec.subnet
                || existing.device_model != spec.device_model.name()
                || existing.placement != spec.placement.name();
            if intent == Intent::Create && existing.confirmed {
                let id = format!("{topology}/{}/{}/{}", existing.vpc, existing.subnet, spec.name);
                return Err(crate::runtime::owned_elsewhere("merak_evm_group", "EVM group", &id));
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
                    Self::epm_named(&tree, name)?;
                }
                let mut slots = previous.as_ref().map(|g| g.slots.clone()).unwrap_or_default();
                overlay::assign_slots(&mut slots, counts);
                (Vec::new(), counts.clone(), slots)
            }
            _ => {
                let placed_on: Vec<String> = match &previous {
                    Some(previous) if !previous.placed_on.is_empty() => previous.placed_on.clone(),
                    _ => Self::candidates(&tree, &spec.epms)?.into_iter().map(|e| e.name).collect(),
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
            Some(previous) => Self::evms(&tree, &record, &spec.name, previous)?,
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
        let evms = Self::evms(&tree, &record, &spec.name, &group)?;
        Self::check_bridges(&tree, &record, &spec.vpc, &spec.subnet)?;
        if let Some(subnet) = record.subnets.get_mut(&key) {
            subnet.used_below = used_before.max(ranges.end());
        }
        super::host_limits::ensure(
            &self.topology_dir(topology),
            super::host_limits::needs(u64::from(tree.hosts), record.evm_count(), record.largest_subnet()),
        )
        .map_err(|e| RuntimeError::io("raising host network limits (gc_thresh3, netdev_max_backlog)", e))?;

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

        let whole = Self::whole_evms(topology, &evms).await?;
        let missing: Vec<&Evm> = evms.iter().filter(|e| !whole.contains(&e.info.namespace)).collect();
        tracing::info!(group = %spec.name, evms = evms.len(), to_build = missing.len(), "EVM group");
        let reused = missing.iter().filter(|e| e.host_index < used_before).map(|e| e.info.mac);
        let forget = Forget::from([(key, merak_agent::overlay::mac_ranges(reused))]);
        let mut failures = self.push_overlay(&tree, &record, &forget).await?;
        failures.extend(self.push_evms(topology, &tree, missing, Vec::new()).await);

        let whole = Self::whole_evms(topology, &evms).await?;
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

    pub(super) async fn read_group_impl(&self, topology: &str, name: &str) -> Result<Option<(GroupSpec, GroupStatus)>, RuntimeError> {
        let Ok(tree) = self.tree(topology) else { return Ok(None) };
        let record = self.load_overlay(topology)?;
        let Some(group) = record.groups.get(name) else { return Ok(None) };
        let evms = Self::evms(&tree, &record, name, group)?;
        let whole = Self::whole_evms(topology, &evms).await?;
        let mut status = Self::group_status(group, &evms, &whole);
        status.placed_on = group.placement_epms().to_vec();
        Ok(Some((group.spec(topology, name), status)))
    }

    pub(super) async fn delete_group_impl(&self, topology: &str, name: &str) -> Result<(), RuntimeError> {
        self.lock(topology)?;
        let _guard = self.overlay_lock.lock().await;
        let Ok(tree) = self.tree(topology) else { return Ok(()) };
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
        let evms = Self::evms(tree, record, name, &group)?;
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

    pub(super) async fn list_evms_impl(&self, topology: &str, group: Option<&str>, epm: Option<&str>) -> Result<Vec<EvmInfo>, RuntimeError> {
        let tree = self.tree(topology)?;
        let record = self.load_overlay(topology)?;
        let mut all = Vec::new();
        for (name, g) in &record.groups {
            if group.is_some_and(|wanted| wanted != name) {
                continue;
            }
            all.extend(Self::evms(&tree, &record, name, g)?.into_iter().map(|e| e.info).filter(|e| epm.is_none_or(|wanted| wanted == e.epm)));
        }
        Ok(all)
    }

    pub(super) async fn ping_impl(&self, topology: &str, probes: &[Probe], timeout_ms: u32) -> Result<Vec<ProbeOutcome>, RuntimeError> {
        // Owned keys: borrowing ones trip the higher-ranked lifetime check
        // of futures streams inside async-trait methods.
        let mut by_epm: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, probe) in probes.iter().enumerate() {
            by_epm.entry(probe.from.epm.clone()).or_default().push(i);
        }
        let mut outcomes = vec![Ok(false); probes.len()];
        let answers: Vec<Result<(Vec<usize>, PingReply), RuntimeError>> = futures::stream::iter(by_epm)
            .map(|(epm, indexes): (String, Vec<usize>)| async move {
                let mut client = self.overlay_client(topology, &epm).await?;
                let request = PingRequest {
                    probes: indexes.iter().map(|&i| PingProbe { from_namespace: probes[i].from.namespace.clone(), to: probes[i].to.to_string() }).collect(),
                    timeout_ms,
                };
                let reply = client.ping(request).await.map_err(|s| RuntimeError::Unavailable(format!("{epm}: {}", s.message())))?;
                Ok((indexes, reply.into_inner()))
            })
            .buffer_unordered(PINGING_EPMS)
            .collect()
            .await;
        for answer in answers {
            let (indexes, reply) = answer?;
            for (n, i) in indexes.into_iter().enumerate() {
                let error = reply.errors.get(n).filter(|e| !e.is_empty());
                outcomes[i] = match error {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply.reached.get(n).copied().unwrap_or(false)),
                };
            }
        }
        Ok(outcomes)
    }
}

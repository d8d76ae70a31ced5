//! The local runtime: the whole emulation on this host. EPMs and vswitches
//! are named network namespaces, links are veth pairs created straight into
//! their namespaces, and every EPM has an agent serving its own socket from
//! inside its namespace. One merak-agent process per topology (the agent
//! host) serves all of them: at 10,000 EPMs a process each cost more than
//! their work (see merak_agent::host).
//!
//! The runtime keeps a record per topology under its state directory (the
//! spec it last applied and the host's pid), written atomically, so that
//! Read and import work from the host alone and destroy finds every agent.
//!
//! Rooms: this file is the [`Substrate`] the controller drives and the
//! topology's record; `agent_host` runs and asks the agent host,
//! `underlay` makes and repairs namespaces and links, `teardown`
//! removes a topology until the kernel shows none of it; `fabric` routes
//! fat trees, `shaping` shapes links, `faults` holds links down for
//! `merak_fault`s, `host_limits` sizes the kernel's
//! tables, `tls` holds the TCP agents' certificates, `evms` reads
//! which EVMs are whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use merak_netdev::netdev::{self, Netlink};
use merak_netdev::netns;
use merak_proto::agent::{EvmBatch, EvmReply, EvmSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

mod agent_host;
mod evms;
mod fabric;
mod faults;
mod host_limits;
mod shaping;
mod teardown;
mod tls;
mod underlay;

use self::agent_host::{TcpAgents, host_answers};
use self::teardown::TEARDOWN_PASSES;
use self::underlay::on_bridge;
use super::capability::{AgentsUnderTest, LinkFaults, LinkShaping, SupervisedAgents};
use super::{
    Failure, Intent, NodeRoute, RecordedSpec, RuntimeError, Substrate, TopologyStatus, UnderTest, agent_client, held,
    process,
};
use crate::model::link_profile::LinkProfileSpec;
use crate::model::naming::{self, BRIDGE, UPLINK};
use crate::model::{Epm, TreeSpec, Vswitch};
use crate::store::{self as records, RecordStore, StoreError};

/// How many EPMs are worked on at once.
const PARALLEL_EPMS: usize = 16;

/// The record kind of a topology (`topology.json` in a file store).
const TOPOLOGY: &str = "topology";

/// How the controller reaches the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentTransport {
    /// Each agent's unix socket under the state directory (mode 0600).
    Unix,
    /// TCP on loopback, mutual TLS with the topology's CA.
    Tcp,
}

impl AgentTransport {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "unix" => Some(AgentTransport::Unix),
            "tcp" => Some(AgentTransport::Tcp),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct LocalRuntime {
    /// Per topology a directory: its agents' sockets, certificates and log.
    state_dir: PathBuf,
    agent_path: PathBuf,
    transport: AgentTransport,
    /// Where the topology records live (files in the same directories).
    store: Arc<dyn RecordStore>,
    /// Serializes changes to the topology records' agent pids (agents are
    /// restarted from many EPM tasks at once).
    agents_lock: Mutex<()>,
    /// Over TCP, per topology: each EPM agent's address (read from the
    /// record once, then kept current), and the controller's TLS connector.
    tcp_agents: std::sync::Mutex<HashMap<String, TcpAgents>>,
    /// The build id of the installed agent binary (computed once).
    installed_build: std::sync::OnceLock<String>,
}

/// What the runtime remembers of a topology.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    spec: RecordedSpec,
    /// EPM name → pid of the process serving its agent (the host's).
    agents: BTreeMap<String, u32>,
    /// Over TCP, EPM name → where its agent listens.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    addresses: BTreeMap<String, String>,
    /// The topology's agent host. Records from before hosts existed have
    /// none (their EPMs had an agent process each; the next apply replaces
    /// those).
    #[serde(default)]
    host: Option<u32>,
    /// A create of the topology succeeded (see [`Intent`]). Records from
    /// before this field existed were made by successful creates.
    #[serde(default = "confirmed")]
    confirmed: bool,
}

fn confirmed() -> bool {
    true
}

impl LocalRuntime {
    pub fn new(
        state_dir: PathBuf,
        agent_path: PathBuf,
        transport: AgentTransport,
        store: Arc<dyn RecordStore>,
    ) -> Self {
        LocalRuntime {
            state_dir,
            agent_path,
            transport,
            store,
            agents_lock: Mutex::new(()),
            tcp_agents: std::sync::Mutex::default(),
            installed_build: std::sync::OnceLock::new(),
        }
    }

    fn tls_dir(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology).join("tls")
    }

    fn topology_dir(&self, topology: &str) -> PathBuf {
        self.state_dir.join(topology)
    }

    async fn load_record(&self, topology: &str) -> Result<Option<Record>, RuntimeError> {
        Ok(records::load_json(self.store.as_ref(), topology, TOPOLOGY).await?)
    }

    /// How the topology's agents were last served: over TCP when its record
    /// holds their addresses, else on unix sockets.
    pub async fn served_transport(&self, topology: &str) -> Result<AgentTransport, RuntimeError> {
        let record = self.load_record(topology).await?.unwrap_or_default();
        Ok(if record.addresses.is_empty() { AgentTransport::Unix } else { AgentTransport::Tcp })
    }

    async fn save_record(&self, topology: &str, record: &Record) -> Result<(), RuntimeError> {
        Ok(records::save_json(self.store.as_ref(), topology, TOPOLOGY, record).await?)
    }

    /// The spec a record holds; a record whose spec no longer validates is corrupt.
    fn spec_of(&self, topology: &str, record: &Record) -> Result<TreeSpec, RuntimeError> {
        record.spec.to_spec().map_err(|detail| {
            RuntimeError::Store(StoreError::Corrupt {
                topology: topology.into(),
                location: self.store.location(topology, TOPOLOGY),
                detail,
            })
        })
    }

    async fn status(&self, spec: &TreeSpec, record: &Record) -> TopologyStatus {
        // The host, asked once: alive, answering, and of the installed build.
        let control = self.host_socket(&spec.name);
        let host_current = match record.host {
            Some(pid) if process::is_agent(pid, &control) => {
                host_answers(&control).await.is_some_and(|(_, build)| build == self.installed_build())
            }
            _ => false,
        };
        let served =
            |epm: &str| host_current && record.host.is_some() && record.agents.get(epm) == record.host.as_ref();
        // Ends a fault holds down count as wired: they are as declared.
        let held = held::recorded_ends(self.store.as_ref(), spec).await.unwrap_or_default();
        let held = &held;
        let nic_held = |epm: &str| held.contains(&(epm.to_string(), naming::EPM_DATA_NIC.to_string()));
        if let Some(fabric) = &spec.fabric {
            let (served, nic_held) = (&served, &nic_held);
            let ready = futures::stream::iter(spec.epms())
                .map(|epm| async move {
                    self.edge_serves(&spec.name, &fabric.host_port(epm.index), held).await
                        && self.epm_ready(spec, &epm, served(&epm.name), nic_held(&epm.name)).await
                })
                .buffer_unordered(PARALLEL_EPMS)
                .filter(|ready| futures::future::ready(*ready))
                .count()
                .await;
            return TopologyStatus { ready_epms: ready as u32, ..TopologyStatus::default() };
        }
        // Each vswitch's ports, read once. A missing vswitch, or a link down
        // or off its bridge (a kill mid-way through wiring it), cuts off
        // every EPM below it.
        let switches = spec.vswitches();
        // Owned items: borrowing ones trip the higher-ranked lifetime check
        // of futures streams inside async-trait methods.
        let ports: HashMap<(u32, u32), Vec<netdev::LinkState>> = futures::stream::iter(switches.clone())
            .map(|switch: Vswitch| async move {
                let namespace = naming::namespace(&spec.name, &switch.name());
                let links = match netns::open(&namespace).await {
                    Ok(netlink) => netlink.links().await.ok(),
                    Err(_) => None,
                };
                links.map(|links| ((switch.level, switch.index), links))
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        let wired = |at: (u32, u32), port: &str| {
            let Some(links) = ports.get(&at) else { return false };
            let Some(bridge) = links.iter().find(|l| l.name == BRIDGE && l.up) else { return false };
            let port_held = held.contains(&(naming::vswitch_name(at.0, at.1), port.to_string()));
            links.iter().any(|l| {
                l.name == port && (on_bridge(l, bridge.index) || (port_held && l.controller == Some(bridge.index)))
            })
        };
        let mut reachable: HashMap<(u32, u32), bool> = HashMap::new();
        for switch in &switches {
            let here = (switch.level, switch.index);
            let linked = match switch.parent {
                None => ports.get(&here).is_some_and(|links| links.iter().any(|l| l.name == BRIDGE && l.up)),
                Some(parent) => {
                    let above = (switch.level + 1, parent);
                    reachable[&above] && wired(here, UPLINK) && wired(above, &naming::downlink_port(switch.index))
                }
            };
            reachable.insert(here, linked);
        }
        let (reachable, wired, served, nic_held) = (&reachable, &wired, &served, &nic_held);
        let ready = futures::stream::iter(spec.epms())
            .map(|epm| async move {
                let tor = (0, epm.rack);
                reachable[&tor]
                    && wired(tor, &naming::host_port(epm.index))
                    && self.epm_ready(spec, &epm, served(&epm.name), nic_held(&epm.name)).await
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter(|ready| futures::future::ready(*ready))
            .count()
            .await;
        TopologyStatus { ready_epms: ready as u32, ..TopologyStatus::default() }
    }
}

#[tonic::async_trait]
impl LinkShaping for LocalRuntime {
    async fn apply_link_profiles(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
    ) -> Result<Vec<Failure>, RuntimeError> {
        self.shape_links(spec, profiles).await
    }

    async fn impaired_links(&self, spec: &TreeSpec, profiles: &[LinkProfileSpec]) -> Result<u64, RuntimeError> {
        self.count_shaped(spec, profiles).await
    }
}

impl SupervisedAgents for LocalRuntime {
    fn log_dir(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology)
    }
}

#[tonic::async_trait]
impl Substrate for LocalRuntime {
    async fn apply_topology(
        &self,
        spec: &TreeSpec,
        _under_test: UnderTest<'_>,
        intent: Intent,
    ) -> Result<TopologyStatus, RuntimeError> {
        let topology = &spec.name;
        netns::prepare_run_dir().map_err(|e| RuntimeError::io("preparing /run/netns", e))?;
        let existing = self.load_record(topology).await?;
        if intent == Intent::Create && existing.as_ref().is_some_and(|r| r.confirmed) {
            return Err(super::owned_elsewhere("merak_topology", "topology", topology));
        }
        let dir = self.topology_dir(topology);
        fs::create_dir_all(&dir).map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        host_limits::ensure(&dir, host_limits::underlay_needs())
            .map_err(|e| RuntimeError::io("registering with the host limits", e))?;
        // A new record is unconfirmed until the create succeeds.
        let mut record = existing.unwrap_or_default();

        let switches = spec.vswitches();
        let epms: Vec<Epm> = spec.epms().collect();
        let mut keep: HashSet<String> = switches.iter().map(|s| naming::namespace(topology, &s.name())).collect();
        keep.extend(spec.fabric.iter().flat_map(|f| f.switches()).map(|s| fabric::switch_namespace(topology, &s)));
        keep.extend(epms.iter().map(|e| naming::namespace(topology, &e.name)));
        let previous = record.spec.to_spec().ok();
        self.tear_down(topology, previous.as_ref(), &keep, &mut record).await?;
        record.spec = RecordedSpec::of(spec);
        self.save_record(topology, &record).await?;

        // Vswitches root first, so every parent exists before its children.
        let mut failures = Vec::new();
        let mut switch_netlink: HashMap<(u32, u32), Netlink> = HashMap::new();
        for switch in &switches {
            let parent = switch.parent.and_then(|p| switch_netlink.get(&(switch.level + 1, p)));
            if switch.parent.is_some() && parent.is_none() {
                failures.push(Failure { object: switch.name(), error: "its parent vswitch failed".into() });
                continue;
            }
            match self.ensure_vswitch(topology, switch, parent).await {
                Ok(netlink) => {
                    switch_netlink.insert((switch.level, switch.index), netlink);
                }
                Err(e) => failures.push(Failure { object: switch.name(), error: e.to_string() }),
            }
        }

        if let Some(fabric) = &spec.fabric {
            failures.extend(self.ensure_fabric(topology, fabric).await);
        }

        // Without a host every EPM fails with why (its devices are still
        // built), so the state records what exists and destroy finds it.
        let host = match self.ensure_host(topology, record.host).await {
            Ok((pid, client, _)) => {
                record.host = Some(pid);
                self.save_record(topology, &record).await?;
                Ok((pid, client))
            }
            Err(e) => Err(e.to_string()),
        };
        let host = &host;

        let record = Arc::new(Mutex::new(record));
        let switch_netlink = &switch_netlink;
        let held = &held::recorded_ends(self.store.as_ref(), spec).await?;
        let results: Vec<(String, Result<(), RuntimeError>)> = futures::stream::iter(epms.iter().cloned())
            .map(|epm: Epm| {
                let record = Arc::clone(&record);
                async move {
                    let tor = switch_netlink.get(&(0, epm.rack));
                    let known = record.lock().await.agents.get(&epm.name).copied();
                    let nic_held = held.contains(&(epm.name.clone(), naming::EPM_DATA_NIC.to_string()));
                    let result = self.ensure_epm(spec, &epm, tor, host, known, nic_held).await;
                    let result = match result {
                        Ok((pid, address)) => {
                            let mut record = record.lock().await;
                            record.agents.insert(epm.name.clone(), pid);
                            if self.transport == AgentTransport::Tcp {
                                record.addresses.insert(epm.name.clone(), address);
                            } else {
                                record.addresses.remove(&epm.name);
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                    (epm.name.clone(), result)
                }
            })
            .buffer_unordered(PARALLEL_EPMS)
            .collect()
            .await;
        let mut record = record.lock().await;
        self.save_record(topology, &record).await?;

        for (object, result) in results {
            if let Err(e) = result {
                failures.push(Failure { object, error: e.to_string() });
            }
        }
        // Links the faults hold go down again once everything is wired.
        failures.extend(self.hold_down(spec).await?);
        let mut status = self.status(spec, &record).await;
        failures.sort_by(|a, b| a.object.cmp(&b.object));
        status.failures = failures;
        if !record.confirmed && status.failures.is_empty() && status.ready_epms == spec.hosts {
            record.confirmed = true;
            self.save_record(topology, &record).await?;
        }
        Ok(status)
    }

    fn runtime_name(&self) -> &'static str {
        "local"
    }

    fn agents_under_test(&self) -> AgentsUnderTest<'_> {
        AgentsUnderTest::Supervised(self)
    }

    fn leaves_ports_to_agents_under_test(&self) -> bool {
        // The EPM ends stay in the EPM's namespace, where supervised agents run.
        true
    }

    fn link_shaping(&self) -> Option<&dyn LinkShaping> {
        Some(self)
    }

    fn link_faults(&self) -> Option<&dyn LinkFaults> {
        Some(self)
    }

    fn node_route(&self, topology: &str, tree: &TreeSpec, node: &str) -> NodeRoute {
        // One agent host serves every EPM from outside their namespaces and
        // enters any of the topology's: a switch is reached through an EPM's.
        let is_epm = tree.epms().any(|epm| epm.name == node);
        let agent = if is_epm { node.to_string() } else { naming::epm_name(0) };
        NodeRoute { agent, namespace: naming::namespace(topology, node) }
    }

    fn check_fits(&self, spec: &TreeSpec) -> Result<(), RuntimeError> {
        // A unix socket's path must fit sockaddr_un's 108 bytes, NUL included.
        const SUN_PATH: usize = 108;
        let last_epm = naming::epm_name(spec.hosts.saturating_sub(1));
        let socket = [self.agent_socket(&spec.name, &last_epm), self.host_socket(&spec.name)]
            .into_iter()
            .max_by_key(|path| path.as_os_str().len())
            .unwrap_or_default();
        let length = socket.as_os_str().len();
        if length >= SUN_PATH {
            return Err(RuntimeError::Conflict(format!(
                "The agent sockets of this topology would be {} ({length} bytes), longer than a unix socket path may be \
                 ({} bytes). Shorten the topology name by {} characters, or use a shorter local.state_dir.",
                socket.display(),
                SUN_PATH - 1,
                length - (SUN_PATH - 1)
            )));
        }
        Ok(())
    }

    async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError> {
        let Some(record) = self.load_record(name).await? else {
            return Ok(None);
        };
        let spec = self.spec_of(name, &record)?;
        let status = self.status(&spec, &record).await;
        Ok(Some((spec, status)))
    }

    async fn remains_without_record(&self, name: &str) -> Result<bool, RuntimeError> {
        let namespaces = netns::list_with_prefix(&naming::topology_prefix(name))
            .map_err(|e| RuntimeError::io("listing namespaces", e))?;
        Ok(!namespaces.is_empty() && self.load_record(name).await?.is_none())
    }

    async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError> {
        self.load_record(name).await?.map(|record| self.spec_of(name, &record)).transpose()
    }

    async fn agent_channel(&self, topology: &str, epm: &str) -> Result<agent_client::AgentChannel, RuntimeError> {
        let channel = match self.transport {
            AgentTransport::Unix => agent_client::channel(&self.agent_socket(topology, epm)).await,
            AgentTransport::Tcp => {
                let (address, connector) = self.tcp_agent(topology, epm).await?;
                merak_agent::tls::channel(address, connector).await
            }
        };
        channel
            .map(agent_client::AgentChannel::direct)
            .map_err(|e| RuntimeError::Unavailable(format!("agent of {epm}: {}", merak_agent::error_chain(&e))))
    }

    async fn revive_agent(&self, topology: &str, epm: &str) -> Result<(), RuntimeError> {
        self.serve_again(topology, epm).await
    }

    /// This host can remove what the agent would: the EVMs' namespaces and ports.
    async fn delete_evms_without_agent(
        &self,
        _topology: &str,
        _epm: &str,
        batch: &EvmBatch,
    ) -> Result<EvmReply, RuntimeError> {
        Ok(merak_agent::evm::apply(batch, None).await)
    }

    async fn whole_evms(&self, topology: &str, evms: &[&EvmSpec]) -> Result<HashSet<String>, RuntimeError> {
        evms::whole(topology, evms).await
    }

    async fn make_room(&self, topology: &str, epms: u64, evms: u64, largest_subnet: u64) -> Result<(), RuntimeError> {
        host_limits::ensure(&self.topology_dir(topology), host_limits::needs(epms, evms, largest_subnet))
            .map_err(|e| RuntimeError::io("raising host network limits (gc_thresh3, netdev_max_backlog)", e))
    }

    async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError> {
        let mut record = self.load_record(name).await?.unwrap_or_default();
        let spec = record.spec.to_spec().ok();
        // Destroyed means the kernel shows nothing of the topology: a
        // namespace made meanwhile (an agent still finishing what a killed
        // run asked of it) is torn down too, and the records stay until then.
        let prefix = naming::topology_prefix(name);
        let mut passes = 0;
        loop {
            self.tear_down(name, spec.as_ref(), &HashSet::new(), &mut record).await?;
            let left = netns::list_with_prefix(&prefix).map_err(|e| RuntimeError::io("listing namespaces", e))?;
            if left.is_empty() {
                break;
            }
            passes += 1;
            if passes == TEARDOWN_PASSES {
                return Err(RuntimeError::Unavailable(format!(
                    "{} namespaces of the topology still there after {TEARDOWN_PASSES} teardowns, first {}",
                    left.len(),
                    left[0]
                )));
            }
            tracing::warn!(
                topology = name,
                left = left.len(),
                "namespaces appeared during the teardown; tearing down again"
            );
        }
        // The directory (records, the agents' sockets, TLS material, logs)
        // goes with the records, in one rename (store::file): removed here,
        // a kill half-way would leave files without the record that lets the
        // next destroy find them.
        // The last topology on the host gone, the host gets its limits back.
        host_limits::release(&self.topology_dir(name))
            .map_err(|e| RuntimeError::io("restoring host network limits", e))?;
        Ok(())
    }
}

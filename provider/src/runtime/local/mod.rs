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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use merak_netdev::netdev::{self, Netlink};
use merak_netdev::netns::{self, NetnsOptions};
use merak_proto::agent::host_client::HostClient as HostApiClient;
use merak_proto::agent::{
    EvmBatch, EvmReply, EvmSpec, GetInfoRequest, HealthRequest, HostedEpm, ReleaseRequest, ServeRequest, UnderlayGoal,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

mod evms;
mod fabric;
mod host_limits;
mod shaping;
mod tls;

use super::capability::{AgentsUnderTest, LinkShaping, SupervisedAgents};
use super::{Failure, Intent, RecordedSpec, RuntimeError, Substrate, TopologyStatus, UnderTest, agent_client, process};
use crate::model::link_profile::LinkProfileSpec;
use crate::model::naming::{self, BRIDGE, EPM_DATA_NIC, UPLINK};
use crate::model::{Epm, TreeSpec, Vswitch};
use crate::store::{self as records, RecordStore, StoreError};

type HostClient = HostApiClient<tonic::transport::Channel>;

/// How many EPMs are worked on at once.
const PARALLEL_EPMS: usize = 16;

/// A veth end that vanishes with a namespace being deleted, seen from the
/// other side: (namespace it lives in, its name).
type PeerPort = (String, String);
/// How long a new agent host may take to answer.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the kernel may take to tear namespaces down.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a destroy tears down before it gives up on namespaces
/// that keep appearing.
const TEARDOWN_PASSES: u32 = 3;

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

#[derive(Clone)]
struct TcpAgents {
    addresses: HashMap<String, std::net::SocketAddr>,
    connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for TcpAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpAgents").field("addresses", &self.addresses).finish_non_exhaustive()
    }
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

    fn installed_build(&self) -> &str {
        self.installed_build.get_or_init(|| merak_agent::build::id_of(&self.agent_path).unwrap_or_default())
    }

    fn tls_dir(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology).join("tls")
    }

    /// Remembers where the host says EPMs' agents listen (TCP only).
    fn note_addresses(&self, topology: &str, served: &[(String, String)]) {
        if self.transport != AgentTransport::Tcp {
            return;
        }
        if let Ok(mut all) = self.tcp_agents.lock() {
            let agents = all
                .entry(topology.to_string())
                .or_insert_with(|| TcpAgents { addresses: HashMap::new(), connector: None });
            for (epm, address) in served {
                if let Ok(address) = address.parse() {
                    agents.addresses.insert(epm.clone(), address);
                }
            }
        }
    }

    /// Where an EPM's agent listens on TCP, and the connector to it.
    async fn tcp_agent(
        &self,
        topology: &str,
        epm: &str,
    ) -> Result<(std::net::SocketAddr, tokio_rustls::TlsConnector), RuntimeError> {
        let poisoned = || RuntimeError::Unavailable("the agent address table is poisoned".into());
        let known = self.tcp_agents.lock().map_err(|_| poisoned())?.contains_key(topology);
        let recorded = match known {
            true => None,
            false => Some(self.load_record(topology).await?.unwrap_or_default()),
        };
        let mut all = self.tcp_agents.lock().map_err(|_| poisoned())?;
        if let Some(record) = recorded
            && !all.contains_key(topology)
        {
            let addresses =
                record.addresses.iter().filter_map(|(epm, a)| Some((epm.clone(), a.parse().ok()?))).collect();
            all.insert(topology.to_string(), TcpAgents { addresses, connector: None });
        }
        let agents = all
            .get_mut(topology)
            .ok_or_else(|| RuntimeError::Unavailable("the agent address table lost an entry".into()))?;
        let address = *agents.addresses.get(epm).ok_or_else(|| {
            RuntimeError::Unavailable(format!(
                "agent of {epm}: no TCP address recorded (apply the topology to serve it over TCP)"
            ))
        })?;
        let connector = match &agents.connector {
            Some(connector) => connector.clone(),
            None => {
                let connector = tls::connector(&self.tls_dir(topology))?;
                agents.connector = Some(connector.clone());
                connector
            }
        };
        Ok((address, connector))
    }

    /// A client of an EPM's agent, over the configured transport.
    async fn agent(&self, topology: &str, epm: &str) -> Result<agent_client::Client, RuntimeError> {
        Ok(agent_client::Client::new(self.agent_channel(topology, epm).await?))
    }

    async fn agent_answers(&self, topology: &str, epm: &str) -> bool {
        match self.agent(topology, epm).await {
            Ok(mut client) => client.health(HealthRequest {}).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Brings back the agent of an EPM that stopped answering (its host
    /// killed or crashed): the EPM's devices are kernel state and stay; the
    /// agent holds nothing, and every goal the provider pushes is whole. A
    /// host started anew serves every EPM of the topology again at once.
    async fn serve_again(&self, topology: &str, epm: &str) -> Result<(), RuntimeError> {
        if self.agent_answers(topology, epm).await {
            return Ok(());
        }
        let namespace = naming::namespace(topology, epm);
        if !netns::exists(&namespace) {
            return Err(RuntimeError::Unavailable(format!(
                "EPM {epm} is gone (namespace {namespace}); apply the topology to rebuild it"
            )));
        }
        let _guard = self.agents_lock.lock().await;
        let Some(mut record) = self.load_record(topology).await? else {
            return Err(RuntimeError::Conflict(format!("topology {topology:?} does not exist")));
        };
        if self.agent_answers(topology, epm).await {
            return Ok(());
        }
        tracing::info!(topology, epm, "serving again an agent that stopped answering");
        let (pid, mut host, started) = self.ensure_host(topology, record.host).await?;
        record.host = Some(pid);
        let epms: Vec<String> = if started { record.agents.keys().cloned().collect() } else { vec![epm.to_string()] };
        let hosted: Vec<HostedEpm> = epms
            .iter()
            .filter(|name| *name == epm || netns::exists(&naming::namespace(topology, name)))
            .map(|name| self.hosted_epm(topology, name))
            .collect();
        let served = serve(&mut host, hosted.clone()).await?;
        let mut listening = Vec::new();
        for (entry, (error, address)) in hosted.iter().zip(served) {
            if error.is_empty() {
                record.agents.insert(entry.epm.clone(), pid);
                if self.transport == AgentTransport::Tcp {
                    record.addresses.insert(entry.epm.clone(), address.clone());
                    listening.push((entry.epm.clone(), address));
                }
            } else if entry.epm == epm {
                self.save_record(topology, &record).await?;
                return Err(RuntimeError::Unavailable(format!("agent of {epm}: {error}")));
            }
        }
        self.note_addresses(topology, &listening);
        self.save_record(topology, &record).await
    }

    /// What the host needs to serve an EPM's agent.
    fn hosted_epm(&self, topology: &str, epm: &str) -> HostedEpm {
        let tcp = self.transport == AgentTransport::Tcp;
        HostedEpm {
            epm: epm.to_string(),
            netns: netns::path_of(&naming::namespace(topology, epm)).display().to_string(),
            // Any free port on loopback: the host says which it bound.
            socket: if tcp {
                "127.0.0.1:0".to_string()
            } else {
                self.agent_socket(topology, epm).display().to_string()
            },
            tcp,
        }
    }

    /// The topology's agent host, started when none runs or when it runs an
    /// older agent binary (after an upgrade): (pid, client, started anew).
    async fn ensure_host(&self, topology: &str, known: Option<u32>) -> Result<(u32, HostClient, bool), RuntimeError> {
        let control = self.host_socket(topology);
        if let Some(pid) = known.filter(|pid| process::is_agent(*pid, &control)) {
            if let Some((client, build)) = host_answers(&control).await
                && build == self.installed_build()
            {
                return Ok((pid, client, false));
            }
            process::stop_agent(pid, &control).await;
        }
        // A host the record lost (a crash between its start and the save).
        for (pid, socket) in process::agents_in(&self.topology_dir(topology)) {
            if socket == control {
                process::stop_agent(pid, &control).await;
            }
        }
        let pid = self.start_host(topology).await?;
        let (client, _) = host_answers(&control).await.ok_or_else(|| {
            RuntimeError::Unavailable(format!("the agent host of {topology} stopped right after it started"))
        })?;
        Ok((pid, client, true))
    }

    fn topology_dir(&self, topology: &str) -> PathBuf {
        self.state_dir.join(topology)
    }

    fn agent_socket(&self, topology: &str, epm: &str) -> PathBuf {
        self.topology_dir(topology).join(format!("{epm}.sock"))
    }

    /// The Host API of the topology's agent host.
    fn host_socket(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology).join("agents.sock")
    }

    /// What the agent host (every EPM's agent) logs.
    fn host_log(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology).join("agents.log")
    }

    async fn load_record(&self, topology: &str) -> Result<Option<Record>, RuntimeError> {
        Ok(records::load_json(self.store.as_ref(), topology, TOPOLOGY).await?)
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

    /// Opens (or creates) a namespace; `created` tells which.
    async fn ensure_namespace(&self, name: &str) -> Result<(Netlink, bool), RuntimeError> {
        if netns::exists(name) {
            return Ok((netns::open(name).await?, false));
        }
        // IPv6 stays on in the namespace; each device gets address
        // generation off instead (see `ensure_pair`): writing the namespace's
        // disable_ipv6 sysctl costs a /proc/sys path walk whose dentry
        // chains hold one entry per namespace, quadratic at 10,000 EPMs.
        Ok((netns::create(name, NetnsOptions::default()).await?, true))
    }

    async fn ensure_vswitch(
        &self,
        topology: &str,
        switch: &Vswitch,
        parent: Option<&Netlink>,
    ) -> Result<Netlink, RuntimeError> {
        let namespace = naming::namespace(topology, &switch.name());
        let (netlink, _) = self.ensure_namespace(&namespace).await?;
        let bridge = ensure_bridge(&netlink).await?;
        if let (Some(parent), Some(parent_name)) = (parent, switch.parent_name()) {
            let parent_namespace = naming::namespace(topology, &parent_name);
            let downlink = naming::downlink_port(switch.index);
            let parent_bridge = parent
                .link(BRIDGE)
                .await?
                .ok_or_else(|| RuntimeError::Unavailable(format!("bridge missing in {parent_namespace}")))?;
            ensure_pair(&netlink, UPLINK, Some(bridge), parent, &parent_namespace, &downlink, parent_bridge.index)
                .await?;
        }
        Ok(netlink)
    }

    /// Builds or repairs one EPM: namespace, data-plane NIC wired to its
    /// top-of-rack switch, its agent served by the host, and the agent's
    /// underlay config. Returns the pid serving the agent, and where it listens.
    async fn ensure_epm(
        &self,
        spec: &TreeSpec,
        epm: &Epm,
        tor: Option<&Netlink>,
        host: &Result<(u32, HostClient), String>,
        known_agent: Option<u32>,
    ) -> Result<(u32, String), RuntimeError> {
        let topology = &spec.name;
        let namespace = naming::namespace(topology, &epm.name);
        let socket = self.agent_socket(topology, &epm.name);
        let (netlink, _) = self.ensure_namespace(&namespace).await?;
        let gateway = match (&spec.fabric, tor) {
            (Some(fabric), _) => {
                let port = fabric.host_port(epm.index);
                self.wire_routed_epm(topology, &netlink, epm.ip, &port).await?;
                Some(port.gateway)
            }
            (None, Some(tor)) => {
                let tor_namespace = naming::namespace(topology, &naming::vswitch_name(0, epm.rack));
                let tor_bridge = tor
                    .link(BRIDGE)
                    .await?
                    .ok_or_else(|| RuntimeError::Unavailable(format!("bridge missing in {tor_namespace}")))?;
                // The NIC's agent brings it up with its address; its port goes up on the ToR's bridge.
                ensure_pair(
                    &netlink,
                    EPM_DATA_NIC,
                    None,
                    tor,
                    &tor_namespace,
                    &naming::host_port(epm.index),
                    tor_bridge.index,
                )
                .await?;
                None
            }
            (None, None) => return Err(RuntimeError::Unavailable("its top-of-rack vswitch failed".into())),
        };

        // An agent process of its own (an older version's way) gives way
        // to the host, which serves the same socket.
        let (host_pid, host) = host.as_ref().map_err(|e| RuntimeError::Unavailable(e.clone()))?;
        if let Some(pid) = known_agent.filter(|pid| pid != host_pid && process::is_agent(*pid, &socket)) {
            process::stop_agent(pid, &socket).await;
        }
        // Serving is idempotent: the host keeps an agent that serves this
        // very namespace, and serves one whose namespace was made anew.
        let mut host = host.clone();
        let served = serve(&mut host, vec![self.hosted_epm(topology, &epm.name)]).await?;
        let (error, address) = served.into_iter().next().unwrap_or_default();
        if !error.is_empty() {
            return Err(RuntimeError::Unavailable(format!("agent of {}: {error}", epm.name)));
        }
        self.note_addresses(topology, &[(epm.name.clone(), address.clone())]);

        let mut agent = self.agent(topology, &epm.name).await?;
        let goal = UnderlayGoal {
            interface: EPM_DATA_NIC.to_string(),
            address: epm_address(spec, epm),
            mac: netdev::format_mac(&epm.mac),
            tunnel: None,
            gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
        };
        agent
            .apply_underlay(goal)
            .await
            .map_err(|status| RuntimeError::Unavailable(format!("agent of {}: {}", epm.name, status.message())))?;
        Ok((*host_pid, address))
    }

    async fn start_host(&self, topology: &str) -> Result<u32, RuntimeError> {
        let (control, log) = (self.host_socket(topology), self.host_log(topology));
        let tls_dir = self.tls_dir(topology);
        tls::ensure(&tls_dir, topology)?;
        let pid = process::spawn_host(&self.agent_path, &control, &tls_dir, &log).map_err(|e| {
            RuntimeError::io(format!("starting {} as the agent host of {topology}", self.agent_path.display()), e)
        })?;
        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        while host_answers(&control).await.is_none() {
            // Not is_agent(): until exec, the child still shows our command line.
            if Instant::now() > deadline || !process::alive(pid) {
                let exit = process::exit_status(pid);
                process::stop_agent(pid, &control).await;
                let why =
                    exit.unwrap_or_else(|| format!("it did not answer within {} s", AGENT_START_TIMEOUT.as_secs()));
                let text = fs::read_to_string(&log).unwrap_or_default();
                let mut tail: Vec<&str> = text.lines().rev().take(5).collect();
                tail.reverse();
                let tail = if tail.is_empty() { "(empty)".to_string() } else { tail.join(" | ") };
                return Err(RuntimeError::Unavailable(format!(
                    "the agents of {topology} ({}) did not start: {why}; their log {} ends: {tail}",
                    self.agent_path.display(),
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(pid)
    }

    /// Whether an EPM is fully up: namespace, an agent served by a host
    /// of the installed build (`served`: after an upgrade, the next apply
    /// restarts the old host), and its NIC up with the goal address.
    async fn epm_ready(&self, spec: &TreeSpec, epm: &Epm, served: bool) -> bool {
        if !served || !netns::exists(&naming::namespace(&spec.name, &epm.name)) {
            return false;
        }
        let Ok(mut agent) = self.agent(&spec.name, &epm.name).await else {
            return false;
        };
        let Ok(info) = agent.get_info(GetInfoRequest {}).await else {
            return false;
        };
        // The NIC up, and the address on it, or on a device a system under
        // test made of it (see the agent's underlay convergence).
        let address = epm_address(spec, epm);
        let interfaces = info.into_inner().interfaces;
        interfaces.iter().any(|i| i.name == EPM_DATA_NIC && i.up)
            && interfaces.iter().any(|i| i.up && i.addresses.contains(&address))
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
        if let Some(fabric) = &spec.fabric {
            let served = &served;
            let ready = futures::stream::iter(spec.epms())
                .map(|epm| async move {
                    self.edge_serves(&spec.name, &fabric.host_port(epm.index)).await
                        && self.epm_ready(spec, &epm, served(&epm.name)).await
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
            links.iter().any(|l| l.name == port && on_bridge(l, bridge.index))
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
        let (reachable, wired, served) = (&reachable, &wired, &served);
        let ready = futures::stream::iter(spec.epms())
            .map(|epm| async move {
                let tor = (0, epm.rack);
                reachable[&tor]
                    && wired(tor, &naming::host_port(epm.index))
                    && self.epm_ready(spec, &epm, served(&epm.name)).await
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter(|ready| futures::future::ready(*ready))
            .count()
            .await;
        TopologyStatus { ready_epms: ready as u32, ..TopologyStatus::default() }
    }

    /// Removes every namespace of the topology not in `keep`, stopping agents
    /// first, and waits until the kernel has torn the devices down. `spec` (the
    /// topology as last applied) tells which ports vanish with which namespace.
    async fn tear_down(
        &self,
        topology: &str,
        spec: Option<&TreeSpec>,
        keep: &HashSet<String>,
        record: &mut Record,
    ) -> Result<(), RuntimeError> {
        // Reshaping the underlay (a non-empty `keep`) only touches EPMs and
        // vswitches; destroying the topology removes everything it holds.
        let prefix = naming::topology_prefix(topology);
        let in_scope = |ns: &str| keep.is_empty() || ns.strip_prefix(&prefix).is_some_and(naming::is_underlay_object);
        let existing: HashSet<String> = netns::list_with_prefix(&prefix)
            .map_err(|e| RuntimeError::io("listing namespaces", e))?
            .into_iter()
            .filter(|ns| !keep.contains(ns) && in_scope(ns))
            .collect();
        tracing::info!(topology, namespaces = existing.len(), whole = keep.is_empty(), "tearing down");

        // Stop the agents of leaving EPMs first (an agent's netlink
        // connection keeps its namespace alive), including any the record
        // lost: the whole host when everything goes, else the host lets go
        // of the leaving EPMs (or, not answering, stops).
        let control = self.host_socket(topology);
        let mut agents = process::agents_in(&self.topology_dir(topology));
        if !keep.is_empty() {
            let leaving: Vec<String> =
                existing.iter().filter_map(|ns| ns.strip_prefix(&prefix)).map(str::to_string).collect();
            let released = leaving.is_empty()
                || match host_answers(&control).await {
                    Some((mut host, _)) => host.release(ReleaseRequest { epms: leaving }).await.is_ok(),
                    None => false,
                };
            let leaving_socket = |socket: &Path| {
                let epm = socket.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                !keep.contains(&naming::namespace(topology, epm))
            };
            agents.retain(|(_, socket)| if *socket == control { !released } else { leaving_socket(socket) });
        }
        process::stop_agents(&agents).await;
        tracing::info!(topology, agents = agents.len(), "agents stopped");
        // The agents took what they supervised with them, but not what a
        // supervised process detached from its group: nothing may keep a
        // namespace of the topology alive, or run on after it.
        let leaving: Vec<&String> = existing.iter().collect();
        match netns::kill_processes_in(&leaving) {
            Ok(0) => {}
            Ok(killed) => tracing::warn!(topology, killed, "killed processes left in the topology's namespaces"),
            Err(e) => {
                tracing::warn!(topology, error = %e, "could not look for processes left in the topology's namespaces")
            }
        }
        if keep.is_empty() {
            record.host = None;
        }
        record.agents.retain(|epm, _| keep.contains(&naming::namespace(topology, epm)));

        // Waves: EPMs, then vswitches level by level from the leaves up. Each
        // wave's veth peers live in the next wave's namespaces; watching them
        // disappear is how we know the kernel has finished.
        let mut waves: BTreeMap<u32, Vec<(String, Option<PeerPort>)>> = BTreeMap::new();
        let mut known = HashSet::new();
        if let Some(spec) = spec {
            for epm in spec.epms() {
                let peer = match &spec.fabric {
                    Some(fabric) => {
                        let port = fabric.host_port(epm.index);
                        (fabric::switch_namespace(topology, &port.edge), port.device)
                    }
                    None => {
                        (naming::namespace(topology, &naming::vswitch_name(0, epm.rack)), naming::host_port(epm.index))
                    }
                };
                waves.entry(0).or_default().push((naming::namespace(topology, &epm.name), Some(peer)));
            }
            // A fat tree's switches: edge, aggregation, then core.
            for switch in spec.fabric.iter().flat_map(|f| f.switches()) {
                let wave = match switch {
                    crate::model::fat_tree::Switch::Edge { .. } => 1,
                    crate::model::fat_tree::Switch::Aggregation { .. } => 2,
                    crate::model::fat_tree::Switch::Core { .. } => 3,
                };
                waves.entry(wave).or_default().push((fabric::switch_namespace(topology, &switch), None));
            }
            for switch in spec.vswitches() {
                let peer = switch
                    .parent_name()
                    .map(|parent| (naming::namespace(topology, &parent), naming::downlink_port(switch.index)));
                waves.entry(switch.level + 1).or_default().push((naming::namespace(topology, &switch.name()), peer));
            }
        }
        for wave in waves.values_mut() {
            wave.retain(|(ns, _)| existing.contains(ns));
            known.extend(wave.iter().map(|(ns, _)| ns.clone()));
        }
        // Namespaces the record does not explain go last, without waiting.
        let unexplained = existing.iter().filter(|ns| !known.contains(*ns)).map(|ns| (ns.clone(), None));
        waves.entry(u32::MAX).or_default().extend(unexplained);

        for (level, wave) in waves {
            tracing::info!(topology, level, namespaces = wave.len(), "deleting namespaces");
            let mut watched: HashMap<String, (Netlink, Vec<String>)> = HashMap::new();
            for (_, peer) in &wave {
                let Some((peer_ns, port)) = peer else { continue };
                if !watched.contains_key(peer_ns) {
                    let Ok(netlink) = netns::open(peer_ns).await else { continue };
                    watched.insert(peer_ns.clone(), (netlink, Vec::new()));
                }
                if let Some((_, ports)) = watched.get_mut(peer_ns) {
                    ports.push(port.clone());
                }
            }
            for (ns, _) in &wave {
                netns::delete(ns)?;
            }
            wait_until_gone(watched.into_values().collect()).await?;
        }
        Ok(())
    }
}

/// An EPM's `eth1` address: in the data plane's prefix on a tree's shared
/// segment; a /32 behind its edge switch in a fat tree.
fn epm_address(spec: &TreeSpec, epm: &Epm) -> String {
    let prefix_len = if spec.fabric.is_some() { 32 } else { spec.data_plane.prefix_len() };
    format!("{}/{prefix_len}", epm.ip)
}

/// Polls until none of the ports exist any more in their namespaces.
async fn wait_until_gone(watched: Vec<(Netlink, Vec<String>)>) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    for (netlink, ports) in watched {
        loop {
            let present = netlink.links().await?;
            let remaining = ports.iter().filter(|p| present.iter().any(|l| &l.name == *p)).count();
            if remaining == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Unavailable(format!(
                    "{remaining} veth ports still present {}s after their namespaces were deleted",
                    TEARDOWN_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
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
        let results: Vec<(String, Result<(), RuntimeError>)> = futures::stream::iter(epms.iter().cloned())
            .map(|epm: Epm| {
                let record = Arc::clone(&record);
                async move {
                    let tor = switch_netlink.get(&(0, epm.rack));
                    let known = record.lock().await.agents.get(&epm.name).copied();
                    let result = self.ensure_epm(spec, &epm, tor, host, known).await;
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

    fn epm_ping_namespace(&self, topology: &str, epm: &str) -> String {
        // The agent host serves every EPM from outside their namespaces.
        naming::namespace(topology, epm)
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
            .map_err(|e| RuntimeError::Unavailable(format!("agent of {epm}: {e}")))
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
        let dir = self.topology_dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(format!("removing {}", dir.display()), e)),
        }
        // The last topology on the host gone, the host gets its limits back.
        host_limits::release(&dir).map_err(|e| RuntimeError::io("restoring host network limits", e))?;
        Ok(())
    }
}

/// The bridge of a vswitch namespace, created or brought up if needed.
async fn ensure_bridge(netlink: &Netlink) -> Result<u32, RuntimeError> {
    match netlink.link(BRIDGE).await? {
        Some(bridge) if bridge.up => Ok(bridge.index),
        Some(bridge) => {
            netlink.set_link(bridge.index, None, None).await?;
            Ok(bridge.index)
        }
        None => {
            // Up but without ports, so without carrier: no IPv6 address yet.
            let index = netlink.create_bridge(BRIDGE).await?;
            netlink.disable_ipv6_addresses(index).await?;
            Ok(index)
        }
    }
}

/// Ensures the veth pair `near_name` (in `near`) — `far_name` (in
/// `far_namespace`): the far end up on `far_bridge`, the near end up on
/// `near_bridge` when given (an EPM's NIC has none: its agent brings it up
/// with its address), IPv6 address generation off on each end before it goes
/// up. Repairs what a kill mid-way leaves: a lone end (deleting one end of a
/// veth takes the other, so a lone one is stale), or an end down or off its
/// bridge — a pair that exists but carries nothing would pass for wired.
async fn ensure_pair(
    near: &Netlink,
    near_name: &str,
    near_bridge: Option<u32>,
    far: &Netlink,
    far_namespace: &str,
    far_name: &str,
    far_bridge: u32,
) -> Result<(), RuntimeError> {
    let (mut near_link, mut far_link) = (near.link(near_name).await?, far.link(far_name).await?);
    if near_link.is_none() || far_link.is_none() {
        for (netlink, stale) in [(near, near_link.take()), (far, far_link.take())] {
            if let Some(stale) = stale {
                netlink.delete_link(stale.index).await?;
            }
        }
        near.create_veth(near_name, far_name, &netns::open_fd(far_namespace)?).await?;
        (near_link, far_link) = (near.link(near_name).await?, far.link(far_name).await?);
    }
    let vanished = |name: &str| RuntimeError::Unavailable(format!("port {name} vanished right after creation"));
    let near_link = near_link.ok_or_else(|| vanished(near_name))?;
    let far_link = far_link.ok_or_else(|| vanished(far_name))?;
    if !on_bridge(&far_link, far_bridge) {
        far.disable_ipv6_addresses(far_link.index).await?;
        far.set_link(far_link.index, Some(far_bridge), None).await?;
    }
    match near_bridge {
        Some(bridge) if !on_bridge(&near_link, bridge) => {
            near.disable_ipv6_addresses(near_link.index).await?;
            near.set_link(near_link.index, Some(bridge), None).await?;
        }
        None if !near_link.up => near.disable_ipv6_addresses(near_link.index).await?,
        _ => {}
    }
    Ok(())
}

/// Whether a port is up on `bridge`: the last step of wiring it.
fn on_bridge(port: &netdev::LinkState, bridge: u32) -> bool {
    port.up && port.controller == Some(bridge)
}

/// A client of the agent host on `control`, if it answers, and its build id.
async fn host_answers(control: &Path) -> Option<(HostClient, String)> {
    let mut client = agent_client::connect_host(control).await.ok()?;
    let reply = client.release(ReleaseRequest { epms: Vec::new() }).await.ok()?;
    Some((client, reply.into_inner().build_id))
}

/// Asks the host to serve the EPMs; per EPM an error (empty: served) and
/// where its agent listens.
async fn serve(host: &mut HostClient, epms: Vec<HostedEpm>) -> Result<Vec<(String, String)>, RuntimeError> {
    let count = epms.len();
    let reply = host
        .serve(ServeRequest { epms })
        .await
        .map_err(|status| RuntimeError::Unavailable(format!("the agent host: {}", status.message())))?
        .into_inner();
    if reply.errors.len() != count {
        return Err(RuntimeError::Unavailable(format!(
            "the agent host answered {} of {count} EPMs",
            reply.errors.len()
        )));
    }
    // A host of a build before addresses were answered: unix sockets only.
    let addresses = reply.addresses.into_iter().chain(std::iter::repeat(String::new()));
    Ok(reply.errors.into_iter().zip(addresses).collect())
}

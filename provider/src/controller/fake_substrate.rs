//! A substrate without root, for the controller's unit tests. Topologies
//! live in memory; every EPM's agent is one in-process Overlay service on a
//! unix socket in a scratch directory, reached as the kubernetes runtime
//! reaches agents through its gateway (the route header names the EPM by
//! its underlay address), so the controller's calls cross the real gRPC
//! client and wire format. Each EPM's EVMs are a set of namespaces.
//!
//! A test can make it misbehave the ways the kernel and the agents do: an
//! agent that stops answering (until revived), EVM creates refused by
//! namespace, an agent that never answers (a run killed mid-apply), EPMs
//! made anew by the next topology apply (a replaced pod).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use merak_proto::agent::overlay_server::{Overlay, OverlayServer};
use merak_proto::agent::{
    ApplyReply, EvmBatch, EvmFailure, EvmReply, EvmSpec, FirewallGoal, OverlayGoal, PingReply, PingRequest,
    WholeEvmsReply,
};
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use crate::model::TreeSpec;
use crate::runtime::agent_client::{self, AgentChannel};
use crate::runtime::capability::{AgentsUnderTest, SupervisedAgents};
use crate::runtime::{Intent, NodeRoute, RuntimeError, Substrate, TopologyStatus, UnderTest};

/// What the fake holds and how it is told to misbehave.
#[derive(Debug, Default)]
pub struct FakeState {
    pub topologies: BTreeMap<String, TreeSpec>,
    /// EPM name by underlay address: how a call's route header is read.
    epm_at: BTreeMap<IpAddr, String>,
    /// EPM name → namespaces of the EVMs it holds.
    pub evms: BTreeMap<String, BTreeSet<String>>,
    /// EPM name → the last overlay goal it was given (with the firewalls
    /// given since).
    pub goals: BTreeMap<String, OverlayGoal>,
    /// Whole overlay goals given, over the fake's life.
    pub overlays_applied: usize,
    /// EVMs created, over the fake's life (an EVM that existed is not counted).
    pub created: usize,
    /// EVMs deleted by the substrate because their agent did not answer.
    pub deleted_without_agent: usize,
    /// EPMs whose agent refuses every call until revived.
    pub dead: BTreeSet<String>,
    /// EPMs whose agent never answers an EVM batch (a hung or killed run).
    pub stalled: BTreeSet<String>,
    /// EVM namespaces whose create fails.
    pub refused: BTreeSet<String>,
    /// EPMs revived, in order.
    pub revived: Vec<String>,
    /// EPMs the next topology apply makes anew: emptied, and reported remade.
    pub remake: Vec<String>,
    /// EVM namespaces whose pings get no reply, for as many pings as given.
    pub unanswered: BTreeMap<String, u32>,
    /// Pings sent, by the EVM namespace they are sent from.
    pub pings: BTreeMap<String, u32>,
}

impl FakeState {
    fn epm_of<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let address = request
            .metadata()
            .get(merak_agent::gateway::ROUTE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<IpAddr>().ok())
            .ok_or_else(|| Status::invalid_argument("no route header"))?;
        let epm = self.epm_at.get(&address).cloned().ok_or_else(|| Status::not_found("no EPM at that address"))?;
        if self.dead.contains(&epm) {
            return Err(Status::unavailable(format!("{epm}'s agent is down")));
        }
        Ok(epm)
    }

    /// Every EVM namespace of every EPM.
    pub fn all_evms(&self) -> BTreeSet<String> {
        self.evms.values().flatten().cloned().collect()
    }
}

/// The fake's agents: one Overlay service answering for every EPM.
#[derive(Debug, Clone)]
struct FakeAgents(Arc<Mutex<FakeState>>);

impl FakeAgents {
    fn state(&self) -> Result<MutexGuard<'_, FakeState>, Status> {
        self.0.lock().map_err(|_| Status::internal("the fake's state is poisoned"))
    }
}

#[tonic::async_trait]
impl Overlay for FakeAgents {
    async fn apply_overlay(&self, request: Request<OverlayGoal>) -> Result<Response<ApplyReply>, Status> {
        let mut state = self.state()?;
        let epm = state.epm_of(&request)?;
        state.goals.insert(epm, request.into_inner());
        state.overlays_applied += 1;
        Ok(Response::new(ApplyReply::default()))
    }

    async fn apply_firewalls(&self, request: Request<FirewallGoal>) -> Result<Response<ApplyReply>, Status> {
        let mut state = self.state()?;
        let epm = state.epm_of(&request)?;
        let goal = state.goals.get_mut(&epm);
        let Some(goal) = goal else { return Err(Status::failed_precondition(format!("{epm} has no overlay yet"))) };
        let wanted = request.into_inner().vpcs;
        if let Some(missing) = wanted.iter().find(|w| !goal.vpcs.iter().any(|vpc| vpc.namespace == w.namespace)) {
            return Err(Status::failed_precondition(format!("{} is not made yet", missing.namespace)));
        }
        let mut actions = Vec::new();
        for wanted in wanted {
            if let Some(vpc) = goal.vpcs.iter_mut().find(|vpc| vpc.namespace == wanted.namespace) {
                vpc.firewall = wanted.firewall;
                actions.push(format!("{}: security groups replaced", wanted.namespace));
            }
        }
        Ok(Response::new(ApplyReply { changed: !actions.is_empty(), actions }))
    }

    async fn apply_evms(&self, request: Request<EvmBatch>) -> Result<Response<EvmReply>, Status> {
        let stalled = {
            let state = self.state()?;
            let epm = state.epm_of(&request)?;
            state.stalled.contains(&epm)
        };
        if stalled {
            std::future::pending::<()>().await;
        }
        let mut state = self.state()?;
        let epm = state.epm_of(&request)?;
        let batch = request.into_inner();
        let mut reply = EvmReply::default();
        for evm in batch.delete {
            if state.evms.entry(epm.clone()).or_default().remove(&evm.namespace) {
                reply.deleted += 1;
            }
        }
        for evm in batch.create {
            if state.refused.contains(&evm.namespace) {
                reply.failures.push(EvmFailure { namespace: evm.namespace, error: "refused by the test".into() });
            } else if state.evms.entry(epm.clone()).or_default().insert(evm.namespace) {
                reply.created += 1;
                state.created += 1;
            } else {
                reply.existing += 1;
            }
        }
        Ok(Response::new(reply))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let mut state = self.state()?;
        let epm = state.epm_of(&request)?;
        let here = state.evms.get(&epm).cloned().unwrap_or_default();
        let probes = request.into_inner().probes;
        let sent: Vec<bool> = probes.iter().map(|p| here.contains(&p.from_namespace)).collect();
        let mut reached = Vec::with_capacity(probes.len());
        for (probe, &sent) in probes.iter().zip(&sent) {
            *state.pings.entry(probe.from_namespace.clone()).or_default() += u32::from(sent);
            let silent = state.unanswered.get_mut(&probe.from_namespace).filter(|left| **left > 0);
            reached.push(sent && silent.map(|left| *left -= 1).is_none());
        }
        let errors = sent.iter().map(|&s| if s { String::new() } else { "no such namespace".into() }).collect();
        Ok(Response::new(PingReply { reached, errors }))
    }

    async fn whole_evms(&self, request: Request<EvmBatch>) -> Result<Response<WholeEvmsReply>, Status> {
        let state = self.state()?;
        let epm = state.epm_of(&request)?;
        let here = state.evms.get(&epm).cloned().unwrap_or_default();
        let namespaces = request.into_inner().create.into_iter().map(|e| e.namespace).filter(|n| here.contains(n));
        Ok(Response::new(WholeEvmsReply { namespaces: namespaces.collect() }))
    }
}

#[derive(Debug)]
pub struct FakeSubstrate {
    state: Arc<Mutex<FakeState>>,
    dir: PathBuf,
    socket: PathBuf,
    channel: tokio::sync::OnceCell<tonic::transport::Channel>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeSubstrate {
    /// Starts the fake's agents on a socket of a fresh scratch directory.
    pub async fn start() -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "merak-fake-substrate-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fake's directory");
        let socket = dir.join("agents.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake agents' socket");
        let state = Arc::new(Mutex::new(FakeState::default()));
        let agents = OverlayServer::new(FakeAgents(state.clone()));
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(agents).serve_with_incoming(incoming).await;
        });
        FakeSubstrate { state, dir, socket, channel: tokio::sync::OnceCell::new(), server }
    }

    /// The fake's state, to read or to make it misbehave.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().expect("the fake's state is not poisoned")
    }

    fn locked(&self) -> Result<MutexGuard<'_, FakeState>, RuntimeError> {
        self.state.lock().map_err(|_| RuntimeError::Unavailable("the fake's state is poisoned".into()))
    }
}

impl Drop for FakeSubstrate {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SupervisedAgents for FakeSubstrate {
    fn log_dir(&self, topology: &str) -> PathBuf {
        self.dir.join(topology)
    }
}

#[tonic::async_trait]
impl Substrate for FakeSubstrate {
    fn check_fits(&self, _spec: &TreeSpec) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn apply_topology(
        &self,
        spec: &TreeSpec,
        _under_test: UnderTest<'_>,
        _intent: Intent,
    ) -> Result<TopologyStatus, RuntimeError> {
        let mut state = self.locked()?;
        for epm in spec.epms() {
            state.epm_at.insert(IpAddr::V4(epm.ip), epm.name.clone());
        }
        state.topologies.insert(spec.name.clone(), spec.clone());
        let remade = std::mem::take(&mut state.remake);
        for epm in &remade {
            state.evms.remove(epm);
            state.goals.remove(epm);
        }
        Ok(TopologyStatus { ready_epms: spec.hosts, failures: Vec::new(), remade })
    }

    async fn read_topology(&self, name: &str) -> Result<Option<(TreeSpec, TopologyStatus)>, RuntimeError> {
        let state = self.locked()?;
        Ok(state.topologies.get(name).map(|spec| {
            (spec.clone(), TopologyStatus { ready_epms: spec.hosts, failures: Vec::new(), remade: Vec::new() })
        }))
    }

    async fn topology_spec(&self, name: &str) -> Result<Option<TreeSpec>, RuntimeError> {
        Ok(self.locked()?.topologies.get(name).cloned())
    }

    async fn destroy_topology(&self, name: &str) -> Result<(), RuntimeError> {
        let mut state = self.locked()?;
        if let Some(spec) = state.topologies.remove(name) {
            for epm in spec.epms() {
                state.evms.remove(&epm.name);
                state.goals.remove(&epm.name);
            }
        }
        Ok(())
    }

    async fn agent_channel(&self, topology: &str, epm: &str) -> Result<AgentChannel, RuntimeError> {
        let address = {
            let state = self.locked()?;
            let spec = state
                .topologies
                .get(topology)
                .ok_or_else(|| RuntimeError::Unavailable(format!("no topology {topology}")))?;
            spec.epms().find(|e| e.name == epm).map(|e| IpAddr::V4(e.ip))
        };
        let address = address.ok_or_else(|| RuntimeError::Unavailable(format!("no EPM {epm} in {topology}")))?;
        let channel = self
            .channel
            .get_or_try_init(|| agent_client::channel(&self.socket))
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("the fake's agents: {e}")))?;
        Ok(AgentChannel::through_gateway(channel.clone(), address))
    }

    async fn revive_agent(&self, _topology: &str, epm: &str) -> Result<(), RuntimeError> {
        let mut state = self.locked()?;
        state.dead.remove(epm);
        state.revived.push(epm.to_string());
        Ok(())
    }

    async fn delete_evms_without_agent(
        &self,
        _topology: &str,
        epm: &str,
        batch: &EvmBatch,
    ) -> Result<EvmReply, RuntimeError> {
        let mut state = self.locked()?;
        let mut reply = EvmReply::default();
        for evm in &batch.delete {
            if state.evms.entry(epm.to_string()).or_default().remove(&evm.namespace) {
                reply.deleted += 1;
                state.deleted_without_agent += 1;
            }
        }
        Ok(reply)
    }

    async fn whole_evms(&self, _topology: &str, evms: &[&EvmSpec]) -> Result<HashSet<String>, RuntimeError> {
        let all = self.locked()?.all_evms();
        Ok(evms.iter().filter(|e| all.contains(&e.namespace)).map(|e| e.namespace.clone()).collect())
    }

    fn runtime_name(&self) -> &'static str {
        "fake"
    }

    fn agents_under_test(&self) -> AgentsUnderTest<'_> {
        AgentsUnderTest::Supervised(self)
    }

    fn leaves_ports_to_agents_under_test(&self) -> bool {
        false
    }

    fn node_route(&self, topology: &str, _tree: &TreeSpec, node: &str) -> NodeRoute {
        NodeRoute { agent: node.to_string(), namespace: format!("{topology}.{node}") }
    }

    async fn make_room(&self, _: &str, _: u64, _: u64, _: u64) -> Result<(), RuntimeError> {
        Ok(())
    }
}

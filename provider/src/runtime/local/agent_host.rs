//! The topology's agent host: one merak-agent process serving every EPM's
//! agent (over unix sockets, or TCP with mutual TLS), started, asked and
//! told which EPMs to serve; an agent that stopped answering is served again.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use merak_netdev::netns;
use merak_proto::agent::host_client::HostClient as HostApiClient;
use merak_proto::agent::{HealthRequest, HostedEpm, ReleaseRequest, ServeRequest};

use super::{AgentTransport, LocalRuntime, tls};
use crate::model::naming;
use crate::runtime::{RuntimeError, Substrate, agent_client, process};

pub(super) type HostClient = HostApiClient<tonic::transport::Channel>;

/// How long a new agent host may take to answer.
pub(super) const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(super) struct TcpAgents {
    pub(super) addresses: HashMap<String, std::net::SocketAddr>,
    pub(super) connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for TcpAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpAgents").field("addresses", &self.addresses).finish_non_exhaustive()
    }
}

/// A client of the agent host on `control`, if it answers, and its build id.
pub(super) async fn host_answers(control: &Path) -> Option<(HostClient, String)> {
    let mut client = agent_client::connect_host(control).await.ok()?;
    let reply = client.release(ReleaseRequest { epms: Vec::new() }).await.ok()?;
    Some((client, reply.into_inner().build_id))
}

/// Asks the host to serve the EPMs; per EPM an error (empty: served) and
/// where its agent listens.
pub(super) async fn serve(host: &mut HostClient, epms: Vec<HostedEpm>) -> Result<Vec<(String, String)>, RuntimeError> {
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

impl LocalRuntime {
    pub(super) fn installed_build(&self) -> &str {
        self.installed_build.get_or_init(|| merak_agent::build::id_of(&self.agent_path).unwrap_or_default())
    }

    /// Remembers where the host says EPMs' agents listen (TCP only).
    pub(super) fn note_addresses(&self, topology: &str, served: &[(String, String)]) {
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
    pub(super) async fn tcp_agent(
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
    pub(super) async fn agent(&self, topology: &str, epm: &str) -> Result<agent_client::Client, RuntimeError> {
        Ok(agent_client::Client::new(self.agent_channel(topology, epm).await?))
    }

    pub(super) async fn agent_answers(&self, topology: &str, epm: &str) -> bool {
        match self.agent(topology, epm).await {
            Ok(mut client) => client.health(HealthRequest {}).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Brings back the agent of an EPM that stopped answering (its host
    /// killed or crashed): the EPM's devices are kernel state and stay; the
    /// agent holds nothing, and every goal the provider pushes is whole. A
    /// host started anew serves every EPM of the topology again at once.
    pub(super) async fn serve_again(&self, topology: &str, epm: &str) -> Result<(), RuntimeError> {
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
    pub(super) fn hosted_epm(&self, topology: &str, epm: &str) -> HostedEpm {
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
    pub(super) async fn ensure_host(
        &self,
        topology: &str,
        known: Option<u32>,
    ) -> Result<(u32, HostClient, bool), RuntimeError> {
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

    pub(super) async fn start_host(&self, topology: &str) -> Result<u32, RuntimeError> {
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

    pub(super) fn agent_socket(&self, topology: &str, epm: &str) -> PathBuf {
        self.topology_dir(topology).join(format!("{epm}.sock"))
    }

    /// The Host API of the topology's agent host.
    pub(super) fn host_socket(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology).join("agents.sock")
    }

    /// What the agent host (every EPM's agent) logs.
    pub(super) fn host_log(&self, topology: &str) -> PathBuf {
        self.topology_dir(topology).join("agents.log")
    }
}

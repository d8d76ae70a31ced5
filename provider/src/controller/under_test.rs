//! Agents under test: the user's processes (the topology's `epm_agent`
//! blocks) that every EPM's agent supervises. The controller keeps them in
//! the topology's records (so import and drift see them), renders each
//! EPM's commands, pushes the goals, and waits until they are ready.

use std::time::{Duration, Instant};

use futures::StreamExt;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::{SuperviseGoal, SupervisedProcess, SupervisedRequest, SupervisedStatus};

use super::Controller;
use crate::model::epm_agent::{EpmAgentSpec, Placeholders};
use crate::model::{Epm, TreeSpec};
use crate::runtime::capability::AgentsUnderTest;
use crate::runtime::{Failure, RuntimeError};
use crate::store;

/// The record kind of the agents under test.
const EPM_AGENTS: &str = "epm_agents";
/// EPMs talked to at once.
const PARALLEL_EPMS: usize = 16;
/// Between readiness checks while an apply waits.
const POLL: Duration = Duration::from_millis(500);

/// How the agents under test are doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnderTestStatus {
    /// EPMs where every agent runs and passes its ready command.
    pub ready_epms: u32,
    /// Per EPM, why not.
    pub failures: Vec<Failure>,
}

impl Controller {
    pub(super) async fn load_epm_agents(&self, topology: &str) -> Result<Vec<EpmAgentSpec>, RuntimeError> {
        Ok(store::load_json(self.store.as_ref(), topology, EPM_AGENTS).await?.unwrap_or_default())
    }

    /// Records `agents` unless the record already says so; false when
    /// there are none and never were (nothing to run or stop).
    pub(super) async fn record_epm_agents(
        &self,
        tree: &TreeSpec,
        agents: &[EpmAgentSpec],
    ) -> Result<bool, RuntimeError> {
        let recorded = self.load_epm_agents(&tree.name).await?;
        if agents.is_empty() && recorded.is_empty() {
            return Ok(false);
        }
        // Recorded before anything runs: an interrupted apply leaves the
        // goal the next one finishes, and read reports what it was meant to run.
        if recorded != agents {
            store::save_json(self.store.as_ref(), &tree.name, EPM_AGENTS, &agents).await?;
        }
        Ok(true)
    }

    /// Runs the recorded `agents` (supervised: pushes every EPM's goal;
    /// containers: the substrate built them with the EPMs) and waits, up to
    /// the longest ready timeout, until they are ready.
    pub(super) async fn apply_epm_agents(
        &self,
        tree: &TreeSpec,
        agents: &[EpmAgentSpec],
        ready_epms: u32,
    ) -> Result<UnderTestStatus, RuntimeError> {
        if !self.record_epm_agents(tree, agents).await? {
            return Ok(UnderTestStatus { ready_epms, failures: Vec::new() });
        }
        let pushed = match self.substrate.agents_under_test() {
            AgentsUnderTest::Supervised(supervised) => {
                self.push_supervise_goals(tree, agents, &supervised.log_dir(&tree.name)).await
            }
            AgentsUnderTest::Containers(_) => Vec::new(),
        };
        if agents.is_empty() {
            return Ok(UnderTestStatus { ready_epms, failures: pushed });
        }
        let wait = agents.iter().map(EpmAgentSpec::ready_timeout).max().unwrap_or_default();
        let deadline = Instant::now() + wait;
        tracing::info!(topology = %tree.name, agents = agents.len(), "waiting up to {} s for the agents under test", wait.as_secs());
        loop {
            let mut status = self.epm_agents_status(tree, agents).await;
            if status.ready_epms == tree.hosts || Instant::now() >= deadline {
                status.failures.extend(pushed);
                return Ok(status);
            }
            tracing::info!(topology = %tree.name, "EPMs with every agent under test ready: {} of {}", status.ready_epms, tree.hosts);
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends every EPM's merak-agent what to supervise; the EPMs it could not tell.
    async fn push_supervise_goals(
        &self,
        tree: &TreeSpec,
        agents: &[EpmAgentSpec],
        log_dir: &std::path::Path,
    ) -> Vec<Failure> {
        let goals: Vec<(String, SuperviseGoal)> = tree
            .epms()
            .map(|epm| (epm.name.clone(), goal_for(&epm, agents, log_dir, self.network_controller_url())))
            .collect();
        futures::stream::iter(goals)
            .map(|(epm, goal)| async move {
                let result = match self.supervise(&tree.name, &epm, goal.clone()).await {
                    Err(_) if self.substrate.revive_agent(&tree.name, &epm).await.is_ok() => {
                        self.supervise(&tree.name, &epm, goal).await
                    }
                    result => result,
                };
                result.err().map(|e| Failure { object: epm, error: format!("epm_agent: {e}") })
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter_map(futures::future::ready)
            .collect()
            .await
    }

    /// How many EPMs run every agent under test, and why the others do not.
    pub(super) async fn epm_agents_status(&self, tree: &TreeSpec, agents: &[EpmAgentSpec]) -> UnderTestStatus {
        let supervised = match self.substrate.agents_under_test() {
            AgentsUnderTest::Supervised(supervised) => supervised,
            AgentsUnderTest::Containers(containers) => {
                return match containers.not_ready(tree, agents).await {
                    Ok(failures) => {
                        UnderTestStatus { ready_epms: tree.hosts.saturating_sub(failures.len() as u32), failures }
                    }
                    Err(e) => UnderTestStatus {
                        ready_epms: 0,
                        failures: vec![Failure {
                            object: tree.name.clone(),
                            error: format!("reading the agents under test: {e}"),
                        }],
                    },
                };
            }
        };
        let log_dir = supervised.log_dir(&tree.name);
        let log = |epm: &str, agent: &str| log_path(&log_dir, epm, agent);
        let mut failures: Vec<Failure> = futures::stream::iter(tree.epms().map(|e| e.name))
            .map(|epm| async move {
                let why = match self.supervised(&tree.name, &epm).await {
                    Ok(statuses) => not_ready(agents, &statuses)
                        .map(|(agent, why)| format!("agent {agent}: {why} (its log: {})", log(&epm, agent))),
                    Err(e) => Some(format!("its agent does not answer: {e}")),
                };
                why.map(|why| Failure { object: epm, error: why })
            })
            .buffer_unordered(PARALLEL_EPMS)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        failures.sort_by(|a, b| a.object.cmp(&b.object));
        UnderTestStatus { ready_epms: tree.hosts.saturating_sub(failures.len() as u32), failures }
    }

    /// Brings back an EPM's agent that stopped answering, and with it the
    /// agents under test it supervised (they died with it). Those are
    /// restarted best-effort: the change that needed the agent goes on, and
    /// agents under test that stay down are the topology's drift.
    pub(super) async fn revive(&self, tree: &TreeSpec, epm: &str) -> Result<(), RuntimeError> {
        self.substrate.revive_agent(&tree.name, epm).await?;
        let agents = match self.load_epm_agents(&tree.name).await {
            Ok(agents) => agents,
            Err(e) => {
                tracing::warn!(epm, error = %e, "could not read the agents under test to restart");
                return Ok(());
            }
        };
        // Containers are the kubelet's to restart.
        let AgentsUnderTest::Supervised(supervised) = self.substrate.agents_under_test() else { return Ok(()) };
        let Some(epm) = tree.epms().find(|e| e.name == epm).filter(|_| !agents.is_empty()) else {
            return Ok(());
        };
        let log_dir = supervised.log_dir(&tree.name);
        let goal = goal_for(&epm, &agents, &log_dir, self.network_controller_url());
        let restarted = self.supervise(&tree.name, &epm.name, goal).await;
        if let Err(e) = restarted {
            tracing::warn!(epm = %epm.name, error = %e, "could not restart the agents under test");
        }
        Ok(())
    }

    async fn agent_client(
        &self,
        topology: &str,
        epm: &str,
    ) -> Result<AgentClient<crate::runtime::agent_client::AgentChannel>, RuntimeError> {
        Ok(AgentClient::new(self.substrate.agent_channel(topology, epm).await?))
    }

    async fn supervise(&self, topology: &str, epm: &str, goal: SuperviseGoal) -> Result<(), RuntimeError> {
        let mut client = self.agent_client(topology, epm).await?;
        client.supervise(goal).await.map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(())
    }

    async fn supervised(&self, topology: &str, epm: &str) -> Result<Vec<SupervisedStatus>, RuntimeError> {
        let mut client = self.agent_client(topology, epm).await?;
        let reply = client
            .supervised(SupervisedRequest {})
            .await
            .map_err(|s| RuntimeError::Unavailable(s.message().to_string()))?;
        Ok(reply.into_inner().processes)
    }
}

/// What one EPM's agent runs: the agents rendered for that EPM.
fn goal_for(
    epm: &Epm,
    agents: &[EpmAgentSpec],
    log_dir: &std::path::Path,
    controller_url: Option<&str>,
) -> SuperviseGoal {
    let at = Placeholders { epm: &epm.name, epm_ip: epm.ip, epm_index: epm.index, controller_url };
    let processes = agents
        .iter()
        .map(|agent| {
            let rendered = agent.render(&at);
            SupervisedProcess {
                name: agent.name.clone(),
                command: rendered.command,
                env: rendered.env.into_iter().collect(),
                ready_command: rendered.ready_command,
                log: log_path(log_dir, &epm.name, &agent.name),
            }
        })
        .collect();
    SuperviseGoal { processes }
}

/// `<dir>/<epm>.<agent>.log`.
fn log_path(dir: &std::path::Path, epm: &str, agent: &str) -> String {
    dir.join(format!("{epm}.{agent}.log")).display().to_string()
}

/// The first agent of an EPM that is not ready, and why; `None`: all are.
fn not_ready<'a>(agents: &'a [EpmAgentSpec], statuses: &[SupervisedStatus]) -> Option<(&'a str, String)> {
    agents.iter().find_map(|agent| {
        let Some(status) = statuses.iter().find(|s| s.name == agent.name) else {
            return Some((agent.name.as_str(), "not supervised (its agent was restarted)".to_string()));
        };
        if status.ready {
            return None;
        }
        let mut why = status.not_ready.clone();
        if !status.last_exit.is_empty() {
            why.push_str(&format!("; it last ended: {}", status.last_exit));
        }
        if status.restarts > 0 {
            why.push_str(&format!("; restarted {} times", status.restarts));
        }
        Some((agent.name.as_str(), why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, ready: bool) -> SupervisedStatus {
        SupervisedStatus {
            name: name.into(),
            running: ready,
            ready,
            not_ready: if ready { String::new() } else { "not running".into() },
            last_exit: "exit status: 1".into(),
            restarts: 2,
            ..Default::default()
        }
    }

    #[test]
    fn an_epm_is_ready_when_every_agent_is() {
        let agent = |name: &str| EpmAgentSpec {
            name: name.into(),
            command: vec!["true".into()],
            env: None,
            ready_command: None,
            ready_timeout_s: None,
            image: None,
        };
        let agents = [agent("a"), agent("b")];
        assert_eq!(not_ready(&agents, &[status("a", true), status("b", true)]), None);
        let (agent, why) = not_ready(&agents, &[status("a", true), status("b", false)]).expect("b is down");
        assert_eq!((agent, why.as_str()), ("b", "not running; it last ended: exit status: 1; restarted 2 times"));
        assert!(not_ready(&agents, &[status("a", true)]).expect("b is missing").1.contains("not supervised"));
        assert_eq!(not_ready(&[], &[]), None);
    }
}

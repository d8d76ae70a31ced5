//! The processes an agent runs and keeps running in its EPM: the user's own
//! agents under test (an OVN controller, a routing daemon, ...).
//!
//! Each runs in the EPM's network namespace as `ip netns exec` would run it
//! (a mount namespace of its own with the EPM's `/sys`, since tools read
//! their interfaces there), in a process group of its own so that stopping
//! it stops what it started, with its output appended to its log. One that
//! exits is started again after a backoff (1 s doubling to 30 s, back to 1 s
//! once it stayed up for 30 s). The goal is declarative: a process whose
//! spec changed is restarted, one no longer listed is stopped.
//!
//! Whatever happens to the agent, its processes must not outlive it
//! unnoticed: stopping the agent stops them (SIGTERM to the group, then
//! SIGKILL), and a killed agent takes the first process of each group with
//! it (PR_SET_PDEATHSIG). What a process detached from its group is the
//! runtime's to sweep when it removes the namespace.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use merak_proto::agent::{SupervisedProcess, SupervisedStatus};

use crate::namespace_entry::{DEFAULT_PATH, NamespaceEntry, signal_group};
use tokio::sync::{Mutex, watch};

/// PATH of a supervised process unless its env sets one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that stayed up this long starts its backoff over.
const STEADY: Duration = Duration::from_secs(30);
/// Up this long before it counts as running: a command that fails at once
/// must not look up to a check made right after it started.
const UP_BEFORE_RUNNING: Duration = Duration::from_secs(1);
/// Between SIGTERM and SIGKILL when stopping a process.
const STOP_GRACE: Duration = Duration::from_secs(3);
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Limits on a goal (it comes over the network).
pub const MAX_PROCESSES: usize = 64;
const MAX_ARGUMENTS: usize = 4096;
const MAX_ENV: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("process {index} of the goal: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("{0} processes in one goal; at most {MAX_PROCESSES}")]
    TooMany(usize),
}

/// What the supervisor knows of one process's current run.
#[derive(Debug, Default)]
struct RunState {
    pid: Option<u32>,
    started: Option<Instant>,
    starts: u32,
    last_exit: String,
}

struct Supervised {
    spec: SupervisedProcess,
    state: Arc<StdMutex<RunState>>,
    /// Dropping or sending stops the process and its task.
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The processes of one EPM's agent.
pub struct Supervisor {
    /// The EPM's namespace, entered before exec; `None`: the agent's own
    /// (a standalone agent already runs inside its EPM).
    netns: Option<PathBuf>,
    processes: Mutex<HashMap<String, Supervised>>,
}

impl Supervisor {
    pub fn new(netns: Option<PathBuf>) -> Self {
        Supervisor { netns, processes: Mutex::default() }
    }

    /// Makes the supervised processes match `goal`; their status after.
    pub async fn apply(&self, goal: Vec<SupervisedProcess>) -> Result<Vec<SupervisedStatus>, SuperviseError> {
        check(&goal)?;
        {
            let mut processes = self.processes.lock().await;
            let wanted: HashMap<&str, &SupervisedProcess> = goal.iter().map(|p| (p.name.as_str(), p)).collect();
            let leaving: Vec<String> = processes
                .iter()
                .filter(|(name, p)| wanted.get(name.as_str()) != Some(&&p.spec))
                .map(|(name, _)| name.clone())
                .collect();
            let stopping = leaving.into_iter().filter_map(|name| processes.remove(&name));
            futures::future::join_all(stopping.map(Supervised::stop)).await;
            for spec in goal {
                if !processes.contains_key(&spec.name) {
                    tracing::info!(process = %spec.name, "supervising");
                    processes.insert(spec.name.clone(), start(spec, self.netns.clone()));
                }
            }
        }
        Ok(self.status().await)
    }

    /// Every supervised process's status, ready commands run now (at once).
    pub async fn status(&self) -> Vec<SupervisedStatus> {
        let snapshot: Vec<(SupervisedProcess, Option<u32>, bool, u32, String)> = {
            let processes = self.processes.lock().await;
            let mut snapshot: Vec<_> = processes
                .values()
                .map(|p| {
                    let state = lock(&p.state);
                    let running =
                        state.pid.is_some() && state.started.is_some_and(|t| t.elapsed() >= UP_BEFORE_RUNNING);
                    (p.spec.clone(), state.pid, running, state.starts.saturating_sub(1), state.last_exit.clone())
                })
                .collect();
            snapshot.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            snapshot
        };
        let checks = snapshot.into_iter().map(|(spec, pid, running, restarts, last_exit)| async move {
            let not_ready = if !running {
                "not running".to_string()
            } else if spec.ready_command.is_empty() {
                String::new()
            } else {
                ready_check(&spec, self.netns.as_deref()).await.err().unwrap_or_default()
            };
            SupervisedStatus {
                ready: running && not_ready.is_empty(),
                running,
                pid: pid.unwrap_or_default(),
                restarts,
                last_exit,
                not_ready,
                name: spec.name,
            }
        });
        futures::future::join_all(checks).await
    }

    /// Stops every process (the agent is going away).
    pub async fn stop_all(&self) {
        let all: Vec<Supervised> = self.processes.lock().await.drain().map(|(_, p)| p).collect();
        futures::future::join_all(all.into_iter().map(Supervised::stop)).await;
    }
}

fn lock(state: &StdMutex<RunState>) -> MutexGuard<'_, RunState> {
    // Plain fields: consistent whatever a panicking holder did.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check(goal: &[SupervisedProcess]) -> Result<(), SuperviseError> {
    if goal.len() > MAX_PROCESSES {
        return Err(SuperviseError::TooMany(goal.len()));
    }
    let mut names = HashSet::new();
    for (index, process) in goal.iter().enumerate() {
        let invalid = |reason: String| Err(SuperviseError::Invalid { index, reason });
        if process.name.is_empty() || !names.insert(process.name.as_str()) {
            return invalid(format!("name {:?} is empty or not unique", process.name));
        }
        if process.command.first().is_none_or(String::is_empty) {
            return invalid("empty command".into());
        }
        if process.command.len() > MAX_ARGUMENTS
            || process.ready_command.len() > MAX_ARGUMENTS
            || process.env.len() > MAX_ENV
        {
            return invalid(format!("more than {MAX_ARGUMENTS} arguments or {MAX_ENV} variables"));
        }
        if !Path::new(&process.log).is_absolute() {
            return invalid(format!("log {:?} is not an absolute path", process.log));
        }
        let texts =
            process.command.iter().chain(&process.ready_command).chain(process.env.iter().flat_map(|(k, v)| [k, v]));
        if texts.into_iter().any(|t| t.contains('\0')) || process.env.keys().any(|k| k.is_empty() || k.contains('=')) {
            return invalid("a NUL byte in an argument, or an empty or '='-holding variable name".into());
        }
    }
    Ok(())
}

fn start(spec: SupervisedProcess, netns: Option<PathBuf>) -> Supervised {
    let state = Arc::new(StdMutex::new(RunState::default()));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(spec.clone(), netns, state.clone(), stopped));
    Supervised { spec, state, stop, task }
}

/// Runs the process until told to stop, starting it again when it exits.
async fn run(
    spec: SupervisedProcess,
    netns: Option<PathBuf>,
    state: Arc<StdMutex<RunState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        lock(&state).starts += 1;
        match spawn(&spec.command, &spec, netns.as_deref(), true) {
            Ok(mut child) => {
                let pid = child.id();
                {
                    let mut state = lock(&state);
                    state.pid = pid;
                    state.started = Some(started);
                }
                note(&spec.log, &format!("started {} (pid {})", spec.name, pid.unwrap_or_default()));
                tokio::select! {
                    status = child.wait() => {
                        let ended = match status {
                            Ok(status) => status.to_string(),
                            Err(e) => format!("lost: {e}"),
                        };
                        // What it left running in its group would hold the
                        // ports and files the next start needs.
                        signal_group(pid, libc::SIGKILL);
                        let mut state = lock(&state);
                        state.pid = None;
                        state.started = None;
                        state.last_exit = ended.clone();
                        drop(state);
                        if started.elapsed() >= STEADY {
                            backoff = FIRST_BACKOFF;
                        }
                        note(&spec.log, &format!("{} ended ({ended}); starting it again in {} s", spec.name, backoff.as_secs()));
                        tracing::warn!(process = %spec.name, %ended, "supervised process ended");
                    }
                    _ = stop.changed() => {
                        terminate(&mut child, pid).await;
                        note(&spec.log, &format!("stopped {}", spec.name));
                        return;
                    }
                }
            }
            Err(e) => {
                let error = format!("could not start {:?}: {e}", spec.command[0]);
                note(&spec.log, &error);
                lock(&state).last_exit = error;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// SIGTERM to the process's group, SIGKILL to what is left after the grace.
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>) {
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        tracing::warn!(pid, "supervised process ignored SIGTERM; killing it");
    }
    signal_group(pid, libc::SIGKILL);
    let _ = child.wait().await;
}

/// One line of the supervisor's own in the process's log.
fn note(log: &str, line: &str) {
    if let Ok(mut file) = open_log(log) {
        let _ = writeln!(file, "merak-agent: {line}");
    }
}

fn open_log(log: &str) -> std::io::Result<File> {
    if let Some(dir) = Path::new(log).parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(log)
}

/// Runs the ready command; why it did not pass, if it did not.
async fn ready_check(spec: &SupervisedProcess, netns: Option<&Path>) -> Result<(), String> {
    let mut child =
        spawn(&spec.ready_command, spec, netns, false).map_err(|e| format!("could not run the ready command: {e}"))?;
    match tokio::time::timeout(READY_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the ready command ended with {status}")),
        Ok(Err(e)) => Err(format!("the ready command was lost: {e}")),
        Err(_) => {
            signal_group(child.id(), libc::SIGKILL);
            Err(format!("the ready command did not finish within {} s", READY_TIMEOUT.as_secs()))
        }
    }
}

/// Starts `argv` with the process's environment, output to its log, in a
/// process group of its own that dies with this agent (`leader`: the
/// supervised process itself; a ready command does not outlive its check).
fn spawn(
    argv: &[String],
    spec: &SupervisedProcess,
    netns: Option<&Path>,
    leader: bool,
) -> std::io::Result<tokio::process::Child> {
    let (program, arguments) = argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    let log = open_log(&spec.log)?;
    let entry = netns.map(NamespaceEntry::prepare).transpose()?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(arguments)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(!leader);
    // SAFETY: the closure only makes syscalls (see NamespaceEntry::enter).
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            match &entry {
                Some(entry) => entry.enter(),
                None => Ok(()),
            }
        });
    }
    command.spawn()
}

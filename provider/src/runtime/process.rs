//! Starting and stopping agent processes.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `agent` as the agent host of one topology, serving the Host API on
/// `control` and logging to `log`; returns its pid. The agent leaves our
/// session and closes what it inherited itself (see merak-agent's main), so
/// that this is a plain spawn: std then uses posix_spawn (vfork-like), where
/// a fork of this large, many-threaded process would copy its page tables.
pub fn spawn_host(agent: &Path, control: &Path, tls_dir: &Path, log: &Path) -> io::Result<u32> {
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(agent)
        .arg("--host")
        .arg("--control")
        .arg(control)
        .arg("--tls-dir")
        .arg(tls_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(child.id())
}

/// The socket a merak-agent command line serves: a host's `--control` or a
/// standalone agent's `--socket`.
fn served_socket(args: &[&[u8]]) -> Option<std::path::PathBuf> {
    args.windows(2)
        .find(|w| w[0] == b"--control" || w[0] == b"--socket")
        .map(|w| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(w[1])))
}

/// Whether `pid` is a live merak-agent serving `socket` (a host's control
/// socket or a standalone agent's; pids get reused, so the command line is
/// checked before anything is signalled).
pub fn is_agent(pid: u32, socket: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_ours =
        args.first().is_some_and(|a| a.ends_with(b"merak-agent")) && served_socket(&args).as_deref() == Some(socket);
    is_ours && alive(pid)
}

/// Every live merak-agent whose socket lies in `dir`, as (pid, socket): the
/// topology's host, and agents a record lost track of (e.g. after a crash
/// mid-apply, or standalone agents of an older version).
pub fn agents_in(dir: &Path) -> Vec<(u32, std::path::PathBuf)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut agents = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.first().is_some_and(|a| a.ends_with(b"merak-agent")) {
            continue;
        }
        if let Some(socket) = served_socket(&args).filter(|s| s.parent() == Some(dir))
            && alive(pid)
        {
            agents.push((pid, socket));
        }
    }
    agents
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Stops the agent (or host): SIGTERM, then SIGKILL if it has not exited in time.
pub async fn stop_agent(pid: u32, socket: &Path) {
    stop_agents(&[(pid, socket.to_path_buf())]).await;
}

/// Stops agents all at once (they exit in parallel), then waits for each.
pub async fn stop_agents(agents: &[(u32, std::path::PathBuf)]) {
    let ours: Vec<u32> = agents.iter().filter(|(pid, socket)| is_agent(*pid, socket)).map(|(pid, _)| *pid).collect();
    for &pid in &ours {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for pid in ours {
        while alive(pid) {
            if Instant::now() > deadline {
                signal(pid, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            reap(pid);
        }
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid we verified is our agent.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// How our child `pid` ended, if it has ("exited with status 0", "killed
/// by signal 9"); reaps it. None while it runs or if it is not our child.
pub fn exit_status(pid: u32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid(2) with WNOHANG never blocks.
    let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if reaped != pid as i32 {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(format!("it exited with status {}", libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(format!("it was killed by signal {}", libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// Collects the exit status if the agent is our own child, so it does not
/// linger as a zombie while the provider runs.
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid(2) with WNOHANG never blocks; ECHILD for non-children is fine.
    unsafe {
        libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
    }
}

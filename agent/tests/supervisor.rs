//! The supervisor against the real kernel (needs root): processes run inside
//! the EPM's namespace with its /sys, come back when they die, restart when
//! their spec changes, and take what they started with them when stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use merak_agent::netns::{self, NetnsOptions};
use merak_agent::supervisor::Supervisor;
use merak_proto::agent::{SupervisedProcess, SupervisedStatus};

/// A namespace and a scratch directory, removed when dropped.
struct Scratch {
    namespace: String,
    dir: PathBuf,
}

impl Scratch {
    async fn new(test: &str) -> Self {
        let namespace = format!("merak-test-sup{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&namespace);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        netns::create(&namespace, NetnsOptions::default()).await.expect("create the namespace");
        Scratch { namespace, dir }
    }

    fn process(&self, name: &str, script: &str) -> SupervisedProcess {
        SupervisedProcess {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: HashMap::new(),
            ready_command: Vec::new(),
            log: self.dir.join(format!("{name}.log")).display().to_string(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = netns::delete(&self.namespace);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn status_of(supervisor: &Supervisor, name: &str) -> SupervisedStatus {
    supervisor.status().await.into_iter().find(|s| s.name == name).expect("supervised")
}

/// Polls until `done` holds of the process's status, or fails after 10 s.
async fn wait_for(
    supervisor: &Supervisor,
    name: &str,
    what: &str,
    done: impl Fn(&SupervisedStatus) -> bool,
) -> SupervisedStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status_of(supervisor, name).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{name}: never {what}: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} outlived its process group");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_runs_in_its_epm_comes_back_restarts_on_change_and_stops_with_its_children() {
    let scratch = Scratch::new("run").await;
    let supervisor = Supervisor::new(Some(netns::path_of(&scratch.namespace)));
    let child_pid = scratch.dir.join("child.pid");
    let ready = scratch.dir.join("ready");
    let script = format!(
        "echo \"ns=$(stat -L -c %i /proc/self/ns/net) sys=$(ls /sys/class/net | tr '\\n' ,) greeting=$GREETING\"; \
         sleep 1000 & echo $! > {}; wait",
        child_pid.display()
    );
    let mut spec = scratch.process("daemon", &script);
    spec.env.insert("GREETING".into(), "hello".into());
    spec.ready_command = vec!["test".into(), "-e".into(), ready.display().to_string()];
    let log = PathBuf::from(&spec.log);

    supervisor.apply(vec![spec.clone()]).await.unwrap();
    let first = wait_for(&supervisor, "daemon", "running", |s| s.running).await;
    assert!(!first.ready, "its ready command fails until the file exists: {first:?}");
    assert!(first.not_ready.contains("ready command"), "{first:?}");
    std::fs::write(&ready, "").unwrap();
    assert!(status_of(&supervisor, "daemon").await.ready);

    // Inside the EPM: its namespace, its /sys (only lo), and the env given.
    let inode =
        std::fs::metadata(netns::path_of(&scratch.namespace)).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let text = read(&log);
    assert!(text.contains(&format!("ns={inode} sys=lo, greeting=hello")), "{text}");

    // Killed behind its back, it comes back after the backoff; the child it
    // left in its group goes first.
    let old_child: u32 = read(&child_pid).trim().parse().unwrap();
    unsafe { libc::kill(first.pid as i32, libc::SIGKILL) };
    let second = wait_for(&supervisor, "daemon", "restarted", |s| s.running && s.pid != first.pid).await;
    assert_eq!(second.restarts, 1);
    assert!(second.last_exit.contains("9"), "{second:?}");
    wait_gone(old_child).await;

    // The same goal again changes nothing; a changed spec restarts it.
    supervisor.apply(vec![spec.clone()]).await.unwrap();
    assert_eq!(status_of(&supervisor, "daemon").await.pid, second.pid);
    spec.env.insert("GREETING".into(), "again".into());
    supervisor.apply(vec![spec.clone()]).await.unwrap();
    let third =
        wait_for(&supervisor, "daemon", "restarted with the new spec", |s| s.running && s.pid != second.pid).await;
    assert_eq!(third.restarts, 0, "a new spec is a new process");
    assert!(read(&log).contains("greeting=again"));

    // No longer in the goal: stopped with what it started.
    let child: u32 = read(&child_pid).trim().parse().unwrap();
    assert!(alive(child));
    supervisor.apply(Vec::new()).await.unwrap();
    assert!(supervisor.status().await.is_empty());
    wait_gone(third.pid).await;
    wait_gone(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_missing_programs_are_reported_and_retried() {
    let scratch = Scratch::new("fail").await;
    let supervisor = Supervisor::new(Some(netns::path_of(&scratch.namespace)));
    let mut missing = scratch.process("missing", "");
    missing.command = vec!["/nonexistent/merak-test-program".into()];
    supervisor.apply(vec![scratch.process("failing", "exit 3"), missing]).await.unwrap();
    let failing = wait_for(&supervisor, "failing", "retried", |s| s.restarts >= 1).await;
    assert!(!failing.running && !failing.ready);
    assert!(failing.last_exit.contains('3'), "{failing:?}");
    let missing = wait_for(&supervisor, "missing", "tried", |s| !s.last_exit.is_empty()).await;
    assert!(missing.last_exit.contains("could not start"), "{missing:?}");
    supervisor.stop_all().await;
    assert!(supervisor.status().await.is_empty());
}

#[tokio::test]
async fn bad_goals_are_refused_whole() {
    let scratch = Scratch::new("bad").await;
    let supervisor = Supervisor::new(Some(netns::path_of(&scratch.namespace)));
    let one = scratch.process("one", "sleep 1000");
    let mut empty = scratch.process("empty", "");
    empty.command.clear();
    let mut relative = scratch.process("relative", "sleep 1000");
    relative.log = "relative.log".into();
    let mut nul = scratch.process("nul", "sleep 1000");
    nul.env.insert("A".into(), "b\0c".into());
    for goal in [vec![one.clone(), one.clone()], vec![one.clone(), empty], vec![relative], vec![nul]] {
        assert!(supervisor.apply(goal).await.is_err());
        assert!(supervisor.status().await.is_empty(), "nothing of a refused goal runs");
    }
}

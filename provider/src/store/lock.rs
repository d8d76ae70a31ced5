//! One writer per topology. A provider process that changes a topology
//! holds an exclusive `flock` on `<state_dir>/<topology>.lock` from its first
//! change until it exits. Terraform runs one provider process per command,
//! so the lock covers the whole apply or destroy; a second Terraform working
//! on the same topology meanwhile is refused at once, told who holds it. The
//! kernel drops the lock when its holder dies, so a killed apply never
//! leaves a stale one.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;

/// The locks this process holds, by topology.
#[derive(Debug, Default)]
pub struct Locks {
    held: Mutex<HashMap<String, File>>,
}

pub fn path(state_dir: &Path, topology: &str) -> PathBuf {
    state_dir.join(format!("{topology}.lock"))
}

impl Locks {
    /// Takes the topology's lock unless this process holds it already.
    pub fn acquire(&self, state_dir: &Path, topology: &str) -> Result<(), StoreError> {
        let mut held =
            self.held.lock().map_err(|_| StoreError::io("the lock table", io::Error::other("poisoned by a panic")))?;
        if held.contains_key(topology) {
            return Ok(());
        }
        let path = path(state_dir, topology);
        let file = take(&path).map_err(|e| StoreError::io(format!("locking {}", path.display()), e))?;
        match file {
            Ok(file) => {
                held.insert(topology.to_string(), file);
                Ok(())
            }
            Err(holder) => {
                Err(StoreError::Locked { topology: topology.to_string(), holder, location: path.display().to_string() })
            }
        }
    }

    /// Removes the lock file of a topology that is gone when no process
    /// holds it (its holder died before removing it); one this process or
    /// a live one holds stays.
    pub fn clear_abandoned(&self, state_dir: &Path, topology: &str) {
        let Ok(held) = self.held.lock() else { return };
        if held.contains_key(topology) {
            return;
        }
        let path = path(state_dir, topology);
        // Never made here: no file, nothing abandoned.
        let Ok(file) = OpenOptions::new().read(true).open(&path) else { return };
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return;
        }
        // Still the file the path names (no one made it anew meanwhile).
        let same = fs::metadata(&path)
            .is_ok_and(|m| file.metadata().is_ok_and(|ours| (ours.dev(), ours.ino()) == (m.dev(), m.ino())));
        if same {
            let _ = fs::remove_file(&path);
        }
    }

    /// Removes the lock file of a topology that is gone, still holding it,
    /// then lets go.
    pub fn remove(&self, state_dir: &Path, topology: &str) {
        if let Ok(mut held) = self.held.lock()
            && held.remove(topology).is_some()
        {
            let _ = fs::remove_file(path(state_dir, topology));
        }
    }
}

/// The lock, or (inner `Err`) a description of the process holding it.
fn take(path: &Path) -> io::Result<Result<File, String>> {
    loop {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(error);
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Ok(Err(describe(holder.trim())));
        }
        // The holder before us may have removed the file (its topology
        // destroyed) after we opened it: then we hold a lock nobody else
        // can see. Lock what the path names now.
        let same = fs::metadata(path)
            .is_ok_and(|m| file.metadata().is_ok_and(|ours| (ours.dev(), ours.ino()) == (m.dev(), m.ino())));
        if !same {
            continue;
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        return Ok(Ok(file));
    }
}

/// "pid 1234 (terraform-provider-merak, started by terraform)" from the pid
/// the holder wrote.
fn describe(pid: &str) -> String {
    let Ok(pid) = pid.parse::<u32>() else { return "another process".into() };
    // The program's whole name from its command line; comm, which the
    // kernel cuts to 15 bytes ("terraform-provi"), when that is unreadable.
    let command = |pid: u32| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|cmdline| program_name(&cmdline))
            .or_else(|| fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_string()).ok())
    };
    let parent = fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
    });
    match (command(pid), parent.and_then(command)) {
        (Some(command), Some(parent)) => format!("pid {pid} ({command}, started by {parent})"),
        (Some(command), None) => format!("pid {pid} ({command})"),
        _ => format!("pid {pid}"),
    }
}

/// The program a command line (NUL-separated, as /proc/PID/cmdline) runs:
/// the file name of its first word, or of the script an interpreter runs
/// (Terraform from PyPI runs as `python3 .../terraform`).
fn program_name(cmdline: &[u8]) -> Option<String> {
    let mut words = cmdline.split(|b| *b == 0).filter(|w| !w.is_empty()).map(String::from_utf8_lossy);
    let file_name = |word: &str| word.rsplit('/').next().unwrap_or(word).to_string();
    let first = file_name(&words.next()?);
    let interpreter = ["python", "sh", "bash", "env"].iter().any(|i| first.starts_with(i));
    match words.next() {
        Some(script) if interpreter && !script.starts_with('-') => Some(file_name(&script)),
        _ => Some(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_named_whole_and_through_its_interpreter() {
        let name = |cmdline: &str| program_name(cmdline.replace(' ', "\0").as_bytes());
        assert_eq!(
            name("/root/.terraform.d/plugins/terraform-provider-merak_v0.1.0 -plugin"),
            Some("terraform-provider-merak_v0.1.0".into())
        );
        assert_eq!(name("python3 /work/target/tools/terraform-1.15.5 apply"), Some("terraform-1.15.5".into()));
        assert_eq!(name("python3 -u"), Some("python3".into()));
        assert_eq!(name("terraform"), Some("terraform".into()));
        assert_eq!(program_name(b""), None);
    }

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = std::env::temp_dir().join(format!("merak-lock-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let first = Locks::default();
        first.acquire(&dir, "lab").unwrap();
        // Again from the same process: already held.
        first.acquire(&dir, "lab").unwrap();
        let second = Locks::default();
        match second.acquire(&dir, "lab") {
            Err(StoreError::Locked { holder, .. }) => {
                assert!(holder.contains(&std::process::id().to_string()), "{holder}")
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // Other topologies are independent.
        second.acquire(&dir, "other").unwrap();
        first.remove(&dir, "lab");
        assert!(!path(&dir, "lab").exists());
        second.acquire(&dir, "lab").unwrap();
        second.remove(&dir, "lab");
        second.remove(&dir, "other");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abandoned_lock_file_is_cleared_and_a_held_one_stays() {
        let dir = std::env::temp_dir().join(format!("merak-lock-abandoned-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // What a holder that died leaves: the file with its pid, no lock.
        fs::write(path(&dir, "gone"), "4194304\n").unwrap();
        let locks = Locks::default();
        locks.clear_abandoned(&dir, "gone");
        assert!(!path(&dir, "gone").exists(), "the abandoned lock file is removed");
        // No file: nothing made.
        locks.clear_abandoned(&dir, "never");
        assert!(!path(&dir, "never").exists());
        // Held by this process, or by another holder: it stays.
        locks.acquire(&dir, "ours").unwrap();
        locks.clear_abandoned(&dir, "ours");
        assert!(path(&dir, "ours").exists());
        let other = Locks::default();
        other.clear_abandoned(&dir, "ours");
        assert!(path(&dir, "ours").exists(), "a lock another holder has stays");
        locks.remove(&dir, "ours");
        fs::remove_dir_all(&dir).unwrap();
    }
}

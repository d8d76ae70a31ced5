//! Who holds a topology's lock in the cluster, told precisely enough that a
//! later run on the same machine can see the holder is gone.
//!
//! A lock whose holder stops renewing lapses after `LOCK_TTL`; that is the
//! only way to know a holder on another machine died. But a user whose
//! Terraform or provider was killed usually runs again on the same machine,
//! where the kernel can answer at once: a holder that ran in this boot, in
//! this PID namespace, whose pid no longer names a process started at the
//! same moment, is gone, and its lock is taken over without waiting.

use std::collections::BTreeMap;

/// The lock data keys that identify the holding process.
const BOOT_ID: &str = "boot-id";
const PID_NAMESPACE: &str = "pid-namespace";
const PID: &str = "pid";
const STARTED: &str = "pid-started";

/// A process as the kernel names it: the boot and PID namespace it runs in,
/// its pid, and its start time in clock ticks after boot (a reused pid has
/// another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub boot_id: String,
    pub pid_namespace: String,
    pub pid: u32,
    pub started: String,
}

impl ProcessIdentity {
    /// This process, or None where /proc does not tell (then locks only lapse).
    pub fn this_process() -> Option<ProcessIdentity> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string();
        let pid_namespace = std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned();
        let pid = std::process::id();
        let started = start_time(pid)?;
        Some(ProcessIdentity { boot_id, pid_namespace, pid, started })
    }

    /// The lock data entries naming this process.
    pub fn to_data(&self) -> [(&'static str, String); 4] {
        [
            (BOOT_ID, self.boot_id.clone()),
            (PID_NAMESPACE, self.pid_namespace.clone()),
            (PID, self.pid.to_string()),
            (STARTED, self.started.clone()),
        ]
    }

    /// The holder a lock's data names, when it names one completely.
    pub fn from_data(data: &BTreeMap<String, String>) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            boot_id: data.get(BOOT_ID)?.clone(),
            pid_namespace: data.get(PID_NAMESPACE)?.clone(),
            pid: data.get(PID)?.parse().ok()?,
            started: data.get(STARTED)?.clone(),
        })
    }

    /// Whether `self`, a lock's holder, is certainly gone as seen from
    /// `here`: it ran in the same boot and PID namespace, and its pid now
    /// names no process or one started at another moment (`start_of` reads
    /// a pid's start time). A holder elsewhere is never judged gone.
    pub fn is_gone(&self, here: &ProcessIdentity, start_of: impl Fn(u32) -> Option<String>) -> bool {
        self.boot_id == here.boot_id
            && self.pid_namespace == here.pid_namespace
            && start_of(self.pid).as_deref() != Some(self.started.as_str())
    }
}

/// A process's start time (clock ticks after boot), from /proc/PID/stat.
pub fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a stat line; the command (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after its last ')'.
fn parse_start_time(stat: &str) -> Option<String> {
    let (_, after_command) = stat.rsplit_once(')')?;
    after_command.split_whitespace().nth(19).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> ProcessIdentity {
        ProcessIdentity {
            boot_id: "b1".into(),
            pid_namespace: "pid:[4026531836]".into(),
            pid: 4242,
            started: "1000".into(),
        }
    }

    #[test]
    fn a_holder_round_trips_through_the_lock_data() {
        let data: BTreeMap<String, String> = holder().to_data().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(ProcessIdentity::from_data(&data), Some(holder()));
        let mut partial = data.clone();
        partial.remove(PID);
        assert_eq!(ProcessIdentity::from_data(&partial), None, "a lock of an older provider names no process");
    }

    #[test]
    fn a_holder_is_gone_only_when_this_kernel_says_so() {
        let here = ProcessIdentity { pid: 1, started: "5".into(), ..holder() };
        let running = |pid: u32| (pid == 4242).then(|| "1000".to_string());
        assert!(!holder().is_gone(&here, running), "still running");
        assert!(holder().is_gone(&here, |_| None), "no process with its pid");
        assert!(holder().is_gone(&here, |_| Some("2000".into())), "its pid reused by a later process");
        let other_boot = ProcessIdentity { boot_id: "b2".into(), ..here.clone() };
        assert!(!holder().is_gone(&other_boot, |_| None), "another machine, or before a reboot: only the lapse tells");
        let other_namespace = ProcessIdentity { pid_namespace: "pid:[1]".into(), ..here };
        assert!(!holder().is_gone(&other_namespace, |_| None), "a container's pids are not ours to read");
    }

    #[test]
    fn start_time_is_counted_after_the_command() {
        let stat = "77 (a) b (c)) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 200";
        assert_eq!(parse_start_time(stat).as_deref(), Some("123456"));
        assert_eq!(parse_start_time("77 (cut"), None);
        assert!(start_time(std::process::id()).is_some());
    }
}

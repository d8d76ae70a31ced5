//! Host-wide kernel limits an emulated data center outgrows. Both are global
//! (one value for every network namespace, settable only from the host's):
//!
//! - the ARP table, capped by `net.ipv4.neigh.default.gc_thresh3` (1024 by
//!   default). Every EPM resolves its underlay peers and every EVM holds its
//!   gateway; past the cap the kernel refuses new entries ("neighbor table
//!   overflow"): ARP fails and packets vanish (measured: 53 of 184 pings lost
//!   at 32 EPMs and 360 EVMs);
//! - the per-CPU receive backlog, `net.core.netdev_max_backlog` (1000). One
//!   broadcast in a subnet reaches every EVM of it through veths, each copy
//!   queued on that backlog in one burst (measured: 2 million drops and 47 of
//!   50 pings lost in a 30,000-EVM subnet);
//!
//! (`kernel.pid_max` is no longer raised: a topology's agents share one
//! process. A value an older version raised is still put back.)
//!
//! Each user (a topology of the local runtime, a stand-in cluster) raises
//! them to what it needs; the host's own values are kept and put back when
//! the last user is gone. Users are marker files under
//! `/run/merak/host-limits/`, one per user, named by a hash of its directory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const THRESH2: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh2";
const THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
const BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";
/// Raised by versions that ran an agent process per EPM; only restored now.
const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// Host-wide (not per state directory): every runtime on the host shares them.
const REGISTRY: &str = "/run/merak/host-limits";
/// The host's own values, kept while raised.
const SAVED: &str = "host-values.json";

/// What an emulation needs of the host: the limits are raised to at least
/// these (never lowered by [`ensure`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Entries of the neighbour table (`gc_thresh3`; `gc_thresh2` is half).
    pub arp_entries: u64,
    /// `netdev_max_backlog`.
    pub backlog: u64,
}

fn read(path: &str) -> io::Result<u64> {
    fs::read_to_string(path)?.trim().parse().map_err(io::Error::other)
}

fn write(path: &str, value: u64) -> io::Result<()> {
    fs::write(path, value.to_string())
}

fn marker(user_dir: &Path) -> PathBuf {
    let hash = user_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    Path::new(REGISTRY).join(format!("{hash:016x}"))
}

/// The registry locked: users are separate processes (every provider, the
/// stand-in cluster), and a release that counts no users and puts the
/// host's values back must not interleave with an ensure adding a user
/// (measured: two soaks at once, one destroy in 30 failed with the saved
/// values' file removed under it). The lock is the registry directory's
/// own, so that nothing of it stays once the last user is gone; it is let
/// go when dropped.
struct Locked {
    _directory: fs::File,
}

fn lock_registry() -> io::Result<Locked> {
    loop {
        // The last user's release may remove the registry between any two
        // of these steps (it holds the old directory's lock, not ours):
        // then make it again.
        let directory = match fs::create_dir_all(REGISTRY).and_then(|()| fs::File::open(REGISTRY)) {
            Ok(directory) => directory,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: flock on a descriptor this function owns.
        while unsafe { libc::flock(directory.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        // The last release removes the directory: a lock on one removed
        // while this waited for it locks nothing; take the new one.
        match fs::metadata(REGISTRY) {
            Ok(now) if now.ino() == directory.metadata()?.ino() => return Ok(Locked { _directory: directory }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// Raises the limits to at least `needs` (never lowers them) and records
/// `user_dir` as a user of the raised limits.
pub fn ensure(user_dir: &Path, needs: Limits) -> io::Result<()> {
    let _locked = lock_registry()?;
    fs::write(marker(user_dir), user_dir.as_os_str().as_encoded_bytes())?;
    let current: BTreeMap<&str, u64> =
        [THRESH2, THRESH3, BACKLOG].into_iter().map(|p| Ok((p, read(p)?))).collect::<io::Result<_>>()?;
    let raise_arp = current[THRESH3] < needs.arp_entries;
    let raise_backlog = current[BACKLOG] < needs.backlog;
    if !raise_arp && !raise_backlog {
        return Ok(());
    }
    let saved = Path::new(REGISTRY).join(SAVED);
    if !saved.exists() {
        let text = serde_json::to_string(&current).map_err(io::Error::other)?;
        fs::write(&saved, text)?;
    }
    if raise_arp {
        // thresh3 first: the kernel wants thresh2 <= thresh3.
        write(THRESH3, needs.arp_entries)?;
        write(THRESH2, (needs.arp_entries / 2).max(current[THRESH2]))?;
    }
    if raise_backlog {
        write(BACKLOG, needs.backlog)?;
    }
    tracing::info!(
        gc_thresh3 = needs.arp_entries,
        netdev_max_backlog = needs.backlog,
        "raised host limits for the emulation"
    );
    Ok(())
}

/// The users of the raised limits now, by directory.
pub fn users() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(REGISTRY) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name() != SAVED)
        .filter_map(|e| fs::read(e.path()).ok())
        .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
        .collect()
}

/// The neighbour table's cap now (`gc_thresh3`).
pub fn arp_entries() -> io::Result<u64> {
    read(THRESH3)
}

/// Drops `user_dir` as a user; the last user gone, puts the host's own
/// values back.
pub fn release(user_dir: &Path) -> io::Result<()> {
    if !Path::new(REGISTRY).exists() {
        return Ok(());
    }
    let _locked = lock_registry()?;
    match fs::remove_file(marker(user_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let users =
        fs::read_dir(REGISTRY).map(|entries| entries.flatten().filter(|e| e.file_name() != SAVED).count()).unwrap_or(0);
    if users > 0 {
        return Ok(());
    }
    let saved = Path::new(REGISTRY).join(SAVED);
    match fs::read_to_string(&saved) {
        Ok(text) => {
            let values: BTreeMap<String, u64> = serde_json::from_str(&text).map_err(io::Error::other)?;
            // thresh2 before thresh3: lowering thresh3 below thresh2 is refused.
            for path in [THRESH2, THRESH3, BACKLOG, PID_MAX] {
                if let Some(value) = values.get(path) {
                    write(path, *value)?;
                }
            }
            fs::remove_file(saved)?;
            tracing::info!("restored the host's network limits");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let _ = fs::remove_dir(REGISTRY);
    let _ = fs::remove_dir("/run/merak");
    Ok(())
}

//! The host's ARP table is one table for all network namespaces, capped by
//! `net.ipv4.neigh.default.gc_thresh3` (1024 by default). An emulated data
//! center needs far more entries (every EPM resolves its underlay peers,
//! every EVM holds its gateway), and past the cap the kernel refuses new
//! entries ("neighbor table overflow"): ARP fails and packets vanish. So the
//! runtime raises the limits to what the emulation needs, remembers the
//! host's own values, and puts them back when the last topology on the host
//! (of any state directory) is gone. Users are marker files under
//! `/run/merak/arp-limits/`, one per topology directory.

use std::fs;
use std::io;
use std::path::Path;

const THRESH2: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh2";
const THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
/// Host-wide (not per state directory): every runtime on the host shares the table.
const REGISTRY: &str = "/run/merak/arp-limits";
/// Where the host's own values are kept while raised.
const SAVED: &str = "host-values.json";

/// Entries an emulation of `epms` EPMs and `evms` EVMs may hold: a full mesh
/// of underlay neighbours, plus a gateway and a few peers per EVM, doubled
/// for headroom.
pub fn needed(epms: u64, evms: u64) -> u64 {
    (2 * (epms * epms + 4 * evms) + 1024).next_power_of_two()
}

fn read(path: &str) -> io::Result<u64> {
    fs::read_to_string(path)?.trim().parse().map_err(io::Error::other)
}

fn marker(topology_dir: &Path) -> std::path::PathBuf {
    let hash = topology_dir.as_os_str().as_encoded_bytes().iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    Path::new(REGISTRY).join(format!("{hash:016x}"))
}

/// Raises the limits to at least `entries` (never lowers them) and records
/// `topology_dir` as a user of the raised limits.
pub fn ensure(topology_dir: &Path, entries: u64) -> io::Result<()> {
    fs::create_dir_all(REGISTRY)?;
    fs::write(marker(topology_dir), topology_dir.as_os_str().as_encoded_bytes())?;
    let (thresh2, thresh3) = (read(THRESH2)?, read(THRESH3)?);
    if thresh3 >= entries {
        return Ok(());
    }
    let saved = Path::new(REGISTRY).join(SAVED);
    if !saved.exists() {
        fs::write(&saved, format!("{{\"gc_thresh2\": {thresh2}, \"gc_thresh3\": {thresh3}}}\n"))?;
    }
    // thresh3 first: the kernel wants thresh2 <= thresh3.
    fs::write(THRESH3, entries.to_string())?;
    fs::write(THRESH2, (entries / 2).max(thresh2).to_string())?;
    tracing::info!(gc_thresh3 = entries, "raised the host's ARP table limit for the emulation");
    Ok(())
}

/// Drops `topology_dir` as a user; the last user gone, puts the host's own
/// limits back.
pub fn release(topology_dir: &Path) -> io::Result<()> {
    match fs::remove_file(marker(topology_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let users = fs::read_dir(REGISTRY).map(|entries| entries.flatten().filter(|e| e.file_name() != SAVED).count()).unwrap_or(0);
    if users > 0 {
        return Ok(());
    }
    let saved = Path::new(REGISTRY).join(SAVED);
    let text = match fs::read_to_string(&saved) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let values: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    let (Some(thresh2), Some(thresh3)) = (values["gc_thresh2"].as_u64(), values["gc_thresh3"].as_u64()) else {
        return Err(io::Error::other(format!("{} is unreadable", saved.display())));
    };
    // thresh2 first: lowering thresh3 below thresh2 is refused.
    fs::write(THRESH2, thresh2.to_string())?;
    fs::write(THRESH3, thresh3.to_string())?;
    fs::remove_file(saved)?;
    let _ = fs::remove_dir(REGISTRY);
    let _ = fs::remove_dir("/run/merak");
    tracing::info!(gc_thresh3 = thresh3, "restored the host's ARP table limit");
    Ok(())
}

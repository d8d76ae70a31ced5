//! A topology's faults as the runtimes keep them (`faults.json` in a file
//! store, a key of the topology's ConfigMap on kubernetes): which links each
//! `merak_fault` holds down, and the link ends that makes.

use std::collections::{BTreeSet, HashSet};

use super::RuntimeError;
use super::capability::Faults;
use crate::model::TreeSpec;
use crate::model::fault::ends_of;
use crate::store::{self, RecordStore};

/// The record kind of a topology's faults.
const FAULTS: &str = "faults";

/// Link ends held down: (node, device).
pub type HeldEnds = HashSet<(String, String)>;

pub async fn load(records: &dyn RecordStore, topology: &str) -> Result<Faults, RuntimeError> {
    Ok(store::load_json(records, topology, FAULTS).await?.unwrap_or_default())
}

/// Records `faults`; whether links the faults held before are let go.
pub async fn save(records: &dyn RecordStore, topology: &str, faults: &Faults) -> Result<bool, RuntimeError> {
    let before = load(records, topology).await?;
    store::save_json(records, topology, FAULTS, faults).await?;
    let held: BTreeSet<&String> = faults.values().flatten().collect();
    Ok(before.values().flatten().any(|link| !held.contains(link)))
}

/// The link ends the faults hold down.
pub fn ends(spec: &TreeSpec, faults: &Faults) -> HeldEnds {
    ends_of(spec, faults.values().flatten()).into_iter().map(|end| (end.object, end.device)).collect()
}

/// The topology's held link ends, as recorded.
pub async fn recorded_ends(records: &dyn RecordStore, spec: &TreeSpec) -> Result<HeldEnds, RuntimeError> {
    Ok(ends(spec, &load(records, &spec.name).await?))
}

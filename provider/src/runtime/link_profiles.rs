//! A topology's `link_profile` blocks as last applied (`link_profiles.json`
//! in a file store, a key of the topology's ConfigMap on kubernetes): the
//! controller reads them back for the state, and a runtime whose agents
//! shape links puts them in every goal it pushes.

use super::RuntimeError;
use crate::model::link_profile::LinkProfileSpec;
use crate::store::{self, RecordStore};

/// The record kind of a topology's link profiles.
const LINK_PROFILES: &str = "link_profiles";

pub async fn load(records: &dyn RecordStore, topology: &str) -> Result<Vec<LinkProfileSpec>, RuntimeError> {
    Ok(store::load_json(records, topology, LINK_PROFILES).await?.unwrap_or_default())
}

pub async fn save(records: &dyn RecordStore, topology: &str, profiles: &[LinkProfileSpec]) -> Result<(), RuntimeError> {
    Ok(store::save_json(records, topology, LINK_PROFILES, &profiles).await?)
}

/// The first profile that needs netem (delay, jitter or loss), if any.
pub fn needing_netem(profiles: &[LinkProfileSpec]) -> Option<&LinkProfileSpec> {
    profiles.iter().find(|p| p.shaping().needs_netem())
}

/// Shaping refused whole, before any link is touched: `profile` needs
/// netem, and the kernel says `why` not.
pub fn netem_refused(profile: &LinkProfileSpec, why: &str) -> RuntimeError {
    RuntimeError::Conflict(format!(
        "link_profile {:?}: {why}. No link was shaped. Remove delay_ms, jitter_ms and loss_percent (rate_mbit needs only tbf), or run on a kernel with sch_netem.",
        profile.role
    ))
}

//! A topology's spec as a runtime records it: the inputs it was validated
//! from, so a record read back is validated again (and a record whose spec
//! no longer validates is reported corrupt).

use serde::{Deserialize, Serialize};

use crate::model::{TreeInput, TreeSpec};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordedSpec {
    name: String,
    racks: u32,
    hosts_per_rack: u32,
    hosts: u32,
    ports_per_vswitch: u32,
    data_plane_cidr: String,
}

impl RecordedSpec {
    pub fn of(spec: &TreeSpec) -> Self {
        RecordedSpec {
            name: spec.name.clone(),
            racks: spec.racks,
            hosts_per_rack: spec.hosts_per_rack,
            hosts: spec.hosts,
            ports_per_vswitch: spec.ports_per_vswitch,
            data_plane_cidr: spec.data_plane.to_string(),
        }
    }

    pub fn to_spec(&self) -> Result<TreeSpec, String> {
        TreeSpec::validate(&TreeInput {
            name: &self.name,
            racks: i64::from(self.racks),
            hosts_per_rack: i64::from(self.hosts_per_rack),
            hosts: Some(i64::from(self.hosts)),
            ports_per_vswitch: i64::from(self.ports_per_vswitch),
            data_plane_cidr: &self.data_plane_cidr,
        })
        .map_err(|errors| errors.into_iter().map(|e| e.detail).collect::<Vec<_>>().join("; "))
    }
}


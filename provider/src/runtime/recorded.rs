//! A topology's spec as a runtime records it: the inputs it was validated
//! from, so a record read back is validated again (and a record whose spec
//! no longer validates is reported corrupt).

use serde::{Deserialize, Serialize};

use crate::model::fat_tree::FatTree;
use crate::model::{TreeInput, TreeSpec};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordedSpec {
    name: String,
    racks: u32,
    hosts_per_rack: u32,
    hosts: u32,
    ports_per_vswitch: u32,
    data_plane_cidr: String,
    /// A fat tree's k and fabric prefix (absent in records of trees, and in
    /// every record older than fat trees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fat_tree: Option<RecordedFabric>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RecordedFabric {
    k: u32,
    fabric_cidr: String,
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
            fat_tree: spec.fabric.as_ref().map(|f| RecordedFabric { k: f.k, fabric_cidr: f.fabric.to_string() }),
        }
    }

    pub fn to_spec(&self) -> Result<TreeSpec, String> {
        let joined =
            |errors: Vec<crate::model::SpecError>| errors.into_iter().map(|e| e.detail).collect::<Vec<_>>().join("; ");
        if let Some(recorded) = &self.fat_tree {
            let parse = |text: &str| text.parse::<crate::model::Ipv4Cidr>().map_err(|e| e.to_string());
            let (plane, fabric) = (parse(&self.data_plane_cidr)?, parse(&recorded.fabric_cidr)?);
            let fat = FatTree::validate(i64::from(recorded.k), Some(i64::from(self.hosts)), plane, Some(fabric))
                .map_err(joined)?;
            return Ok(TreeSpec::fat_tree(&self.name, fat));
        }
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

//! What this provider process has planned. Parents created in the same
//! apply as their children are not in the runtime's records yet when the
//! children are planned, but Terraform plans a parent before any resource
//! that refers to it, in this same process (one per Terraform command), and
//! the ids are deterministic. So a child's plan checks against the planned
//! parent: a subnet outside its new VPC, a group too big for its new subnet,
//! or one placed on EPMs a new topology does not have are refused at plan,
//! before anything is built.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::model::TreeSpec;
use crate::model::overlay::{SubnetSpec, VpcSpec};

#[derive(Default)]
struct Planned {
    topologies: HashMap<String, TreeSpec>,
    /// Keyed `topology/vpc`.
    vpcs: HashMap<String, VpcSpec>,
    /// Keyed `topology/vpc/subnet`.
    subnets: HashMap<String, SubnetSpec>,
}

static PLANNED: LazyLock<Mutex<Planned>> = LazyLock::new(Mutex::default);

fn planned() -> MutexGuard<'static, Planned> {
    // The maps stay consistent whatever a panicking holder did.
    PLANNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn plan_topology(spec: &TreeSpec) {
    planned().topologies.insert(spec.name.clone(), spec.clone());
}

pub fn topology(name: &str) -> Option<TreeSpec> {
    planned().topologies.get(name).cloned()
}

pub fn plan_vpc(spec: &VpcSpec) {
    planned().vpcs.insert(format!("{}/{}", spec.topology, spec.name), spec.clone());
}

pub fn vpc(topology: &str, name: &str) -> Option<VpcSpec> {
    planned().vpcs.get(&format!("{topology}/{name}")).cloned()
}

pub fn plan_subnet(spec: &SubnetSpec) {
    planned().subnets.insert(format!("{}/{}/{}", spec.topology, spec.vpc, spec.name), spec.clone());
}

pub fn subnet(topology: &str, vpc: &str, name: &str) -> Option<SubnetSpec> {
    planned().subnets.get(&format!("{topology}/{vpc}/{name}")).cloned()
}

/// Every subnet planned in the topology.
pub fn subnets(topology: &str) -> Vec<SubnetSpec> {
    planned().subnets.values().filter(|s| s.topology == topology).cloned().collect()
}

//! What this provider has planned. Parents created in the same apply as
//! their children are not in the runtime's records yet when the children
//! are planned, but Terraform plans a parent before any resource that
//! refers to it, with this same provider (one per Terraform command), and
//! the ids are deterministic. So a child's plan checks against the planned
//! parent: a subnet outside its new VPC, a group too big for its new subnet,
//! or one placed on EPMs a new topology does not have are refused at plan,
//! before anything is built.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::model::TreeSpec;
use crate::model::overlay::{SubnetSpec, VpcSpec};

/// The provider's plan so far: kept by the [`Controller`](super::Controller)
/// the provider was configured with.
#[derive(Debug, Default)]
pub struct Planned(Mutex<PlannedSpecs>);

#[derive(Debug, Default)]
struct PlannedSpecs {
    topologies: HashMap<String, TreeSpec>,
    /// Keyed `topology/vpc`.
    vpcs: HashMap<String, VpcSpec>,
    /// Keyed `topology/vpc/subnet`.
    subnets: HashMap<String, SubnetSpec>,
    /// Security group ids, `topology/vpc/name`.
    security_groups: BTreeSet<String>,
    /// Per topology, each planned fault's links.
    faults: HashMap<String, HashMap<String, BTreeSet<String>>>,
    /// Recorded faults this plan replaces, keyed `topology/fault`.
    leaving_faults: BTreeSet<String>,
}

impl Planned {
    fn specs(&self) -> MutexGuard<'_, PlannedSpecs> {
        // The maps stay consistent whatever a panicking holder did.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn plan_topology(&self, spec: &TreeSpec) {
        self.specs().topologies.insert(spec.name.clone(), spec.clone());
    }

    pub fn topology(&self, name: &str) -> Option<TreeSpec> {
        self.specs().topologies.get(name).cloned()
    }

    pub fn plan_vpc(&self, spec: &VpcSpec) {
        self.specs().vpcs.insert(format!("{}/{}", spec.topology, spec.name), spec.clone());
    }

    pub fn vpc(&self, topology: &str, name: &str) -> Option<VpcSpec> {
        self.specs().vpcs.get(&format!("{topology}/{name}")).cloned()
    }

    /// Plans `spec` unless `clash` finds, among the `recorded` subnets and those
    /// planned so far, one it conflicts with. The check and the record happen
    /// under one lock: Terraform plans sibling subnets concurrently, and two
    /// that overlap must not both pass a check that neither has recorded yet.
    pub fn plan_subnet<E>(
        &self,
        spec: &SubnetSpec,
        recorded: &[SubnetSpec],
        clash: impl Fn(&SubnetSpec) -> Option<E>,
    ) -> Result<(), E> {
        let mut planned = self.specs();
        let key = format!("{}/{}/{}", spec.topology, spec.vpc, spec.name);
        let others = recorded.iter().chain(planned.subnets.iter().filter(|(k, _)| **k != key).map(|(_, s)| s));
        if let Some(error) = others
            .filter(|o| o.topology == spec.topology && !(o.vpc == spec.vpc && o.name == spec.name))
            .find_map(&clash)
        {
            return Err(error);
        }
        planned.subnets.insert(key, spec.clone());
        Ok(())
    }

    pub fn plan_security_group(&self, topology: &str, vpc: &str, name: &str) {
        self.specs().security_groups.insert(format!("{topology}/{vpc}/{name}"));
    }

    pub fn security_group(&self, topology: &str, vpc: &str, name: &str) -> bool {
        self.specs().security_groups.contains(&format!("{topology}/{vpc}/{name}"))
    }

    pub fn subnet(&self, topology: &str, vpc: &str, name: &str) -> Option<SubnetSpec> {
        self.specs().subnets.get(&format!("{topology}/{vpc}/{name}")).cloned()
    }

    /// Notes that recorded fault `name` is replaced by this plan (its links
    /// are let go before its successor holds them).
    pub fn fault_leaves(&self, topology: &str, name: &str) {
        self.specs().leaving_faults.insert(format!("{topology}/{name}"));
    }

    /// Plans fault `name` holding `held` unless a link of it is held by
    /// another fault, `recorded` or planned so far: then that link and the
    /// other fault. Checked and recorded under one lock (sibling faults are
    /// planned concurrently).
    pub fn plan_fault(
        &self,
        topology: &str,
        name: &str,
        held: &BTreeSet<String>,
        recorded: &crate::runtime::capability::Faults,
    ) -> Result<(), (String, String)> {
        let mut planned = self.specs();
        let leaving: BTreeSet<String> = planned
            .leaving_faults
            .iter()
            .filter_map(|k| Some(k.strip_prefix(&format!("{topology}/"))?.to_string()))
            .collect();
        let of_topology = planned.faults.entry(topology.to_string()).or_default();
        let others = recorded
            .iter()
            .filter(|(other, _)| !of_topology.contains_key(*other) && !leaving.contains(*other))
            .chain(of_topology.iter())
            .filter(|(other, _)| *other != name)
            .map(|(other, links)| (other.as_str(), links));
        if let Some((link, other)) = crate::model::fault::overlap(held, others) {
            return Err((link, other.to_string()));
        }
        of_topology.insert(name.to_string(), held.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two overlapping siblings planned at the same moment: exactly one is
    /// planned, the other is refused, however the threads interleave.
    #[test]
    fn overlapping_siblings_planned_at_once_cannot_both_pass() {
        let vpc = VpcSpec::validate("planned-race", "blue", "10.0.0.0/16", None).expect("valid VPC");
        let planned = Planned::default();
        for round in 0..200 {
            let wide = SubnetSpec::validate(&vpc, &format!("wide{round}"), "10.0.1.0/24", None).expect("valid subnet");
            let narrow =
                SubnetSpec::validate(&vpc, &format!("narrow{round}"), "10.0.1.128/25", None).expect("valid subnet");
            let barrier = std::sync::Barrier::new(2);
            let plan = |spec: &SubnetSpec| {
                barrier.wait();
                planned
                    .plan_subnet(spec, &[], |other| other.cidr.overlaps(&spec.cidr).then_some(other.name.clone()))
                    .is_ok()
            };
            let passed = std::thread::scope(|scope| {
                let first = scope.spawn(|| plan(&wide));
                let second = scope.spawn(|| plan(&narrow));
                [first.join().expect("no panic"), second.join().expect("no panic")]
            });
            assert_eq!(passed.iter().filter(|p| **p).count(), 1, "round {round}: {passed:?}");
            planned.specs().subnets.retain(|_, s| s.topology != "planned-race");
        }
    }

    #[test]
    fn a_link_is_planned_for_one_fault_unless_its_holder_is_replaced() {
        let links = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
        let recorded = crate::runtime::capability::Faults::from([("cut".to_string(), links(&["s0-0--epm-1"]))]);
        let planned = Planned::default();
        assert!(planned.plan_fault("lab", "cut", &links(&["s0-0--epm-1"]), &recorded).is_ok(), "itself, again");
        let clash = planned.plan_fault("lab", "other", &links(&["s0-0--epm-0", "s0-0--epm-1"]), &recorded);
        assert_eq!(clash, Err(("s0-0--epm-1".to_string(), "cut".to_string())));
        assert!(planned.plan_fault("elsewhere", "other", &links(&["s0-0--epm-1"]), &Default::default()).is_ok());
        let renamed = Planned::default();
        renamed.fault_leaves("lab", "cut");
        assert!(renamed.plan_fault("lab", "cut-again", &links(&["s0-0--epm-1"]), &recorded).is_ok(), "cut leaves");
    }

    #[test]
    fn a_subnet_planned_again_does_not_clash_with_itself() {
        let vpc = VpcSpec::validate("planned-again", "blue", "10.0.0.0/16", None).expect("valid VPC");
        let web = SubnetSpec::validate(&vpc, "web", "10.0.1.0/24", None).expect("valid subnet");
        let clash = |other: &SubnetSpec| other.cidr.overlaps(&web.cidr).then_some(());
        let planned = Planned::default();
        assert!(planned.plan_subnet(&web, std::slice::from_ref(&web), clash).is_ok());
        assert!(planned.plan_subnet(&web, std::slice::from_ref(&web), clash).is_ok());
        assert_eq!(planned.subnet("planned-again", "blue", "web").map(|s| s.cidr), Some(web.cidr));
    }
}

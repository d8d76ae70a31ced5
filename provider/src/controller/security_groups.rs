//! Security groups on record, and the pushes that make the EPMs enforce
//! them: a group's rules change in place, every EPM hosting its VPC gets
//! the VPC's whole firewall again (one nftables transaction each, and
//! nothing else of the overlay), and no EVM is touched.

use std::collections::HashMap;

use super::Controller;
use super::records::{OverlayRecord, SecurityGroupRecord, subnet_key};
use crate::model::TreeSpec;
use crate::model::security_group::{SecurityGroupSpec, VpcPolicy};
use crate::runtime::RuntimeError;

impl SecurityGroupRecord {
    fn spec(&self, topology: &str) -> SecurityGroupSpec {
        SecurityGroupSpec {
            topology: topology.into(),
            vpc: self.vpc.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            ingress: self.ingress.clone(),
            egress: self.egress.clone(),
        }
    }
}

impl Controller {
    pub async fn apply_security_group(&self, spec: &SecurityGroupSpec) -> Result<(), RuntimeError> {
        self.lock_tenants(&spec.topology).await?;
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let tree = self.tree(&spec.topology).await?;
        let mut record = self.load_overlay(&spec.topology).await?;
        record.put_security_group(spec)?;
        self.save_overlay(&spec.topology, &record).await?;
        if !record.is_external(&spec.vpc) {
            return self.enforce(&tree, &record, &spec.vpc).await;
        }
        let group = record.security_groups.get(&subnet_key(&spec.vpc, &spec.name)).cloned();
        let Some(group) = group else { return Ok(()) };
        let told = self.tell_security_group(&tree, &mut record, &group).await;
        // What the controller accepted of the ports is kept, told or not.
        self.save_overlay(&spec.topology, &record).await?;
        told
    }

    pub async fn read_security_group(
        &self,
        topology: &str,
        vpc: &str,
        name: &str,
    ) -> Result<Option<SecurityGroupSpec>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(None);
        }
        let record = self.load_overlay(topology).await?;
        Ok(record.security_groups.get(&subnet_key(vpc, name)).map(|g| g.spec(topology)))
    }

    /// Per VPC whose security groups are enforced, what they allow.
    pub async fn security_policies(&self, topology: &str) -> Result<HashMap<String, VpcPolicy>, RuntimeError> {
        if !self.topology_exists(topology).await? {
            return Ok(HashMap::new());
        }
        let record = self.load_overlay(topology).await?;
        Ok(record.vpcs.keys().filter_map(|vpc| Some((vpc.clone(), super::firewall::policy(&record, vpc)?))).collect())
    }

    /// Whether the group exists, on record or planned by this plan.
    pub async fn security_group_known(&self, topology: &str, vpc: &str, name: &str) -> Result<bool, RuntimeError> {
        Ok(self.planned().security_group(topology, vpc, name)
            || self.read_security_group(topology, vpc, name).await?.is_some())
    }

    pub async fn delete_security_group(&self, topology: &str, vpc: &str, name: &str) -> Result<(), RuntimeError> {
        if !self.lock_tenants(topology).await? {
            return Ok(());
        }
        let _underlay = self.underlay_lock.read().await;
        let _guard = self.overlay_lock.lock().await;
        let Ok(tree) = self.tree(topology).await else { return Ok(()) };
        let mut record = self.load_overlay(topology).await?;
        if !record.is_external(vpc) {
            if !record.remove_security_group(vpc, name)? {
                return Ok(());
            }
            self.save_overlay(topology, &record).await?;
            return self.enforce(&tree, &record, vpc).await;
        }
        // The record keeps the group until the controller has let go of it,
        // so that a refusal is retried by the next destroy.
        let mut without = record.clone();
        if !without.remove_security_group(vpc, name)? {
            return Ok(());
        }
        let told = self.untell_security_group(&tree, &mut without, vpc, name).await;
        match told {
            Ok(()) => record = without,
            // Ports moved before the refusal stay recorded as moved.
            Err(_) => record.groups = without.groups,
        }
        self.save_overlay(topology, &record).await?;
        told
    }

    /// Pushes the VPC's firewall to the EPMs that host it: the first
    /// failure is the error, and the next apply pushes again.
    async fn enforce(&self, tree: &TreeSpec, record: &OverlayRecord, vpc: &str) -> Result<(), RuntimeError> {
        if !record.groups.values().any(|g| g.vpc == vpc) {
            return Ok(());
        }
        let failures = self.push_firewall(tree, record, vpc).await?;
        match failures.first() {
            Some(failure) => Err(RuntimeError::Unavailable(format!("{}: {}", failure.object, failure.error))),
            None => Ok(()),
        }
    }
}

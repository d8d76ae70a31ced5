//! The ports of external VPCs: what the user's network controller is told
//! (see [`super::network`]), and the record of what it accepted.

use std::collections::HashSet;

use super::Controller;
use super::goals::Evm;
use super::port_api::Port;
use super::records::{OverlayRecord, subnet_key};
use crate::model::TreeSpec;
use crate::model::ranges::Ranges;
use crate::runtime::{Failure, RuntimeError};

/// A port's id: `<topology>/<evm>`.
pub(super) fn port_id(topology: &str, evm: &str) -> String {
    format!("{topology}/{evm}")
}

/// The port of an EVM of `record`'s external VPC, as the controller gets it.
fn port_of(tree: &TreeSpec, record: &OverlayRecord, evm: &Evm) -> Port {
    let subnet = record.subnets.get(&subnet_key(&evm.info.vpc, &evm.info.subnet));
    let security_groups =
        record.groups.get(&evm.info.group).map(|g| record.port_security_groups(g)).unwrap_or_default();
    Port {
        id: port_id(&tree.name, &evm.info.name),
        topology: tree.name.clone(),
        evm: evm.info.name.clone(),
        group: evm.info.group.clone(),
        vpc: evm.info.vpc.clone(),
        vni: record.vpcs.get(&evm.info.vpc).map_or(0, |v| v.vni),
        subnet: evm.info.subnet.clone(),
        subnet_cidr: subnet.map(|s| s.cidr.clone()).unwrap_or_default(),
        gateway: evm.spec.gateway.clone(),
        ip: evm.info.ip.to_string(),
        mac: evm.spec.mac.clone(),
        epm: evm.info.epm.clone(),
        epm_ip: tree.epm(evm.epm_index).ip.to_string(),
        device: evm.spec.host_port.clone(),
        device_model: evm.spec.device_model.clone(),
        security_groups,
    }
}

impl Controller {
    pub(super) fn network_or_refuse(&self, vpc: &str) -> Result<&super::network::NetworkController, RuntimeError> {
        self.network.as_deref().ok_or_else(|| {
            RuntimeError::Conflict(format!(
                "VPC {vpc} has controller = \"external\", and the provider block has no controller {{ url = ... }} to tell about its ports; add it back"
            ))
        })
    }

    /// Tells the controller about these EVMs' ports; returns the host
    /// indexes it accepted and a failure per port it did not.
    pub(super) async fn announce(
        &self,
        tree: &TreeSpec,
        record: &OverlayRecord,
        vpc: &str,
        evms: &[&Evm],
    ) -> Result<(Vec<u64>, Vec<Failure>), RuntimeError> {
        if evms.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let network = self.network_or_refuse(vpc)?;
        let ports = evms.iter().map(|evm| port_of(tree, record, evm)).collect();
        let outcomes = network.put_ports(ports).await;
        let index_of: std::collections::HashMap<String, (u64, &str)> =
            evms.iter().map(|e| (port_id(&tree.name, &e.info.name), (e.host_index, e.info.name.as_str()))).collect();
        let (mut accepted, mut failures) = (Vec::new(), Vec::new());
        for (id, outcome) in outcomes {
            let Some(&(host_index, evm)) = index_of.get(&id) else { continue };
            match outcome {
                Ok(()) => accepted.push(host_index),
                Err(error) => failures.push(Failure {
                    object: format!("EVM {evm} (port {id})"),
                    error: format!("the controller did not take its port: {error}"),
                }),
            }
        }
        tracing::info!(
            vpc,
            accepted = accepted.len(),
            refused = failures.len(),
            requests = network.requests(),
            "ports announced"
        );
        Ok((accepted, failures))
    }

    /// Deletes these EVMs' ports from the controller; `Err` unless it
    /// confirmed every one (their EVMs must then stay recorded).
    pub(super) async fn withdraw(&self, tree: &TreeSpec, vpc: &str, evms: &[&Evm]) -> Result<(), RuntimeError> {
        if evms.is_empty() {
            return Ok(());
        }
        let network = self.network_or_refuse(vpc)?;
        let ids = evms.iter().map(|e| port_id(&tree.name, &e.info.name)).collect();
        let refused: Vec<(String, String)> = network
            .delete_ports(ids)
            .await
            .into_iter()
            .filter_map(|(id, outcome)| outcome.err().map(|e| (id, e)))
            .collect();
        match refused.first() {
            None => Ok(()),
            Some((id, error)) => Err(RuntimeError::Unavailable(format!(
                "the controller did not delete {} of {} ports, first {id}: {error}",
                refused.len(),
                evms.len()
            ))),
        }
    }
}

/// `announced` less the host indexes of `leaving`.
pub(super) fn without(announced: &Ranges, leaving: &[&Evm]) -> Ranges {
    let gone: HashSet<u64> = leaving.iter().map(|e| e.host_index).collect();
    Ranges::from_indexes(announced.iter().filter(|i| !gone.contains(i)))
}

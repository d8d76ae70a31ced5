//! Link profiles on kubernetes: a link is a tunnel between two pods, and
//! its shaping is part of each end's goal (the vswitch's port, the EPM's
//! NIC), which the agents apply with the same qdiscs as the local runtime.
//! Every goal pushed carries the recorded profiles, so a repair or a fault
//! never takes shaping off. Which ends carry it is read from the agents'
//! reports.

use std::collections::HashMap;

use futures::StreamExt;
use merak_proto::agent::agent_client::AgentClient;
use merak_proto::agent::{EpmInfo, ProbeNetemRequest};

use super::links::EndGoals;
use super::{IN_FLIGHT, Infos, KubernetesRuntime};
use crate::model::TreeSpec;
use crate::model::link_profile::{LinkProfileSpec, shaped_links};
use crate::runtime::capability::LinkShaping;
use crate::runtime::{Failure, RuntimeError, held, link_profiles};

#[tonic::async_trait]
impl LinkShaping for KubernetesRuntime {
    async fn apply_link_profiles(
        &self,
        spec: &TreeSpec,
        profiles: &[LinkProfileSpec],
    ) -> Result<Vec<Failure>, RuntimeError> {
        let (pods, infos) = self.pods_and_infos(&spec.name).await?;
        if let Some(profile) = link_profiles::needing_netem(profiles) {
            let running: Vec<String> = infos.iter().filter(|(_, i)| i.is_ok()).map(|(name, _)| name.clone()).collect();
            if let Err(why) = self.probe_netem(&spec.name, running).await {
                return Err(link_profiles::netem_refused(profile, &why));
            }
        }
        let ends = EndGoals::new(spec, &held::load(self.store.as_ref(), &spec.name).await?, profiles);
        Ok(self.push_underlay(&spec.name, Self::underlay_goals(spec, &pods, &infos, &ends)).await)
    }

    async fn impaired_links(&self, spec: &TreeSpec, profiles: &[LinkProfileSpec]) -> Result<u64, RuntimeError> {
        let (_, infos) = self.pods_and_infos(&spec.name).await?;
        Ok(impaired(spec, profiles, &infos))
    }
}

impl KubernetesRuntime {
    /// Asks the agents of `pods` whether their kernel has netem (each node
    /// may differ); the first why not, with the pod that said it.
    async fn probe_netem(&self, topology: &str, pods: Vec<String>) -> Result<(), String> {
        let answers: Vec<Result<(), String>> = futures::stream::iter(pods)
            .map(|pod: String| async move {
                let asked = async {
                    let mut agent = AgentClient::new(self.channel(topology, &pod).await.map_err(|e| e.to_string())?);
                    agent.probe_netem(ProbeNetemRequest {}).await.map_err(|s| s.message().to_string())
                };
                match asked.await {
                    Ok(reply) if reply.get_ref().available => Ok(()),
                    Ok(reply) => Err(format!("{} (pod {pod})", reply.into_inner().why)),
                    Err(e) => Err(format!("pod {pod} could not tell whether its kernel has netem: {e}")),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        answers.into_iter().collect()
    }
}

/// How many links the profiles select carry their shaping at both ends,
/// as the agents report their devices' root qdiscs.
fn impaired(spec: &TreeSpec, profiles: &[LinkProfileSpec], infos: &Infos) -> u64 {
    let roots: HashMap<(&str, &str), merak_netdev::shaping::RootQdisc> = infos
        .iter()
        .filter_map(|(node, info)| Some((node, info.as_ref().ok()?)))
        .flat_map(|(node, info): (&String, &EpmInfo)| {
            info.interfaces.iter().filter_map(move |i| {
                Some(((node.as_str(), i.name.as_str()), merak_agent::shaping::from_report(i.root_qdisc.as_ref()?)))
            })
        })
        .collect();
    shaped_links(spec, profiles)
        .into_iter()
        .filter_map(|(ends, shaping)| Some((ends, shaping?)))
        .filter(|(ends, shaping)| {
            ends.iter().all(|end| {
                roots.get(&(end.object.as_str(), end.device.as_str())).is_some_and(|root| root.carries(shaping))
            })
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::naming::EPM_DATA_NIC;
    use crate::runtime::capability::Faults;
    use crate::runtime::kubernetes::links::UnderlayGoals;
    use crate::runtime::kubernetes::links::tests::{all_running, applied, lab};

    fn profile(role: &str, rate_mbit: f64) -> LinkProfileSpec {
        LinkProfileSpec {
            role: role.into(),
            rate_mbit: Some(rate_mbit),
            delay_ms: None,
            jitter_ms: None,
            loss_percent: None,
        }
    }

    #[test]
    fn goals_shape_both_ends_of_a_roles_links_and_reports_count_them() {
        let spec = lab();
        let (pods, infos) = all_running(&spec);
        let profiles = [profile("epm_uplink", 40.0)];
        let cut: Faults = [("cut".to_string(), ["s0-1--epm-3".to_string()].into())].into();
        let ends = EndGoals::new(&spec, &cut, &profiles);
        let UnderlayGoals { switches, epms, .. } = KubernetesRuntime::underlay_goals(&spec, &pods, &infos, &ends);
        let rate = |s: Option<&merak_proto::agent::Shaping>| s.map(|s| s.rate_bytes_per_s);
        for (epm, goal) in &epms {
            assert_eq!(rate(goal.shaping.as_ref()), Some(5_000_000), "{}", epm.name);
            assert_eq!(goal.held_down, epm.name == "epm-3", "a fault and a profile on one end: {}", epm.name);
        }
        for (switch, goal) in &switches {
            for port in &goal.ports {
                let wanted = if port.name.starts_with('e') { 5_000_000 } else { 0 };
                assert_eq!(rate(port.shaping.as_ref()), Some(wanted), "{switch} {}", port.name);
            }
        }

        let reported = applied(&spec, &pods, &infos, &ends);
        assert_eq!(impaired(&spec, &profiles, &reported), 4);
        assert_eq!(impaired(&spec, &[profile("epm_uplink", 20.0)], &reported), 0, "another rate is not carried");
        assert_eq!(impaired(&spec, &[], &reported), 0);

        // One end's qdisc taken off by hand: that link no longer counts.
        let mut tampered = reported;
        if let Some(Ok(info)) = tampered.get_mut("epm-0") {
            info.interfaces.iter_mut().filter(|i| i.name == EPM_DATA_NIC).for_each(|i| i.root_qdisc = None);
        }
        assert_eq!(impaired(&spec, &profiles, &tampered), 3);

        // Without the profile every goal asks for no shaping.
        let plain = EndGoals::new(&spec, &cut, &[]);
        let UnderlayGoals { switches, epms, .. } = KubernetesRuntime::underlay_goals(&spec, &pods, &infos, &plain);
        assert!(epms.iter().all(|(_, g)| rate(g.shaping.as_ref()) == Some(0)));
        assert!(
            switches
                .iter()
                .flat_map(|(_, g)| &g.ports)
                .all(|p| p.shaping.as_ref().is_some_and(|s| s.rate_bytes_per_s == 0))
        );
    }
}

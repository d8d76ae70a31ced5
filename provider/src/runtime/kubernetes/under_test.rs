//! Agents under test on kubernetes: containers of the EPM pods (built by
//! [`super::objects::pod`]), whose container statuses say whether each
//! runs and passes its readiness probe (the `ready_command`). Pure, so
//! tested without a cluster.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::objects::namespace_name;
use crate::model::TreeSpec;
use crate::model::epm_agent::EpmAgentSpec;
use crate::runtime::Failure;

/// Per EPM of `spec`, why its first agent under test that is not ready is
/// not; EPMs whose agents all are ready are not listed.
pub fn failures(spec: &TreeSpec, agents: &[EpmAgentSpec], pods: &HashMap<String, Pod>) -> Vec<Failure> {
    let namespace = namespace_name(&spec.name);
    spec.epms()
        .filter_map(|epm| {
            let Some(pod) = pods.get(&epm.name) else {
                return Some(Failure {
                    object: epm.name.clone(),
                    error: format!("pod {namespace}/{} does not exist", epm.name),
                });
            };
            let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
            agents.iter().find_map(|agent| {
                let why = match statuses.iter().find(|c| c.name == agent.name) {
                    None => "no such container in the pod yet".to_string(),
                    Some(status) if status.ready => return None,
                    Some(status) => not_ready(status),
                };
                let logs = format!("its output: kubectl logs -n {namespace} {} -c {}", epm.name, agent.name);
                Some(Failure { object: epm.name.clone(), error: format!("agent {}: {why} ({logs})", agent.name) })
            })
        })
        .collect()
}

/// What a container's status says about why it is not ready.
fn not_ready(status: &ContainerStatus) -> String {
    let state = status.state.as_ref();
    let mut why = if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        format!(
            "waiting: {}",
            [waiting.reason.as_deref(), waiting.message.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ")
        )
    } else if let Some(ended) = state.and_then(|s| s.terminated.as_ref()) {
        format!("exited with code {}", ended.exit_code)
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        "running, but its ready_command does not pass".to_string()
    } else {
        "not started".to_string()
    };
    if let Some(ended) = status.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        why.push_str(&format!("; it last exited with code {}", ended.exit_code));
    }
    if status.restart_count > 0 {
        why.push_str(&format!("; restarted {} times", status.restart_count));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TreeInput;
    use serde_json::json;

    fn agent(name: &str) -> EpmAgentSpec {
        EpmAgentSpec {
            name: name.into(),
            command: vec!["x".into()],
            env: None,
            ready_command: None,
            ready_timeout_s: None,
            image: Some("i".into()),
        }
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"containerStatuses": containers}})).unwrap()
    }

    fn status(name: &str, ready: bool, state: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "image": "i", "imageID": "", "ready": ready, "restartCount": if ready { 0 } else { 3 }, "state": state, "lastState": {"terminated": {"exitCode": 2}}})
    }

    #[test]
    fn each_epm_names_its_first_agent_that_is_not_ready_and_why() {
        let spec = TreeSpec::validate(&TreeInput {
            name: "lab",
            racks: 1,
            hosts_per_rack: 4,
            hosts: Some(4),
            ports_per_vswitch: 4,
            data_plane_cidr: "10.0.0.0/24",
        })
        .unwrap();
        let agents = [agent("bgpd"), agent("probe")];
        let running = json!({"running": {"startedAt": "2026-12-04T00:00:00Z"}});
        let pods = HashMap::from([
            (
                "epm-0".to_string(),
                pod(json!([
                    status("agent", true, running.clone()),
                    status("bgpd", true, running.clone()),
                    status("probe", true, running.clone())
                ])),
            ),
            (
                "epm-1".to_string(),
                pod(json!([
                    status(
                        "bgpd",
                        false,
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}})
                    ),
                    status("probe", true, running.clone())
                ])),
            ),
            ("epm-2".to_string(), pod(json!([status("bgpd", true, running.clone()), status("probe", false, running)]))),
        ]);
        let found = failures(&spec, &agents, &pods);
        let found: Vec<(&str, &str)> = found.iter().map(|f| (f.object.as_str(), f.error.as_str())).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, "epm-1");
        assert!(
            found[0].1.starts_with(
                "agent bgpd: waiting: CrashLoopBackOff: back-off 10s; it last exited with code 2; restarted 3 times"
            ),
            "{}",
            found[0].1
        );
        assert!(found[0].1.contains("kubectl logs -n merak-lab epm-1 -c bgpd"), "{}", found[0].1);
        assert!(found[1].1.starts_with("agent probe: running, but its ready_command does not pass"), "{}", found[1].1);
        assert_eq!((found[2].0, found[2].1), ("epm-3", "pod merak-lab/epm-3 does not exist"));
    }
}

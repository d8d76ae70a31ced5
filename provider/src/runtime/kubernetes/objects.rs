//! What the kubernetes runtime puts in a cluster, built from the topology
//! and the provider's settings alone (no cluster needed, so tested alone):
//! a namespace per topology, a pod per EPM and per vswitch running
//! merak-agent, a Deployment of the gateway that forwards the provider's
//! calls to them, the Secrets of the topology's certificates, and the
//! ConfigMaps holding its records.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Toleration};
use serde_json::{Value, json};

use crate::model::epm_agent::{AGENT_CONTAINER, Placeholders};
use crate::model::fat_tree::Switch;
use crate::model::{Epm, TreeSpec, Vswitch};
use crate::runtime::UnderTest;

/// The label every object of the runtime carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "terraform-provider-merak");
pub const TOPOLOGY_LABEL: &str = "merak.dev/topology";
pub const ROLE_LABEL: &str = "merak.dev/role";
/// The annotation holding a digest of what a pod was made from: a pod's
/// spec is immutable, so one made from other settings is made anew.
pub const SPEC_ANNOTATION: &str = "merak.dev/spec";
/// Where agents listen in their pods (TCP, mutual TLS).
pub const AGENT_PORT: u16 = 7443;
/// The Secret the agents' pods mount: the CA's certificate and the agents' identity.
pub const AGENT_TLS: &str = "merak-agent-tls";
/// The Secret only the provider reads: the CA's key and the controller's identity.
pub const CONTROLLER_TLS: &str = "merak-controller-tls";
/// The Secret only the gateway's pod mounts: the CA's certificate, a
/// server identity as the agents have, and its client identity towards them.
pub const GATEWAY_TLS: &str = "merak-gateway-tls";
/// The gateway's Deployment, and the role label of its pod.
pub const GATEWAY: &str = "merak-gateway";
pub const GATEWAY_ROLE: &str = "gateway";
const TLS_DIR: &str = "/run/merak/tls";
/// A Kubernetes name is a DNS label of at most 63 characters.
pub const NAME_LIMIT: usize = 63;
const NAMESPACE_PREFIX: &str = "merak-";

/// The namespace of a topology.
pub fn namespace_name(topology: &str) -> String {
    format!("{NAMESPACE_PREFIX}{topology}")
}

/// The longest topology name whose namespace name is a valid label.
pub const TOPOLOGY_NAME_LIMIT: usize = NAME_LIMIT - NAMESPACE_PREFIX.len();

/// How the provider reaches the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Through the API server's port-forward: works from anywhere the API server is reachable.
    PortForward,
    /// Straight to the pod IPs: the provider runs where they route (in the cluster).
    Direct,
}

impl Access {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "port-forward" => Some(Access::PortForward),
            "direct" => Some(Access::Direct),
            _ => None,
        }
    }
}

/// The `kubernetes { ... }` settings that shape pods.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    pub agent_image: String,
    pub image_pull_policy: String,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// Requests of each EPM pod: `cpu`, `memory`.
    pub epm_requests: BTreeMap<String, String>,
    pub pod_ready_timeout: Duration,
}

pub fn labels(topology: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (TOPOLOGY_LABEL.to_string(), topology.to_string()),
    ])
}

/// The label selector of a topology's objects of one role (`epm`, `vswitch`).
pub fn role_selector(topology: &str, role: &str) -> String {
    format!("{}={},{TOPOLOGY_LABEL}={topology},{ROLE_LABEL}={role}", MANAGED_BY.0, MANAGED_BY.1)
}

/// An object of the API's type from its JSON. Every one here is built from
/// a fixed shape and settings checked at configure time.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("building a Kubernetes object: {e}"))
}

pub fn namespace(topology: &str) -> Result<Namespace, String> {
    typed(json!({"metadata": {"name": namespace_name(topology), "labels": labels(topology)}}))
}

/// The two Secrets of a topology's certificates (PEM texts by file name).
pub fn tls_secret(topology: &str, name: &str, files: &[(&str, &str)]) -> Result<Secret, String> {
    let data: BTreeMap<&str, &str> = files.iter().copied().collect();
    typed(json!({
        "metadata": {"name": name, "namespace": namespace_name(topology), "labels": labels(topology)},
        "type": "Opaque",
        "stringData": data,
    }))
}

/// A record of the topology (`kind`: `topology`, `overlay`, ...).
pub fn record_map(
    topology: &str,
    kind: &str,
    document: &str,
    resource_version: Option<String>,
) -> Result<ConfigMap, String> {
    let mut labels = labels(topology);
    labels.insert("merak.dev/record".into(), kind.into());
    typed(json!({
        "metadata": {"name": record_name(kind), "namespace": namespace_name(topology), "labels": labels, "resourceVersion": resource_version},
        "data": {"record.json": document},
    }))
}

/// A ConfigMap's name is a DNS subdomain: a kind's `_` becomes `-`
/// (`epm_agents` → `merak-record-epm-agents`).
pub fn record_name(kind: &str) -> String {
    format!("merak-record-{}", kind.replace('_', "-"))
}

/// The pod of an EPM or a vswitch: merak-agent listening on TCP with the
/// topology's certificates, privileged enough to make namespaces, veths,
/// taps and VXLAN devices, ready when its port answers. An EPM's pod also
/// holds a container per agent under test.
pub fn pod(
    topology: &str,
    object: &PodObject,
    settings: &PodSettings,
    under_test: UnderTest<'_>,
) -> Result<Pod, String> {
    let (name, role) = (object.name(), object.role());
    let mut labels = labels(topology);
    labels.insert(ROLE_LABEL.into(), role.into());
    let requests = if role == "epm" { settings.epm_requests.clone() } else { BTreeMap::new() };
    let mut spec = json!({
        "nodeSelector": settings.node_selector,
        "tolerations": settings.tolerations,
        // EPMs spread over the nodes; vswitches go where there is room.
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {TOPOLOGY_LABEL: topology, ROLE_LABEL: role}},
        }],
        "enableServiceLinks": false,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": AGENT_CONTAINER,
            "image": settings.agent_image,
            "imagePullPolicy": settings.image_pull_policy,
            "args": ["--epm", name, "--listen", format!("0.0.0.0:{AGENT_PORT}"), "--tls-dir", TLS_DIR],
            "ports": [{"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}],
            "env": [{"name": "MERAK_AGENT_LOG", "value": "info"}],
            "resources": {"requests": requests},
            "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}},
            "readinessProbe": {"tcpSocket": {"port": AGENT_PORT}, "periodSeconds": 2},
            "volumeMounts": [
                {"name": "tls", "mountPath": TLS_DIR, "readOnly": true},
                {"name": "tun", "mountPath": "/dev/net/tun"},
            ],
        }],
        "volumes": [
            {"name": "tls", "secret": {"secretName": AGENT_TLS, "defaultMode": 0o400}},
            {"name": "tun", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}},
        ],
    });
    if let (PodObject::Epm(epm), Some(containers)) = (object, spec["containers"].as_array_mut()) {
        containers.extend(agent_containers(epm, under_test, settings));
    }
    // The digest covers the agents under test: a pod's containers cannot
    // change, so other agents make the EPM's pod anew.
    let digest = format!("{:016x}", fnv1a(spec.to_string().as_bytes()));
    typed(json!({
        "metadata": {
            "name": name,
            "namespace": namespace_name(topology),
            "labels": labels,
            "annotations": {SPEC_ANNOTATION: digest},
        },
        "spec": spec,
    }))
}

/// The agents under test as containers of an EPM's pod, rendered for it:
/// privileged like merak-agent (a virtual switch or routing daemon programs
/// the pod's network), ready while the ready command exits 0 within 5 s.
fn agent_containers(epm: &Epm, under_test: UnderTest<'_>, settings: &PodSettings) -> Vec<Value> {
    let at = Placeholders {
        epm: &epm.name,
        epm_ip: epm.ip,
        epm_index: epm.index,
        controller_url: under_test.controller_url,
    };
    under_test
        .agents
        .iter()
        .map(|agent| {
            let rendered = agent.render(&at);
            let env: Vec<Value> = rendered.env.iter().map(|(name, value)| json!({"name": name, "value": value})).collect();
            let mut container = json!({
                "name": agent.name,
                "image": agent.image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": rendered.command,
                "env": env,
                "securityContext": {"privileged": true},
                "terminationMessagePolicy": "FallbackToLogsOnError",
            });
            if !rendered.ready_command.is_empty() {
                container["readinessProbe"] = json!({"exec": {"command": rendered.ready_command}, "periodSeconds": 2, "timeoutSeconds": 5, "failureThreshold": 1});
            }
            container
        })
        .collect()
}

/// The gateway (see merak_agent::gateway): one replica of merak-agent in
/// its gateway mode, which needs no privilege (it only opens connections),
/// so the provider needs one port-forward whatever the number of agents.
pub fn gateway(topology: &str, settings: &PodSettings) -> Result<Deployment, String> {
    let mut labels = labels(topology);
    labels.insert(ROLE_LABEL.into(), GATEWAY_ROLE.into());
    let pod_spec = json!({
        "nodeSelector": settings.node_selector,
        "tolerations": settings.tolerations,
        "enableServiceLinks": false,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "gateway",
            "image": settings.agent_image,
            "imagePullPolicy": settings.image_pull_policy,
            "args": ["--gateway", "--listen", format!("0.0.0.0:{AGENT_PORT}"), "--tls-dir", TLS_DIR, "--agent-port", AGENT_PORT.to_string()],
            "ports": [{"name": "gateway", "containerPort": AGENT_PORT, "protocol": "TCP"}],
            "env": [{"name": "MERAK_AGENT_LOG", "value": "info"}],
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            "readinessProbe": {"tcpSocket": {"port": AGENT_PORT}, "periodSeconds": 2},
            "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": true}],
        }],
        "volumes": [{"name": "tls", "secret": {"secretName": GATEWAY_TLS, "defaultMode": 0o400}}],
    });
    let digest = format!("{:016x}", fnv1a(pod_spec.to_string().as_bytes()));
    typed(json!({
        "metadata": {"name": GATEWAY, "namespace": namespace_name(topology), "labels": labels, "annotations": {SPEC_ANNOTATION: digest}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {TOPOLOGY_LABEL: topology, ROLE_LABEL: GATEWAY_ROLE}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// An object of the underlay that is a pod.
#[derive(Debug, Clone)]
pub enum PodObject {
    Epm(Epm),
    Vswitch(Vswitch),
    /// A fat tree's switch.
    Router(Switch),
}

impl PodObject {
    pub fn name(&self) -> String {
        match self {
            PodObject::Epm(epm) => epm.name.clone(),
            PodObject::Vswitch(switch) => switch.name(),
            PodObject::Router(switch) => switch.name(),
        }
    }

    pub fn role(&self) -> &'static str {
        match self {
            PodObject::Epm(_) => "epm",
            PodObject::Vswitch(_) => "vswitch",
            PodObject::Router(_) => "router",
        }
    }
}

/// Every pod of a topology: vswitches root first (a fat tree's routers,
/// core first), then EPMs.
pub fn pod_objects(spec: &TreeSpec) -> Vec<PodObject> {
    let switches: Vec<PodObject> = match &spec.fabric {
        Some(fabric) => fabric.switches().into_iter().map(PodObject::Router).collect(),
        None => {
            let mut switches = spec.vswitches();
            switches.sort_by_key(|s| std::cmp::Reverse(s.level));
            switches.into_iter().map(PodObject::Vswitch).collect()
        }
    };
    switches.into_iter().chain(spec.epms().map(PodObject::Epm)).collect()
}

/// The VNI of the tunnel between EPM `index` and its top-of-rack vswitch
/// (a fat tree's edge router).
pub fn epm_link_vni(index: u32) -> u32 {
    1 + index
}

/// The VNI of a fat tree's link between two routers, by its index in
/// `FatTree::fabric_links` (a fat tree has no vswitch uplinks).
pub fn fabric_link_vni(index: usize) -> u32 {
    SWITCH_VNI_BASE + u32::try_from(index).unwrap_or(u32::MAX - SWITCH_VNI_BASE)
}

/// The VNI of the tunnel between a vswitch and its parent: above every EPM
/// link's, so links keep their VNIs when the topology grows.
pub fn uplink_vni(switch: &Vswitch) -> u32 {
    SWITCH_VNI_BASE + (switch.level << 16) + switch.index
}

const SWITCH_VNI_BASE: u32 = 0x80_0000;
/// EPM links take VNIs 1..=this.
pub const MAX_EPMS: u32 = SWITCH_VNI_BASE - 1;

/// Why a topology cannot be laid out as pods, if it cannot.
pub fn fits(spec: &TreeSpec) -> Result<(), String> {
    if spec.name.len() > TOPOLOGY_NAME_LIMIT {
        return Err(format!(
            "The topology's namespace would be {} ({} characters), longer than a Kubernetes name may be ({NAME_LIMIT}). \
             Shorten the topology name to at most {TOPOLOGY_NAME_LIMIT} characters.",
            namespace_name(&spec.name),
            namespace_name(&spec.name).len()
        ));
    }
    if spec.hosts > MAX_EPMS {
        return Err(format!(
            "The kubernetes runtime holds at most {MAX_EPMS} EPMs per topology (one tunnel VNI each); this one has {}.",
            spec.hosts
        ));
    }
    if spec.vswitches().iter().any(|s| s.index >= 1 << 16 || s.level >= 1 << 7) {
        return Err("The kubernetes runtime holds at most 65,536 vswitches per level; raise ports_per_vswitch.".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TreeInput;

    /// Racks of 4 hosts, as many as `hosts` needs.
    fn spec(name: &str, hosts: i64) -> TreeSpec {
        let racks = (hosts + 3) / 4;
        TreeSpec::validate(&TreeInput {
            name,
            racks,
            hosts_per_rack: 4,
            hosts: Some(hosts),
            ports_per_vswitch: 2,
            data_plane_cidr: "10.100.0.0/16",
        })
        .unwrap()
    }

    fn settings() -> PodSettings {
        PodSettings {
            agent_image: "registry.example/merak-agent:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            node_selector: BTreeMap::from([("merak.dev/pool".into(), "emulation".into())]),
            tolerations: vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }],
            epm_requests: BTreeMap::from([("cpu".into(), "50m".into())]),
            pod_ready_timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_pod_runs_the_agent_as_the_settings_say() {
        let lab = spec("lab", 8);
        let pod = pod("lab", &PodObject::Epm(lab.epm(3)), &settings(), UnderTest::default()).unwrap();
        let meta = &pod.metadata;
        assert_eq!((meta.name.as_deref(), meta.namespace.as_deref()), (Some("epm-3"), Some("merak-lab")));
        assert_eq!(meta.labels.as_ref().unwrap()[ROLE_LABEL], "epm");
        let spec = pod.spec.unwrap();
        let agent = &spec.containers[0];
        assert_eq!(agent.image.as_deref(), Some("registry.example/merak-agent:0.1.0"));
        assert_eq!(agent.args.as_ref().unwrap()[..2], ["--epm".to_string(), "epm-3".to_string()]);
        assert_eq!(spec.node_selector.unwrap()["merak.dev/pool"], "emulation");
        assert_eq!(spec.tolerations.unwrap()[0].operator.as_deref(), Some("Exists"));
        assert!(agent.security_context.as_ref().unwrap().privileged.unwrap());
        assert_eq!(spec.volumes.unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(), Some(AGENT_TLS));
        let requests = agent.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "50m");
    }

    #[test]
    fn agents_under_test_are_containers_of_the_epm_pods_only() {
        use crate::model::epm_agent::EpmAgentSpec;
        let lab = spec("lab", 8);
        let agents = [EpmAgentSpec {
            name: "ovn".into(),
            command: vec!["ovn-controller".into(), "--name=${epm}".into()],
            env: Some(BTreeMap::from([("REMOTE".to_string(), "${controller_url}".to_string())])),
            ready_command: Some(vec!["ovs-vsctl".into(), "show".into()]),
            ready_timeout_s: None,
            image: Some("registry.example/ovn:24.03".into()),
        }];
        let under_test = UnderTest { agents: &agents, controller_url: Some("http://10.0.0.1:8080") };
        let epm = pod("lab", &PodObject::Epm(lab.epm(2)), &settings(), under_test).unwrap().spec.unwrap();
        let names: Vec<&str> = epm.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [AGENT_CONTAINER, "ovn"]);
        let ovn = &epm.containers[1];
        assert_eq!(ovn.image.as_deref(), Some("registry.example/ovn:24.03"));
        assert_eq!(ovn.command.as_deref(), Some(&["ovn-controller".to_string(), "--name=epm-2".to_string()][..]));
        assert_eq!(ovn.env.as_ref().unwrap()[0].value.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(
            ovn.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap()[0],
            "ovs-vsctl"
        );
        assert_eq!(ovn.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let switch = lab.vswitches().into_iter().next().unwrap();
        let switch = pod("lab", &PodObject::Vswitch(switch), &settings(), under_test).unwrap().spec.unwrap();
        assert_eq!(switch.containers.len(), 1, "vswitches run no agent under test");
        let digest = |under_test| {
            pod("lab", &PodObject::Epm(lab.epm(2)), &settings(), under_test).unwrap().metadata.annotations.unwrap()
                [SPEC_ANNOTATION]
                .clone()
        };
        assert_ne!(digest(under_test), digest(UnderTest::default()), "other agents make the pod anew");
    }

    #[test]
    fn the_gateway_is_one_unprivileged_replica_selecting_its_own_pod() {
        let deployment = gateway("lab", &settings()).unwrap();
        assert_eq!(deployment.metadata.name.as_deref(), Some(GATEWAY));
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (key, value) in spec.selector.match_labels.unwrap() {
            assert_eq!(template_labels[&key], value, "the selector matches the template");
        }
        assert_eq!(template_labels[MANAGED_BY.0], MANAGED_BY.1, "listed with the topology's pods");
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().unwrap()[0], "--gateway");
        let security = container.security_context.as_ref().unwrap();
        assert!(security.privileged.is_none() && security.allow_privilege_escalation == Some(false));
        assert_eq!(pod.volumes.unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(), Some(GATEWAY_TLS));
    }

    #[test]
    fn other_settings_give_another_digest() {
        let lab = spec("lab", 8);
        let digest = |settings: &PodSettings| {
            pod("lab", &PodObject::Epm(lab.epm(0)), settings, UnderTest::default())
                .unwrap()
                .metadata
                .annotations
                .unwrap()[SPEC_ANNOTATION]
                .clone()
        };
        let mut other = settings();
        assert_eq!(digest(&settings()), digest(&other));
        other.agent_image = "registry.example/merak-agent:0.2.0".into();
        assert_ne!(digest(&settings()), digest(&other));
    }

    #[test]
    fn every_link_has_its_own_vni_that_growth_keeps() {
        let small = spec("lab", 4);
        let large = spec("lab", 8);
        let vnis = |spec: &TreeSpec| {
            let mut all: Vec<u32> = spec.epms().map(|e| epm_link_vni(e.index)).collect();
            all.extend(spec.vswitches().iter().filter(|s| s.parent.is_some()).map(uplink_vni));
            all
        };
        let (before, after) = (vnis(&small), vnis(&large));
        let unique: std::collections::HashSet<_> = after.iter().collect();
        assert_eq!(unique.len(), after.len());
        assert!(after.iter().all(|v| *v > 0 && *v < 1 << 24));
        for epm in small.epms() {
            assert!(after.contains(&epm_link_vni(epm.index)) && before.contains(&epm_link_vni(epm.index)));
        }
    }

    #[test]
    fn a_name_too_long_for_a_namespace_is_refused_with_the_limit() {
        let name = "a".repeat(TOPOLOGY_NAME_LIMIT + 1);
        let error = fits(&spec(&name, 4)).unwrap_err();
        assert!(error.contains(&format!("at most {TOPOLOGY_NAME_LIMIT}")), "{error}");
        assert!(fits(&spec(&"a".repeat(TOPOLOGY_NAME_LIMIT), 4)).is_ok());
    }

    #[test]
    fn records_and_secrets_are_well_formed() {
        let map = record_map("lab", "overlay", "{}", Some("7".into())).unwrap();
        assert_eq!(map.metadata.name.as_deref(), Some("merak-record-overlay"));
        assert_eq!(record_name("epm_agents"), "merak-record-epm-agents");
        assert_eq!(map.data.unwrap()["record.json"], "{}");
        let secret = tls_secret("lab", AGENT_TLS, &[("ca.pem", "x")]).unwrap();
        assert_eq!(secret.string_data.unwrap()["ca.pem"], "x");
        assert_eq!(namespace("lab").unwrap().metadata.labels.unwrap()[MANAGED_BY.0], MANAGED_BY.1);
    }
}

//! `merak_topology`: the underlay. A tree of vswitches with racks of EPMs.

use std::sync::LazyLock;

use std::collections::BTreeMap;

use super::link_profile::{self, LINK_PROFILE};
use crate::controller::{Controller, Intent, TopologyView};
use crate::model::epm_agent::{self, EpmAgentSpec};
use crate::model::fat_tree::FatTree;
use crate::model::link_profile::{LinkProfileSpec, impaired_link_count};
use crate::model::{TreeInput, TreeSpec, naming};
use merak_tfplugin::cty::{Type, Value, object};
use merak_tfplugin::diagnostics::{Diagnostic, Diagnostics};
use merak_tfplugin::schema::{Attribute, Block, NestedBlock, Schema};

use merak_tfplugin::provider::Resource;

/// The `merak_topology` resource.
pub struct Topology;

#[tonic::async_trait]
impl Resource<Controller> for Topology {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diagnostics = spec_of(config).err().unwrap_or_default();
        diagnostics.0.extend(agents_of(config).err().unwrap_or_default().0);
        diagnostics.0.extend(link_profile::profiles_of(config).err().unwrap_or_default().0);
        diagnostics
    }

    async fn plan(&self, controller: Option<&Controller>, prior: &Value, config: &Value) -> Result<Value, Diagnostics> {
        let planned = plan(config)?;
        if let (Some(controller), Ok(Some(spec))) = (controller, spec_of(config)) {
            controller.planned().plan_topology(&spec);
        }
        if let (Some(controller), Ok(Some(spec)), Ok(Some(agents))) = (controller, spec_of(config), agents_of(config)) {
            check_agents_against_provider(controller, &agents)?;
            if let Err(error) = controller.check_fits(&spec) {
                return Err(Diagnostic::attribute_error(
                    &["name"],
                    "Topology does not fit this runtime",
                    error.to_string(),
                )
                .into());
            }
        }
        if let (Ok(Some(profiles)), Ok(Some(spec))) = (link_profile::profiles_of(config), spec_of(config)) {
            let errors = crate::model::link_profile::validate_for(&profiles, spec.fabric.is_some());
            if !errors.is_empty() {
                return Err(Diagnostics(errors.into_iter().map(link_profile::diagnostic).collect()));
            }
        }
        if let (Some(controller), Ok(Some(profiles))) = (controller, link_profile::profiles_of(config))
            && !profiles.is_empty()
            && let Err(error) = controller.check_link_profiles()
        {
            return Err(super::refusal(&[LINK_PROFILE], "Links cannot be shaped", &error).into());
        }
        // Shrinking must not pull EPMs out from under EVMs.
        if let (Some(controller), Some(old), Some(new)) =
            (controller, prior.attr("hosts").as_i64(), planned.attr("hosts").as_i64())
            && new < old
        {
            let name = planned.attr("name").as_str().unwrap_or_default();
            let evms = controller.list_evms(name, None, None).await.unwrap_or_default();
            let stranded = evms
                .iter()
                .find(|evm| evm.epm.strip_prefix("epm-").and_then(|i| i.parse::<i64>().ok()).is_some_and(|i| i >= new));
            if let Some(evm) = stranded {
                return Err(Diagnostic::attribute_error(
                    &["hosts"],
                    "EPMs still hold EVMs",
                    format!("Shrinking to {new} EPMs removes {}, which holds EVM {} of group {}. Remove or shrink the group first.", evm.epm, evm.name, evm.group),
                )
                .into());
            }
        }
        Ok(planned)
    }

    async fn apply(&self, controller: &Controller, prior: &Value, planned: &Value) -> (Option<Value>, Diagnostics) {
        let intent = if prior.is_null() { Intent::Create } else { Intent::Update };
        apply(controller, planned, intent).await
    }

    async fn destroy(&self, controller: &Controller, prior: &Value) -> Diagnostics {
        let id = prior.attr("id").as_str().unwrap_or_default();
        match controller.destroy_topology(id).await {
            Ok(()) => Diagnostics::default(),
            Err(error) => Diagnostic::error(format!("Could not destroy topology {id}"), error.to_string()).into(),
        }
    }

    async fn import(&self, controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
        read(controller, id).await
    }

    /// As import, except that a topology whose records are gone while its
    /// namespaces remain (a teardown a killed run abandoned) stays in the
    /// state with no EPM ready: dropping it would leave those pieces to no
    /// one, while a destroy finishes the teardown and an apply rebuilds.
    async fn read(&self, controller: &Controller, current: &Value) -> Result<Option<Value>, Diagnostics> {
        let Some(id) = current.attr("id").as_str() else { return Ok(None) };
        if let Some(state) = read(controller, id).await? {
            return Ok(Some(state));
        }
        match controller.topology_remains(id).await {
            Ok(true) => {
                let mut kept = current.clone();
                if let Value::Map(attributes) = &mut kept {
                    attributes.insert("ready_epms".into(), Value::int(0));
                }
                Ok(Some(kept))
            }
            Ok(false) => Ok(None),
            Err(error) => Err(Diagnostic::error(format!("Could not read topology {id}"), error.to_string()).into()),
        }
    }

    /// Version 0 had `epms` as a list; version 1 keys them by name.
    fn upgrade_state(&self, version: i64, mut state: serde_json::Value) -> serde_json::Value {
        if version < 1
            && let Some(list) = state.get("epms").and_then(serde_json::Value::as_array).cloned()
        {
            let by_name =
                list.into_iter().filter_map(|epm| Some((epm.get("name")?.as_str()?.to_string(), epm))).collect();
            state["epms"] = serde_json::Value::Object(by_name);
        }
        state
    }
}

pub const TYPE_NAME: &str = "merak_topology";
const DEFAULT_PORTS_PER_VSWITCH: i64 = 16;

pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    // 1: `epms` became a map (see upgrade_state).
    version: 1,
    block: Block {
        description: "An underlay of Emulated Physical Machines (EPMs): by default in racks under \
            top-of-rack vswitches, joined by as many aggregation layers as `ports_per_vswitch` needs \
            into one root; with `type = \"fat_tree\"`, a routed k-ary fat tree with ECMP. On the \
            `local` runtime each EPM is a network namespace running a `merak-agent` with its \
            data-plane NIC `eth1`, each vswitch a Linux bridge (a fat tree's switch, a router) in its \
            own namespace, and each link a veth pair. Everything on the host is named \
            `merak-<name>.<object>`. On the `kubernetes` runtime each EPM, vswitch and router is a \
            pod running `merak-agent`, and each link a VXLAN tunnel between two pods.",
        attributes: vec![
            Attribute::computed("id", Type::String, "The topology's ID: its `name`."),
            Attribute::required(
                "name",
                Type::String,
                "Name of the topology, unique on the host: a DNS label (lowercase letters, digits, '-'). \
                 Changing it replaces the topology.",
            )
            .forces_replacement(),
            Attribute::optional_computed(
                "type",
                Type::String,
                "`tree` (default): racks under top-of-rack vswitches joined into one root, a Linux bridge \
                 each, one path between any two EPMs. `fat_tree`: a k-ary fat tree (Clos) of routers, \
                 `k` pods of k/2 edge and k/2 aggregation switches and (k/2)² core switches, every link \
                 a routed /31, equal-cost paths between pods spread by flow (ECMP, hashed on ports). \
                 Changing it replaces the topology.",
            )
            .forces_replacement(),
            Attribute::optional(
                "racks",
                Type::Number,
                "Number of racks, each with its own top-of-rack vswitch. Required for a `tree`; a `fat_tree` has none (its racks are its edge switches).",
            ),
            Attribute::optional(
                "hosts_per_rack",
                Type::Number,
                "EPMs in each rack (1 to 1023: a Linux bridge has at most 1024 ports). Required for a `tree`.",
            ),
            Attribute::optional(
                "k",
                Type::Number,
                "A `fat_tree`'s port count per switch: even, 4 to 64. k³/4 EPM ports (`hosts` may use fewer), \
                 5k²/4 switches. Changing it replaces the topology.",
            )
            .forces_replacement(),
            Attribute::optional_computed(
                "fabric_cidr",
                Type::String,
                "A `fat_tree`'s prefix for its links' /31s (two addresses per link, apart from \
                 `data_plane_cidr`). Default: from 100.64.0.0/10, as small as the links need. Changing it \
                 replaces the topology.",
            )
            .forces_replacement(),
            Attribute::optional_computed(
                "hosts",
                Type::Number,
                "Total EPMs. Defaults to `racks * hosts_per_rack`; a smaller total leaves the last rack \
                 partly filled (every other rack stays full). Changing it, `racks` or `hosts_per_rack` \
                 grows or shrinks the topology in place.",
            ),
            Attribute::optional_computed(
                "ports_per_vswitch",
                Type::Number,
                "Fan-out of aggregation vswitches: how many switches of the level below each one \
                 joins (at least 2; default 16).",
            ),
            Attribute::required(
                "data_plane_cidr",
                Type::String,
                "IPv4 prefix the EPMs' data-plane addresses come from, e.g. `10.0.0.0/16`; EPM *i* gets \
                 the *i*+1st address. Must hold `hosts` addresses. Changing it replaces the topology.",
            )
            .forces_replacement(),
            Attribute::computed(
                "epms",
                Type::map(Type::object([
                    ("name", Type::String),
                    ("rack", Type::Number),
                    ("ip", Type::String),
                    ("mac", Type::String),
                    ("namespace", Type::String),
                ])),
                "The EPMs by name (`epms[\"epm-3\"].ip`), known at plan time: `name`, `rack`, \
                 data-plane `ip` and `mac`, and the `namespace` that holds it on the host. A map, not \
                 a list: Terraform compares lists element by element in quadratic time, which took \
                 minutes per plan at 10,000 EPMs.",
            ),
            Attribute::computed("vswitch_count", Type::Number, "Number of vswitches (all levels)."),
            Attribute::computed("link_count", Type::Number, "Number of links (veth pairs)."),
            Attribute::computed(
                "namespace_prefix",
                Type::String,
                "Prefix of every network namespace of this topology, e.g. `merak-lab.`.",
            ),
            Attribute::computed(
                "ready_epms",
                Type::Number,
                "EPMs that are fully up: namespace, live agent, addressed data-plane NIC, and every \
                 vswitch up to the root. Drops when something drifts; the next apply repairs it.",
            ),
            Attribute::computed(
                "epm_agents_ready",
                Type::Number,
                "EPMs where every `epm_agent` runs and passes its `ready_command` (without `epm_agent` \
                 blocks: `ready_epms`). An agent that crashed, or stopped being ready, is drift the next \
                 plan shows; apply waits for them again.",
            ),
            Attribute::computed(
                "impaired_links",
                Type::Number,
                "Links whose two ends carry their `link_profile`'s shaping. Planned as every link a \
                 profile selects; shaping removed or changed behind Terraform's back lowers it, and the \
                 next apply puts it back.",
            ),
        ],
        blocks: vec![
            NestedBlock::list(EPM_AGENT, epm_agent_block()),
            NestedBlock::list(LINK_PROFILE, link_profile::block()),
        ],
    },
});

const EPM_AGENT: &str = "epm_agent";

/// The `epm_agent` block: the user's agent under test, run in every EPM.
fn epm_agent_block() -> Block {
    Block {
        description: "An agent under test (yours: a host agent, a routing daemon, an SDN node agent) run \
            in every EPM and kept running. On the `local` runtime merak-agent runs `command` from this \
            host in the EPM's network namespace, as `ip netns exec` would, restarts it with backoff when \
            it exits, and appends its output to `<state_dir>/<topology>/<epm>.<name>.log`. On the \
            `kubernetes` runtime it is a container of `image` in every EPM pod, sharing the pod's network \
            namespace (the EPM's `eth1` and the EVMs' EPM ends), restarted by the kubelet, its output \
            in `kubectl logs <epm> -c <name>`. In `command`, `env` and `ready_command`, `${epm}`, \
            `${epm_ip}` (the data-plane address), `${epm_index}` and `${controller_url}` are replaced \
            per EPM; write them `$${epm}` in HCL, which keeps `${` for the provider. Other `${...}` are \
            left as they are. Changing a block restarts that agent on every EPM, in place (on \
            kubernetes a pod's containers cannot change: its EPM pods are made anew and their EVMs \
            rebuilt in the same apply).",
        attributes: vec![
            Attribute::required(
                "name",
                Type::String,
                "Unique among the topology's agents: a DNS label of at most 32 characters.",
            ),
            Attribute::required(
                "command",
                Type::list(Type::String),
                "The program (looked up on `PATH`) and its arguments, e.g. `[\"bgpd\", \"-f\", \"/etc/frr/$${epm}.conf\"]`. Run in the foreground: a program that detaches leaves the supervisor, which then restarts it.",
            ),
            Attribute::optional(
                "env",
                Type::map(Type::String),
                "The environment, besides a default `PATH` (which it may set).",
            ),
            Attribute::optional(
                "ready_command",
                Type::list(Type::String),
                "Run in the EPM with the same environment; the agent counts as ready while it exits 0 within 5 s. Default: running for a second.",
            ),
            Attribute::optional(
                "ready_timeout_s",
                Type::Number,
                "How long apply waits for the agent to be ready on every EPM (default 60).",
            ),
            Attribute::optional(
                "image",
                Type::String,
                "The container image holding `command`: required on the `kubernetes` runtime (pulled with the provider's `image_pull_policy`), refused on `local`. The container runs privileged, as merak-agent's does, so a virtual switch or routing daemon can program the pod's network.",
            ),
        ],
        blocks: Vec::new(),
    }
}

/// The `epm_agent` blocks. `Ok(None)` when part of them is not known yet.
pub fn agents_of(config: &Value) -> Result<Option<Vec<EpmAgentSpec>>, Diagnostics> {
    let blocks = match config.attr(EPM_AGENT) {
        Value::Null => return Ok(Some(Vec::new())),
        Value::List(blocks) => blocks,
        _ => return Ok(None),
    };
    if blocks.iter().any(|b| !b.is_wholly_known()) {
        return Ok(None);
    }
    let mut diagnostics = Diagnostics::default();
    let strings = |value: &Value| -> Option<Vec<String>> {
        value.as_list().map(|items| items.iter().map(|i| i.as_str().unwrap_or_default().to_string()).collect())
    };
    let mut agents = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.iter().enumerate() {
        let ready_timeout_s = match block.attr("ready_timeout_s") {
            Value::Null => None,
            value => match value
                .as_i64()
                .ok_or_else(|| "ready_timeout_s must be a whole number of seconds.".to_string())
                .and_then(epm_agent::ready_timeout_s)
            {
                Ok(seconds) => Some(seconds),
                Err(detail) => {
                    diagnostics.push(Diagnostic::attribute_error(
                        &[EPM_AGENT, &format!("[{index}]"), "ready_timeout_s"],
                        "Invalid ready_timeout_s",
                        detail,
                    ));
                    None
                }
            },
        };
        let env = match block.attr("env") {
            Value::Map(env) => Some(
                env.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            _ => None,
        };
        agents.push(EpmAgentSpec {
            name: block.attr("name").as_str().unwrap_or_default().to_string(),
            command: strings(block.attr("command")).unwrap_or_default(),
            env,
            ready_command: strings(block.attr("ready_command")),
            ready_timeout_s,
            image: block.attr("image").as_str().map(str::to_string),
        });
    }
    // Whether the provider has a controller for ${controller_url} is
    // known at plan (see check_agents_against_provider), not here.
    for error in epm_agent::validate(&agents, true) {
        diagnostics.push(agent_diagnostic(error));
    }
    if diagnostics.has_errors() { Err(diagnostics) } else { Ok(Some(agents)) }
}

fn agent_diagnostic(error: epm_agent::AgentError) -> Diagnostic {
    Diagnostic::attribute_error(
        &[EPM_AGENT, &format!("[{}]", error.index), error.attribute],
        error.summary,
        error.detail,
    )
}

/// What the provider's settings decide: `${controller_url}` needs its
/// `controller` block, and the runtime whether an agent needs an image.
fn check_agents_against_provider(controller: &Controller, agents: &[EpmAgentSpec]) -> Result<(), Diagnostics> {
    let mut errors = epm_agent::validate(agents, controller.network_controller_url().is_some());
    errors.extend(epm_agent::validate_for(agents, controller.agent_host()));
    if errors.is_empty() { Ok(()) } else { Err(Diagnostics(errors.into_iter().map(agent_diagnostic).collect())) }
}

fn agent_value(agent: &EpmAgentSpec) -> Value {
    let strings = |items: &[String]| Value::List(items.iter().map(Value::string).collect());
    object([
        ("name", Value::string(&agent.name)),
        ("command", strings(&agent.command)),
        (
            "env",
            agent.env.as_ref().map_or(Value::Null, |env| {
                Value::Map(env.iter().map(|(k, v)| (k.clone(), Value::string(v))).collect())
            }),
        ),
        ("ready_command", agent.ready_command.as_deref().map_or(Value::Null, strings)),
        ("ready_timeout_s", agent.ready_timeout_s.map_or(Value::Null, |s| Value::int(i64::from(s)))),
        ("image", agent.image.as_deref().map_or(Value::Null, Value::string)),
    ])
}

/// The spec a configuration (or planned state) describes. `Ok(None)` when
/// part of it is not known yet.
pub fn spec_of(config: &Value) -> Result<Option<TreeSpec>, Diagnostics> {
    let inputs = [
        "name",
        "type",
        "racks",
        "hosts_per_rack",
        "hosts",
        "ports_per_vswitch",
        "data_plane_cidr",
        "k",
        "fabric_cidr",
    ];
    if inputs.iter().any(|name| config.attr(name).is_unknown()) {
        return Ok(None);
    }
    match config.attr("type") {
        Value::Null => {}
        value => match value.as_str() {
            Some(TREE) => {}
            Some(FAT_TREE) => return fat_tree_of(config).map(Some),
            _ => {
                let detail = format!("type is {}; use \"{TREE}\" or \"{FAT_TREE}\".", value.describe());
                return Err(Diagnostic::attribute_error(&["type"], "Unknown topology type", detail).into());
            }
        },
    }
    let misplaced: Vec<Diagnostic> = ["k", "fabric_cidr"]
        .into_iter()
        .filter(|name| !config.attr(name).is_null())
        .map(|name| {
            Diagnostic::attribute_error(
                &[name],
                format!("{name} is for a fat tree"),
                format!("{name} shapes a type = \"{FAT_TREE}\" topology; remove it, or set type = \"{FAT_TREE}\"."),
            )
        })
        .chain(["racks", "hosts_per_rack"].into_iter().filter(|name| config.attr(name).is_null()).map(|name| {
            Diagnostic::attribute_error(
                &[name],
                format!("Missing {name}"),
                format!("A tree needs {name}; set it, or set type = \"{FAT_TREE}\" with k."),
            )
        }))
        .collect();
    if !misplaced.is_empty() {
        return Err(Diagnostics(misplaced));
    }
    let mut diagnostics = Diagnostics::default();
    let mut number = |name: &'static str| -> Option<i64> {
        match config.attr(name) {
            Value::Null => None,
            value => {
                let number = value.as_i64();
                if number.is_none() {
                    diagnostics.push(Diagnostic::attribute_error(
                        &[name],
                        format!("Invalid {name}"),
                        format!("{name} must be a whole number."),
                    ));
                }
                number
            }
        }
    };
    let racks = number("racks");
    let hosts_per_rack = number("hosts_per_rack");
    let hosts = number("hosts");
    let ports_per_vswitch = number("ports_per_vswitch");
    if diagnostics.has_errors() {
        return Err(diagnostics);
    }
    let input = TreeInput {
        name: config.attr("name").as_str().unwrap_or_default(),
        racks: racks.unwrap_or_default(),
        hosts_per_rack: hosts_per_rack.unwrap_or_default(),
        hosts,
        ports_per_vswitch: ports_per_vswitch.unwrap_or(DEFAULT_PORTS_PER_VSWITCH),
        data_plane_cidr: config.attr("data_plane_cidr").as_str().unwrap_or_default(),
    };
    TreeSpec::validate(&input)
        .map(Some)
        .map_err(|errors| Diagnostics(errors.into_iter().map(Diagnostic::from).collect()))
}

const TREE: &str = "tree";
const FAT_TREE: &str = "fat_tree";

/// A `type = "fat_tree"` configuration's spec.
fn fat_tree_of(config: &Value) -> Result<TreeSpec, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    for name in ["racks", "hosts_per_rack", "ports_per_vswitch"] {
        if !config.attr(name).is_null() {
            diagnostics.push(Diagnostic::attribute_error(
                &[name],
                format!("{name} is for a tree"),
                format!("A fat tree's shape is its k; remove {name}."),
            ));
        }
    }
    let k = config.attr("k").as_i64();
    if k.is_none() {
        diagnostics.push(Diagnostic::attribute_error(
            &["k"],
            "Missing k",
            "A fat tree needs k: an even number of ports per switch, 4 to 64 (k = 4: 16 EPMs, 20 switches).",
        ));
    }
    let cidr = |name: &'static str| match config.attr(name).as_str() {
        None => Ok(None),
        Some(text) => crate::model::cidr::parse_attribute(name, text).map(Some),
    };
    let (plane, fabric) = (cidr("data_plane_cidr"), cidr("fabric_cidr"));
    for error in [plane.as_ref().err(), fabric.as_ref().err()].into_iter().flatten() {
        diagnostics.push(Diagnostic::from(error.clone()));
    }
    let name = config.attr("name").as_str().unwrap_or_default();
    if let Err(error) = crate::model::tree::check_name(name) {
        diagnostics.push(Diagnostic::from(error));
    }
    // Every rule at once: k's and the prefixes' too, where they can be checked.
    let fat = match (k, plane, fabric) {
        (Some(k), Ok(Some(plane)), Ok(fabric)) => FatTree::validate(k, config.attr("hosts").as_i64(), plane, fabric)
            .map_err(|errors| diagnostics.0.extend(errors.into_iter().map(Diagnostic::from)))
            .ok(),
        (_, Ok(None), _) => {
            diagnostics.push(Diagnostic::attribute_error(
                &["data_plane_cidr"],
                "Missing data_plane_cidr",
                "A fat tree needs data_plane_cidr for its EPMs' addresses.",
            ));
            None
        }
        _ => None,
    };
    match fat {
        Some(fat) if !diagnostics.has_errors() => Ok(TreeSpec::fat_tree(name, fat)),
        _ => Err(diagnostics),
    }
}

/// The full state of a topology built from `spec` with `ready_epms` up and
/// its `agents` ready on `agents_ready` EPMs.
pub fn state_of(
    spec: &TreeSpec,
    ready_epms: u32,
    agents: &[EpmAgentSpec],
    agents_ready: u32,
    profiles: &[LinkProfileSpec],
    impaired_links: u64,
) -> Value {
    // A fat tree's shape is its k: the tree's attributes stay null.
    let tree_only = |n: u32| if spec.fabric.is_some() { Value::Null } else { Value::int(i64::from(n)) };
    let epms = spec
        .epms()
        .map(|epm| {
            let name = epm.name.clone();
            let attributes = object([
                ("name", Value::string(&epm.name)),
                ("rack", Value::int(i64::from(epm.rack))),
                ("ip", Value::string(epm.ip.to_string())),
                ("mac", Value::string(merak_netdev::netdev::format_mac(&epm.mac))),
                ("namespace", Value::string(naming::namespace(&spec.name, &epm.name))),
            ]);
            (name, attributes)
        })
        .collect();
    object([
        ("id", Value::string(&spec.name)),
        ("name", Value::string(&spec.name)),
        ("type", Value::string(if spec.fabric.is_some() { FAT_TREE } else { TREE })),
        ("racks", tree_only(spec.racks)),
        ("hosts_per_rack", tree_only(spec.hosts_per_rack)),
        ("k", spec.fabric.as_ref().map_or(Value::Null, |f| Value::int(i64::from(f.k)))),
        ("fabric_cidr", spec.fabric.as_ref().map_or(Value::Null, |f| Value::string(f.fabric.to_string()))),
        ("hosts", Value::int(i64::from(spec.hosts))),
        ("ports_per_vswitch", tree_only(spec.ports_per_vswitch)),
        ("data_plane_cidr", Value::string(spec.data_plane.to_string())),
        ("epms", Value::Map(epms)),
        ("vswitch_count", Value::int(spec.vswitch_count() as i64)),
        ("link_count", Value::int(spec.link_count() as i64)),
        ("namespace_prefix", Value::string(naming::topology_prefix(&spec.name))),
        ("ready_epms", Value::int(i64::from(ready_epms))),
        ("epm_agents_ready", Value::int(i64::from(agents_ready))),
        (EPM_AGENT, Value::List(agents.iter().map(agent_value).collect())),
        ("impaired_links", Value::int(i64::try_from(impaired_links).unwrap_or(i64::MAX))),
        (LINK_PROFILE, Value::List(profiles.iter().map(link_profile::value).collect())),
    ])
}

fn state_of_view(view: &TopologyView) -> Value {
    state_of(
        &view.spec,
        view.status.ready_epms,
        &view.agents,
        view.agents_status.ready_epms,
        &view.profiles,
        view.impaired_links,
    )
}

/// The planned state: everything derives from the spec, so it is all known
/// at plan time; `ready_epms` and `epm_agents_ready` are planned as "all of them".
fn plan(config: &Value) -> Result<Value, Diagnostics> {
    match (spec_of(config)?, agents_of(config)?, link_profile::profiles_of(config)?) {
        (Some(spec), Some(agents), Some(profiles)) => {
            Ok(state_of(&spec, spec.hosts, &agents, spec.hosts, &profiles, impaired_link_count(&spec, &profiles)))
        }
        _ => {
            let mut planned = super::unknown_computed(&SCHEMA, config);
            if let (Some(name), Value::Map(attributes)) = (config.attr("name").as_str(), &mut planned) {
                attributes.insert("id".into(), Value::string(name));
                attributes.insert("namespace_prefix".into(), Value::string(naming::topology_prefix(name)));
            }
            Ok(planned)
        }
    }
}

/// Builds or changes the topology to match `planned`. The returned state
/// always says what exists, also when some of it failed.
async fn apply(controller: &Controller, planned: &Value, intent: Intent) -> (Option<Value>, Diagnostics) {
    let (spec, agents, profiles) = match (spec_of(planned), agents_of(planned), link_profile::profiles_of(planned)) {
        (Ok(Some(spec)), Ok(Some(agents)), Ok(Some(profiles))) => (spec, agents, profiles),
        (Err(diagnostics), _, _) | (_, Err(diagnostics), _) | (_, _, Err(diagnostics)) => return (None, diagnostics),
        _ => return (None, super::unknown_at_apply()),
    };
    match controller.apply_topology(&spec, &agents, &profiles, intent).await {
        Ok(view) => (Some(state_of_view(&view)), failures_to_diagnostics(&view)),
        Err(error) => {
            (None, Diagnostic::error(format!("Could not build topology {}", spec.name), error.to_string()).into())
        }
    }
}

fn failures_to_diagnostics(view: &TopologyView) -> Diagnostics {
    let (spec, status) = (&view.spec, &view.status);
    let mut diagnostics = super::incomplete(
        format!("{} objects of topology {} failed", status.failures.len(), spec.name),
        &status.failures,
        status.ready_epms == spec.hosts,
        format!("{} of {} EPMs are ready.", status.ready_epms, spec.hosts),
    );
    // Agents under test that do not come up are the system under test's
    // failure, said apart from the underlay's.
    if diagnostics.0.is_empty() {
        let agents = &view.agents_status;
        diagnostics = super::incomplete(
            format!(
                "Agents under test are not ready on {} EPMs of topology {}",
                spec.hosts.saturating_sub(agents.ready_epms),
                spec.name
            ),
            &agents.failures,
            agents.ready_epms == spec.hosts,
            format!("{} of {} EPMs run every epm_agent.", agents.ready_epms, spec.hosts),
        );
    }
    diagnostics
}

/// The topology as it is on the host, or None when it no longer exists.
async fn read(controller: &Controller, id: &str) -> Result<Option<Value>, Diagnostics> {
    match controller.read_topology(id).await {
        Ok(Some(view)) => Ok(Some(state_of_view(&view))),
        Ok(None) => Ok(None),
        Err(error) => Err(Diagnostic::error(format!("Could not read topology {id}"), error.to_string()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_0_states_get_their_epms_keyed_by_name() {
        let stored = serde_json::json!({"id": "lab", "epms": [{"name": "epm-0", "ip": "10.0.0.1"}, {"name": "epm-1", "ip": "10.0.0.2"}]});
        let upgraded = Topology.upgrade_state(0, stored);
        assert_eq!(upgraded["epms"]["epm-1"]["ip"], "10.0.0.2");
        assert_eq!(Topology.upgrade_state(1, upgraded.clone()), upgraded);
    }
}

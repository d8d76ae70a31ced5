//! Agents under test: the user's own processes (a host agent, a routing
//! daemon, an SDN controller's node agent) that merak-agent runs and
//! supervises in every EPM, declared by `epm_agent` blocks of the topology.
//!
//! The command, the environment and the ready command may name the EPM they
//! run in with placeholders, replaced per EPM before they are sent:
//! `${epm}`, `${epm_ip}`, `${epm_index}` and `${controller_url}`. Anything
//! else of the form `${...}` is left as it is, so shell scripts keep their
//! own `${VAR}`s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::naming;

/// At most this many agents per EPM (the agent's own limit too).
pub const MAX_AGENTS: usize = 64;
pub const DEFAULT_READY_TIMEOUT_S: u32 = 60;
const MAX_READY_TIMEOUT_S: i64 = 3600;
/// Agent names go into log file names (`<epm>.<name>.log`).
const MAX_NAME: usize = 32;

/// One `epm_agent` block, as configured (null stays null, so the state
/// echoes the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpmAgentSpec {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ready_command: Option<Vec<String>>,
    #[serde(default)]
    pub ready_timeout_s: Option<u32>,
    /// The container image to run `command` from, where EPMs are pods
    /// (the kubernetes runtime); locally the host's programs run.
    #[serde(default)]
    pub image: Option<String>,
}

/// A rule an `epm_agent` block breaks.
pub use super::BlockError as AgentError;

/// What one EPM's placeholders stand for.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    pub epm: &'a str,
    pub epm_ip: Ipv4Addr,
    pub epm_index: u32,
    /// The provider's external controller, when it has one.
    pub controller_url: Option<&'a str>,
}

/// The command, environment and ready command for one EPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ready_command: Vec<String>,
}

const CONTROLLER_URL: &str = "${controller_url}";

impl EpmAgentSpec {
    pub fn ready_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.ready_timeout_s.unwrap_or(DEFAULT_READY_TIMEOUT_S)))
    }

    fn texts(&self) -> impl Iterator<Item = (&'static str, &String)> {
        let command = self.command.iter().map(|t| ("command", t));
        let env = self.env.iter().flatten().map(|(_, v)| ("env", v));
        let ready = self.ready_command.iter().flatten().map(|t| ("ready_command", t));
        command.chain(env).chain(ready)
    }

    pub fn render(&self, at: &Placeholders<'_>) -> Rendered {
        let one = |text: &String| render(text, at);
        Rendered {
            command: self.command.iter().map(one).collect(),
            env: self.env.iter().flatten().map(|(k, v)| (k.clone(), one(v))).collect(),
            ready_command: self.ready_command.iter().flatten().map(one).collect(),
        }
    }
}

/// `text` with this EPM's placeholders replaced.
pub fn render(text: &str, at: &Placeholders<'_>) -> String {
    text.replace("${epm}", at.epm)
        .replace("${epm_ip}", &at.epm_ip.to_string())
        .replace("${epm_index}", &at.epm_index.to_string())
        .replace(CONTROLLER_URL, at.controller_url.unwrap_or_default())
}

/// Every rule the blocks break. `has_controller`: the provider configures
/// an external controller, which `${controller_url}` names.
pub fn validate(agents: &[EpmAgentSpec], has_controller: bool) -> Vec<AgentError> {
    let mut errors = Vec::new();
    if agents.len() > MAX_AGENTS {
        let detail = format!("{} epm_agent blocks; at most {MAX_AGENTS}.", agents.len());
        errors.push(AgentError {
            index: MAX_AGENTS,
            attribute: "name",
            summary: "Too many epm_agent blocks".into(),
            detail,
        });
    }
    for (index, agent) in agents.iter().enumerate() {
        let mut error = |attribute: &'static str, summary: &str, detail: String| {
            errors.push(AgentError { index, attribute, summary: summary.into(), detail });
        };
        if !naming::is_dns_label(&agent.name) || agent.name.len() > MAX_NAME {
            error(
                "name",
                "Invalid epm_agent name",
                format!(
                    "{:?} is not a DNS label of at most {MAX_NAME} characters (lowercase letters, digits, '-'); it names the agent's log, <epm>.<name>.log.",
                    agent.name
                ),
            );
        } else if agents[..index].iter().any(|a| a.name == agent.name) {
            error(
                "name",
                "Duplicate epm_agent name",
                format!("Another epm_agent block is named {:?}; give each a name of its own.", agent.name),
            );
        }
        if agent.command.first().is_none_or(|program| program.trim().is_empty()) {
            error(
                "command",
                "Empty epm_agent command",
                "command must name a program and its arguments, e.g. [\"ovn-controller\", \"--pidfile\"].".into(),
            );
        }
        if agent.ready_command.as_ref().is_some_and(|r| r.first().is_none_or(|program| program.trim().is_empty())) {
            error("ready_command", "Empty ready_command", "ready_command must name a program that exits 0 when the agent is ready; leave it out to count a running agent as ready.".into());
        }
        if let Some(env) = &agent.env
            && let Some(key) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            error(
                "env",
                "Invalid environment variable name",
                format!("{key:?} cannot be a variable name: it is empty or holds '=' or a NUL byte."),
            );
        }
        if let Some((attribute, _)) = agent.texts().find(|(_, t)| t.contains('\0')) {
            error(
                attribute,
                "NUL byte in epm_agent",
                format!("{attribute} holds a NUL byte, which no program argument or variable can carry."),
            );
        }
        if !has_controller && let Some((attribute, _)) = agent.texts().find(|(_, t)| t.contains(CONTROLLER_URL)) {
            error(
                attribute,
                "No controller to name",
                format!(
                    "{attribute} uses ${{controller_url}}, but the provider block has no controller {{ url = ... }}; add one, or remove the placeholder."
                ),
            );
        }
    }
    errors
}

/// Where a runtime runs agents under test, which decides whether an
/// `epm_agent` needs an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentHost {
    /// Supervised by merak-agent in the EPM's namespace: the host's programs.
    Namespace,
    /// A container of its own next to merak-agent in the EPM pod.
    Container,
}

/// The container merak-agent runs as in an EPM pod: no agent under test
/// may take its name.
pub const AGENT_CONTAINER: &str = "agent";
/// Longer would not be an image reference any registry takes.
const MAX_IMAGE: usize = 4096;

/// What the runtime's way of running agents asks of the blocks.
pub fn validate_for(agents: &[EpmAgentSpec], host: AgentHost) -> Vec<AgentError> {
    let mut errors = Vec::new();
    for (index, agent) in agents.iter().enumerate() {
        let mut error = |attribute: &'static str, summary: &str, detail: String| {
            errors.push(AgentError { index, attribute, summary: summary.into(), detail });
        };
        match (host, agent.image.as_deref()) {
            (AgentHost::Namespace, Some(_)) => error(
                "image",
                "image needs the kubernetes runtime",
                "On the local runtime an agent under test runs this host's programs in the EPM's namespace; remove image, or use runtime = \"kubernetes\", where it becomes a container of the EPM pod.".into(),
            ),
            (AgentHost::Container, None) => error(
                "image",
                "Missing epm_agent image",
                format!("On the kubernetes runtime agent {:?} is a container of every EPM pod, sharing its network namespace; set image to the image holding its command, e.g. image = \"registry.example/my-agent:1.0\".", agent.name),
            ),
            (_, Some(image)) if image.is_empty() || image.len() > MAX_IMAGE || image.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                error("image", "Invalid epm_agent image", format!("{image:?} is not an image reference: it is empty, longer than {MAX_IMAGE} characters, or holds spaces or control characters."))
            }
            _ => {}
        }
        if host == AgentHost::Container && agent.name == AGENT_CONTAINER {
            error(
                "name",
                "Reserved epm_agent name",
                format!(
                    "{AGENT_CONTAINER:?} names merak-agent's own container in the EPM pods; give the agent under test another name."
                ),
            );
        }
    }
    errors
}

/// A ready timeout as configured, checked.
pub fn ready_timeout_s(value: i64) -> Result<u32, String> {
    if (1..=MAX_READY_TIMEOUT_S).contains(&value) {
        u32::try_from(value).map_err(|e| e.to_string())
    } else {
        Err(format!("ready_timeout_s is {value}; use 1 to {MAX_READY_TIMEOUT_S} seconds."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, command: &[&str]) -> EpmAgentSpec {
        EpmAgentSpec {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: None,
            ready_command: None,
            ready_timeout_s: None,
            image: None,
        }
    }

    #[test]
    fn placeholders_are_replaced_and_shell_variables_kept() {
        let mut spec = agent("ovn", &["sh", "-c", "echo ${epm} ${epm_ip} ${epm_index} ${HOME} $${epm}"]);
        spec.env = Some(BTreeMap::from([("URL".to_string(), "${controller_url}/v1".to_string())]));
        spec.ready_command = Some(vec!["ping".into(), "${epm_ip}".into()]);
        let at = Placeholders {
            epm: "epm-3",
            epm_ip: Ipv4Addr::new(10, 0, 0, 4),
            epm_index: 3,
            controller_url: Some("http://127.0.0.1:9"),
        };
        let rendered = spec.render(&at);
        assert_eq!(rendered.command[2], "echo epm-3 10.0.0.4 3 ${HOME} $epm-3");
        assert_eq!(rendered.env["URL"], "http://127.0.0.1:9/v1");
        assert_eq!(rendered.ready_command, ["ping", "10.0.0.4"]);
    }

    #[test]
    fn bad_blocks_are_named_by_index_and_attribute() {
        let mut env = agent("env", &["true"]);
        env.env = Some(BTreeMap::from([("A=B".to_string(), "x".to_string())]));
        let mut ready = agent("ready", &["true"]);
        ready.ready_command = Some(Vec::new());
        let agents = [
            agent("ok", &["true"]),
            agent("ok", &["true"]),
            agent("Bad_Name", &["true"]),
            agent("empty", &[]),
            agent("blank", &[" "]),
            env,
            ready,
            agent("url", &["x", "${controller_url}"]),
        ];
        let found: Vec<(usize, &str)> = validate(&agents, false).iter().map(|e| (e.index, e.attribute)).collect();
        assert_eq!(
            found,
            [
                (1, "name"),
                (2, "name"),
                (3, "command"),
                (4, "command"),
                (5, "env"),
                (6, "ready_command"),
                (7, "command")
            ]
        );
        assert!(validate(&agents[7..], true).is_empty(), "with a controller, ${{controller_url}} is fine");
        assert!(
            validate(&vec![agent("a", &["true"]); MAX_AGENTS + 1], false)
                .iter()
                .any(|e| e.summary.contains("Too many"))
        );
    }

    #[test]
    fn the_runtime_decides_whether_an_agent_needs_an_image() {
        let mut pod = agent("ovn", &["ovn-controller"]);
        pod.image = Some("registry.example/ovn:24.03".into());
        let host = agent("bgpd", &["bgpd"]);
        assert!(validate_for(std::slice::from_ref(&host), AgentHost::Namespace).is_empty());
        assert!(validate_for(std::slice::from_ref(&pod), AgentHost::Container).is_empty());
        let found = |agents: &[EpmAgentSpec], at: AgentHost| -> Vec<(usize, &'static str)> {
            validate_for(agents, at).iter().map(|e| (e.index, e.attribute)).collect()
        };
        assert_eq!(found(&[host.clone(), pod.clone()], AgentHost::Namespace), [(1, "image")]);
        assert_eq!(found(&[pod.clone(), host], AgentHost::Container), [(1, "image")]);
        let mut blank = pod.clone();
        blank.image = Some("a b".into());
        let mut reserved = pod;
        reserved.name = AGENT_CONTAINER.into();
        assert_eq!(found(&[blank, reserved], AgentHost::Container), [(0, "image"), (1, "name")]);
    }

    #[test]
    fn ready_timeouts_are_bounded() {
        assert_eq!(ready_timeout_s(30), Ok(30));
        assert!(ready_timeout_s(0).is_err());
        assert!(ready_timeout_s(1 << 40).is_err());
    }
}

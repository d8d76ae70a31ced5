//! The external controller API: what the provider sends a user's network
//! controller about the ports of `controller = "external"` VPCs, and what
//! it expects back. `docs/controller-api.md` is generated from these types
//! (their doc comments are the schema's descriptions), and a test fails
//! when it is stale.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Paths under the controller's base URL.
pub const PORTS_PATH: &str = "/v1/ports";
pub const SECURITY_GROUPS_PATH: &str = "/v1/security-groups";

/// `PUT <url>/v1/ports`: create these ports, or update them, each by its
/// `id`. Sending the same port again is harmless: the provider resends
/// ports whose earlier request failed or went unanswered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortBatch {
    /// At most the provider's `controller.batch_size` ports.
    pub ports: Vec<Port>,
}

/// One EVM's network port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Port {
    /// `<topology>/<evm>`: stable for the EVM's lifetime, unique on this host.
    pub id: String,
    /// The `merak_topology`'s name.
    pub topology: String,
    /// The EVM's name, `<group>-<index>`.
    pub evm: String,
    /// The `merak_evm_group` it belongs to.
    pub group: String,
    /// The `merak_vpc`'s name.
    pub vpc: String,
    /// The VPC's VXLAN network identifier (`merak_vpc.vni`).
    pub vni: u32,
    /// The `merak_subnet`'s name.
    pub subnet: String,
    /// The subnet's prefix, e.g. `10.1.0.0/24`.
    pub subnet_cidr: String,
    /// The subnet's gateway address (the EVM's default route), which the
    /// controller is to answer for, e.g. `10.1.0.1`.
    pub gateway: String,
    /// The EVM's IPv4 address, e.g. `10.1.0.2`.
    pub ip: String,
    /// The MAC of the EVM's `eth0`, e.g. `0a:00:0a:01:00:02`.
    pub mac: String,
    /// The EPM the EVM lives on, e.g. `epm-3`.
    pub epm: String,
    /// The EPM's data-plane (underlay) address: where tunnels to this port end.
    pub epm_ip: String,
    /// The device to attach, on the EPM: the EPM end of the EVM's link,
    /// in the EPM's own network namespace, up and on no bridge.
    pub device: String,
    /// `veth` (`device` is the peer of the EVM's `eth0`) or `hybrid`
    /// (`device` is the outer end of an OpenStack-style hybrid plug).
    pub device_model: String,
    /// Names of the security groups of its VPC the port is in (`default`,
    /// the VPC's implicit group, when its EVM group names none). Empty: the
    /// VPC has no security group, and the port's traffic is not filtered.
    /// A port whose groups change is sent again.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// `PUT <url>/v1/security-groups`: create these security groups, or replace
/// their rules, each by its `id`. Sent before any port that is in them.
/// Semantics as in the clouds: stateful (replies to allowed traffic pass),
/// a port's traffic passes when any of its groups allows it, and what no
/// rule allows is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecurityGroupBatch {
    pub security_groups: Vec<SecurityGroup>,
}

/// One security group of a VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecurityGroup {
    /// `<topology>/<vpc>/<name>`.
    pub id: String,
    pub topology: String,
    pub vpc: String,
    /// Unique in the VPC. `default` is the VPC's implicit group (egress
    /// anywhere, ingress from its own members), sent with the VPC's first
    /// group and deleted with its last.
    pub name: String,
    pub description: String,
    /// What may reach the group's ports.
    pub ingress: Vec<SecurityRule>,
    /// What the group's ports may send.
    pub egress: Vec<SecurityRule>,
}

/// One rule: traffic of `protocol` (to `from_port`..`to_port`) whose peer
/// is in `cidr_blocks` or in a port of `remote_groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecurityRule {
    /// `tcp`, `udp`, `icmp`, `all`, or an IP protocol number.
    pub protocol: String,
    /// The IP protocol number; 0 for `all`.
    pub protocol_number: u8,
    /// The first destination port (TCP and UDP only; absent: every port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<u16>,
    /// The last destination port, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    /// Peer prefixes, e.g. `0.0.0.0/0`.
    pub cidr_blocks: Vec<String>,
    /// Names of groups of the same VPC whose ports are peers (the group's
    /// own name for "its members"): the controller follows their
    /// membership from the ports' `security_groups`.
    pub remote_groups: Vec<String>,
}

/// `DELETE <url>/v1/security-groups`: forget these groups (no port is in
/// them any more). Unknown ids are not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecurityGroupIds {
    pub ids: Vec<String>,
}

/// `DELETE <url>/v1/ports`: forget these ports. Ids the controller does not
/// know are not an error: the provider resends deletions it is unsure of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortIds {
    pub ids: Vec<String>,
}

/// The answer to any request, with a 2xx status: one result per port or
/// group (`id`).
/// A 2xx answer with an empty body accepts every port of the request. Any
/// other status refuses the whole request: 408, 429 and 5xx are retried
/// with backoff, the rest are not; a JSON body `{"message": "..."}` says why.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct PortResults {
    pub results: Vec<PortResult>,
}

/// What became of one port or group. One without a result counts as refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortResult {
    /// The port's or group's `id`.
    pub id: String,
    /// Whether the controller did what was asked. A refused port is not
    /// recorded as built: its EVM is not ready, and the next apply sends it
    /// again. A refused group fails the apply of its `merak_security_group`.
    pub ok: bool,
    /// Why not, for the user: it is shown in the Terraform diagnostic.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A refusal's body (any other shape is shown as text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub message: String,
}

/// The API's reference, as `docs/controller-api.md` holds it.
pub fn reference() -> String {
    let schema = |root: schemars::Schema| serde_json::to_string_pretty(&root).unwrap_or_default();
    format!(
        "# External controller API\n\n\
         <!-- Generated from provider/src/controller/port_api.rs by `terraform-provider-merak --generate-docs docs`; do not edit. -->\n\n\
         A VPC with `controller = \"external\"` is programmed by the user's own network controller, named by the \
         provider's `controller` block:\n\n\
         ```hcl\nprovider \"merak\" {{\n  controller {{\n    url        = \"http://127.0.0.1:8080\"\n    headers    = {{ Authorization = \"Bearer ...\" }}\n    timeout_s  = 10   # per request\n    batch_size = 500  # ports per request\n  }}\n}}\n```\n\n\
         Merak builds each EVM (its namespace, `eth0` with address, MAC and default route) and leaves the EPM end of \
         its link (`device`) up, on no bridge, in the EPM's network namespace; the system under test (e.g. an \
         `epm_agent` running a virtual switch) attaches it. Merak builds no overlay of its own for the VPC and tells \
         the controller about every port, in batches, as JSON over HTTP:\n\n\
         | Request | Body | When |\n|---|---|---|\n\
         | `PUT <url>{PORTS_PATH}` | `PortBatch` | EVMs are created (or were refused before) |\n\
         | `DELETE <url>{PORTS_PATH}` | `PortIds` | EVMs are removed (scale-in, destroy) |\n\
         | `PUT <url>{SECURITY_GROUPS_PATH}` | `SecurityGroupBatch` | a `merak_security_group` is created or its rules change |\n\
         | `DELETE <url>{SECURITY_GROUPS_PATH}` | `SecurityGroupIds` | a `merak_security_group` is destroyed |\n\n\
         Both are idempotent and are answered with `PortResults`. Requests carry `Content-Type: application/json` \
         and the block's `headers`. A request that times out (`timeout_s`), fails to connect, or is answered 408, \
         429 or 5xx is retried with backoff (5 attempts); other statuses are final. An EVM is ready, and counted in \
         `merak_evm_group.ready_count`, once its devices are whole and the controller accepted its port; a refused \
         port fails the apply with a diagnostic naming the EVM, the HTTP status and the controller's `message`, and \
         the next apply sends it again. Ports are deleted from the controller before their EVMs, and an EVM group \
         is not forgotten while the controller has not confirmed its deletions.\n\n\
         Security groups of an external VPC are the controller's to enforce, as Neutron hands them to its \
         drivers: a group is sent before any port in it, a port carries the names of its groups \
         (`security_groups`) and is sent again when they change (an EVM group's `security_group_ids`, or the \
         VPC's first group putting every port in `default`), and a group is deleted once no port is in it. \
         `pingall` judges the probes by the declared policy, so it reports what the controller enforces \
         differently.\n\n\
         `examples/controllers/` holds controllers written against this API.\n\n\
         ## `PortBatch`\n\n```json\n{}\n```\n\n## `PortIds`\n\n```json\n{}\n```\n\n## `PortResults`\n\n```json\n{}\n```\n\n\
         ## `SecurityGroupBatch`\n\n```json\n{}\n```\n\n## `SecurityGroupIds`\n\n```json\n{}\n```\n\n\
         ## `ErrorBody`\n\n```json\n{}\n```\n",
        schema(schemars::schema_for!(PortBatch)),
        schema(schemars::schema_for!(PortIds)),
        schema(schemars::schema_for!(PortResults)),
        schema(schemars::schema_for!(SecurityGroupBatch)),
        schema(schemars::schema_for!(SecurityGroupIds)),
        schema(schemars::schema_for!(ErrorBody)),
    )
}

//! The external controller API: what the provider sends a user's network
//! controller about the ports of `controller = "external"` VPCs, and what
//! it expects back. `docs/controller-api.md` is generated from these types
//! (their doc comments are the schema's descriptions), and a test fails
//! when it is stale.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Paths under the controller's base URL.
pub const PORTS_PATH: &str = "/v1/ports";

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
}

/// `DELETE <url>/v1/ports`: forget these ports. Ids the controller does not
/// know are not an error: the provider resends deletions it is unsure of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortIds {
    pub ids: Vec<String>,
}

/// The answer to either request, with a 2xx status: one result per port.
/// A 2xx answer with an empty body accepts every port of the request. Any
/// other status refuses the whole request: 408, 429 and 5xx are retried
/// with backoff, the rest are not; a JSON body `{"message": "..."}` says why.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct PortResults {
    pub results: Vec<PortResult>,
}

/// What became of one port. A port without a result counts as refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortResult {
    /// The port's `id`.
    pub id: String,
    /// Whether the controller did what was asked. A refused port is not
    /// recorded as built: its EVM is not ready, and the next apply sends it again.
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
         | `DELETE <url>{PORTS_PATH}` | `PortIds` | EVMs are removed (scale-in, destroy) |\n\n\
         Both are idempotent and are answered with `PortResults`. Requests carry `Content-Type: application/json` \
         and the block's `headers`. A request that times out (`timeout_s`), fails to connect, or is answered 408, \
         429 or 5xx is retried with backoff (5 attempts); other statuses are final. An EVM is ready, and counted in \
         `merak_evm_group.ready_count`, once its devices are whole and the controller accepted its port; a refused \
         port fails the apply with a diagnostic naming the EVM, the HTTP status and the controller's `message`, and \
         the next apply sends it again. Ports are deleted from the controller before their EVMs, and an EVM group \
         is not forgotten while the controller has not confirmed its deletions.\n\n\
         `examples/controllers/` holds controllers written against this API.\n\n\
         ## `PortBatch`\n\n```json\n{}\n```\n\n## `PortIds`\n\n```json\n{}\n```\n\n## `PortResults`\n\n```json\n{}\n```\n\n\
         ## `ErrorBody`\n\n```json\n{}\n```\n",
        schema(schemars::schema_for!(PortBatch)),
        schema(schemars::schema_for!(PortIds)),
        schema(schemars::schema_for!(PortResults)),
        schema(schemars::schema_for!(ErrorBody)),
    )
}

//! Fuzz targets. Each takes arbitrary bytes, as a plugin client or a
//! provider could send them, and must never panic, abort or allocate beyond
//! what the input justifies. `make fuzz` runs each under libFuzzer (cargo
//! fuzz); `tests/smoke.rs` runs each over generated inputs in `make test`.
//!
//! - `msgpack`, `json`: the cty value decoders, for every schema the
//!   provider serves; what decodes must encode and decode to itself.
//! - `plan`: a resource's or data source's configuration (msgpack), through
//!   validation and plan against a local runtime with no records (the parents
//!   `lab`, `lab/blue` and `lab/blue/web` are planned, as in a real plan).
//! - `agent_goal`: an agent request (protobuf) through the agent's checks,
//!   which run before it changes anything.

use std::sync::LazyLock;

use merak_provider::controller::Controller;
use merak_provider::resources::{DATA_SOURCES, RESOURCES};
use merak_provider::runtime::local::{AgentTransport, LocalRuntime};
use merak_provider::store::MemoryStore;
use merak_tfplugin::cty::{Type, Value};
use merak_tfplugin::{json, msgpack};
use prost::Message;

/// Every value type the provider decodes: the provider block, each
/// resource and each data source.
fn schema_types() -> &'static [Type] {
    static TYPES: LazyLock<Vec<Type>> = LazyLock::new(|| {
        let mut types = vec![merak_provider::config::SCHEMA.value_type()];
        types.extend(RESOURCES.iter().map(|r| r.schema().value_type()));
        types.extend(DATA_SOURCES.iter().map(|d| d.schema().value_type()));
        types
    });
    &TYPES
}

/// The first byte picks one of `n` choices; the rest is the payload.
fn pick(data: &[u8], n: usize) -> (usize, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (usize::from(*first) % n, rest),
        None => (0, data),
    }
}

pub fn msgpack(data: &[u8]) {
    decode_and_round_trip(data, msgpack::decode);
}

pub fn json(data: &[u8]) {
    decode_and_round_trip(data, json::decode);
}

/// Decodes under the schema type the first byte picks; whatever decodes
/// must come back the same through msgpack, the wire format of replies.
fn decode_and_round_trip<E>(data: &[u8], decode: fn(&[u8], &Type) -> Result<Value, E>) {
    let (which, bytes) = pick(data, schema_types().len());
    let ty = &schema_types()[which];
    if let Ok(value) = decode(bytes, ty) {
        let encoded = msgpack::encode(&value, ty).expect("a decoded value encodes");
        let again = msgpack::decode(&encoded, ty).expect("an encoded value decodes");
        assert!(again.same(&value), "the round trip changed {value:?} into {again:?}");
    }
}

struct PlanHarness {
    tokio: tokio::runtime::Runtime,
    runtime: Controller,
}

fn harness() -> &'static PlanHarness {
    static HARNESS: LazyLock<PlanHarness> = LazyLock::new(|| {
        let state_dir = std::env::temp_dir().join(format!("merak-fuzz-{}", std::process::id()));
        // Records in memory: fuzzing writes nothing to the host.
        let store = std::sync::Arc::new(MemoryStore::default());
        let substrate =
            LocalRuntime::new(state_dir, "/nonexistent/merak-agent".into(), AgentTransport::Unix, store.clone());
        let runtime = Controller::new(std::sync::Arc::new(substrate), store);
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let harness = PlanHarness { tokio, runtime };
        // Parents a group's plan can find, as if planned earlier in the same plan.
        for (index, config) in merak_fuzz_parents().into_iter().enumerate() {
            let resource = RESOURCES[index];
            let ty = resource.schema().value_type();
            let value = msgpack::decode(&config, &ty).expect("parent config decodes");
            harness.tokio.block_on(resource.plan(Some(&harness.runtime), &Value::Null, &value)).expect("parent plans");
        }
        harness
    });
    &HARNESS
}

/// Valid configurations of the topology, VPC and subnet resources (in
/// RESOURCES order), msgpack-encoded: the parents, and seeds for the smoke test.
pub fn merak_fuzz_parents() -> Vec<Vec<u8>> {
    use merak_tfplugin::cty::object;
    let configs = [
        object([
            ("id", Value::Null),
            ("name", Value::string("lab")),
            ("racks", Value::int(2)),
            ("hosts_per_rack", Value::int(4)),
            ("hosts", Value::Null),
            ("ports_per_vswitch", Value::Null),
            ("data_plane_cidr", Value::string("10.0.0.0/24")),
            ("epms", Value::Null),
            ("vswitch_count", Value::Null),
            ("link_count", Value::Null),
            ("namespace_prefix", Value::Null),
            ("ready_epms", Value::Null),
        ]),
        object([
            ("id", Value::Null),
            ("topology_id", Value::string("lab")),
            ("name", Value::string("blue")),
            ("cidr", Value::string("10.1.0.0/16")),
            ("vni", Value::Null),
        ]),
        object([
            ("id", Value::Null),
            ("vpc_id", Value::string("lab/blue")),
            ("name", Value::string("web")),
            ("cidr", Value::string("10.1.1.0/24")),
            ("gateway_ip", Value::Null),
            ("vni", Value::Null),
        ]),
    ];
    configs
        .iter()
        .enumerate()
        .map(|(i, config)| msgpack::encode(config, &RESOURCES[i].schema().value_type()).expect("encodes"))
        .collect()
}

pub fn plan(data: &[u8]) {
    let harness = harness();
    let (which, bytes) = pick(data, RESOURCES.len() + DATA_SOURCES.len());
    if let Some(resource) = RESOURCES.get(which) {
        let Ok(config) = msgpack::decode(bytes, &resource.schema().value_type()) else { return };
        let _ = resource.validate(&config);
        let _ = harness.tokio.block_on(resource.plan(Some(&harness.runtime), &Value::Null, &config));
    } else if let Some(source) = DATA_SOURCES.get(which - RESOURCES.len()) {
        let Ok(config) = msgpack::decode(bytes, &source.schema().value_type()) else { return };
        let _ = source.validate(&config);
        let _ = harness.tokio.block_on(source.read(&harness.runtime, &config));
    }
}

pub fn agent_goal(data: &[u8]) {
    use merak_proto::agent::{EvmBatch, OverlayGoal, PingRequest};
    let (which, bytes) = pick(data, 3);
    let _ = match which {
        0 => OverlayGoal::decode(bytes).map(|goal| merak_agent::goal::overlay(&goal).is_ok()),
        1 => EvmBatch::decode(bytes).map(|batch| merak_agent::goal::batch(&batch).is_ok()),
        _ => PingRequest::decode(bytes).map(|request| merak_agent::goal::ping(&request).is_ok()),
    };
}

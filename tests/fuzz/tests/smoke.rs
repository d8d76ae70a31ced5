//! A short smoke of every fuzz target, in `make test`: valid seeds and
//! many mutations of them (bytes flipped, cut, repeated, huge lengths and
//! numbers spliced in), each of which must be handled without a panic.
//! `make fuzz` runs the same targets under libFuzzer for millions of inputs.

use merak_proto::agent::{EvmBatch, EvmSpec, OverlayGoal, PingProbe, PingRequest, SubnetGoal, VpcGoal};
use prost::Message;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte strings that stress decoders: huge msgpack lengths and numbers,
/// varints of protobuf, deep nesting, the unknown-value extension.
const SPLICES: &[&[u8]] = &[
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0x7f, 0xff, 0xff, 0xff],
    &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
    &[0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0],
    &[0xd4, 0, 0],
    &[0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    b"1e400",
    b"-1",
    b"1099511627776",
    b"[[[[[[[[[[[[[[[[[[[[",
];

fn mutate(seed: &[u8], random: &mut Random) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + random.below(4) {
        let at = random.below(data.len() + 1);
        match random.below(5) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << random.below(8);
            }
            1 => data.truncate(at),
            2 => {
                let splice = SPLICES[random.below(SPLICES.len())];
                data.splice(at..at, splice.iter().copied());
            }
            3 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = random.next() as u8;
            }
            _ => {
                let piece: Vec<u8> = data[at..].iter().take(16).copied().collect();
                data.splice(at..at, piece);
            }
        }
    }
    data
}

fn run(target: fn(&[u8]), seeds: &[Vec<u8>], inputs: usize) {
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    for seed in seeds {
        target(seed);
    }
    for _ in 0..inputs {
        let seed = &seeds[random.below(seeds.len())];
        target(&mutate(seed, &mut random));
        let noise: Vec<u8> = (0..random.below(64)).map(|_| random.next() as u8).collect();
        target(&noise);
    }
}

/// Seeds: a selector byte then a valid encoding (of the topology, VPC and
/// subnet configurations, each under every selector).
fn value_seeds() -> Vec<Vec<u8>> {
    let parents = merak_fuzz::merak_fuzz_parents();
    (0..8u8).flat_map(|selector| parents.iter().map(move |p| [&[selector][..], p].concat())).collect()
}

#[test]
fn msgpack_decoder() {
    run(merak_fuzz::msgpack, &value_seeds(), 20_000);
}

#[test]
fn json_decoder() {
    let seeds: Vec<Vec<u8>> = (0..8u8)
        .map(|selector| [&[selector][..], br#"{"id":null,"name":"lab","racks":2,"hosts_per_rack":4,"data_plane_cidr":"10.0.0.0/24","epms":[{"name":"epm-0"}]}"#].concat())
        .collect();
    run(merak_fuzz::json, &seeds, 20_000);
}

#[test]
fn plan_path() {
    run(merak_fuzz::plan, &value_seeds(), 5_000);
}

#[test]
fn agent_goal_checks() {
    let evm = EvmSpec {
        namespace: "merak-lab.vm.web.0".into(),
        router_namespace: "merak-lab.epm-0.r.blue".into(),
        bridge: "b1".into(),
        host_port: "p1.0".into(),
        address: "10.1.1.2/24".into(),
        mac: "0a:00:0a:01:01:02".into(),
        gateway: "10.1.1.1".into(),
        gateway_mac: "0a:01:00:00:00:00".into(),
        device_model: "veth".into(),
        leave_unattached: false,
        mtu: 0,
    };
    let subnet = SubnetGoal {
        vni: 100,
        bridge: "b1".into(),
        vxlan: "x1".into(),
        gateway: "10.1.1.1/24".into(),
        gateway_mac: "0a:01:00:00:00:00".into(),
        flood: vec!["10.0.0.2".into()],
        forget: vec!["0a:00:0a:01:01:02-0a:00:0a:01:01:09".into()],
    };
    let goal = OverlayGoal {
        router_prefix: "merak-lab.epm-0.r.".into(),
        underlay_ip: "10.0.0.1".into(),
        vpcs: vec![VpcGoal { namespace: "merak-lab.epm-0.r.blue".into(), subnets: vec![subnet], firewall: None }],
    };
    let ping = PingRequest {
        probes: vec![PingProbe { from_namespace: evm.namespace.clone(), to: "10.1.1.3".into() }],
        timeout_ms: 100,
        payload_bytes: 0,
        full_size: false,
    };
    let batch = EvmBatch { create: vec![evm.clone()], delete: vec![evm] };
    assert!(
        merak_agent::goal::overlay(&goal).is_ok()
            && merak_agent::goal::batch(&batch).is_ok()
            && merak_agent::goal::ping(&ping).is_ok()
    );
    let seeds = vec![
        [&[0u8][..], &goal.encode_to_vec()].concat(),
        [&[1u8][..], &batch.encode_to_vec()].concat(),
        [&[2u8][..], &ping.encode_to_vec()].concat(),
    ];
    run(merak_fuzz::agent_goal, &seeds, 20_000);
}

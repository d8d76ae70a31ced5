use merak_agent::netns::{self, NetnsOptions};
use merak_proto::agent::{EvmBatch, EvmSpec};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let router = "merak-probe.r";
    let r = netns::create(router, NetnsOptions { disable_ipv6: true, forwarding: true }).await.unwrap();
    r.create_bridge("b1").await.unwrap();
    let b = r.link("b1").await.unwrap().unwrap();
    r.add_address(b.index, "10.0.0.1".parse().unwrap(), 16).await.unwrap();
    let specs: Vec<EvmSpec> = (0..n).map(|i| EvmSpec {
        namespace: format!("merak-probe.e{i}"),
        router_namespace: router.into(),
        bridge: "b1".into(),
        host_port: format!("v{i}"),
        address: format!("10.0.{}.{}/16", (i + 2) / 256, (i + 2) % 256),
        mac: format!("0a:00:00:00:{:02x}:{:02x}", (i + 2) / 256, (i + 2) % 256),
        gateway: "10.0.0.1".into(),
        gateway_mac: "0a:01:00:00:00:01".into(),
    }).collect();
    let t = Instant::now();
    let reply = merak_agent::evm::apply(&EvmBatch { create: specs.clone(), delete: vec![] }).await;
    println!("create {n}: {:?} {:?} failures={}", t.elapsed(), (reply.created, reply.existing), reply.failures.len());
    if let Some(f) = reply.failures.first() { println!("{f:?}"); }
    let t = Instant::now();
    let reply = merak_agent::evm::apply(&EvmBatch { create: vec![], delete: specs }).await;
    println!("delete {n}: {:?} {:?}", t.elapsed(), reply.deleted);
    netns::delete(router).unwrap();
}

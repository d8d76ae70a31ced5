//! Link shaping on the real kernel: a tbf on both ends of a veth reads back
//! with its rate, a second set replaces it, clearing removes only merak's
//! qdisc, and delay on a kernel without netem is refused naming sch_netem
//! (with nothing left on the device). The rate itself is measured end to
//! end by the acceptance test (tests/acceptance/tests/link_profile.rs).

use merak_agent::netns::{self, NetnsOptions};
use merak_netdev::shaping::{ROOT_HANDLE, Shaping};

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in netns::list_with_prefix(&self.0).unwrap_or_default() {
            let _ = netns::delete(&name);
        }
    }
}

#[tokio::test]
async fn a_rate_is_a_tbf_on_the_link_and_delay_needs_netem() {
    let prefix = format!("merak-shape-{}.", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let options = NetnsOptions { disable_ipv6: true, ..NetnsOptions::default() };
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let near = netns::create(&a, options).await.expect("namespace a");
    let _far = netns::create(&b, options).await.expect("namespace b");
    near.create_veth("eth1", "eth1", &netns::open_fd(&b).expect("b's fd")).await.expect("veth");
    let link = near.link("eth1").await.expect("read link").expect("eth1 exists");
    assert_eq!(near.root_qdisc(link.index).await.expect("read qdisc"), None, "a new veth has the kernel's default");

    let fifty_mbit = Shaping { rate_bytes_per_s: Some(6_250_000), ..Shaping::default() };
    near.set_shaping(link.index, &fifty_mbit, link.mtu).await.expect("tbf");
    let root = near.root_qdisc(link.index).await.expect("read qdisc").expect("a root qdisc");
    assert_eq!((root.kind.as_str(), root.handle, root.rate_bytes_per_s), ("tbf", ROOT_HANDLE, Some(6_250_000)));
    assert!(root.is_merak());
    let twenty_mbit = Shaping { rate_bytes_per_s: Some(2_500_000), ..Shaping::default() };
    near.set_shaping(link.index, &twenty_mbit, link.mtu).await.expect("tbf again");
    assert_eq!(
        near.root_qdisc(link.index).await.expect("read").and_then(|r| r.rate_bytes_per_s),
        Some(2_500_000),
        "replaced in place"
    );

    let delay = Shaping { delay_us: 10_000, ..Shaping::default() };
    let kernel_has_netem = std::path::Path::new("/sys/module/sch_netem").exists();
    near.clear_shaping(link.index).await.expect("clear");
    assert_eq!(near.root_qdisc(link.index).await.expect("read"), None, "cleared");
    match near.set_shaping(link.index, &delay, link.mtu).await {
        Err(error) if !kernel_has_netem => {
            let text = error.to_string();
            assert!(text.contains("sch_netem") && text.contains("netem"), "{text}");
            assert_eq!(near.root_qdisc(link.index).await.expect("read"), None, "nothing half-made");
        }
        Ok(()) if kernel_has_netem => {
            assert_eq!(near.root_qdisc(link.index).await.expect("read").map(|r| r.kind), Some("netem".into()))
        }
        other => panic!(
            "netem is {}available, but setting a delay gave {other:?}",
            if kernel_has_netem { "" } else { "not " }
        ),
    }
    near.clear_shaping(link.index).await.expect("clear again");
}

//! Tenant networks on one EPM. Per VPC present here, a router namespace
//! (VPCs with overlapping CIDRs need separate routing tables, and this kernel
//! has no VRF); in it, per subnet of the VPC, a bridge that holds the subnet's
//! gateway address and MAC (identical on every EPM: a distributed gateway)
//! and a VXLAN port whose UDP socket lives in the EPM namespace on the
//! underlay (leaf bridges join it when one bridge cannot hold all of a
//! subnet's EVMs here: see [`crate::bridges`]). Flooding is head-end
//! replication to the EPMs that host the subnet.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use merak_proto::agent::{OverlayGoal, SubnetGoal, VpcGoal};

use crate::bridges;
use crate::netdev::{self, Netlink};
use crate::netns::{self, NetnsOptions};

pub use crate::error::OverlayError;

/// Converges the EPM's overlay to `goal`; returns what it changed.
pub async fn apply(epm: &Netlink, goal: &OverlayGoal) -> Result<Vec<String>, OverlayError> {
    let underlay_ip: Ipv4Addr = goal
        .underlay_ip
        .parse()
        .map_err(|_| OverlayError::Invalid(format!("bad underlay address {:?}", goal.underlay_ip)))?;
    let underlay = epm
        .links()
        .await?
        .into_iter()
        .find(|l| l.name == crate::underlay::DATA_NIC)
        .ok_or_else(|| OverlayError::Invalid("the EPM has no eth1".into()))?;
    let mut actions = Vec::new();

    let wanted: HashSet<&str> = goal.vpcs.iter().map(|v| v.namespace.as_str()).collect();
    if !goal.router_prefix.is_empty() {
        let existing =
            netns::list_with_prefix(&goal.router_prefix).map_err(|e| OverlayError::Invalid(e.to_string()))?;
        for stale in existing.iter().filter(|ns| !wanted.contains(ns.as_str())) {
            remove_router(stale).await?;
            actions.push(format!("removed {stale}"));
        }
    }
    for vpc in &goal.vpcs {
        apply_vpc(epm, underlay.index, underlay_ip, vpc, &mut actions).await?;
    }
    Ok(actions)
}

/// Removes a router namespace. The kernel frees its devices in the
/// background, in one batch with every other namespace going at the time
/// (deleting them one by one first cost a grace period each: 7 s for 100
/// routers after 10,000 EVMs). Until it has, a VXLAN device there still
/// holds its VNI on the EPM's UDP port; [`create_vxlan`] waits that out.
pub async fn remove_router(namespace: &str) -> Result<(), OverlayError> {
    // Its nftables context holds it; the namespace must go whole.
    crate::nftables::forget(namespace);
    Ok(netns::delete(namespace)?)
}

/// How long a VNI may stay held by a VXLAN device in a namespace being torn
/// down before creating a new one for it counts as a real conflict.
const VNI_RELEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates a subnet's VXLAN device. "File exists" for a device name the
/// router does not have means another device holds the VNI: one in a router
/// namespace the kernel is still tearing down (the subnet's VPC left this EPM
/// and came back, a group was replaced), so the create is retried until the
/// kernel has freed it.
async fn create_vxlan(
    epm: &Netlink,
    name: &str,
    vni: u32,
    local: Ipv4Addr,
    underlay: u32,
    router_fd: &std::os::fd::OwnedFd,
) -> Result<(), OverlayError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match epm.create_vxlan(name, vni, local, underlay, router_fd).await {
            Err(e) if e.errno() == Some(libc::EEXIST) && started.elapsed() < VNI_RELEASE => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            result => return Ok(result?),
        }
    }
}

async fn apply_vpc(
    epm: &Netlink,
    underlay: u32,
    underlay_ip: Ipv4Addr,
    vpc: &VpcGoal,
    actions: &mut Vec<String>,
) -> Result<(), OverlayError> {
    let router = if netns::exists(&vpc.namespace) {
        netns::open(&vpc.namespace).await?
    } else {
        actions.push(format!("created {}", vpc.namespace));
        netns::create(&vpc.namespace, NetnsOptions { disable_ipv6: true, forwarding: true, ..NetnsOptions::default() })
            .await?
    };
    for subnet in &vpc.subnets {
        apply_subnet(epm, &router, &vpc.namespace, underlay, underlay_ip, subnet, actions).await?;
    }
    // Bridges, leaves and VXLAN devices of subnets the VPC no longer has.
    let wanted: HashSet<&str> = vpc.subnets.iter().map(|s| s.bridge.as_str()).collect();
    for link in router.links().await? {
        if bridges::trunk_of(&link.name).is_some_and(|trunk| !wanted.contains(trunk.as_str())) {
            router.delete_link(link.index).await?;
            actions.push(format!("{}: removed {}", vpc.namespace, link.name));
        }
    }
    // Security groups go in before any EVM of the goal is built (the
    // provider pushes goals first), so a new port is never unfiltered.
    if let Some(firewall) = &vpc.firewall {
        crate::firewall::apply(&vpc.namespace, firewall).await?;
    }
    Ok(())
}

async fn apply_subnet(
    epm: &Netlink,
    router: &Netlink,
    router_ns: &str,
    underlay: u32,
    underlay_ip: Ipv4Addr,
    subnet: &SubnetGoal,
    actions: &mut Vec<String>,
) -> Result<(), OverlayError> {
    let (gateway, prefix_len) = parse_cidr(&subnet.gateway)?;
    let gateway_mac = netdev::parse_mac(&subnet.gateway_mac)
        .ok_or_else(|| OverlayError::Invalid(format!("bad gateway MAC {:?}", subnet.gateway_mac)))?;

    let bridge = match router.link(&subnet.bridge).await? {
        Some(bridge) => bridge,
        None => {
            router.create_bridge(&subnet.bridge).await?;
            actions.push(format!("{router_ns}: bridge {}", subnet.bridge));
            router
                .link(&subnet.bridge)
                .await?
                .ok_or_else(|| OverlayError::Invalid(format!("bridge {} vanished", subnet.bridge)))?
        }
    };
    if bridge.mac != Some(gateway_mac) || !bridge.up {
        router.set_link(bridge.index, None, Some(gateway_mac)).await?;
    }
    let addresses = router.addresses(bridge.index).await?;
    if !addresses.contains(&(gateway.into(), prefix_len)) {
        router.add_address(bridge.index, gateway.into(), prefix_len).await?;
        actions.push(format!("{router_ns}: gateway {}", subnet.gateway));
    }

    let vxlan = match router.link(&subnet.vxlan).await? {
        Some(vxlan) => vxlan,
        None => {
            let router_fd = netns::open_fd(router_ns)?;
            create_vxlan(epm, &subnet.vxlan, subnet.vni, underlay_ip, underlay, &router_fd).await?;
            actions.push(format!("{router_ns}: vxlan {} VNI {}", subnet.vxlan, subnet.vni));
            router
                .link(&subnet.vxlan)
                .await?
                .ok_or_else(|| OverlayError::Invalid(format!("vxlan {} vanished", subnet.vxlan)))?
        }
    };
    if !vxlan.up || vxlan.controller != Some(bridge.index) {
        router.set_link(vxlan.index, Some(bridge.index), None).await?;
    }
    let present = router.flood_destinations(vxlan.index).await?;
    let mut wanted = Vec::with_capacity(subnet.flood.len());
    for remote in &subnet.flood {
        let remote: Ipv4Addr =
            remote.parse().map_err(|_| OverlayError::Invalid(format!("bad flood address {remote:?}")))?;
        wanted.push(remote);
        if !present.contains(&remote) {
            router.add_flood_destination(vxlan.index, remote).await?;
            actions.push(format!("{router_ns}: {} floods to {remote}", subnet.vxlan));
        }
    }
    for stale in present.iter().filter(|remote| !wanted.contains(remote)) {
        router.remove_flood_destination(vxlan.index, *stale).await?;
        actions.push(format!("{router_ns}: {} stops flooding to {stale}", subnet.vxlan));
    }
    forget(router, router_ns, &subnet.bridge, &subnet.forget, actions).await
}

/// Drops what the subnet's bridges and VXLAN device learned about the MACs
/// in `ranges` (entries on the VXLAN port and on the leaves' links): EVMs
/// about to be created with them may have lived on another EPM or bridge,
/// and a stale entry would send their traffic there until it aged out (5
/// minutes).
async fn forget(
    router: &Netlink,
    router_ns: &str,
    trunk: &str,
    ranges: &[String],
    actions: &mut Vec<String>,
) -> Result<(), OverlayError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let ranges = ranges.iter().map(|r| parse_mac_range(r)).collect::<Result<Vec<_>, _>>()?;
    let transit = bridges::transit_ports(&router.links().await?, trunk);
    let mut forgotten = 0;
    for entry in router.learned_fdb_entries().await? {
        let mac = mac_number(&entry.mac);
        if transit.contains(&entry.index) && ranges.iter().any(|(first, last)| (*first..=*last).contains(&mac)) {
            router.delete_fdb_entry(&entry).await?;
            forgotten += 1;
        }
    }
    if forgotten > 0 {
        actions.push(format!("{router_ns}: forgot {forgotten} learned locations"));
    }
    Ok(())
}

fn mac_number(mac: &netdev::Mac) -> u64 {
    mac.iter().fold(0, |n, b| n << 8 | u64::from(*b))
}

fn mac_of_number(n: u64) -> netdev::Mac {
    let [_, _, mac @ ..] = n.to_be_bytes();
    mac
}

/// `macs` as the fewest ranges `first-last`, for [`SubnetGoal::forget`]
/// (EVM MACs follow their addresses, so a block of addresses is one range).
pub fn mac_ranges(macs: impl Iterator<Item = netdev::Mac>) -> Vec<String> {
    let mut numbers: Vec<u64> = macs.map(|mac| mac_number(&mac)).collect();
    numbers.sort_unstable();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for n in numbers {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 >= n => *last = n,
            _ => ranges.push((n, n)),
        }
    }
    let format = |n| netdev::format_mac(&mac_of_number(n));
    ranges.into_iter().map(|(first, last)| format!("{}-{}", format(first), format(last))).collect()
}

/// `aa:bb:cc:dd:ee:ff` or `first-last`, as numbers.
pub fn parse_mac_range(text: &str) -> Result<(u64, u64), OverlayError> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    match (netdev::parse_mac(first), netdev::parse_mac(last)) {
        (Some(first), Some(last)) => Ok((mac_number(&first), mac_number(&last))),
        _ => Err(OverlayError::Invalid(format!("bad MAC range {text:?}"))),
    }
}

pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), OverlayError> {
    let parsed =
        text.split_once('/').and_then(|(ip, len)| Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?)));
    parsed.ok_or_else(|| OverlayError::Invalid(format!("{text:?} is not an IPv4 CIDR")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_ranges_round_trip() {
        let mac = |last: u8| [0x0a, 0, 10, 0, 1, last];
        let ranges = mac_ranges([mac(5), mac(3), mac(4), mac(9)].into_iter());
        assert_eq!(ranges, vec!["0a:00:0a:00:01:03-0a:00:0a:00:01:05", "0a:00:0a:00:01:09-0a:00:0a:00:01:09"]);
        let parsed: Vec<(u64, u64)> = ranges.iter().map(|r| parse_mac_range(r).unwrap()).collect();
        assert_eq!(
            parsed,
            vec![(mac_number(&mac(3)), mac_number(&mac(5))), (mac_number(&mac(9)), mac_number(&mac(9)))]
        );
        assert!(parse_mac_range("0a:00-zz").is_err());
    }
}

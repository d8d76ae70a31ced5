//! A subnet's bridges on one EPM. A Linux bridge takes at most 1023 ports
//! (the kernel answers EXFULL after that; measured), so a subnet with more
//! EVMs on one EPM than one bridge holds gets *leaf* bridges: the *trunk*
//! (`b<id>`, holding the gateway and the VXLAN port) and leaves `b<id>.<j>`,
//! each joined to the trunk by a veth pair `u<id>.<j>` (on the trunk) —
//! `w<id>.<j>` (on the leaf). Every bridge holds at most
//! [`EVM_PORTS_PER_BRIDGE`] EVM ports. Which bridge an EVM joins is the
//! agent's choice, made when the EVM is created; it never moves.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use crate::error::OverlayError;
use crate::netdev::{LinkState, Netlink};

/// EVM ports on one bridge.
pub const EVM_PORTS_PER_BRIDGE: usize = 1000;
/// Leaves per trunk: the trunk's ports (its EVMs, the VXLAN port and one
/// uplink per leaf) stay within the kernel's 1023.
pub const MAX_LEAVES: u32 = 19;
/// EVMs of one subnet one EPM can hold.
pub const MAX_EVMS_PER_SUBNET: usize = EVM_PORTS_PER_BRIDGE * (1 + MAX_LEAVES as usize);

/// The device that joins leaf `leaf` to `trunk`, on the trunk's side.
pub fn uplink(trunk: &str, leaf: u32) -> String {
    format!("u{}.{leaf}", id_of(trunk))
}

/// The other end of that pair, a port of the leaf.
fn downlink(trunk: &str, leaf: u32) -> String {
    format!("w{}.{leaf}", id_of(trunk))
}

fn leaf_name(trunk: &str, leaf: u32) -> String {
    format!("{trunk}.{leaf}")
}

fn id_of(trunk: &str) -> &str {
    trunk.get(1..).unwrap_or_default()
}

/// The trunk a subnet device (bridge, leaf, uplink end or VXLAN port)
/// belongs to; None for anything else (EVM ports, hybrid plugs).
pub fn trunk_of(device: &str) -> Option<String> {
    let rest = device.strip_prefix(['b', 'x', 'u', 'w'])?;
    let id = rest.split_once('.').map_or(rest, |(id, _)| id);
    (!id.is_empty()).then(|| format!("b{id}"))
}

/// The trunk and leaves of one subnet in a router namespace, with the EVM
/// ports each holds.
struct Family {
    /// Leaf number (0 = the trunk) → (bridge index, EVM ports).
    bridges: BTreeMap<u32, (u32, usize)>,
}

impl Family {
    fn read(links: &[LinkState], trunk: &str) -> Result<Self, OverlayError> {
        let trunk_link = links
            .iter()
            .find(|l| l.name == trunk)
            .ok_or_else(|| OverlayError::Invalid(format!("bridge {trunk} missing")))?;
        let mut bridges = BTreeMap::from([(0, (trunk_link.index, 0))]);
        let leaf_prefix = format!("{trunk}.");
        for link in links {
            if let Some(leaf) = link.name.strip_prefix(&leaf_prefix).and_then(|j| j.parse::<u32>().ok()) {
                bridges.insert(leaf, (link.index, 0));
            }
        }
        let by_index: BTreeMap<u32, u32> = bridges.iter().map(|(leaf, (index, _))| (*index, *leaf)).collect();
        for link in links {
            let Some(leaf) = link.controller.and_then(|c| by_index.get(&c)) else { continue };
            if trunk_of(&link.name).is_none()
                && let Some((_, ports)) = bridges.get_mut(leaf)
            {
                *ports += 1;
            }
        }
        Ok(Family { bridges })
    }
}

/// Chooses a bridge for each of `count` new EVM ports of `trunk`'s subnet:
/// the trunk while it has room, then leaf 1, 2, ..., creating leaves as
/// needed. `links` is a fresh dump of the router namespace.
pub async fn place(
    router: &Netlink,
    router_fd: &OwnedFd,
    links: &[LinkState],
    trunk: &str,
    count: usize,
) -> Result<Vec<u32>, OverlayError> {
    let mut family = Family::read(links, trunk)?;
    let trunk_index = family.bridges.get(&0).map(|(index, _)| *index).unwrap_or_default();
    let mut chosen = Vec::with_capacity(count);
    let mut leaf = 0;
    while chosen.len() < count {
        let (index, ports) = match family.bridges.get(&leaf) {
            Some(&(index, ports)) => {
                if leaf > 0 {
                    // A leaf left half-made (an interrupted run) gets its link back.
                    ensure_uplink(router, router_fd, links, trunk, trunk_index, leaf, index).await?;
                }
                (index, ports)
            }
            None if leaf <= MAX_LEAVES => {
                let index = router.create_bridge(&leaf_name(trunk, leaf)).await?;
                ensure_uplink(router, router_fd, &[], trunk, trunk_index, leaf, index).await?;
                family.bridges.insert(leaf, (index, 0));
                (index, 0)
            }
            None => {
                return Err(OverlayError::Invalid(format!(
                    "subnet bridge {trunk} is full: one EPM holds at most {MAX_EVMS_PER_SUBNET} EVMs of a subnet"
                )));
            }
        };
        let room = EVM_PORTS_PER_BRIDGE.saturating_sub(ports).min(count - chosen.len());
        chosen.extend(std::iter::repeat_n(index, room));
        leaf += 1;
    }
    Ok(chosen)
}

/// Makes sure leaf `leaf` (bridge `leaf_index`) hangs off the trunk: its
/// veth pair exists, each end up on its bridge. `links`: a dump, or empty to
/// look nothing up.
async fn ensure_uplink(
    router: &Netlink,
    router_fd: &OwnedFd,
    links: &[LinkState],
    trunk: &str,
    trunk_index: u32,
    leaf: u32,
    leaf_index: u32,
) -> Result<(), OverlayError> {
    let (up, down) = (uplink(trunk, leaf), downlink(trunk, leaf));
    let on = |name: &str, bridge: u32| links.iter().any(|l| l.name == name && l.up && l.controller == Some(bridge));
    if on(&up, trunk_index) && on(&down, leaf_index) {
        return Ok(());
    }
    // Whatever is left of the pair goes (deleting one end takes the other).
    for name in [&up, &down] {
        if let Some(stale) = router.link(name).await? {
            router.delete_link(stale.index).await?;
        }
    }
    router.create_veth(&up, &down, router_fd).await?;
    router.set_link_by_name(&up, Some(trunk_index)).await?;
    router.set_link_by_name(&down, Some(leaf_index)).await?;
    Ok(())
}

/// Removes `trunk`'s leaves that hold no EVM port: the bridge first, then
/// its link (a link without its leaf is harmless and replaced on reuse; a
/// leaf without its link would strand the EVMs put on it).
pub async fn prune(router: &Netlink, trunk: &str) -> Result<(), OverlayError> {
    let links = router.links().await?;
    let family = Family::read(&links, trunk)?;
    for (&leaf, &(index, ports)) in family.bridges.iter().filter(|(leaf, _)| **leaf > 0) {
        if ports == 0 {
            router.delete_link(index).await?;
            if let Some(up) = links.iter().find(|l| l.name == uplink(trunk, leaf)) {
                router.delete_link(up.index).await?;
            }
        }
    }
    Ok(())
}

/// The subnet's own ports that carry other EPMs' or other bridges' EVMs:
/// the VXLAN device and the leaves' link ends. Learned forwarding entries
/// on them say where a MAC lives beyond the bridge.
pub fn transit_ports(links: &[LinkState], trunk: &str) -> Vec<u32> {
    links
        .iter()
        .filter(|l| !l.name.starts_with('b') && trunk_of(&l.name).as_deref() == Some(trunk))
        .map(|l| l.index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_know_their_trunk() {
        assert_eq!(trunk_of("b1z").as_deref(), Some("b1z"));
        assert_eq!(trunk_of("b1z.3").as_deref(), Some("b1z"));
        assert_eq!(trunk_of("x1z").as_deref(), Some("b1z"));
        assert_eq!(trunk_of(&uplink("b1z", 3)).as_deref(), Some("b1z"));
        assert_eq!(trunk_of(&downlink("b1z", 3)).as_deref(), Some("b1z"));
        for other in ["v12.3", "o12.3", "q12.3", "t12.3", "i12.3", "lo", "b", "eth0"] {
            assert_eq!(trunk_of(other), None, "{other}");
        }
        // Names stay within IFNAMSIZ for the largest ids the provider makes.
        assert!(leaf_name("bzzzzz", MAX_LEAVES).len() <= 15);
        assert!(uplink("bzzzzz", MAX_LEAVES).len() <= 15);
    }
}

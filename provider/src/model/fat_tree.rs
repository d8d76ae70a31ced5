//! The k-ary fat tree (a three-level Clos, as Al-Fares et al. build it):
//! k pods of k/2 edge and k/2 aggregation switches, (k/2)² core switches,
//! k³/4 EPM ports. Every switch is a router; every link between switches a
//! /31 from the fabric prefix; each EPM's `eth1` holds its data-plane
//! address as a /32 behind its edge switch. Routing is computed here and
//! is up-down, so loop-free by construction: a packet climbs (ECMP over
//! every uplink) until a switch knows its destination below, then descends
//! on the one path there. Pure: the runtime only builds what this says.
//!

use std::net::Ipv4Addr;

use super::{Ipv4Cidr, SpecError};

pub const MIN_K: u32 = 4;
pub const MAX_K: u32 = 64;

/// A switch of the fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Switch {
    Edge { pod: u32, index: u32 },
    Aggregation { pod: u32, index: u32 },
    Core { index: u32 },
}

impl Switch {
    /// `edge-<pod>-<i>`, `agg-<pod>-<i>`, `core-<i>`.
    pub fn name(&self) -> String {
        match self {
            Switch::Edge { pod, index } => format!("edge-{pod}-{index}"),
            Switch::Aggregation { pod, index } => format!("agg-{pod}-{index}"),
            Switch::Core { index } => format!("core-{index}"),
        }
    }

    /// Its ECMP hash seed, from its name (never 0, the kernel's shared
    /// one): routers in series that hashed alike would pick alike, and the
    /// second would never spread what the first did.
    pub fn hash_seed(&self) -> u32 {
        self.name().bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)) | 1
    }
}

/// A link between two switches, the lower one (edge below aggregation,
/// aggregation below core) first; each end's device and /31 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricLink {
    pub lower: Switch,
    pub upper: Switch,
    /// The lower switch's device: `up<n>`, its n-th uplink.
    pub lower_device: String,
    /// The upper switch's device: `dn<n>`, its n-th downlink.
    pub upper_device: String,
    pub lower_ip: Ipv4Addr,
    pub upper_ip: Ipv4Addr,
}

/// Where an EPM plugs in: its edge switch, the port's device there and the
/// port's address (the EPM's gateway, on-link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub epm: u32,
    pub edge: Switch,
    pub device: String,
    pub gateway: Ipv4Addr,
}

/// One next hop of a route: out of `device`, via `gateway` (none: the
/// destination itself is on the link, an EPM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub device: String,
    pub gateway: Option<Ipv4Addr>,
}

/// A route of a switch; more than one next hop is ECMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: Ipv4Cidr,
    pub next_hops: Vec<NextHop>,
}

/// A fat tree as configured, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatTree {
    pub k: u32,
    pub hosts: u32,
    pub data_plane: Ipv4Cidr,
    pub fabric: Ipv4Cidr,
}

impl FatTree {
    /// Checks `k` (even, 4 to 64), `hosts` (at most k³/4; default all) and
    /// the prefixes (data plane holds the EPMs, fabric holds two addresses
    /// per link, the two apart). `fabric`: `None` derives one from
    /// 100.64.0.0/10, as small as the links need.
    pub fn validate(
        k: i64,
        hosts: Option<i64>,
        data_plane: Ipv4Cidr,
        fabric: Option<Ipv4Cidr>,
    ) -> Result<FatTree, Vec<SpecError>> {
        let mut errors = Vec::new();
        let k = match u32::try_from(k) {
            Ok(k) if (MIN_K..=MAX_K).contains(&k) && k % 2 == 0 => k,
            _ => {
                errors.push(SpecError::new("k", "Invalid k", format!("k is {k}; a fat tree needs an even k from {MIN_K} to {MAX_K} (k pods of k/2 edge and k/2 aggregation switches).")));
                return Err(errors);
            }
        };
        let ports = k * k * k / 4;
        let hosts = match hosts.map(u32::try_from) {
            None => ports,
            Some(Ok(h)) if (1..=ports).contains(&h) => h,
            Some(_) => {
                errors.push(SpecError::new(
                    "hosts",
                    "Invalid hosts",
                    format!(
                        "hosts is {}; a fat tree of k = {k} has 1 to {ports} EPM ports.",
                        hosts.unwrap_or_default()
                    ),
                ));
                ports
            }
        };
        let given = [("data_plane_cidr", Some(data_plane)), ("fabric_cidr", fabric)];
        for (attribute, prefix) in given.into_iter().filter_map(|(a, p)| Some((a, p?))) {
            if let Some(range) = prefix.reserved_overlap() {
                errors.push(SpecError::new(attribute, format!("Reserved {attribute}"), format!("{prefix} overlaps {range}, where the kernel does not route between hosts. Use a private prefix.")));
            }
        }
        if u64::from(hosts) > data_plane.host_capacity() {
            errors.push(SpecError::new(
                "data_plane_cidr",
                "data_plane_cidr too small",
                format!("{data_plane} holds {} addresses; {hosts} EPMs need one each.", data_plane.host_capacity()),
            ));
        }
        let needed = 2 * (u64::from(k * k * k / 2) + u64::from(ports));
        let fabric = match fabric {
            Some(fabric) => fabric,
            None => {
                let prefix_len = 32 - needed.next_power_of_two().trailing_zeros() as u8;
                Ipv4Cidr::new(Ipv4Addr::new(100, 64, 0, 0), prefix_len.max(10)).unwrap_or(Ipv4Cidr::ANY)
            }
        };
        if 1u64 << (32 - u32::from(fabric.prefix_len())) < needed {
            errors.push(SpecError::new(
                "fabric_cidr",
                "fabric_cidr too small",
                format!(
                    "{fabric} holds {} addresses; the fabric's links need {needed} (a /31 each).",
                    1u64 << (32 - u32::from(fabric.prefix_len()))
                ),
            ));
        }
        if fabric.overlaps(&data_plane) {
            errors.push(SpecError::new(
                "fabric_cidr",
                "fabric_cidr overlaps data_plane_cidr",
                format!("{fabric} and {data_plane} share addresses; the fabric's links and the EPMs need their own."),
            ));
        }
        if errors.is_empty() { Ok(FatTree { k, hosts, data_plane, fabric }) } else { Err(errors) }
    }

    fn half(&self) -> u32 {
        self.k / 2
    }

    /// Every switch: core first, then pod by pod aggregation and edge.
    pub fn switches(&self) -> Vec<Switch> {
        let half = self.half();
        let core = (0..half * half).map(|index| Switch::Core { index });
        let pods = (0..self.k).flat_map(move |pod| {
            let aggregation = (0..half).map(move |index| Switch::Aggregation { pod, index });
            aggregation.chain((0..half).map(move |index| Switch::Edge { pod, index }))
        });
        core.chain(pods).collect()
    }

    /// 5k²/4.
    pub fn switch_count(&self) -> u64 {
        u64::from(5 * self.k * self.k / 4)
    }

    /// Links between switches and to EPMs.
    pub fn link_count(&self) -> u64 {
        u64::from(self.k * self.k * self.k / 2) + u64::from(self.hosts)
    }

    fn pair(&self, link: u32) -> (Ipv4Addr, Ipv4Addr) {
        let base = u32::from(self.fabric.network()) + 2 * link;
        (Ipv4Addr::from(base), Ipv4Addr::from(base + 1))
    }

    /// Every switch-to-switch link: edge–aggregation within each pod (all
    /// pairs), then aggregation j of every pod to cores j·k/2 .. (j+1)·k/2.
    pub fn fabric_links(&self) -> Vec<FabricLink> {
        let half = self.half();
        let mut links = Vec::with_capacity((self.k * self.k * self.k / 2) as usize);
        let mut push = |lower: Switch, upper: Switch, up: u32, down: u32| {
            let (lower_ip, upper_ip) = self.pair(links.len() as u32);
            links.push(FabricLink {
                lower,
                upper,
                lower_device: format!("up{up}"),
                upper_device: format!("dn{down}"),
                lower_ip,
                upper_ip,
            });
        };
        for pod in 0..self.k {
            for edge in 0..half {
                for aggregation in 0..half {
                    push(
                        Switch::Edge { pod, index: edge },
                        Switch::Aggregation { pod, index: aggregation },
                        aggregation,
                        edge,
                    );
                }
            }
        }
        for pod in 0..self.k {
            for aggregation in 0..half {
                for m in 0..half {
                    push(
                        Switch::Aggregation { pod, index: aggregation },
                        Switch::Core { index: aggregation * half + m },
                        m,
                        pod,
                    );
                }
            }
        }
        links
    }

    /// EPM `epm`'s port: pod epm / (k²/4), edge (epm mod k²/4) / (k/2), port epm mod k/2.
    pub fn host_port(&self, epm: u32) -> HostPort {
        let half = self.half();
        let per_pod = half * half;
        let edge = Switch::Edge { pod: epm / per_pod, index: (epm % per_pod) / half };
        let fabric_links = self.k * self.k * self.k / 2;
        HostPort { epm, edge, device: format!("h{}", epm % half), gateway: self.pair(fabric_links + epm).0 }
    }

    pub fn epm_ip(&self, epm: u32) -> Ipv4Addr {
        self.data_plane.host(u64::from(epm)).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The prefixes covering the data-plane addresses of EPMs first..end.
    fn epm_prefixes(&self, first: u32, end: u32) -> Vec<Ipv4Cidr> {
        let end = end.min(self.hosts);
        if first >= end {
            return Vec::new();
        }
        range_prefixes(u32::from(self.epm_ip(first)), u32::from(self.epm_ip(end - 1)) + 1)
    }

    /// A switch's routes. Edge: each of its EPMs on-link, everything else
    /// up over all aggregation switches of its pod. Aggregation: each edge's
    /// EPMs down to that edge, everything else up over its cores. Core: each
    /// pod's EPMs down to that pod's aggregation switch it links to.
    pub fn routes(&self, switch: Switch) -> Vec<Route> {
        let half = self.half();
        let per_pod = half * half;
        let links = self.fabric_links();
        let up = |from: Switch| -> Vec<NextHop> {
            links
                .iter()
                .filter(|l| l.lower == from)
                .map(|l| NextHop { device: l.lower_device.clone(), gateway: Some(l.upper_ip) })
                .collect()
        };
        let down = |from: Switch, to: Switch| -> Vec<NextHop> {
            links
                .iter()
                .filter(|l| l.upper == from && l.lower == to)
                .map(|l| NextHop { device: l.upper_device.clone(), gateway: Some(l.lower_ip) })
                .collect()
        };
        let everything_else = |from: Switch| Route { prefix: Ipv4Cidr::ANY, next_hops: up(from) };
        let mut routes = Vec::new();
        match switch {
            Switch::Edge { pod, index } => {
                let first = pod * per_pod + index * half;
                for epm in first..(first + half).min(self.hosts) {
                    let port = self.host_port(epm);
                    let host = Ipv4Cidr::new(self.epm_ip(epm), 32).unwrap_or(Ipv4Cidr::ANY);
                    routes
                        .push(Route { prefix: host, next_hops: vec![NextHop { device: port.device, gateway: None }] });
                }
                routes.push(everything_else(switch));
            }
            Switch::Aggregation { pod, .. } => {
                for edge in 0..half {
                    let first = pod * per_pod + edge * half;
                    let via = down(switch, Switch::Edge { pod, index: edge });
                    routes.extend(
                        self.epm_prefixes(first, first + half)
                            .into_iter()
                            .map(|prefix| Route { prefix, next_hops: via.clone() }),
                    );
                }
                routes.push(everything_else(switch));
            }
            Switch::Core { index } => {
                for pod in 0..self.k {
                    let via = down(switch, Switch::Aggregation { pod, index: index / half });
                    routes.extend(
                        self.epm_prefixes(pod * per_pod, (pod + 1) * per_pod)
                            .into_iter()
                            .map(|prefix| Route { prefix, next_hops: via.clone() }),
                    );
                }
            }
        }
        routes
    }
}

/// The fewest prefixes covering addresses first..end (end exclusive).
pub fn range_prefixes(first: u32, end: u32) -> Vec<Ipv4Cidr> {
    let mut prefixes = Vec::new();
    let mut at = u64::from(first);
    let end = u64::from(end);
    while at < end {
        // The largest aligned block starting here that does not pass the end.
        let mut size = if at == 0 { 1u64 << 32 } else { 1u64 << at.trailing_zeros().min(32) };
        while at + size > end {
            size >>= 1;
        }
        let prefix_len = 32 - size.trailing_zeros() as u8;
        if let Some(prefix) = Ipv4Cidr::new(Ipv4Addr::from(at as u32), prefix_len) {
            prefixes.push(prefix);
        }
        at += size;
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap, HashSet};

    use super::*;

    fn tree(k: i64, hosts: Option<i64>) -> FatTree {
        FatTree::validate(k, hosts, "10.0.0.0/16".parse().unwrap(), None).unwrap()
    }

    #[test]
    fn sizes_are_the_papers() {
        for (k, switches, epms) in [(4, 20, 16), (8, 80, 128), (16, 320, 1024)] {
            let fat = tree(k, None);
            assert_eq!((fat.switches().len() as u64, fat.switch_count(), fat.hosts), (switches, switches, epms));
            assert_eq!(fat.fabric_links().len() as u64 + u64::from(fat.hosts), fat.link_count());
        }
        assert_eq!(tree(4, Some(5)).hosts, 5);
    }

    #[test]
    fn bad_input_names_the_attribute() {
        let plane: Ipv4Cidr = "10.0.0.0/24".parse().unwrap();
        let attributes = |result: Result<FatTree, Vec<SpecError>>| {
            result.unwrap_err().iter().map(|e| e.attribute).collect::<Vec<_>>()
        };
        assert_eq!(attributes(FatTree::validate(5, None, plane, None)), ["k"]);
        assert_eq!(attributes(FatTree::validate(66, None, plane, None)), ["k"]);
        assert_eq!(attributes(FatTree::validate(8, Some(129), plane, None)), ["hosts"]);
        assert_eq!(attributes(FatTree::validate(16, None, plane, None)), ["data_plane_cidr"]);
        assert_eq!(
            attributes(FatTree::validate(4, None, plane, Some("10.0.0.0/16".parse().unwrap()))),
            ["fabric_cidr"]
        );
        assert_eq!(
            attributes(FatTree::validate(4, None, plane, Some("192.168.0.0/28".parse().unwrap()))),
            ["fabric_cidr"]
        );
        assert!(
            FatTree::validate(64, None, "10.0.0.0/14".parse().unwrap(), None).is_ok(),
            "the derived fabric holds k = 64"
        );
    }

    #[test]
    fn addresses_are_unique_inside_the_fabric_and_names_fit_a_device() {
        let fat = tree(8, None);
        let mut seen = HashSet::new();
        for link in fat.fabric_links() {
            for ip in [link.lower_ip, link.upper_ip] {
                assert!(fat.fabric.contains(&Ipv4Cidr::new(ip, 32).unwrap()) && seen.insert(ip), "{ip}");
            }
            assert!(link.lower_device.len() <= 15 && link.upper_device.len() <= 15);
        }
        for epm in 0..fat.hosts {
            assert!(seen.insert(fat.host_port(epm).gateway));
        }
        let names: HashSet<String> = fat.switches().iter().map(Switch::name).collect();
        assert_eq!(names.len(), 80);
    }

    #[test]
    fn ranges_become_the_fewest_aligned_prefixes() {
        let text = |first: &str, end: u32| {
            range_prefixes(u32::from(first.parse::<Ipv4Addr>().unwrap()), end)
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            text("10.0.0.1", u32::from(Ipv4Addr::new(10, 0, 0, 5))),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/32"]
        );
        assert_eq!(text("10.0.0.0", u32::from(Ipv4Addr::new(10, 0, 1, 0))), ["10.0.0.0/24"]);
    }

    /// Longest-prefix match over a switch's routes.
    fn lookup(routes: &[Route], ip: Ipv4Addr) -> Option<&Route> {
        let host = Ipv4Cidr::new(ip, 32).unwrap();
        routes.iter().filter(|r| r.prefix.contains(&host)).max_by_key(|r| r.prefix.prefix_len())
    }

    /// Every path a packet from EPM `from` to EPM `to` can take (ECMP: all
    /// next hops), as the switches it crosses; panics on a loop or a hole.
    fn paths(fat: &FatTree, tables: &HashMap<Switch, Vec<Route>>, from: u32, to: u32) -> Vec<Vec<Switch>> {
        let links = fat.fabric_links();
        let peer = |switch: Switch, device: &str| -> Switch {
            links
                .iter()
                .find_map(|l| {
                    (l.lower == switch && l.lower_device == device)
                        .then_some(l.upper)
                        .or((l.upper == switch && l.upper_device == device).then_some(l.lower))
                })
                .expect("a device of the switch")
        };
        let destination = fat.epm_ip(to);
        let mut done = Vec::new();
        let mut walking = vec![vec![fat.host_port(from).edge]];
        while let Some(path) = walking.pop() {
            let at = *path.last().unwrap();
            assert!(path.len() <= 5, "a loop or a detour: {path:?}");
            let route = lookup(&tables[&at], destination)
                .unwrap_or_else(|| panic!("{} has no route to {destination}", at.name()));
            for hop in &route.next_hops {
                match hop.gateway {
                    None => {
                        assert_eq!(
                            (at, hop.device.clone()),
                            (fat.host_port(to).edge, fat.host_port(to).device),
                            "delivered to the right port"
                        );
                        done.push(path.clone());
                    }
                    Some(_) => walking.push([path.clone(), vec![peer(at, &hop.device)]].concat()),
                }
            }
        }
        done
    }

    #[test]
    fn every_epm_reaches_every_other_loop_free_over_all_equal_paths() {
        let fat = tree(4, None);
        let tables: HashMap<Switch, Vec<Route>> = fat.switches().into_iter().map(|s| (s, fat.routes(s))).collect();
        for from in 0..fat.hosts {
            for to in (0..fat.hosts).filter(|t| *t != from) {
                let found = paths(&fat, &tables, from, to);
                let (a, b) = (fat.host_port(from).edge, fat.host_port(to).edge);
                let expected = match (a, b) {
                    _ if a == b => 1,
                    (Switch::Edge { pod: p, .. }, Switch::Edge { pod: q, .. }) if p == q => 2,
                    _ => 4,
                };
                assert_eq!(found.len(), expected, "epm-{from} to epm-{to}: {found:?}");
                if expected == 4 {
                    let cores: BTreeSet<Switch> = found.iter().map(|p| p[2]).collect();
                    assert_eq!(cores.len(), 4, "between pods, every core switch carries a path");
                }
            }
        }
    }

    #[test]
    fn a_partial_fat_tree_routes_only_the_epms_it_has() {
        let fat = tree(8, Some(40));
        let tables: HashMap<Switch, Vec<Route>> = fat.switches().into_iter().map(|s| (s, fat.routes(s))).collect();
        for (from, to) in [(0, 39), (39, 0), (17, 33), (5, 6)] {
            assert!(!paths(&fat, &tables, from, to).is_empty());
        }
        let core = &tables[&Switch::Core { index: 0 }];
        assert!(lookup(core, fat.data_plane.host(40).unwrap()).is_none(), "no route to an EPM that does not exist");
    }
}

//! Merak's underlay shape: racks of EPMs under top-of-rack vswitches, as many
//! aggregation layers as the fan-out needs, and one root (core).
//!
//! Vswitches are numbered by (level, index): level 0 holds one top-of-rack
//! switch per rack, and the parent of (l, i) is (l + 1, i / fan-out). That
//! numbering is stable when racks are added or removed, so growing a topology
//! only adds switches and links and never renames existing ones.

use std::net::Ipv4Addr;

use super::cidr::{self, Ipv4Cidr};
use super::fat_tree::FatTree;
use super::{SpecError, naming};

/// A Linux bridge holds at most 1024 ports; keep one for the uplink.
pub const MAX_PORTS: u32 = 1023;
/// EPMs of one topology. Every plan lists every EPM (about 1 KB of plan
/// and state each), so this bounds a plan near 100 MB; one host holds far
/// fewer (about 1 MiB of kernel and agent memory each), and MACs, which
/// hold the EPM index in 3 bytes, could hold more.
pub const MAX_HOSTS: u32 = 100_000;

/// A validated tree topology specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    pub name: String,
    pub racks: u32,
    pub hosts_per_rack: u32,
    pub hosts: u32,
    pub ports_per_vswitch: u32,
    pub data_plane: Ipv4Cidr,
    /// A routed k-ary fat tree instead of a tree of bridges: its racks are
    /// its edge switches (k/2 EPMs each), and it has no vswitches.
    pub fabric: Option<FatTree>,
}

/// The raw inputs, as they come from configuration.
#[derive(Debug, Clone, Default)]
pub struct TreeInput<'a> {
    pub name: &'a str,
    pub racks: i64,
    pub hosts_per_rack: i64,
    /// Defaults to racks × hosts_per_rack.
    pub hosts: Option<i64>,
    pub ports_per_vswitch: i64,
    pub data_plane_cidr: &'a str,
}

impl TreeSpec {
    /// Checks every rule and reports every broken one, each on its attribute.
    pub fn validate(input: &TreeInput<'_>) -> Result<TreeSpec, Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Err(error) = check_name(input.name) {
            errors.push(error);
        }
        let racks = count(&mut errors, "racks", input.racks, 1, MAX_HOSTS, "at least 1 rack");
        let per_rack = count(
            &mut errors,
            "hosts_per_rack",
            input.hosts_per_rack,
            1,
            MAX_PORTS,
            "between 1 and 1023 (a Linux bridge has at most 1024 ports, one is the uplink)",
        );
        let fan_out = count(
            &mut errors,
            "ports_per_vswitch",
            input.ports_per_vswitch,
            2,
            MAX_PORTS,
            "between 2 and 1023 (a switch with fewer than 2 children never reaches a single root)",
        );
        let hosts = match (racks, per_rack) {
            (Some(racks), Some(per_rack)) => {
                let full = u64::from(racks) * u64::from(per_rack);
                let smallest = full - u64::from(per_rack) + 1;
                let hosts = input.hosts.unwrap_or(full as i64);
                if hosts < smallest as i64 || hosts > full as i64 {
                    errors.push(SpecError::new(
                        "hosts",
                        "Hosts do not fill the racks",
                        format!(
                            "{hosts} hosts in {racks} racks of {per_rack}: every rack but the last \
                             must be full, so hosts must be between {smallest} and {full}. \
                             Change hosts or racks."
                        ),
                    ));
                    None
                } else if hosts > i64::from(MAX_HOSTS) {
                    errors.push(SpecError::new(
                        "hosts",
                        "Too many hosts",
                        format!("{hosts} hosts; a topology holds at most {MAX_HOSTS}."),
                    ));
                    None
                } else {
                    Some(hosts as u32)
                }
            }
            _ => None,
        };
        let data_plane = match cidr::parse_attribute("data_plane_cidr", input.data_plane_cidr) {
            Ok(cidr) if let Some(range) = cidr.reserved_overlap() => {
                errors.push(SpecError::new(
                    "data_plane_cidr",
                    "Reserved data-plane CIDR",
                    format!("{cidr} overlaps {range}, where the kernel does not route between hosts. Use a private prefix such as \"10.0.0.0/16\"."),
                ));
                None
            }
            Ok(cidr) => {
                if let Some(hosts) = hosts
                    && u64::from(hosts) > cidr.host_capacity()
                {
                    let needed = 32 - (u64::from(hosts) + 2).next_power_of_two().trailing_zeros();
                    errors.push(SpecError::new(
                        "data_plane_cidr",
                        "Data-plane CIDR too small",
                        format!(
                            "{cidr} holds {} host addresses but the topology has {hosts} EPMs. \
                             Use a prefix of /{needed} or shorter.",
                            cidr.host_capacity()
                        ),
                    ));
                }
                Some(cidr)
            }
            Err(error) => {
                errors.push(SpecError { summary: "Invalid data-plane CIDR".into(), ..error });
                None
            }
        };
        match (racks, per_rack, fan_out, hosts, data_plane) {
            (Some(racks), Some(hosts_per_rack), Some(ports_per_vswitch), Some(hosts), Some(data_plane))
                if errors.is_empty() =>
            {
                Ok(TreeSpec {
                    name: input.name.to_string(),
                    racks,
                    hosts_per_rack,
                    hosts,
                    ports_per_vswitch,
                    data_plane,
                    fabric: None,
                })
            }
            _ => Err(errors),
        }
    }

    /// A fat tree named `name`: one rack per edge switch, k/2 EPMs each.
    pub fn fat_tree(name: &str, fabric: FatTree) -> TreeSpec {
        let half = fabric.k / 2;
        TreeSpec {
            name: name.to_string(),
            racks: fabric.hosts.div_ceil(half),
            hosts_per_rack: half,
            hosts: fabric.hosts,
            ports_per_vswitch: fabric.k,
            data_plane: fabric.data_plane,
            fabric: Some(fabric),
        }
    }

    /// Switch counts per level, top-of-rack first, root last.
    pub fn levels(&self) -> Vec<u32> {
        let mut levels = vec![self.racks];
        while let Some(&below) = levels.last().filter(|&&n| n > 1) {
            levels.push(below.div_ceil(self.ports_per_vswitch));
        }
        levels
    }

    /// Vswitches of a tree, or a fat tree's switches.
    pub fn vswitch_count(&self) -> u64 {
        match &self.fabric {
            Some(fabric) => fabric.switch_count(),
            None => self.levels().iter().map(|&n| u64::from(n)).sum(),
        }
    }

    /// Links of a tree: one per EPM and one per non-root switch; of a fat
    /// tree, its fabric's and one per EPM.
    pub fn link_count(&self) -> u64 {
        match &self.fabric {
            Some(fabric) => fabric.link_count(),
            None => u64::from(self.hosts) + self.vswitch_count() - 1,
        }
    }

    /// The names of its switches: a tree's vswitches, or a fat tree's.
    pub fn switch_names(&self) -> Vec<String> {
        match &self.fabric {
            Some(fabric) => fabric.switches().iter().map(|s| s.name()).collect(),
            None => self.vswitches().iter().map(Vswitch::name).collect(),
        }
    }

    pub fn epm(&self, index: u32) -> Epm {
        Epm {
            index,
            name: naming::epm_name(index),
            rack: index / self.hosts_per_rack,
            ip: self.data_plane.host(u64::from(index)).unwrap_or(Ipv4Addr::UNSPECIFIED),
            mac: self.epm_mac(index),
        }
    }

    pub fn epms(&self) -> impl Iterator<Item = Epm> + '_ {
        (0..self.hosts).map(|i| self.epm(i))
    }

    /// Every vswitch, root first, then each level down to the top-of-rack ones,
    /// so a parent always comes before its children.
    pub fn vswitches(&self) -> Vec<Vswitch> {
        // A fat tree's switches are routers (see `fabric`), not vswitches.
        if self.fabric.is_some() {
            return Vec::new();
        }
        let levels = self.levels();
        let top = levels.len() as u32 - 1;
        let mut switches = Vec::with_capacity(levels.iter().sum::<u32>() as usize);
        for level in (0..=top).rev() {
            for index in 0..levels[level as usize] {
                let parent = (level < top).then(|| index / self.ports_per_vswitch);
                switches.push(Vswitch { level, index, parent });
            }
        }
        switches
    }

    /// Locally administered unicast MAC: 02, two bytes from the topology name,
    /// three bytes of EPM index.
    fn epm_mac(&self, index: u32) -> [u8; 6] {
        let tag = fnv1a(self.name.as_bytes());
        let [_, i2, i1, i0] = index.to_be_bytes();
        [0x02, (tag >> 8) as u8, tag as u8, i2, i1, i0]
    }
}

/// A topology's name: a DNS label.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    check_label(name, "topology", "lab-1")
}

/// The `name` of a `kind` of object: a DNS label, like `example`.
pub fn check_label(name: &str, kind: &str, example: &str) -> Result<(), SpecError> {
    if naming::is_dns_label(name) {
        return Ok(());
    }
    Err(SpecError::new(
        "name",
        format!("Invalid {kind} name"),
        format!(
            "{name:?} is not a DNS label. Use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. {example:?}."
        ),
    ))
}

fn count(
    errors: &mut Vec<SpecError>,
    attribute: &'static str,
    value: i64,
    min: u32,
    max: u32,
    rule: &str,
) -> Option<u32> {
    if value < i64::from(min) || value > i64::from(max) {
        errors.push(SpecError::new(
            attribute,
            format!("Invalid {attribute}"),
            format!("{attribute} is {value}; it must be {rule}."),
        ));
        None
    } else {
        Some(value as u32)
    }
}

fn fnv1a(bytes: &[u8]) -> u16 {
    let hash = bytes.iter().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    (hash ^ (hash >> 16)) as u16
}

/// An Emulated Physical Machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epm {
    pub index: u32,
    pub name: String,
    pub rack: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A vswitch at (level, index); `parent` is its index one level up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vswitch {
    pub level: u32,
    pub index: u32,
    pub parent: Option<u32>,
}

impl Vswitch {
    pub fn name(&self) -> String {
        naming::vswitch_name(self.level, self.index)
    }

    pub fn parent_name(&self) -> Option<String> {
        self.parent.map(|p| naming::vswitch_name(self.level + 1, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(racks: i64, per_rack: i64, hosts: Option<i64>, fan_out: i64, cidr: &str) -> TreeInput<'_> {
        TreeInput {
            name: "t",
            racks,
            hosts_per_rack: per_rack,
            hosts,
            ports_per_vswitch: fan_out,
            data_plane_cidr: cidr,
        }
    }

    fn attributes(errors: Vec<SpecError>) -> Vec<&'static str> {
        errors.into_iter().map(|e| e.attribute).collect()
    }

    #[test]
    fn single_rack_is_its_own_root() {
        let spec = TreeSpec::validate(&input(1, 4, None, 4, "10.0.0.0/24")).unwrap();
        assert_eq!(spec.levels(), vec![1]);
        assert_eq!(spec.vswitch_count(), 1);
        assert_eq!(spec.link_count(), 4);
        assert_eq!(spec.vswitches(), vec![Vswitch { level: 0, index: 0, parent: None }]);
    }

    #[test]
    fn deep_trees_terminate() {
        // Merak looped forever past two aggregation layers.
        let spec = TreeSpec::validate(&input(1000, 1, None, 2, "10.0.0.0/16")).unwrap();
        assert_eq!(spec.levels(), vec![1000, 500, 250, 125, 63, 32, 16, 8, 4, 2, 1]);
        let switches = spec.vswitches();
        assert_eq!(switches.len() as u64, spec.vswitch_count());
        assert_eq!(switches[0].parent, None);
        assert!(switches[1..].iter().all(|s| s.parent.is_some()));
    }

    #[test]
    fn partial_last_rack() {
        let spec = TreeSpec::validate(&input(3, 8, Some(20), 4, "10.0.0.0/24")).unwrap();
        assert_eq!(spec.hosts, 20);
        assert_eq!(spec.epm(19).rack, 2);
        assert_eq!(spec.epm(16).rack, 2);
        assert_eq!(spec.epm(15).rack, 1);
    }

    #[test]
    fn any_cidr_that_fits() {
        // Merak only handled /16.
        let spec = TreeSpec::validate(&input(2, 3, None, 4, "192.168.7.0/29")).unwrap();
        assert_eq!(spec.epm(0).ip, Ipv4Addr::new(192, 168, 7, 1));
        assert_eq!(spec.epm(5).ip, Ipv4Addr::new(192, 168, 7, 6));
        let errors = TreeSpec::validate(&input(2, 4, None, 4, "192.168.7.0/29")).unwrap_err();
        assert_eq!(attributes(errors), vec!["data_plane_cidr"]);
    }

    #[test]
    fn every_bad_input_names_its_attribute() {
        let bad = TreeInput { name: "Bad_Name", ..input(0, 0, None, 1, "10.0.0.1/8") };
        let errors = attributes(TreeSpec::validate(&bad).unwrap_err());
        assert_eq!(errors, vec!["name", "racks", "hosts_per_rack", "ports_per_vswitch", "data_plane_cidr"]);
        let errors = attributes(TreeSpec::validate(&input(2, 4, Some(4), 2, "10.0.0.0/8")).unwrap_err());
        assert_eq!(errors, vec!["hosts"]);
        let errors = attributes(TreeSpec::validate(&input(2, 4, Some(9), 2, "10.0.0.0/8")).unwrap_err());
        assert_eq!(errors, vec!["hosts"]);
    }

    #[test]
    fn names_addresses_and_macs_are_unique() {
        let spec = TreeSpec::validate(&input(64, 100, None, 8, "10.0.0.0/16")).unwrap();
        let epms: Vec<_> = spec.epms().collect();
        let unique = |f: &dyn Fn(&Epm) -> String| epms.iter().map(f).collect::<std::collections::HashSet<_>>().len();
        assert_eq!(unique(&|e| e.name.clone()), 6400);
        assert_eq!(unique(&|e| e.ip.to_string()), 6400);
        assert_eq!(unique(&|e| format!("{:?}", e.mac)), 6400);
    }

    #[test]
    fn growing_keeps_existing_switches_and_parents() {
        let small = TreeSpec::validate(&input(5, 2, None, 2, "10.0.0.0/16")).unwrap();
        let big = TreeSpec::validate(&input(40, 2, None, 2, "10.0.0.0/16")).unwrap();
        let big_switches = big.vswitches();
        for switch in small.vswitches() {
            let same = big_switches.iter().find(|s| s.level == switch.level && s.index == switch.index).unwrap();
            if switch.parent.is_some() {
                assert_eq!(same.parent, switch.parent);
            }
        }
        for epm in small.epms() {
            assert_eq!(big.epm(epm.index), epm);
        }
    }
}

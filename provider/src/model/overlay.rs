//! Tenant networks: VPCs, their subnets, and groups of EVMs placed on EPMs,
//! with the address and VNI rules they obey.

use std::net::Ipv4Addr;

use super::cidr::{Ipv4Cidr, parse_attribute as parse_cidr};
use super::{SpecError, naming};

/// VNIs are 24 bits; 0 is not used.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// A Linux bridge holds at most 1024 ports: EVMs of one subnet on one EPM.
pub const MAX_EVMS_PER_SUBNET_PER_EPM: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcSpec {
    pub topology: String,
    pub name: String,
    pub cidr: Ipv4Cidr,
    pub vni: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    pub topology: String,
    pub vpc: String,
    pub name: String,
    pub cidr: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub vni: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// EVM k on EPM k mod N: even load, and an EVM never moves when the group scales.
    Spread,
    /// Fill each EPM (up to the bridge limit) before the next.
    Pack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub topology: String,
    pub vpc: String,
    pub subnet: String,
    pub name: String,
    pub count: u32,
    pub placement: Placement,
    /// EPMs to place on, by name; empty means every EPM of the topology.
    pub epms: Vec<String>,
    pub device_model: DeviceModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceModel {
    /// A veth pair: eth0 in the EVM, its peer on the subnet's bridge.
    Veth,
    /// Like an OpenStack hybrid plug: eth0's peer on a per-EVM bridge that
    /// also holds a tap, joined to the subnet's bridge by a second veth pair.
    Hybrid,
}

impl DeviceModel {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceModel::Veth => "veth",
            DeviceModel::Hybrid => "hybrid",
        }
    }
}

fn label(attribute: &'static str, what: &str, name: &str, max: usize) -> Result<(), SpecError> {
    if naming::is_dns_label(name) && name.len() <= max {
        Ok(())
    } else {
        Err(SpecError::new(
            attribute,
            format!("Invalid {what} name"),
            format!("{name:?} is not a DNS label of at most {max} characters: use lowercase letters, digits and '-', starting and ending with a letter or digit."),
        ))
    }
}

/// A default VNI, stable for the same names (FNV-1a folded to 24 bits).
pub fn derived_vni(parts: &[&str]) -> u32 {
    let hash = parts.join("/").bytes().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (hash ^ (hash >> 24)) % MAX_VNI + 1
}

impl VpcSpec {
    pub fn validate(topology: &str, name: &str, cidr: &str, vni: Option<i64>) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Err(e) = label("name", "VPC", name, 32) {
            errors.push(e);
        }
        let cidr = parse_cidr("cidr", cidr).map_err(|e| errors.push(e)).ok();
        let vni = match vni {
            None => Some(derived_vni(&[topology, name])),
            Some(v) if (1..=i64::from(MAX_VNI)).contains(&v) => Some(v as u32),
            Some(v) => {
                errors.push(SpecError::new("vni", "Invalid vni", format!("vni is {v}; a VXLAN network identifier is between 1 and {MAX_VNI}.")));
                None
            }
        };
        match (cidr, vni) {
            (Some(cidr), Some(vni)) if errors.is_empty() => Ok(VpcSpec { topology: topology.into(), name: name.into(), cidr, vni }),
            _ => Err(errors),
        }
    }
}

impl SubnetSpec {
    pub fn validate(vpc: &VpcSpec, name: &str, cidr: &str, gateway: Option<&str>) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Err(e) = label("name", "subnet", name, 32) {
            errors.push(e);
        }
        let cidr = match parse_cidr("cidr", cidr) {
            Ok(cidr) if !vpc.cidr.contains(&cidr) => {
                errors.push(SpecError::new(
                    "cidr",
                    "Subnet outside its VPC",
                    format!("{cidr} is not inside the VPC's {}. Choose a prefix within it.", vpc.cidr),
                ));
                None
            }
            Ok(cidr) if cidr.host_capacity() < 2 => {
                errors.push(SpecError::new("cidr", "Subnet too small", format!("{cidr} has no room for a gateway and an EVM; use /30 or shorter.")));
                None
            }
            Ok(cidr) => Some(cidr),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let gateway = cidr.and_then(|cidr| match gateway {
            None => cidr.host(0),
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) if cidr.index_of(ip).is_some() => Some(ip),
                _ => {
                    errors.push(SpecError::new(
                        "gateway_ip",
                        "Gateway outside the subnet",
                        format!("{text:?} is not a host address of {cidr}; leave gateway_ip out to use {}.", cidr.host(0).map(|ip| ip.to_string()).unwrap_or_default()),
                    ));
                    None
                }
            },
        });
        match (cidr, gateway) {
            (Some(cidr), Some(gateway)) if errors.is_empty() => Ok(SubnetSpec {
                topology: vpc.topology.clone(),
                vpc: vpc.name.clone(),
                name: name.into(),
                cidr,
                gateway,
                vni: derived_vni(&[&vpc.topology, &vpc.name, name]),
            }),
            _ => Err(errors),
        }
    }

    /// Host indexes EVMs may use: all but the gateway's.
    pub fn evm_capacity(&self) -> u64 {
        self.cidr.host_capacity() - 1
    }
}

impl GroupSpec {
    pub fn validate(
        subnet: &SubnetSpec,
        name: &str,
        count: i64,
        placement: &str,
        epms: Vec<String>,
        device_model: &str,
    ) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Err(e) = label("name", "group", name, 24) {
            errors.push(e);
        }
        let count = if (0..=i64::from(u32::MAX)).contains(&count) && (count as u64) <= subnet.evm_capacity() {
            Some(count as u32)
        } else {
            errors.push(SpecError::new(
                "evm_count",
                "Group does not fit its subnet",
                format!("evm_count is {count}; subnet {} ({}) holds at most {} EVMs.", subnet.name, subnet.cidr, subnet.evm_capacity()),
            ));
            None
        };
        let placement = match placement {
            "spread" => Some(Placement::Spread),
            "pack" => Some(Placement::Pack),
            other => {
                errors.push(SpecError::new("placement", "Invalid placement", format!("placement is {other:?}; use \"spread\" or \"pack\".")));
                None
            }
        };
        let device_model = match device_model {
            "veth" => Some(DeviceModel::Veth),
            "hybrid" => Some(DeviceModel::Hybrid),
            other => {
                errors.push(SpecError::new("device_model", "Invalid device_model", format!("device_model is {other:?}; use \"veth\" or \"hybrid\".")));
                None
            }
        };
        match (count, placement, device_model) {
            (Some(count), Some(placement), Some(device_model)) if errors.is_empty() => Ok(GroupSpec {
                topology: subnet.topology.clone(),
                vpc: subnet.vpc.clone(),
                subnet: subnet.name.clone(),
                name: name.into(),
                count,
                placement,
                epms,
                device_model,
            }),
            _ => Err(errors),
        }
    }

    /// Which of `candidates` (the EPMs it may use, in order) EVM `k` lives on.
    pub fn epm_of(&self, k: u32, candidates: usize) -> usize {
        match self.placement {
            Placement::Spread => k as usize % candidates,
            Placement::Pack => (k / MAX_EVMS_PER_SUBNET_PER_EPM) as usize,
        }
    }

    /// How many EVMs each of `candidates` EPMs holds.
    pub fn per_epm_counts(&self, candidates: usize) -> Vec<u32> {
        let mut counts = vec![0u32; candidates];
        if candidates == 0 {
            return counts;
        }
        match self.placement {
            Placement::Spread => {
                let n = candidates as u32;
                for (i, slot) in counts.iter_mut().enumerate() {
                    *slot = self.count / n + u32::from((i as u32) < self.count % n);
                }
            }
            Placement::Pack => {
                let mut left = self.count;
                for slot in counts.iter_mut() {
                    *slot = left.min(MAX_EVMS_PER_SUBNET_PER_EPM);
                    left -= *slot;
                }
            }
        }
        counts
    }

    /// Checks that the group fits on `candidates` EPMs.
    pub fn check_fits(&self, candidates: usize) -> Result<(), SpecError> {
        let needed = match self.placement {
            Placement::Spread => u64::from(self.count).div_ceil(candidates.max(1) as u64).min(u64::from(self.count)),
            Placement::Pack => u64::from(self.count.min(MAX_EVMS_PER_SUBNET_PER_EPM)),
        };
        let epms_needed = u64::from(self.count).div_ceil(u64::from(MAX_EVMS_PER_SUBNET_PER_EPM));
        if candidates == 0 || needed > u64::from(MAX_EVMS_PER_SUBNET_PER_EPM) || epms_needed > candidates as u64 {
            return Err(SpecError::new(
                "evm_count",
                "Group does not fit on its EPMs",
                format!(
                    "{} EVMs on {candidates} EPMs: one EPM holds at most {MAX_EVMS_PER_SUBNET_PER_EPM} EVMs of a subnet. Use more EPMs or fewer EVMs.",
                    self.count
                ),
            ));
        }
        Ok(())
    }
}

/// Address ranges a group holds in its subnet, as host indexes (index 0 is
/// the first address after the network address).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    pub fn len(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host index of the group's `k`th EVM.
    pub fn index_of(&self, mut k: u64) -> Option<u64> {
        for &(start, n) in &self.0 {
            if k < n {
                return Some(start + k);
            }
            k -= n;
        }
        None
    }

    /// Keeps the first `n` addresses (EVMs are removed from the end).
    pub fn truncate(&mut self, mut n: u64) {
        let mut kept = Vec::new();
        for &(start, len) in &self.0 {
            if n == 0 {
                break;
            }
            kept.push((start, len.min(n)));
            n -= len.min(n);
        }
        self.0 = kept;
    }
}

/// Grows `ranges` to `count` addresses, taking free host indexes below
/// `capacity` that neither `taken` (other groups) nor `reserved` hold.
/// Existing addresses never move. None when the subnet is full.
pub fn grow(ranges: &mut Ranges, count: u64, capacity: u64, reserved: u64, taken: &[&Ranges]) -> Option<()> {
    let mut used: Vec<(u64, u64)> = taken.iter().flat_map(|r| r.0.iter().copied()).chain(ranges.0.iter().copied()).collect();
    used.push((reserved, 1));
    used.sort_unstable();
    let mut missing = count.saturating_sub(ranges.len());
    let mut cursor = 0u64;
    let mut free = Vec::new();
    for &(start, len) in used.iter().chain(std::iter::once(&(capacity, 0))) {
        if start > cursor && missing > 0 {
            let take = (start - cursor).min(missing);
            free.push((cursor, take));
            missing -= take;
        }
        cursor = cursor.max(start + len);
    }
    if missing > 0 {
        return None;
    }
    for (start, len) in free {
        match ranges.0.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += len,
            _ => ranges.0.push((start, len)),
        }
    }
    Some(())
}

/// An EVM's MAC: locally administered, derived from its address, so it is
/// unique in its subnet and known before it exists.
pub fn evm_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x00, a, b, c, d]
}

/// The gateway MAC of a subnet on one EPM: distinct per EPM (see
/// docs/architecture.md for why a shared one cannot route).
pub fn gateway_mac(epm_index: u32) -> [u8; 6] {
    let [_, x, y, z] = epm_index.to_be_bytes();
    [0x0a, 0x01, 0x00, x, y, z]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc() -> VpcSpec {
        VpcSpec::validate("t", "blue", "10.1.0.0/16", None).unwrap()
    }

    #[test]
    fn subnet_rules() {
        let vpc = vpc();
        let subnet = SubnetSpec::validate(&vpc, "web", "10.1.2.0/24", None).unwrap();
        assert_eq!(subnet.gateway, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(subnet.evm_capacity(), 253);
        let errors = |r: Result<SubnetSpec, Vec<SpecError>>| r.unwrap_err().into_iter().map(|e| e.attribute).collect::<Vec<_>>();
        assert_eq!(errors(SubnetSpec::validate(&vpc, "web", "10.2.0.0/24", None)), vec!["cidr"]);
        assert_eq!(errors(SubnetSpec::validate(&vpc, "web", "10.1.2.0/24", Some("10.1.3.1"))), vec!["gateway_ip"]);
        assert_eq!(errors(SubnetSpec::validate(&vpc, "web", "10.1.2.0/24", Some("10.1.2.0"))), vec!["gateway_ip"]);
        assert_eq!(errors(SubnetSpec::validate(&vpc, "Web", "10.1.2.0/24", None)), vec!["name"]);
        assert_ne!(SubnetSpec::validate(&vpc, "db", "10.1.3.0/24", None).unwrap().vni, subnet.vni);
    }

    #[test]
    fn vni_rules() {
        assert_eq!(VpcSpec::validate("t", "blue", "10.0.0.0/8", Some(7)).unwrap().vni, 7);
        assert!(VpcSpec::validate("t", "blue", "10.0.0.0/8", Some(0)).is_err());
        assert!(VpcSpec::validate("t", "blue", "10.0.0.0/8", Some(1 << 24)).is_err());
        assert_eq!(vpc().vni, vpc().vni);
        assert!((1..=MAX_VNI).contains(&derived_vni(&["anything"])));
    }

    #[test]
    fn ranges_grow_without_moving_and_never_overlap() {
        let mut a = Ranges::default();
        let mut b = Ranges::default();
        grow(&mut a, 10, 100, 0, &[]).unwrap();
        assert_eq!(a.0, vec![(1, 10)]);
        grow(&mut b, 5, 100, 0, &[&a]).unwrap();
        assert_eq!(b.0, vec![(11, 5)]);
        grow(&mut a, 15, 100, 0, &[&b]).unwrap();
        assert_eq!(a.0, vec![(1, 10), (16, 5)]);
        assert_eq!(a.index_of(9), Some(10));
        assert_eq!(a.index_of(10), Some(16));
        a.truncate(12);
        assert_eq!(a.0, vec![(1, 10), (16, 2)]);
        // The freed tail is reused; the gateway (index 0) never is.
        grow(&mut b, 83, 100, 0, &[&a]).unwrap();
        assert_eq!(b.len(), 83);
        assert!(grow(&mut b, 100, 100, 0, &[&a]).is_none());
        let indexes: Vec<u64> = (0..a.len()).map(|k| a.index_of(k).unwrap()).chain((0..b.len()).map(|k| b.index_of(k).unwrap())).collect();
        let unique: std::collections::HashSet<_> = indexes.iter().collect();
        assert_eq!(unique.len(), indexes.len());
        assert!(!indexes.contains(&0));
    }

    #[test]
    fn placement_is_stable_when_scaling() {
        let subnet = SubnetSpec::validate(&vpc(), "web", "10.1.0.0/20", None).unwrap();
        let small = GroupSpec::validate(&subnet, "g", 10, "spread", vec![], "veth").unwrap();
        let big = GroupSpec::validate(&subnet, "g", 100, "spread", vec![], "veth").unwrap();
        assert!((0..10).all(|k| small.epm_of(k, 4) == big.epm_of(k, 4)));
        let packed = GroupSpec::validate(&subnet, "g", 2500, "pack", vec![], "hybrid").unwrap();
        assert_eq!((packed.epm_of(999, 4), packed.epm_of(1000, 4), packed.epm_of(2499, 4)), (0, 1, 2));
        assert!(packed.check_fits(3).is_ok());
        assert!(packed.check_fits(2).is_err());
        let crowded = GroupSpec::validate(&subnet, "g", 2500, "spread", vec![], "veth").unwrap();
        assert!(crowded.check_fits(2).is_err());
        for group in [&small, &big, &packed] {
            let counts = group.per_epm_counts(4);
            assert_eq!(counts.iter().sum::<u32>(), group.count);
            for (i, n) in counts.iter().enumerate() {
                assert_eq!(*n as usize, (0..group.count).filter(|k| group.epm_of(*k, 4) == i).count());
            }
        }
        assert!(GroupSpec::validate(&subnet, "g", 5000, "spread", vec![], "veth").is_err());
        assert!(GroupSpec::validate(&subnet, "g", 1, "random", vec![], "veth").is_err());
    }
}

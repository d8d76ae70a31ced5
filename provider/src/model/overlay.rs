//! Tenant networks: VPCs, their subnets, and groups of EVMs placed on EPMs,
//! with the address and VNI rules they obey.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::cidr::{Ipv4Cidr, parse_attribute as parse_cidr};
use super::network_controller::VpcController;
use super::{SpecError, naming};

/// VNIs are 24 bits; 0 is not used.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// EVMs of one subnet one EPM holds: its bridges' capacity (the agent adds
/// leaf bridges past 1000; see merak_agent::bridges).
pub const MAX_EVMS_PER_SUBNET_PER_EPM: u32 = merak_agent::bridges::MAX_EVMS_PER_SUBNET as u32;
/// What `pack` puts on an EPM before the next: one bridge's worth.
pub const PACK_PER_EPM: u32 = merak_agent::bridges::EVM_PORTS_PER_BRIDGE as u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcSpec {
    pub topology: String,
    pub name: String,
    pub cidr: Ipv4Cidr,
    pub vni: u32,
    /// Who programs its ports (validate leaves the default, builtin).
    pub controller: VpcController,
    /// Its EVMs' MTU; `None`: the overlay's (validate leaves it so).
    pub mtu: Option<u32>,
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
    /// Fill each EPM (up to [`PACK_PER_EPM`]) before the next.
    Pack,
    /// This many EVMs on each named EPM. Which EVMs live where is recorded
    /// (see [`assign_slots`](super::ranges::assign_slots)), since no formula keeps them in place when
    /// the counts change.
    Counts(BTreeMap<String, u32>),
}

impl Placement {
    pub fn name(&self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::Pack => "pack",
            Placement::Counts(_) => "counts",
        }
    }
}

/// A group as configured, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct GroupInput {
    pub name: String,
    pub evm_count: Option<i64>,
    pub placement: Option<String>,
    pub epms: Vec<String>,
    pub epm_counts: Option<BTreeMap<String, i64>>,
    pub device_model: String,
    /// Ids of the security groups its ports are in.
    pub security_group_ids: Vec<String>,
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
    /// Names of the security groups (of its VPC) its ports are in; none:
    /// the VPC's default group.
    pub security_groups: Vec<String>,
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
            format!(
                "{name:?} is not a DNS label of at most {max} characters: use lowercase letters, digits and '-', starting and ending with a letter or digit."
            ),
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
                errors.push(SpecError::new(
                    "vni",
                    "Invalid vni",
                    format!("vni is {v}; a VXLAN network identifier is between 1 and {MAX_VNI}."),
                ));
                None
            }
        };
        match (cidr, vni) {
            (Some(cidr), Some(vni)) if errors.is_empty() => Ok(VpcSpec {
                topology: topology.into(),
                name: name.into(),
                cidr,
                vni,
                controller: VpcController::Builtin,
                mtu: None,
            }),
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
                errors.push(SpecError::new(
                    "cidr",
                    "Subnet too small",
                    format!("{cidr} has no room for a gateway and an EVM; use /30 or shorter."),
                ));
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
                        format!(
                            "{text:?} is not a host address of {cidr}; leave gateway_ip out to use {}.",
                            cidr.host(0).map(|ip| ip.to_string()).unwrap_or_default()
                        ),
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

/// The names of the security groups `ids` name: groups of the subnet's
/// VPC, each once.
fn security_groups(subnet: &SubnetSpec, ids: &[String], errors: &mut Vec<SpecError>) -> Vec<String> {
    const ATTRIBUTE: &str = "security_group_ids";
    let mut names: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        match id.split('/').collect::<Vec<_>>().as_slice() {
            [topology, vpc, name] if *topology == subnet.topology && *vpc == subnet.vpc && !name.is_empty() => {
                if names.iter().any(|n| n == name) {
                    let detail = format!("{id:?} appears more than once in security_group_ids; list each group once.");
                    errors.push(SpecError::new(ATTRIBUTE, "Security group listed twice", detail));
                } else {
                    names.push(name.to_string());
                }
            }
            [topology, vpc, name] if !name.is_empty() => errors.push(SpecError::new(
                ATTRIBUTE,
                "Security group of another VPC",
                format!(
                    "{id:?} is a group of VPC {topology}/{vpc}; an EVM group's ports are in groups of their own VPC ({}/{}).",
                    subnet.topology, subnet.vpc
                ),
            )),
            _ => errors.push(SpecError::new(
                ATTRIBUTE,
                "Invalid security group id",
                format!("{id:?} is not a security group id; use merak_security_group.<name>.id."),
            )),
        }
    }
    names
}

impl GroupSpec {
    pub fn validate(subnet: &SubnetSpec, input: GroupInput) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Err(e) = label("name", "group", &input.name, 24) {
            errors.push(e);
        }
        let counts = input.epm_counts.map(|counts| epm_counts(counts, &mut errors));
        let placement = match (input.placement.as_deref(), counts) {
            (None | Some("spread"), None) => Some(Placement::Spread),
            (Some("pack"), None) => Some(Placement::Pack),
            (None | Some("counts"), Some(counts)) => counts.map(Placement::Counts),
            (Some("counts"), None) => {
                errors.push(SpecError::new(
                    "epm_counts",
                    "Missing epm_counts",
                    "placement \"counts\" places EVMs by epm_counts: set it, e.g. { \"epm-0\" = 10 }.",
                ));
                None
            }
            (Some(other @ ("spread" | "pack")), Some(_)) => {
                errors.push(SpecError::new(
                    "placement",
                    "placement conflicts with epm_counts",
                    format!("placement is {other:?}, but epm_counts places the EVMs itself. Leave placement out, or epm_counts."),
                ));
                None
            }
            (Some(other), _) => {
                errors.push(SpecError::new(
                    "placement",
                    "Invalid placement",
                    format!("placement is {other:?}; use \"spread\", \"pack\", or set epm_counts."),
                ));
                None
            }
        };
        if let Some(twice) =
            input.epms.iter().enumerate().find_map(|(i, epm)| input.epms[..i].contains(epm).then_some(epm))
        {
            errors.push(SpecError::new(
                "epms",
                "EPM listed twice",
                format!("{twice:?} appears more than once in epms; list each EPM once."),
            ));
        }
        if matches!(placement, Some(Placement::Counts(_))) && !input.epms.is_empty() {
            errors.push(SpecError::new(
                "epms",
                "epms conflicts with epm_counts",
                "epm_counts names the EPMs itself; leave epms out.",
            ));
        }
        let count = match (&placement, input.evm_count) {
            (Some(Placement::Counts(counts)), evm_count) => {
                let sum: i64 = counts.values().map(|n| i64::from(*n)).sum();
                match evm_count {
                    Some(n) if n != sum => {
                        errors.push(SpecError::new(
                            "evm_count",
                            "evm_count disagrees with epm_counts",
                            format!("evm_count is {n}, but epm_counts add up to {sum}. Leave evm_count out, or make them agree."),
                        ));
                        None
                    }
                    _ => Some(sum),
                }
            }
            (_, Some(n)) => Some(n),
            (None, None) => None,
            (_, None) => {
                errors.push(SpecError::new(
                    "evm_count",
                    "Missing evm_count",
                    "Set evm_count, the number of EVMs (or epm_counts, a number per EPM).",
                ));
                None
            }
        };
        let count = count.and_then(|count| {
            if count < 0 {
                errors.push(SpecError::new(
                    "evm_count",
                    "Invalid evm_count",
                    format!("evm_count is {count}; the number of EVMs cannot be negative."),
                ));
                return None;
            }
            if count <= i64::from(u32::MAX) && (count as u64) <= subnet.evm_capacity() {
                Some(count as u32)
            } else {
                errors.push(SpecError::new(
                    "evm_count",
                    "Group does not fit its subnet",
                    format!(
                        "The group has {count} EVMs; subnet {} ({}) holds at most {} EVMs.",
                        subnet.name,
                        subnet.cidr,
                        subnet.evm_capacity()
                    ),
                ));
                None
            }
        });
        let device_model = match input.device_model.as_str() {
            "veth" => Some(DeviceModel::Veth),
            "hybrid" => Some(DeviceModel::Hybrid),
            other => {
                errors.push(SpecError::new(
                    "device_model",
                    "Invalid device_model",
                    format!("device_model is {other:?}; use \"veth\" or \"hybrid\"."),
                ));
                None
            }
        };
        let security_groups = security_groups(subnet, &input.security_group_ids, &mut errors);
        match (count, placement, device_model) {
            (Some(count), Some(placement), Some(device_model)) if errors.is_empty() => Ok(GroupSpec {
                topology: subnet.topology.clone(),
                vpc: subnet.vpc.clone(),
                subnet: subnet.name.clone(),
                name: input.name,
                count,
                placement,
                epms: input.epms,
                device_model,
                security_groups,
            }),
            _ => Err(errors),
        }
    }

    /// Which of `candidates` (the EPMs it may use, in order) EVM `k` lives
    /// on; None for placement by counts, which is recorded instead.
    pub fn epm_of(&self, k: u32, candidates: usize) -> Option<usize> {
        match self.placement {
            Placement::Spread => Some(k as usize % candidates.max(1)),
            Placement::Pack => Some((k / PACK_PER_EPM) as usize),
            Placement::Counts(_) => None,
        }
    }

    /// How many EVMs each of `candidates` holds, by name. By counts: the
    /// configured counts, zeros included (they are the user's to keep).
    pub fn per_epm_counts(&self, candidates: &[String]) -> BTreeMap<String, u32> {
        let n = candidates.len() as u32;
        let count_of = |i: u32| match self.placement {
            Placement::Spread => self.count / n + u32::from(i < self.count % n),
            Placement::Pack => self.count.saturating_sub(i * PACK_PER_EPM).min(PACK_PER_EPM),
            Placement::Counts(_) => 0,
        };
        match &self.placement {
            Placement::Counts(counts) => counts.clone(),
            _ => (0..n).map(|i| (candidates[i as usize].clone(), count_of(i))).filter(|(_, n)| *n > 0).collect(),
        }
    }

    /// Checks that the group fits on `candidates` EPMs (by counts: each
    /// count was checked on its own).
    pub fn check_fits(&self, candidates: usize) -> Result<(), SpecError> {
        let fits = match self.placement {
            Placement::Spread => {
                candidates > 0
                    && u64::from(self.count).div_ceil(candidates as u64) <= u64::from(MAX_EVMS_PER_SUBNET_PER_EPM)
            }
            Placement::Pack => u64::from(self.count).div_ceil(u64::from(PACK_PER_EPM)) <= candidates as u64,
            Placement::Counts(_) => true,
        };
        if fits || self.count == 0 {
            return Ok(());
        }
        let per_epm = if self.placement == Placement::Pack { PACK_PER_EPM } else { MAX_EVMS_PER_SUBNET_PER_EPM };
        Err(SpecError::new(
            "evm_count",
            "Group does not fit on its EPMs",
            format!(
                "{} EVMs on {candidates} EPMs: {} puts at most {per_epm} EVMs of a subnet on one EPM. Use more EPMs or fewer EVMs.",
                self.count,
                self.placement.name()
            ),
        ))
    }
}

/// Checks per-EPM counts: whole, not negative, within what an EPM holds.
fn epm_counts(counts: BTreeMap<String, i64>, errors: &mut Vec<SpecError>) -> Option<BTreeMap<String, u32>> {
    let mut checked = BTreeMap::new();
    for (epm, n) in counts {
        match u32::try_from(n) {
            Ok(n) if n <= MAX_EVMS_PER_SUBNET_PER_EPM => {
                checked.insert(epm, n);
            }
            _ => {
                errors.push(SpecError::new(
                    "epm_counts",
                    "Invalid count in epm_counts",
                    format!(
                        "epm_counts[{epm:?}] is {n}; an EPM holds 0 to {MAX_EVMS_PER_SUBNET_PER_EPM} EVMs of a subnet."
                    ),
                ));
                return None;
            }
        }
    }
    Some(checked)
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
    fn security_groups_are_the_vpcs_own_each_named_once() {
        let subnet = SubnetSpec::validate(&vpc(), "web", "10.1.2.0/24", None).unwrap();
        let with = |ids: &[&str]| {
            let input = GroupInput {
                name: "g".into(),
                evm_count: Some(2),
                device_model: "veth".into(),
                security_group_ids: ids.iter().map(|id| id.to_string()).collect(),
                ..GroupInput::default()
            };
            GroupSpec::validate(&subnet, input)
        };
        assert_eq!(with(&["t/blue/ssh", "t/blue/web"]).unwrap().security_groups, ["ssh", "web"]);
        let summary = |ids: &[&str]| with(ids).unwrap_err().into_iter().map(|e| e.summary).collect::<Vec<_>>();
        assert_eq!(summary(&["t/blue/ssh", "t/blue/ssh"]), ["Security group listed twice"]);
        assert_eq!(summary(&["t/red/ssh"]), ["Security group of another VPC"]);
        assert_eq!(summary(&["ssh"]), ["Invalid security group id"]);
    }

    #[test]
    fn subnet_rules() {
        let vpc = vpc();
        let subnet = SubnetSpec::validate(&vpc, "web", "10.1.2.0/24", None).unwrap();
        assert_eq!(subnet.gateway, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(subnet.evm_capacity(), 253);
        let errors =
            |r: Result<SubnetSpec, Vec<SpecError>>| r.unwrap_err().into_iter().map(|e| e.attribute).collect::<Vec<_>>();
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

    fn group(subnet: &SubnetSpec, count: i64, placement: &str) -> Result<GroupSpec, Vec<SpecError>> {
        let input = GroupInput {
            name: "g".into(),
            evm_count: Some(count),
            placement: Some(placement.into()),
            device_model: "veth".into(),
            ..GroupInput::default()
        };
        GroupSpec::validate(subnet, input)
    }

    fn by_counts(
        subnet: &SubnetSpec,
        counts: &[(&str, i64)],
        evm_count: Option<i64>,
        placement: Option<&str>,
    ) -> Result<GroupSpec, Vec<SpecError>> {
        let input = GroupInput {
            name: "g".into(),
            evm_count,
            placement: placement.map(String::from),
            epm_counts: Some(counts.iter().map(|(epm, n)| (epm.to_string(), *n)).collect()),
            device_model: "veth".into(),
            ..GroupInput::default()
        };
        GroupSpec::validate(subnet, input)
    }

    #[test]
    fn placement_is_stable_when_scaling() {
        let subnet = SubnetSpec::validate(&vpc(), "web", "10.1.0.0/16", None).unwrap();
        let small = group(&subnet, 10, "spread").unwrap();
        let big = group(&subnet, 100, "spread").unwrap();
        assert!((0..10).all(|k| small.epm_of(k, 4) == big.epm_of(k, 4)));
        let packed = group(&subnet, 2500, "pack").unwrap();
        assert_eq!(
            (packed.epm_of(999, 4), packed.epm_of(1000, 4), packed.epm_of(2499, 4)),
            (Some(0), Some(1), Some(2))
        );
        assert!(packed.check_fits(3).is_ok());
        assert!(packed.check_fits(2).is_err());
        // Spread may put more than a bridge's worth on an EPM, up to its bridges' capacity.
        assert!(group(&subnet, 5000, "spread").unwrap().check_fits(2).is_ok());
        assert!(group(&subnet, 50_000, "spread").unwrap().check_fits(2).is_err());
        let epms: Vec<String> = (0..4).map(|i| format!("epm-{i}")).collect();
        for group in [&small, &big, &packed] {
            let counts = group.per_epm_counts(&epms);
            assert_eq!(counts.values().sum::<u32>(), group.count);
            for (i, epm) in epms.iter().enumerate() {
                let n = counts.get(epm).copied().unwrap_or(0);
                assert_eq!(n as usize, (0..group.count).filter(|k| group.epm_of(*k, 4) == Some(i)).count());
            }
        }
        assert!(group(&subnet, 70_000, "spread").is_err());
        assert!(group(&subnet, 1, "random").is_err());
    }

    #[test]
    fn placement_by_counts_is_checked() {
        let subnet = SubnetSpec::validate(&vpc(), "web", "10.1.0.0/24", None).unwrap();
        let attributes =
            |r: Result<GroupSpec, Vec<SpecError>>| r.unwrap_err().into_iter().map(|e| e.attribute).collect::<Vec<_>>();
        let spec = by_counts(&subnet, &[("epm-0", 3), ("epm-1", 0)], None, None).unwrap();
        assert_eq!((spec.count, spec.placement.name()), (3, "counts"));
        assert_eq!(spec.per_epm_counts(&[]).get("epm-1"), Some(&0), "zeros are kept");
        assert!(by_counts(&subnet, &[("epm-0", 3)], Some(3), Some("counts")).is_ok());
        assert_eq!(attributes(by_counts(&subnet, &[("epm-0", 3)], Some(4), None)), vec!["evm_count"]);
        assert_eq!(attributes(by_counts(&subnet, &[("epm-0", -1)], None, None)), vec!["epm_counts"]);
        assert_eq!(attributes(by_counts(&subnet, &[("epm-0", 200), ("epm-1", 200)], None, None)), vec!["evm_count"]);
        assert_eq!(attributes(by_counts(&subnet, &[("epm-0", 3)], None, Some("spread"))), vec!["placement"]);
        assert_eq!(attributes(group(&subnet, 3, "counts")), vec!["epm_counts"]);
        let input = GroupInput { name: "g".into(), device_model: "veth".into(), ..GroupInput::default() };
        assert_eq!(attributes(GroupSpec::validate(&subnet, input)), vec!["evm_count"]);
    }
}

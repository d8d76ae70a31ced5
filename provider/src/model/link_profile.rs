//! Link impairments: the topology's `link_profile` blocks, each shaping one
//! role of links (every EPM's uplink, every vswitch's uplink) with a rate,
//! delay, jitter and loss. Which links a role means, and what each end of
//! them is called, follows from the spec alone.

use merak_netdev::shaping::Shaping;
use serde::{Deserialize, Serialize};

use super::fat_tree::Switch;
use super::naming::{self, EPM_DATA_NIC, UPLINK};
use super::{BlockError, TreeSpec};

/// The links a profile shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// Each EPM's `eth1` and its port on its top-of-rack vswitch or edge switch.
    EpmUplink,
    /// A tree's: each vswitch's uplink and its port on the parent vswitch.
    SwitchUplink,
    /// A fat tree's: edge to aggregation switches.
    EdgeAggregation,
    /// A fat tree's: aggregation to core switches.
    AggregationCore,
}

pub const ROLES: [(&str, LinkRole); 4] = [
    ("epm_uplink", LinkRole::EpmUplink),
    ("switch_uplink", LinkRole::SwitchUplink),
    ("edge_aggregation", LinkRole::EdgeAggregation),
    ("aggregation_core", LinkRole::AggregationCore),
];

impl LinkRole {
    pub fn parse(name: &str) -> Option<LinkRole> {
        ROLES.iter().find(|(n, _)| *n == name).map(|(_, role)| *role)
    }

    pub fn names() -> String {
        ROLES.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    }

    /// Whether a topology of this shape has links of the role.
    pub fn fits(self, fat_tree: bool) -> bool {
        match self {
            LinkRole::EpmUplink => true,
            LinkRole::SwitchUplink => !fat_tree,
            LinkRole::EdgeAggregation | LinkRole::AggregationCore => fat_tree,
        }
    }
}

/// One `link_profile` block, as configured (null stays null, so the state
/// echoes the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkProfileSpec {
    pub role: String,
    #[serde(default)]
    pub rate_mbit: Option<f64>,
    #[serde(default)]
    pub delay_ms: Option<f64>,
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    #[serde(default)]
    pub loss_percent: Option<f64>,
}

/// One end of a link: the object (EPM or vswitch) and its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEnd {
    pub object: String,
    pub device: String,
}

const MAX_RATE_MBIT: f64 = 100_000.0;
const MIN_RATE_MBIT: f64 = 0.1;
const MAX_DELAY_MS: f64 = 60_000.0;

impl LinkProfileSpec {
    pub fn role(&self) -> Option<LinkRole> {
        LinkRole::parse(&self.role)
    }

    /// What each end's egress gets.
    pub fn shaping(&self) -> Shaping {
        let micros = |ms: Option<f64>| (ms.unwrap_or(0.0) * 1000.0).round() as u32;
        Shaping {
            rate_bytes_per_s: self.rate_mbit.map(|mbit| (mbit * 125_000.0).round() as u64),
            delay_us: micros(self.delay_ms),
            jitter_us: micros(self.jitter_ms),
            loss_ppm: (self.loss_percent.unwrap_or(0.0) * 10_000.0).round() as u32,
        }
    }
}

/// Every link of every role, each with the shaping its role's profile asks
/// for (`None`: no profile, merak's shaping comes off).
pub fn shaped_links(spec: &TreeSpec, profiles: &[LinkProfileSpec]) -> Vec<([LinkEnd; 2], Option<Shaping>)> {
    ROLES
        .into_iter()
        .map(|(_, role)| role)
        .flat_map(|role| {
            let shaping = profiles.iter().find(|p| p.role() == Some(role)).map(LinkProfileSpec::shaping);
            links(spec, role).into_iter().map(move |ends| (ends, shaping))
        })
        .collect()
}

/// The links of `role` in `spec`, each as its two ends.
pub fn links(spec: &TreeSpec, role: LinkRole) -> Vec<[LinkEnd; 2]> {
    let end = |object: String, device: String| LinkEnd { object, device };
    if let Some(fabric) = &spec.fabric {
        let between = |lower: fn(&Switch) -> bool| -> Vec<[LinkEnd; 2]> {
            fabric
                .fabric_links()
                .into_iter()
                .filter(|l| lower(&l.lower))
                .map(|l| [end(l.lower.name(), l.lower_device), end(l.upper.name(), l.upper_device)])
                .collect()
        };
        return match role {
            LinkRole::EpmUplink => spec
                .epms()
                .map(|epm| {
                    let port = fabric.host_port(epm.index);
                    [end(epm.name, EPM_DATA_NIC.into()), end(port.edge.name(), port.device)]
                })
                .collect(),
            LinkRole::EdgeAggregation => between(|s| matches!(s, Switch::Edge { .. })),
            LinkRole::AggregationCore => between(|s| matches!(s, Switch::Aggregation { .. })),
            LinkRole::SwitchUplink => Vec::new(),
        };
    }
    match role {
        LinkRole::EdgeAggregation | LinkRole::AggregationCore => Vec::new(),
        LinkRole::EpmUplink => spec
            .epms()
            .map(|epm| {
                [
                    end(epm.name.clone(), EPM_DATA_NIC.into()),
                    end(naming::vswitch_name(0, epm.rack), naming::host_port(epm.index)),
                ]
            })
            .collect(),
        LinkRole::SwitchUplink => spec
            .vswitches()
            .into_iter()
            .filter_map(|switch| {
                Some([
                    end(switch.name(), UPLINK.into()),
                    end(switch.parent_name()?, naming::downlink_port(switch.index)),
                ])
            })
            .collect(),
    }
}

/// How many links the profiles shape.
pub fn impaired_link_count(spec: &TreeSpec, profiles: &[LinkProfileSpec]) -> u64 {
    profiles.iter().filter_map(LinkProfileSpec::role).map(|role| links(spec, role).len() as u64).sum()
}

/// The roles a topology of this shape does not have.
pub fn validate_for(profiles: &[LinkProfileSpec], fat_tree: bool) -> Vec<BlockError> {
    let shape = if fat_tree { "a fat tree" } else { "a tree" };
    let own: Vec<&str> = ROLES.iter().filter(|(_, r)| r.fits(fat_tree)).map(|(n, _)| *n).collect();
    profiles
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role().is_some_and(|r| !r.fits(fat_tree)))
        .map(|(index, p)| BlockError {
            index,
            attribute: "role",
            summary: "No such links here".into(),
            detail: format!("{shape} has no {:?} links; its roles are {}.", p.role, own.join(", ")),
        })
        .collect()
}

/// Every rule the blocks break.
pub fn validate(profiles: &[LinkProfileSpec]) -> Vec<BlockError> {
    let mut errors = Vec::new();
    for (index, profile) in profiles.iter().enumerate() {
        let mut error = |attribute: &'static str, summary: &str, detail: String| {
            errors.push(BlockError { index, attribute, summary: summary.into(), detail });
        };
        if profile.role().is_none() {
            error(
                "role",
                "Unknown link role",
                format!("{:?} is not a role of links; use one of {}.", profile.role, LinkRole::names()),
            );
        } else if profiles[..index].iter().any(|p| p.role == profile.role) {
            error(
                "role",
                "Duplicate link_profile role",
                format!("Another link_profile shapes the {:?} links; one profile per role.", profile.role),
            );
        }
        let impairments = [profile.rate_mbit, profile.delay_ms, profile.jitter_ms, profile.loss_percent];
        if impairments.iter().all(Option::is_none) {
            error(
                "role",
                "Empty link_profile",
                "Set at least one of rate_mbit, delay_ms, jitter_ms and loss_percent.".into(),
            );
        }
        let mut bounded = |attribute: &'static str, value: Option<f64>, low: f64, high: f64, unit: &str| {
            if let Some(value) = value.filter(|v| !(low..=high).contains(v)) {
                error(
                    attribute,
                    &format!("Invalid {attribute}"),
                    format!("{attribute} is {value}; use {low} to {high} {unit}."),
                );
            }
        };
        bounded("rate_mbit", profile.rate_mbit, MIN_RATE_MBIT, MAX_RATE_MBIT, "Mbit/s");
        bounded("delay_ms", profile.delay_ms, 0.0, MAX_DELAY_MS, "ms");
        bounded("jitter_ms", profile.jitter_ms, 0.0, MAX_DELAY_MS, "ms");
        bounded("loss_percent", profile.loss_percent, 0.0, 100.0, "percent");
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TreeInput;

    fn profile(role: &str, rate_mbit: Option<f64>) -> LinkProfileSpec {
        LinkProfileSpec { role: role.into(), rate_mbit, delay_ms: None, jitter_ms: None, loss_percent: None }
    }

    #[test]
    fn roles_name_every_link_once_by_both_ends() {
        let spec = TreeSpec::validate(&TreeInput {
            name: "lab",
            racks: 4,
            hosts_per_rack: 2,
            hosts: Some(8),
            ports_per_vswitch: 2,
            data_plane_cidr: "10.0.0.0/24",
        })
        .unwrap();
        let uplinks = links(&spec, LinkRole::EpmUplink);
        assert_eq!(uplinks.len(), 8);
        assert_eq!(
            uplinks[3],
            [
                LinkEnd { object: "epm-3".into(), device: "eth1".into() },
                LinkEnd { object: naming::vswitch_name(0, 1), device: naming::host_port(3) }
            ]
        );
        let switches = links(&spec, LinkRole::SwitchUplink);
        assert_eq!(switches.len() as u64 + uplinks.len() as u64, spec.link_count(), "the two roles cover every link");
        assert!(switches.iter().all(|[near, _]| near.device == UPLINK));
        let both = [profile("epm_uplink", Some(10.0)), profile("switch_uplink", Some(100.0))];
        assert_eq!(impaired_link_count(&spec, &both), spec.link_count());
    }

    #[test]
    fn a_fat_trees_roles_are_its_levels() {
        let fabric = crate::model::fat_tree::FatTree::validate(4, None, "10.0.0.0/24".parse().unwrap(), None).unwrap();
        let spec = TreeSpec::fat_tree("lab", fabric);
        assert_eq!(links(&spec, LinkRole::EpmUplink).len(), 16);
        assert_eq!(links(&spec, LinkRole::EdgeAggregation).len(), 16);
        let cores = links(&spec, LinkRole::AggregationCore);
        assert_eq!(cores.len(), 16);
        assert!(
            cores.iter().all(|[lower, upper]| lower.object.starts_with("agg-") && upper.object.starts_with("core-"))
        );
        assert!(links(&spec, LinkRole::SwitchUplink).is_empty());
        let blocks = [profile("switch_uplink", Some(1.0)), profile("aggregation_core", Some(1.0))];
        assert_eq!(validate_for(&blocks, true).iter().map(|e| e.index).collect::<Vec<_>>(), [0]);
        assert_eq!(validate_for(&blocks, false).iter().map(|e| e.index).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn profiles_become_shaping_in_the_kernels_units() {
        let mut p = profile("epm_uplink", Some(50.0));
        p.delay_ms = Some(2.5);
        p.loss_percent = Some(0.1);
        assert_eq!(
            p.shaping(),
            Shaping { rate_bytes_per_s: Some(6_250_000), delay_us: 2500, jitter_us: 0, loss_ppm: 1000 }
        );
        assert!(p.shaping().needs_netem());
        assert!(!profile("epm_uplink", Some(1.0)).shaping().needs_netem());
    }

    #[test]
    fn bad_blocks_are_named_by_index_and_attribute() {
        let mut slow = profile("epm_uplink", Some(0.01));
        slow.loss_percent = Some(101.0);
        let blocks = [
            profile("epm_uplink", Some(10.0)),
            profile("epm_uplink", Some(10.0)),
            profile("spine", Some(1.0)),
            profile("switch_uplink", None),
            slow,
        ];
        let found: Vec<(usize, &str)> = validate(&blocks).iter().map(|e| (e.index, e.attribute)).collect();
        assert_eq!(found, [(1, "role"), (2, "role"), (3, "role"), (4, "role"), (4, "rate_mbit"), (4, "loss_percent")]);
        assert!(validate(&blocks[..1]).is_empty());
    }
}

//! Link shaping as the agent's goals and reports carry it
//! (`merak.agent.v1.Shaping`, `RootQdisc`), and applied to a link end with
//! merak-netdev's qdiscs: the kubernetes runtime's links are tunnels the
//! agents make, so the agents shape them.

use std::collections::HashMap;

use merak_netdev::shaping::{RootQdisc, Shaping};
use merak_proto::agent as proto;

use crate::error::OverlayError;
use crate::netdev::Netlink;

/// The scratch device a netem probe makes and removes.
const NETEM_PROBE: &str = "netem-probe";

/// The shaping a goal asks for; `None` when it asks for none (all zero).
pub fn from_goal(goal: &proto::Shaping) -> Option<Shaping> {
    let shaping = Shaping {
        rate_bytes_per_s: (goal.rate_bytes_per_s > 0).then_some(goal.rate_bytes_per_s),
        delay_us: goal.delay_us,
        jitter_us: goal.jitter_us,
        loss_ppm: goal.loss_ppm,
    };
    (shaping != Shaping::default()).then_some(shaping)
}

/// The goal that asks for `shaping` (`None`: none of merak's).
pub fn to_goal(shaping: Option<&Shaping>) -> proto::Shaping {
    let shaping = shaping.copied().unwrap_or_default();
    proto::Shaping {
        rate_bytes_per_s: shaping.rate_bytes_per_s.unwrap_or(0),
        delay_us: shaping.delay_us,
        jitter_us: shaping.jitter_us,
        loss_ppm: shaping.loss_ppm,
    }
}

/// A root qdisc as an agent reports it.
pub fn report(root: &RootQdisc) -> proto::RootQdisc {
    proto::RootQdisc {
        kind: root.kind.clone(),
        handle: root.handle,
        rate_bytes_per_s: root.rate_bytes_per_s.unwrap_or(0),
        netem_below: root.netem_below,
    }
}

/// A root qdisc from an agent's report.
pub fn from_report(report: &proto::RootQdisc) -> RootQdisc {
    RootQdisc {
        kind: report.kind.clone(),
        handle: report.handle,
        rate_bytes_per_s: (report.rate_bytes_per_s > 0).then_some(report.rate_bytes_per_s),
        netem_below: report.netem_below,
    }
}

/// Makes each named device's egress carry its goal's shaping, with one
/// qdisc dump for all; what changed. A device not there is skipped (its
/// link's goal fails on its own).
pub async fn apply(netlink: &Netlink, goals: &[(&str, &proto::Shaping)]) -> Result<Vec<String>, OverlayError> {
    if goals.is_empty() {
        return Ok(Vec::new());
    }
    let links: HashMap<String, (u32, u32)> =
        netlink.links().await?.into_iter().map(|l| (l.name, (l.index, l.mtu))).collect();
    let roots = netlink.root_qdiscs().await?;
    let mut actions = Vec::new();
    for (device, goal) in goals {
        let Some(&(index, mtu)) = links.get(*device) else { continue };
        let shaping = from_goal(goal);
        if netlink.ensure_shaping(index, mtu, roots.get(&index), shaping.as_ref()).await? {
            actions.push(match shaping {
                Some(s) => format!("{device} shaped ({s:?})"),
                None => format!("{device} unshaped"),
            });
        }
    }
    Ok(actions)
}

/// Whether this namespace's kernel has netem; why not, when not.
pub async fn probe_netem(netlink: &Netlink) -> Result<Result<(), String>, OverlayError> {
    Ok(netlink.probe_netem(NETEM_PROBE).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_and_reports_round_trip() {
        let shaping = Shaping { rate_bytes_per_s: Some(5_000_000), delay_us: 2000, jitter_us: 100, loss_ppm: 10 };
        assert_eq!(from_goal(&to_goal(Some(&shaping))), Some(shaping));
        assert_eq!(from_goal(&to_goal(None)), None, "all zero asks for no shaping");
        let netem_only = Shaping { delay_us: 500, ..Shaping::default() };
        assert_eq!(from_goal(&to_goal(Some(&netem_only))), Some(netem_only));
        let root = RootQdisc { kind: "tbf".into(), handle: 0x6d72_0000, rate_bytes_per_s: Some(1), netem_below: true };
        assert_eq!(from_report(&report(&root)), root);
        let plain =
            RootQdisc { kind: "noqueue".into(), handle: 0x8001_0000, rate_bytes_per_s: None, netem_below: false };
        assert_eq!(from_report(&report(&plain)), plain);
    }
}

//! Link impairments as queueing disciplines on a device's egress, as
//! `tc qdisc replace dev DEV root ...` makes them: `tbf` for a rate, `netem`
//! for delay, jitter and loss (under the `tbf` when both are asked for).
//! Shaping both ends of a link shapes both directions. The qdiscs carry
//! handles of their own, so merak's are told apart from anyone else's.

use std::collections::HashMap;

use futures::StreamExt;
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};

use crate::netdev::{NetdevError, Netlink, Result};

/// The root qdisc merak puts on a shaped device (`6d72:`, "mr").
pub const ROOT_HANDLE: u32 = 0x6d72_0000;
/// A netem under merak's tbf (`6d73:`), in the tbf's class `6d72:1`.
const CHILD_HANDLE: u32 = 0x6d73_0000;
const TCA_OPTIONS: u16 = 2;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
/// `TC_LINKLAYER_ETHERNET`: the rate counts Ethernet frames, no rate table needed.
const LINKLAYER_ETHERNET: u8 = 1;
/// Packets netem holds (its default).
const NETEM_LIMIT: u32 = 1000;

/// What to do to a device's egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shaping {
    pub rate_bytes_per_s: Option<u64>,
    pub delay_us: u32,
    pub jitter_us: u32,
    /// Loss probability in millionths.
    pub loss_ppm: u32,
}

impl Shaping {
    /// Delay, jitter or loss: only netem does those.
    pub fn needs_netem(&self) -> bool {
        self.delay_us > 0 || self.jitter_us > 0 || self.loss_ppm > 0
    }
}

/// A device's root qdisc, as far as shaping goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootQdisc {
    pub kind: String,
    pub handle: u32,
    /// A tbf's rate, bytes per second.
    pub rate_bytes_per_s: Option<u64>,
    /// A netem sits under merak's tbf.
    pub netem_below: bool,
}

impl RootQdisc {
    /// Whether merak put it there (its handle).
    pub fn is_merak(&self) -> bool {
        self.handle == ROOT_HANDLE
    }

    /// Whether it is what `shaping` makes: merak's tbf at its rate, with a
    /// netem under it when it needs one, or merak's netem alone. (Netem's
    /// own parameters are not read back.)
    pub fn carries(&self, shaping: &Shaping) -> bool {
        if !self.is_merak() {
            return false;
        }
        match shaping.rate_bytes_per_s {
            Some(rate) => {
                self.kind == "tbf" && self.rate_bytes_per_s == Some(rate) && self.netem_below == shaping.needs_netem()
            }
            None => self.kind == "netem",
        }
    }
}

/// The bucket a tbf at `rate` needs: 10 ms of traffic, and never less than
/// two full frames (a frame larger than the bucket is dropped).
pub fn burst_bytes(rate_bytes_per_s: u64, mtu: u32) -> u32 {
    let frames = 2 * (u64::from(mtu) + 14);
    u32::try_from((rate_bytes_per_s / 100).max(frames)).unwrap_or(u32::MAX)
}

/// One netlink attribute: length, type, value padded to 4 bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let length = 4 + value.len();
    let mut bytes = Vec::with_capacity((length + 3) & !3);
    bytes.extend_from_slice(&(length as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(value);
    bytes.resize((length + 3) & !3, 0);
    bytes
}

/// `struct tc_tbf_qopt` and the attributes after it.
fn tbf_options(rate: u64, mtu: u32) -> Vec<u8> {
    let burst = burst_bytes(rate, mtu);
    // 50 ms of traffic may wait in the queue behind the bucket.
    let limit = u32::try_from(rate / 20).unwrap_or(u32::MAX).saturating_add(burst);
    let mut qopt = Vec::with_capacity(36);
    // rate: cell_log, linklayer, overhead, cell_align, mpu, rate.
    qopt.extend_from_slice(&[0, LINKLAYER_ETHERNET]);
    qopt.extend_from_slice(&0u16.to_ne_bytes());
    qopt.extend_from_slice(&0i16.to_ne_bytes());
    qopt.extend_from_slice(&0u16.to_ne_bytes());
    qopt.extend_from_slice(&u32::try_from(rate).unwrap_or(u32::MAX).to_ne_bytes());
    // peakrate: none.
    qopt.extend_from_slice(&[0; 12]);
    for field in [limit, 0 /* buffer: TCA_TBF_BURST says it */, 0 /* mtu: for a peak rate */] {
        qopt.extend_from_slice(&field.to_ne_bytes());
    }
    let mut options = nla(TCA_TBF_PARMS, &qopt);
    if rate > u64::from(u32::MAX) {
        options.extend(nla(TCA_TBF_RATE64, &rate.to_ne_bytes()));
    }
    options.extend(nla(TCA_TBF_BURST, &burst.to_ne_bytes()));
    options
}

/// `struct tc_netem_qopt` (not an attribute list) and the 64-bit times after it.
fn netem_options(shaping: &Shaping) -> Vec<u8> {
    let (delay_ns, jitter_ns) = (u64::from(shaping.delay_us) * 1000, u64::from(shaping.jitter_us) * 1000);
    // The old fields are in scheduler ticks of 64 ns.
    let ticks = |ns: u64| u32::try_from(ns >> 6).unwrap_or(u32::MAX);
    let loss =
        u32::try_from(u64::from(shaping.loss_ppm.min(1_000_000)) * u64::from(u32::MAX) / 1_000_000).unwrap_or(u32::MAX);
    let mut options = Vec::with_capacity(48);
    for field in [ticks(delay_ns), NETEM_LIMIT, loss, 0 /* gap */, 0 /* duplicate */, ticks(jitter_ns)] {
        options.extend_from_slice(&field.to_ne_bytes());
    }
    options.extend(nla(TCA_NETEM_LATENCY64, &delay_ns.to_ne_bytes()));
    options.extend(nla(TCA_NETEM_JITTER64, &jitter_ns.to_ne_bytes()));
    options
}

fn qdisc_message(index: u32, parent: u32, handle: u32, kind: &str, options: Vec<u8>) -> Result<TcMessage> {
    let index = i32::try_from(index).map_err(|_| NetdevError::invalid(format!("link index {index}")))?;
    let mut message = TcMessage::with_index(index);
    message.header.parent = TcHandle::from(parent);
    message.header.handle = TcHandle::from(handle);
    message.attributes.push(TcAttribute::Kind(kind.to_string()));
    message.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    Ok(message)
}

impl Netlink {
    /// Makes `shaping` the egress of link `index` (MTU `mtu`), replacing
    /// whatever root qdisc it had. An error naming `sch_netem` when this
    /// kernel has no netem and the shaping needs it.
    pub async fn set_shaping(&self, index: u32, shaping: &Shaping, mtu: u32) -> Result<()> {
        let replace = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut netem_parent = TcHandle::ROOT.into();
        let mut netem_handle = ROOT_HANDLE;
        if let Some(rate) = shaping.rate_bytes_per_s {
            let message = qdisc_message(index, TcHandle::ROOT.into(), ROOT_HANDLE, "tbf", tbf_options(rate, mtu))?;
            self.qdisc_request(
                RouteNetlinkMessage::NewQueueDiscipline(message),
                replace,
                format!("shape link {index} to {rate} bytes/s (tbf)"),
            )
            .await?;
            (netem_parent, netem_handle) = (ROOT_HANDLE | 1, CHILD_HANDLE);
        }
        if shaping.needs_netem() {
            let message = qdisc_message(index, netem_parent, netem_handle, "netem", netem_options(shaping))?;
            let op = format!("delay, jitter or loss on link {index} (netem)");
            return match self.qdisc_request(RouteNetlinkMessage::NewQueueDiscipline(message), replace, op.clone()).await
            {
                // The kernel answers ENOENT for a qdisc kind it has no module for.
                Err(e) if e.errno() == Some(libc::ENOENT) => Err(NetdevError::unsupported(
                    op,
                    "this kernel has no netem queueing discipline (sch_netem, CONFIG_NET_SCH_NETEM): it cannot delay, jitter or drop packets",
                )),
                other => other,
            };
        }
        Ok(())
    }

    /// Makes link `index`'s egress carry `shaping` (`None`: none of merak's),
    /// given its root qdisc as read; whether anything changed.
    pub async fn ensure_shaping(
        &self,
        index: u32,
        mtu: u32,
        root: Option<&RootQdisc>,
        shaping: Option<&Shaping>,
    ) -> Result<bool> {
        match shaping {
            Some(shaping) if root.is_some_and(|r| r.carries(shaping)) => Ok(false),
            Some(shaping) => self.set_shaping(index, shaping, mtu).await.map(|()| true),
            None if root.is_some_and(RootQdisc::is_merak) => self.clear_shaping(index).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether this kernel can add a netem qdisc, tried on a scratch device
    /// named `scratch` in this connection's namespace (a tunnel left down,
    /// so that nothing is sent and no other link is touched), removed after.
    /// `Err(why)` when it cannot.
    pub async fn probe_netem(&self, scratch: &str) -> Result<std::result::Result<(), String>> {
        if let Some(stale) = self.link(scratch).await? {
            self.delete_link(stale.index).await?;
        }
        self.create_tunnel(scratch, 1, std::net::Ipv4Addr::LOCALHOST, 9, 1500).await?;
        let link = self
            .link(scratch)
            .await?
            .ok_or_else(|| NetdevError::invalid(format!("the netem probe {scratch} vanished right after creation")))?;
        let delay = Shaping { delay_us: 1000, ..Shaping::default() };
        let tried = self.set_shaping(link.index, &delay, link.mtu).await.map_err(|e| e.to_string());
        self.delete_link(link.index).await?;
        Ok(tried)
    }

    /// Removes merak's shaping from link `index`; another root qdisc (not
    /// merak's) is left alone.
    pub async fn clear_shaping(&self, index: u32) -> Result<()> {
        let Some(root) = self.root_qdisc(index).await? else { return Ok(()) };
        if !root.is_merak() {
            return Ok(());
        }
        let index = i32::try_from(index).map_err(|_| NetdevError::invalid(format!("link index {index}")))?;
        let mut message = TcMessage::with_index(index);
        message.header.parent = TcHandle::ROOT;
        message.header.handle = TcHandle::from(ROOT_HANDLE);
        match self
            .qdisc_request(
                RouteNetlinkMessage::DelQueueDiscipline(message),
                NLM_F_REQUEST | NLM_F_ACK,
                format!("remove the shaping of link {index}"),
            )
            .await
        {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The root qdisc of link `index`, if it has one of its own (not the
    /// kernel's default, which has no handle).
    pub async fn root_qdisc(&self, index: u32) -> Result<Option<RootQdisc>> {
        Ok(self.root_qdiscs().await?.remove(&index))
    }

    /// Every link's root qdisc in this namespace, by link index, but the
    /// kernel's defaults: one dump for all.
    pub async fn root_qdiscs(&self) -> Result<HashMap<u32, RootQdisc>> {
        let op = "read the qdiscs".to_string();
        let mut dump = NetlinkMessage::from(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()));
        dump.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(dump).map_err(|e| NetdevError::new(op.clone(), e))?;
        let mut found = HashMap::new();
        let mut netem_below = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(qdisc)) => {
                    let Ok(index) = u32::try_from(qdisc.header.index) else { continue };
                    let root = root_of(&qdisc);
                    if qdisc.header.parent == TcHandle::ROOT && root.handle != 0 {
                        found.insert(index, root);
                    } else if u32::from(qdisc.header.parent) == ROOT_HANDLE | 1 && root.kind == "netem" {
                        netem_below.push(index);
                    }
                }
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(NetdevError::new(op, rtnetlink::Error::NetlinkError(error)));
                }
                _ => {}
            }
        }
        for index in netem_below {
            if let Some(root) = found.get_mut(&index) {
                root.netem_below = true;
            }
        }
        Ok(found)
    }

    async fn qdisc_request(&self, message: RouteNetlinkMessage, flags: u16, op: String) -> Result<()> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        self.acknowledged(request, op).await
    }
}

fn root_of(qdisc: &TcMessage) -> RootQdisc {
    let mut root = RootQdisc {
        kind: String::new(),
        handle: u32::from(qdisc.header.handle),
        rate_bytes_per_s: None,
        netem_below: false,
    };
    let mut rate64 = None;
    for attribute in &qdisc.attributes {
        match attribute {
            TcAttribute::Kind(kind) => root.kind = kind.clone(),
            // A kind netlink-packet-route does not know keeps its options
            // as one raw attribute: TCA_OPTIONS itself.
            TcAttribute::Options(options) => {
                for option in options {
                    let TcOption::Other(nla) = option else { continue };
                    let mut value = vec![0; nla.value_len()];
                    nla.emit_value(&mut value);
                    for (kind, value) in attributes(&value) {
                        match kind {
                            // tc_tbf_qopt: the rate's `rate` field ends its first 12 bytes.
                            TCA_TBF_PARMS => {
                                root.rate_bytes_per_s = value
                                    .get(8..12)
                                    .and_then(|b| b.try_into().ok())
                                    .map(|b| u64::from(u32::from_ne_bytes(b)))
                            }
                            TCA_TBF_RATE64 => {
                                rate64 = value.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if root.kind == "tbf" {
        root.rate_bytes_per_s = rate64.or(root.rate_bytes_per_s);
    } else {
        root.rate_bytes_per_s = None;
    }
    root
}

/// The attributes in `bytes` as (type, value), stopping at the first
/// malformed one (the kernel's answer is trusted no further than its lengths).
fn attributes(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        let Some(value) = rest.get(4..length) else { break };
        found.push((kind, value));
        rest = rest.get((length + 3) & !3..).unwrap_or_default();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_the_bucket_holds_two_frames_at_least() {
        assert_eq!(nla(1, &[7, 7, 7]), [7, 0, 1, 0, 7, 7, 7, 0], "the length counts no padding");
        let two = [nla(1, &[1, 2, 3]), nla(6, &[9; 4])].concat();
        assert_eq!(attributes(&two), [(1, &[1u8, 2, 3][..]), (6, &[9u8; 4][..])]);
        assert_eq!(attributes(&[200, 0, 1, 0, 1]), [], "a length past the end is not read");
        assert_eq!(burst_bytes(125_000, 1500), 2 * 1514, "1 Mbit/s: two frames");
        assert_eq!(burst_bytes(125_000_000, 1500), 1_250_000, "1 Gbit/s: 10 ms");
        let options = tbf_options(6_250_000, 1500);
        assert_eq!(&options[4..6], &[0, LINKLAYER_ETHERNET]);
        assert_eq!(u32::from_ne_bytes(options[12..16].try_into().unwrap()), 6_250_000);
        assert_eq!(options.len(), 40 + 8, "parameters and burst, no 64-bit rate below 4 GB/s");
        assert!(tbf_options(1 << 33, 1500).len() > 48, "a 64-bit rate above");
        let netem =
            netem_options(&Shaping { rate_bytes_per_s: None, delay_us: 10_000, jitter_us: 0, loss_ppm: 500_000 });
        assert_eq!(u32::from_ne_bytes(netem[0..4].try_into().unwrap()), 10_000_000 >> 6);
        assert_eq!(u32::from_ne_bytes(netem[8..12].try_into().unwrap()), u32::MAX / 2);
    }
}

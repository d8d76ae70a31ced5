//! Network-device operations over one netlink connection, which is bound to
//! the namespace it was opened in (see [`crate::netns`]). Every operation is a
//! single rtnetlink request; nothing spawns `ip`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use std::net::Ipv4Addr;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};

/// A MAC address.
pub type Mac = [u8; 6];

#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct NetdevError {
    op: String,
    #[source]
    source: io::Error,
}

impl NetdevError {
    pub(crate) fn new(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        let source = match source {
            rtnetlink::Error::NetlinkError(message) => message.to_io(),
            other => io::Error::other(other.to_string()),
        };
        NetdevError { op: op.into(), source }
    }

    /// A request this crate refuses to send (a value out of the kernel's range).
    pub(crate) fn invalid(op: impl Into<String>) -> Self {
        NetdevError { op: op.into(), source: io::Error::from_raw_os_error(libc::EINVAL) }
    }

    /// A kernel that lacks what the request needs, said in words.
    pub(crate) fn unsupported(op: impl Into<String>, why: &str) -> Self {
        NetdevError { op: op.into(), source: io::Error::new(io::ErrorKind::Unsupported, why.to_string()) }
    }

    /// The errno the kernel answered with, if it was the kernel that refused.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

pub type Result<T> = std::result::Result<T, NetdevError>;

/// What the kernel reports about a link, reduced to what this project reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub up: bool,
    pub mtu: u32,
    pub controller: Option<u32>,
    /// A VXLAN device's VNI and unicast remote (a point-to-point tunnel has one).
    pub vxlan: Option<VxlanState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanState {
    pub vni: u32,
    pub remote: Option<Ipv4Addr>,
    pub port: u16,
}

impl LinkState {
    fn from_message(message: &LinkMessage) -> Self {
        let mut state = LinkState {
            index: message.header.index,
            name: String::new(),
            mac: None,
            up: message.header.flags.contains(LinkFlags::Up),
            mtu: 0,
            controller: None,
            vxlan: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => state.name = name.clone(),
                LinkAttribute::Address(bytes) => state.mac = bytes.as_slice().try_into().ok(),
                LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
                LinkAttribute::Controller(index) => state.controller = Some(*index),
                LinkAttribute::LinkInfo(infos) => state.vxlan = vxlan_state(infos),
                _ => {}
            }
        }
        state
    }
}

fn vxlan_state(infos: &[LinkInfo]) -> Option<VxlanState> {
    let attributes = infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(attributes)) => Some(attributes),
        _ => None,
    })?;
    let mut state = VxlanState { vni: 0, remote: None, port: 0 };
    for attribute in attributes {
        match attribute {
            InfoVxlan::Id(vni) => state.vni = *vni,
            InfoVxlan::Group(remote) => state.remote = Some(*remote),
            InfoVxlan::Port(port) => state.port = *port,
            _ => {}
        }
    }
    Some(state)
}

/// A netlink route connection; cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: rtnetlink::Handle,
}

impl Netlink {
    /// A connection in the calling process's own namespace.
    pub fn current() -> io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Wraps a netlink socket opened elsewhere (possibly in another namespace).
    /// Must be called inside a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: we hand over ownership of a valid netlink socket fd.
        let socket = unsafe { netlink_sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> Result<Vec<LinkState>> {
        let messages: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(|e| NetdevError::new("list links", e))?;
        Ok(messages.iter().map(LinkState::from_message).collect())
    }

    /// The link with this name, or None.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>> {
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(Some(message)) => Ok(Some(LinkState::from_message(&message))),
            Ok(None) => Ok(None),
            Err(e) => {
                let error = NetdevError::new(format!("get link {name}"), e);
                if error.errno() == Some(libc::ENODEV) { Ok(None) } else { Err(error) }
            }
        }
    }

    /// Creates a bridge that is up; returns its index.
    pub async fn create_bridge(&self, name: &str) -> Result<u32> {
        let mut message = named(name);
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        let op = || format!("create bridge {name}");
        self.handle.link().add(message).execute().await.map_err(|e| NetdevError::new(op(), e))?;
        match self.link(name).await? {
            Some(bridge) => Ok(bridge.index),
            None => Err(NetdevError { op: op(), source: io::Error::other("it vanished right after creation") }),
        }
    }

    /// Creates a veth pair: `name` in this connection's namespace and `peer`
    /// directly in the namespace `peer_ns` (one request; the pair never shows
    /// up in the root namespace). Both ends start down.
    pub async fn create_veth(&self, name: &str, peer: &str, peer_ns: &impl AsRawFd) -> Result<()> {
        self.create_veth_at(name, 0, None, None, peer, peer_ns).await
    }

    /// Sets a link up and, when given, its controller (bridge) and MAC, in
    /// one request.
    pub async fn set_link(&self, index: u32, controller: Option<u32>, mac: Option<Mac>) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(controller) = controller {
            message.attributes.push(LinkAttribute::Controller(controller));
        }
        if let Some(mac) = mac {
            message.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        self.handle.link().set(message).execute().await.map_err(|e| NetdevError::new(format!("set link {index}"), e))
    }

    /// Takes a link down (routes over it stop being used).
    pub async fn set_link_down(&self, index: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.change_mask = LinkFlags::Up;
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("set link {index} down"), e))
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = NetdevError::new(format!("delete link {index}"), e);
                if error.errno() == Some(libc::ENODEV) { Ok(()) } else { Err(error) }
            }
        }
    }

    /// The addresses on a link, as (address, prefix length).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetdevError::new(format!("list addresses of link {index}"), e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, ip, prefix_len)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("add {ip}/{prefix_len} to link {index}"), e))
    }

    pub async fn delete_address(&self, index: u32, ip: IpAddr, prefix_len: u8) -> Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.index = index;
        message.header.prefix_len = prefix_len;
        message.attributes.push(AddressAttribute::Local(ip));
        message.attributes.push(AddressAttribute::Address(ip));
        self.handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("delete {ip}/{prefix_len} from link {index}"), e))
    }
}

/// The UDP port of VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN over IPv4 adds to a frame: outer Ethernet, IP, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;

impl Netlink {
    /// Like [`Netlink::create_veth`], and the local end gets interface index
    /// `index` (0: any; a fixed one is deterministic in a fresh namespace) and,
    /// when given, MAC `mac`.
    pub async fn create_veth_at(
        &self,
        name: &str,
        index: u32,
        mac: Option<Mac>,
        mtu: Option<u32>,
        peer: &str,
        peer_ns: &impl AsRawFd,
    ) -> Result<()> {
        let mut peer_message = named(peer);
        peer_message.attributes.push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut message = named(name);
        message.header.index = index;
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
            peer_message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            message.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]));
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("create veth {name} <-> {peer}"), e))
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("MTU {mtu} on link {index}"), e))
    }

    /// Turns IPv6 address generation off on a link (no link-local address,
    /// so no DAD, router solicitation or MLD when it goes up). The kernel
    /// refuses this attribute in the request that creates a link.
    pub async fn disable_ipv6_addresses(&self, index: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
            AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
        ])]));
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("IPv6 address generation off on link {index}"), e))
    }

    /// Like [`Netlink::set_link`], addressing the link by name.
    pub async fn set_link_by_name(&self, name: &str, controller: Option<u32>) -> Result<()> {
        let mut message = named(name);
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(controller) = controller {
            message.attributes.push(LinkAttribute::Controller(controller));
        }
        self.handle.link().set(message).execute().await.map_err(|e| NetdevError::new(format!("set link {name}"), e))
    }

    /// A permanent ARP entry: `ip` is at `mac` on link `index`.
    pub async fn add_neighbour(&self, index: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip.into())
            .link_layer_address(&mac)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("neighbour {ip} on link {index}"), e))
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("default route via {gateway}"), e))
    }

    /// Creates a VXLAN device (down) in namespace `target_ns`, whose UDP
    /// socket stays in this connection's namespace, over the link `underlay`.
    pub async fn create_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        underlay: u32,
        target_ns: &impl AsRawFd,
    ) -> Result<()> {
        let mut message = named(name);
        message.attributes.push(LinkAttribute::NetNsFd(target_ns.as_raw_fd()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                InfoVxlan::Local(local),
                InfoVxlan::Link(underlay),
                InfoVxlan::Port(VXLAN_PORT),
                InfoVxlan::Learning(true),
            ])),
        ]));
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("create vxlan {name} (VNI {vni})"), e))
    }

    /// Creates a point-to-point VXLAN tunnel (down) in this connection's
    /// namespace: its frames go to `remote` on UDP `port` over whatever
    /// route leads there (a pod's eth0), with VNI `vni`, and its MTU is set
    /// explicitly (the kernel derives none without a lower device).
    pub async fn create_tunnel(&self, name: &str, vni: u32, remote: Ipv4Addr, port: u16, mtu: u32) -> Result<()> {
        let mut message = named(name);
        message.attributes.push(LinkAttribute::Mtu(mtu));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                InfoVxlan::Group(remote),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("create tunnel {name} (VNI {vni} to {remote})"), e))
    }

    /// Head-end replication: flood unknown and broadcast frames of the VXLAN
    /// device `index` to `remote` as well (`bridge fdb append 00:..:00 dst`).
    pub async fn add_flood_destination(&self, index: u32, remote: Ipv4Addr) -> Result<()> {
        let request = flood_entry(index, remote, RouteNetlinkMessage::NewNeighbour, NLM_F_CREATE | NLM_F_APPEND);
        self.acknowledged(request, format!("flood entry {remote} on link {index}")).await
    }

    /// Stops flooding to `remote` on the VXLAN device `index`.
    pub async fn remove_flood_destination(&self, index: u32, remote: Ipv4Addr) -> Result<()> {
        let request = flood_entry(index, remote, RouteNetlinkMessage::DelNeighbour, 0);
        self.acknowledged(request, format!("remove flood entry {remote} on link {index}")).await
    }

    /// Sends a request rtnetlink has no builder for and waits for its ack.
    pub(crate) async fn acknowledged(&self, request: NetlinkMessage<RouteNetlinkMessage>, op: String) -> Result<()> {
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(|e| NetdevError::new(op.clone(), e))?;
        while let Some(response) = responses.next().await {
            if let NetlinkPayload::Error(error) = response.payload
                && error.code.is_some()
            {
                return Err(NetdevError::new(op, rtnetlink::Error::NetlinkError(error)));
            }
        }
        Ok(())
    }

    /// The remote addresses the VXLAN device `index` floods to.
    pub async fn flood_destinations(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        let entries = self.fdb(&format!("list flood entries of link {index}")).await?;
        Ok(entries.into_iter().filter(|e| e.index == index && e.mac == [0; 6]).filter_map(|e| e.remote).collect())
    }

    /// Forwarding entries the kernel learned from traffic (not static or
    /// permanent ones), on any bridge port or VXLAN device here.
    pub async fn learned_fdb_entries(&self) -> Result<Vec<FdbEntry>> {
        let entries = self.fdb("list forwarding entries").await?;
        Ok(entries.into_iter().filter(|e| e.learned).collect())
    }

    /// Deletes a forwarding entry; one that has aged out meanwhile is fine.
    pub async fn delete_fdb_entry(&self, entry: &FdbEntry) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = entry.index;
        message.header.flags = entry.flags;
        message.attributes.push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
        if let Some(remote) = entry.remote {
            message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(remote)));
        }
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        match self
            .acknowledged(
                request,
                format!("delete forwarding entry {} on link {}", format_mac(&entry.mac), entry.index),
            )
            .await
        {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Every bridge-family neighbour entry (bridge and VXLAN forwarding
    /// databases) in this namespace.
    async fn fdb(&self, op: &str) -> Result<Vec<FdbEntry>> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        let mut dump = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(message));
        dump.header.flags = NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(dump).map_err(|e| NetdevError::new(op, e))?;
        let mut entries = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour)) => {
                    if let Some(entry) = FdbEntry::from_message(&neighbour) {
                        entries.push(entry);
                    }
                }
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(NetdevError::new(op, rtnetlink::Error::NetlinkError(error)));
                }
                _ => {}
            }
        }
        Ok(entries)
    }
}

/// One entry of a bridge's or VXLAN device's forwarding database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// The bridge port or VXLAN device.
    pub index: u32,
    pub mac: Mac,
    /// For VXLAN devices: the remote endpoint.
    pub remote: Option<Ipv4Addr>,
    /// Learned from traffic, as opposed to static or permanent.
    pub learned: bool,
    /// Whose table it is in (the bridge's, or the device's own).
    flags: NeighbourFlags,
}

impl FdbEntry {
    fn from_message(neighbour: &NeighbourMessage) -> Option<Self> {
        let mac = neighbour.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })?;
        // In the bridge family the remote arrives as raw bytes.
        let remote = neighbour.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => None,
        });
        let learned = !matches!(neighbour.header.state, NeighbourState::Permanent | NeighbourState::Noarp);
        Some(FdbEntry { index: neighbour.header.ifindex, mac, remote, learned, flags: neighbour.header.flags })
    }
}

/// An all-zero-MAC forwarding entry of a VXLAN device: where it floods to.
fn flood_entry(
    index: u32,
    remote: Ipv4Addr,
    kind: fn(NeighbourMessage) -> RouteNetlinkMessage,
    extra_flags: u16,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(remote)));
    let mut request = NetlinkMessage::from(kind(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
    request
}

fn named(name: &str) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.to_string()));
    message
}

/// Formats a MAC the usual way, `02:4d:...`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

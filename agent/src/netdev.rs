//! Network-device operations over one netlink connection, which is bound to
//! the namespace it was opened in (see [`crate::netns`]). Every operation is a
//! single rtnetlink request; nothing spawns `ip`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};

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
    fn new(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        let source = match source {
            rtnetlink::Error::NetlinkError(message) => message.to_io(),
            other => io::Error::other(other.to_string()),
        };
        NetdevError { op: op.into(), source }
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
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => state.name = name.clone(),
                LinkAttribute::Address(bytes) => state.mac = bytes.as_slice().try_into().ok(),
                LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
                LinkAttribute::Controller(index) => state.controller = Some(*index),
                _ => {}
            }
        }
        state
    }
}

/// A netlink route connection; cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
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
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetdevError::new("list links", e))?;
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

    /// Creates a bridge that is up.
    pub async fn create_bridge(&self, name: &str) -> Result<()> {
        let mut message = named(name);
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("create bridge {name}"), e))
    }

    /// Creates a veth pair: `name` in this connection's namespace and `peer`
    /// directly in the namespace `peer_ns` (one request; the pair never shows
    /// up in the root namespace). Both ends start down.
    pub async fn create_veth(&self, name: &str, peer: &str, peer_ns: &impl AsRawFd) -> Result<()> {
        let mut peer_message = named(peer);
        peer_message.attributes.push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut message = named(name);
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
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| NetdevError::new(format!("set link {index}"), e))
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

//! The floor a benchmark compares against: the same EVM devices made with the
//! fewest netlink calls in one process, nothing around them. Per EVM, one
//! thread-local `unshare` + bind mount, then all requests for the EVM sent in
//! one `sendmsg` batch and one for its host-side port.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// One EVM to make: its namespace, host-side port, address and gateway.
pub struct FloorEvm {
    pub namespace: String,
    pub port: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: [u8; 6],
    pub gateway: Ipv4Addr,
    pub gateway_mac: [u8; 6],
}

/// A namespace holding a bridge, like a VPC router on one EPM.
pub struct FloorRouter {
    pub namespace: String,
    fd: OwnedFd,
    socket: Socket,
    bridge: u32,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::new(io::Error::last_os_error().kind(), format!("{what}: {}", io::Error::last_os_error())))
    }
}

fn home() -> io::Result<File> {
    File::open("/proc/self/ns/net")
}

/// Creates a named namespace from this thread and returns a netlink socket in
/// it; the thread goes back to `home` after.
fn new_namespace(name: &str, home: &File) -> io::Result<(OwnedFd, Socket)> {
    let path = format!("/run/netns/{name}");
    File::create_new(&path)?;
    // SAFETY: unshare/mount/setns on this thread with valid arguments.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNET), "unshare")?;
        let target = std::ffi::CString::new(path.clone()).map_err(io::Error::other)?;
        check(
            libc::mount(
                c"/proc/thread-self/ns/net".as_ptr(),
                target.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
            "mount",
        )?;
    }
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let fd: OwnedFd = File::open(&path)?.into();
    // SAFETY: back to the original namespace.
    unsafe { check(libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET), "setns")? };
    Ok((fd, socket))
}

/// Sends the messages in one batch and reads one ack for each.
fn batch(socket: &Socket, messages: Vec<RouteNetlinkMessage>, flags: &[u16]) -> io::Result<()> {
    let mut buffer = Vec::new();
    for (i, (message, flags)) in messages.into_iter().zip(flags).enumerate() {
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = *flags;
        packet.header.sequence_number = i as u32 + 1;
        packet.finalize();
        let start = buffer.len();
        buffer.resize(start + packet.buffer_len(), 0);
        packet.serialize(&mut buffer[start..]);
    }
    let count = flags.len();
    socket.send(&buffer, 0)?;
    let mut acks = 0;
    let mut receive = vec![0u8; 64 * 1024];
    while acks < count {
        let n = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let packet =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..n]).map_err(io::Error::other)?;
            let length = packet.header.length as usize;
            if let NetlinkPayload::Error(error) = &packet.payload {
                if let Some(code) = error.code {
                    return Err(io::Error::from_raw_os_error(-code.get()));
                }
                acks += 1;
            }
            offset += length.max(1);
        }
    }
    Ok(())
}

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const SET: u16 = NLM_F_REQUEST | NLM_F_ACK;

fn link(index: u32, name: Option<&str>) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    if let Some(name) = name {
        message.attributes.push(LinkAttribute::IfName(name.into()));
    }
    message
}

impl FloorRouter {
    pub fn new(namespace: &str) -> io::Result<Self> {
        let home = home()?;
        let (fd, socket) = new_namespace(namespace, &home)?;
        let mut bridge = link(0, Some("br0"));
        bridge.header.flags = LinkFlags::Up;
        bridge.header.change_mask = LinkFlags::Up;
        bridge.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        batch(&socket, vec![RouteNetlinkMessage::NewLink(bridge)], &[CREATE])?;
        Ok(FloorRouter { namespace: namespace.into(), fd, socket, bridge: 2 })
    }

    /// Makes one EVM: namespace, veth (eth0 inside, its peer a bridge port
    /// here), IPv6 address generation off, address, links up, the gateway's
    /// neighbour entry and the default route.
    pub fn create(&self, evm: &FloorEvm, home: &File) -> io::Result<()> {
        let (_, socket) = new_namespace(&evm.namespace, home)?;
        let mut peer = link(0, Some(&evm.port));
        peer.attributes.push(LinkAttribute::NetNsFd(self.fd.as_raw_fd()));
        let mut veth = link(2, Some("eth0"));
        veth.attributes.push(LinkAttribute::Address(evm.mac.to_vec()));
        veth.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let mut no_ipv6 = link(2, None);
        no_ipv6.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
            AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
        ])]));
        let mut address = AddressMessage::default();
        address.header.family = AddressFamily::Inet;
        address.header.prefix_len = evm.prefix_len;
        address.header.index = 2;
        address.attributes.push(AddressAttribute::Local(evm.ip.into()));
        address.attributes.push(AddressAttribute::Address(evm.ip.into()));
        let up = |index| {
            let mut message = link(index, None);
            message.header.flags = LinkFlags::Up;
            message.header.change_mask = LinkFlags::Up;
            message
        };
        let mut neighbour = NeighbourMessage::default();
        neighbour.header.family = AddressFamily::Inet;
        neighbour.header.ifindex = 2;
        neighbour.header.state = NeighbourState::Permanent;
        neighbour.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(evm.gateway)));
        neighbour.attributes.push(NeighbourAttribute::LinkLayerAddress(evm.gateway_mac.to_vec()));
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = 254;
        route.header.protocol = RouteProtocol::Static;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(evm.gateway)));
        batch(
            &socket,
            vec![
                RouteNetlinkMessage::NewLink(veth),
                RouteNetlinkMessage::SetLink(no_ipv6),
                RouteNetlinkMessage::NewAddress(address),
                RouteNetlinkMessage::SetLink(up(2)),
                RouteNetlinkMessage::SetLink(up(1)),
                RouteNetlinkMessage::NewNeighbour(neighbour),
                RouteNetlinkMessage::NewRoute(route),
            ],
            &[CREATE, SET, CREATE, SET, SET, CREATE, CREATE],
        )?;
        let mut port = up(0);
        port.attributes.push(LinkAttribute::IfName(evm.port.clone()));
        port.attributes.push(LinkAttribute::Controller(self.bridge));
        batch(&self.socket, vec![RouteNetlinkMessage::SetLink(port)], &[SET])
    }

    /// How many ports the bridge still has (the kernel removes an EVM's port
    /// when it has finished tearing the EVM's namespace down).
    pub fn ports(&self) -> io::Result<usize> {
        let mut dump = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
        dump.header.flags = NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP;
        dump.finalize();
        let mut buffer = vec![0; dump.buffer_len()];
        dump.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        let mut ports = 0;
        let mut receive = vec![0u8; 256 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut receive[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..n])
                    .map_err(io::Error::other)?;
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(ports),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(message)) => {
                        ports +=
                            usize::from(message.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(_))));
                    }
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(io::Error::other(error.to_string()));
                    }
                    _ => {}
                }
                offset += (packet.header.length as usize).max(1);
            }
        }
    }
}

/// Unmounts and removes a named namespace.
pub fn delete_namespace(name: &str) -> io::Result<()> {
    let path = std::ffi::CString::new(format!("/run/netns/{name}")).map_err(io::Error::other)?;
    // SAFETY: umount2 on a path we made.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    fs::remove_file(format!("/run/netns/{name}"))
}

pub fn home_namespace() -> io::Result<File> {
    home()
}

/// The floor runs on the same `/run/netns` as the provider: a private mount
/// point (see merak_netdev::netns::prepare_run_dir).
pub fn prepare() -> io::Result<()> {
    merak_netdev::netns::prepare_run_dir()
}

//! ICMP echo from inside an EVM's namespace: a raw socket opened on a thread
//! that entered the namespace, so no `ping` process is spawned. Echo
//! requests go with DF set: a packet too big for a hop is lost, never
//! fragmented, so a full-size probe tests the path's MTU.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::netns;

/// The largest echo payload asked for (a jumbo frame's, less headers).
pub const MAX_PAYLOAD: u32 = 9000 - 28;
/// The payload of a probe that asks for none.
const DEFAULT_PAYLOAD: usize = 8;

/// How big the echo requests are.
#[derive(Debug, Clone, Copy)]
pub enum Payload {
    /// This many bytes (0: a small probe).
    Bytes(u32),
    /// The largest the EVM's eth0 MTU allows: the MTU less the IP and ICMP headers.
    FullSize,
}

/// Whether `to` answers one echo request with `payload` sent from
/// namespace `from` within `timeout`.
pub fn ping(from: &str, to: Ipv4Addr, payload: Payload, timeout: Duration) -> io::Result<bool> {
    // "": the agent's own namespace (an EPM pod's), where the thread already is.
    let ns = if from.is_empty() { None } else { Some(netns::open_fd(from).map_err(io::Error::other)?) };
    // The socket belongs to the namespace it was created in.
    let (socket, eth0_mtu) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(ns) = &ns {
                    netns::enter(ns)?;
                }
                // SAFETY: socket(2); ownership goes to the OwnedFd.
                let fd =
                    unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: fd is fresh and owned here.
                let socket = unsafe { OwnedFd::from_raw_fd(fd) };
                let dont_fragment: libc::c_int = libc::IP_PMTUDISC_DO;
                // SAFETY: setsockopt(2) with a c_int option value.
                let set = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_MTU_DISCOVER,
                        (&dont_fragment as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if set != 0 {
                    return Err(io::Error::last_os_error());
                }
                let mtu = match payload {
                    Payload::FullSize => Some(interface_mtu(&socket, "eth0")?),
                    Payload::Bytes(_) => None,
                };
                Ok((socket, mtu))
            })
            .join()
            .map_err(|_| io::Error::other("ping thread panicked"))?
    })?;

    // A fresh identifier per probe: an ICMP flow is tracked by it, and a
    // probe must not ride on an earlier one's conntrack entry (30 s), which
    // would let a reply through rules that now deny it.
    static PROBES: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let sequence = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = (std::process::id() as u16) ^ (to.to_bits() as u16) ^ sequence.wrapping_mul(0x9e37);
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(to).to_be() },
        sin_zero: [0; 8],
    };
    // Like `ping -c 3 -W`: a first packet can be lost while the path warms
    // up (ARP on both sides, VXLAN and bridge learning), so send up to three
    // echo requests spread over the timeout; any reply counts.
    const ATTEMPTS: u32 = 3;
    let started = Instant::now();
    let payload = match (payload, eth0_mtu) {
        (Payload::FullSize, Some(mtu)) => mtu.saturating_sub(28).min(MAX_PAYLOAD) as usize,
        (Payload::Bytes(0), _) | (Payload::FullSize, None) => DEFAULT_PAYLOAD,
        (Payload::Bytes(bytes), _) => bytes.min(MAX_PAYLOAD) as usize,
    };
    let mut buffer = vec![0u8; payload + 128];
    for attempt in 0..ATTEMPTS {
        if !send_echo(&socket, &address, id, attempt as u16 + 1, payload)? {
            return Ok(false);
        }
        let deadline = started + timeout * (attempt + 1) / ATTEMPTS;
        if wait_reply(&socket, deadline, id, to, &mut buffer) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Sends one echo request; false when the kernel says the address is unreachable.
fn send_echo(
    socket: &OwnedFd,
    address: &libc::sockaddr_in,
    id: u16,
    sequence: u16,
    payload: usize,
) -> io::Result<bool> {
    let mut packet = vec![0u8; 8 + payload];
    packet[0] = 8; // echo request
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    for (byte, fill) in packet[8..].iter_mut().zip(b"merak-pi".iter().cycle()) {
        *byte = *fill;
    }
    let checksum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    // SAFETY: sendto(2) with a valid buffer and sockaddr_in.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        let error = io::Error::last_os_error();
        // No route or no neighbour: unreachable, not a failure of the
        // probe; larger than the EVM's own MTU: it cannot pass either.
        return match error.raw_os_error() {
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EMSGSIZE) => Ok(false),
            _ => Err(error),
        };
    }
    Ok(true)
}

/// Waits until `deadline` for an echo reply with our `id` from `to`.
fn wait_reply(socket: &OwnedFd, deadline: Instant, id: u16, to: Ipv4Addr, buffer: &mut [u8]) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut poll = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll(2) on one valid fd.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: recv(2) into our buffer.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if n <= 0 {
            continue;
        }
        let packet = &buffer[..n as usize];
        // A raw socket sees the IP header; the ICMP message follows it.
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let Some(icmp) = packet.get(header_len..) else { continue };
        let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && source == to {
            return true;
        }
    }
}

/// The MTU of interface `name` in the namespace `socket` was made in.
fn interface_mtu(socket: &OwnedFd, name: &str) -> io::Result<u32> {
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounded.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU fills ifr_ifru.ifru_mtu of the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel set the mtu member.
    Ok(unsafe { request.ifr_ifru.ifru_mtu }.max(0) as u32)
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

//! IPv4 routes over one or many next hops (ECMP), as `ip route replace`
//! makes them: what a routed fabric's switches forward by.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteNextHopFlags, RouteProtocol, RouteScope,
};

use crate::netdev::{NetdevError, Netlink, Result};

/// One way out: link `index`, via `gateway` (none: the destination is on
/// the link itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub index: u32,
    pub gateway: Option<Ipv4Addr>,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// Sorted.
    pub hops: Vec<Hop>,
    /// Put there by a program (`proto static`, as ours are), not by the
    /// kernel for an address's own prefix.
    pub static_route: bool,
}

/// A route as wanted, its next hops by device name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedRoute {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// (device, gateway); more than one: ECMP.
    pub hops: Vec<(String, Option<Ipv4Addr>)>,
}

fn gateway_of(attributes: &[RouteAttribute]) -> Option<Ipv4Addr> {
    attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

impl Netlink {
    /// Makes `destination/prefix_len` go out over `hops` (more than one:
    /// equal-cost multipath), replacing the route it had.
    pub async fn replace_route(&self, destination: Ipv4Addr, prefix_len: u8, hops: &[Hop]) -> Result<()> {
        let op = format!("route {destination}/{prefix_len} over {} next hops", hops.len());
        let mut builder = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(destination, prefix_len);
        match hops {
            [] => return Err(NetdevError::invalid(format!("{op}: a route needs a next hop"))),
            [Hop { index, gateway: None }] => builder = builder.output_interface(*index).scope(RouteScope::Link),
            // On-link: a point-to-point link's far end is there whatever
            // the prefixes (an EPM's /32 reaches its edge switch's port).
            [Hop { index, gateway: Some(gateway) }] => {
                builder = builder.output_interface(*index).gateway(*gateway).onlink()
            }
            many => {
                let next_hops = many
                    .iter()
                    .map(|hop| {
                        let mut next = RouteNextHop::default();
                        next.interface_index = hop.index;
                        next.flags = RouteNextHopFlags::Onlink;
                        if let Some(gateway) = hop.gateway {
                            next.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
                        }
                        next
                    })
                    .collect();
                builder = builder.multipath(next_hops);
            }
        }
        self.handle.route().add(builder.build()).replace().execute().await.map_err(|e| NetdevError::new(op, e))
    }

    /// Makes this namespace's static routes `wanted`, each replaced only
    /// when it differs, and removes the static routes it should not have.
    /// `owned`: the devices whose routes are ours to remove (`None`: every
    /// static route's; a pod's own default route over eth0 is not). A
    /// route over a device not here (yet) is left out: whoever makes the
    /// device routes over it. What changed.
    pub async fn converge_routes(
        &self,
        wanted: &[WantedRoute],
        owned: Option<&HashSet<String>>,
    ) -> Result<Vec<String>> {
        let links = self.links().await?;
        let indexes: HashMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();
        let owned_index =
            |index: u32| owned.is_none_or(|owned| links.iter().any(|l| l.index == index && owned.contains(&l.name)));
        let present = self.routes_v4().await?;
        let mut changes = Vec::new();
        for stale in present.iter().filter(|r| {
            r.static_route
                && r.hops.iter().all(|hop| owned_index(hop.index))
                && !wanted.iter().any(|w| w.destination == r.destination && w.prefix_len == r.prefix_len)
        }) {
            self.delete_route(stale.destination, stale.prefix_len).await?;
            changes.push(format!("route {}/{} removed", stale.destination, stale.prefix_len));
        }
        for route in wanted {
            let hops: Option<Vec<Hop>> = route
                .hops
                .iter()
                .map(|(device, gateway)| Some(Hop { index: *indexes.get(device.as_str())?, gateway: *gateway }))
                .collect();
            let Some(mut hops) = hops.filter(|h| !h.is_empty()) else { continue };
            hops.sort();
            let (destination, prefix_len) = (route.destination, route.prefix_len);
            if !present.iter().any(|r| r.destination == destination && r.prefix_len == prefix_len && r.hops == hops) {
                self.replace_route(destination, prefix_len, &hops).await?;
                changes.push(format!("route {destination}/{prefix_len} over {} next hops", hops.len()));
            }
        }
        Ok(changes)
    }

    /// Deletes the route to `destination/prefix_len`; one already gone is fine.
    pub async fn delete_route(&self, destination: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let route =
            rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(destination, prefix_len).build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = NetdevError::new(format!("delete route {destination}/{prefix_len}"), e);
                if error.errno() == Some(libc::ESRCH) { Ok(()) } else { Err(error) }
            }
        }
    }

    /// The IPv4 routes of the main table that go out of a link (not the
    /// kernel's local ones).
    pub async fn routes_v4(&self) -> Result<Vec<RouteState>> {
        let filter = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle.route().get(filter).execute();
        let mut routes = Vec::new();
        while let Some(message) = dump.try_next().await.map_err(|e| NetdevError::new("list routes", e))? {
            if let Some(route) = route_state(&message) {
                routes.push(route);
            }
        }
        Ok(routes)
    }
}

fn route_state(message: &RouteMessage) -> Option<RouteState> {
    if message.header.address_family != AddressFamily::Inet || message.header.table != 254 {
        return None;
    }
    let destination = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mut hops: Vec<Hop> = message
        .attributes
        .iter()
        .flat_map(|a| match a {
            RouteAttribute::MultiPath(next_hops) => {
                next_hops.iter().map(|n| Hop { index: n.interface_index, gateway: gateway_of(&n.attributes) }).collect()
            }
            RouteAttribute::Oif(index) => vec![Hop { index: *index, gateway: gateway_of(&message.attributes) }],
            _ => Vec::new(),
        })
        .collect();
    hops.sort();
    let static_route = message.header.protocol == RouteProtocol::Static;
    (!hops.is_empty()).then_some(RouteState {
        destination,
        prefix_len: message.header.destination_prefix_length,
        hops,
        static_route,
    })
}

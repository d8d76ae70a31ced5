//! What an emulation on this host needs of the host-wide kernel limits
//! (see merak_netdev::host_limits, which raises them and gives them back).
//! A topology is a user of the raised limits from its first apply until
//! its destroy: its directory names it.

use merak_netdev::host_limits::Limits;
pub use merak_netdev::host_limits::{ensure, release};

/// Pings `merak_pingall` has in flight at once (EPMs at once × pings per agent).
pub const PINGS_AT_ONCE: u64 = 4;

/// For `epms` EPMs, `evms` EVMs in all, and `largest_subnet` EVMs in the
/// largest subnet: a full mesh of underlay neighbours plus a gateway and a
/// few peers per EVM (doubled for headroom), and a backlog for the
/// broadcasts of the pings `merak_pingall` runs at once into the largest
/// subnet.
pub fn needs(epms: u64, evms: u64, largest_subnet: u64) -> Limits {
    Limits {
        arp_entries: (2 * (epms * epms + 4 * evms) + 1024).next_power_of_two(),
        backlog: (PINGS_AT_ONCE * largest_subnet + 1000).next_power_of_two(),
    }
}

/// What a topology alone needs: nothing past the host's defaults (its EPMs
/// resolve only the neighbours they talk to, which the default ARP cap
/// holds); it still counts as a user, so that the limits its overlay raises
/// stay until it is gone.
pub fn underlay_needs() -> Limits {
    Limits::default()
}

//! merak-netdev: network namespaces (`netns`) and the devices in them
//! (`netdev`), each operation a netlink request, and the host-wide kernel
//! limits an emulation outgrows (`host_limits`). A library of its own: the
//! agent builds EPMs' and EVMs' devices with it, and the provider's local
//! runtime builds the underlay with it, neither through the other.

pub mod host_limits;
pub mod netdev;
pub mod netns;
pub mod routes;
pub mod shaping;

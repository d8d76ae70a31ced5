//! merak-netdev: network namespaces (`netns`) and the devices in them
//! (`netdev`), each operation a netlink request. A library of its own: the
//! agent builds EPMs' and EVMs' devices with it, and the provider's local
//! runtime builds the underlay with it, neither through the other.

pub mod netdev;
pub mod netns;
pub mod routes;
pub mod shaping;

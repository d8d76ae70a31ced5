//! Names of everything the emulation puts on a host, derived only from the
//! topology name and indexes, so `terraform plan` can show them before apply
//! and two topologies never collide.
//!
//! Host-visible names are `merak-<topology>.<object>`. Topology names are DNS
//! labels, which cannot contain '.', so the dot makes the topology part
//! unambiguous: `merak-a.*` never matches the objects of topology `a-b`.

/// The prefix of every namespace the emulation creates on a host.
pub const HOST_PREFIX: &str = "merak-";

/// Inside each vswitch namespace: the bridge.
pub const BRIDGE: &str = "br0";
/// Inside each EPM namespace: the data-plane NIC.
pub const EPM_DATA_NIC: &str = "eth1";
/// Inside a non-root vswitch namespace: the port towards its parent.
pub const UPLINK: &str = "up";

/// The prefix shared by all host objects of one topology.
pub fn topology_prefix(topology: &str) -> String {
    format!("{HOST_PREFIX}{topology}.")
}

pub fn epm_name(index: u32) -> String {
    format!("epm-{index}")
}

pub fn vswitch_name(level: u32, index: u32) -> String {
    format!("s{level}-{index}")
}

pub fn namespace(topology: &str, object: &str) -> String {
    format!("{}{object}", topology_prefix(topology))
}

/// The bridge port facing EPM `epm_index` in its top-of-rack namespace.
pub fn host_port(epm_index: u32) -> String {
    format!("e{}", base36(epm_index))
}

/// The bridge port facing child vswitch `child_index` in its parent's namespace.
pub fn downlink_port(child_index: u32) -> String {
    format!("d{}", base36(child_index))
}

/// Lowercase base 36: short, and always within Linux's 15-byte interface names
/// (u32::MAX is 7 digits).
pub fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(7);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Whether `name` is a DNS label (RFC 1123): 1 to 63 lowercase letters,
/// digits and '-', not starting or ending with '-'.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Whether a namespace object name (the part after the topology prefix) is
/// an EPM or a vswitch of the underlay, as opposed to overlay objects.
pub fn is_underlay_object(object: &str) -> bool {
    let numbered = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    let two_numbers = |rest: &str| rest.split_once('-').is_some_and(|(a, b)| numbered(a) && numbered(b));
    if let Some(index) = object.strip_prefix("epm-").or_else(|| object.strip_prefix("core-")) {
        return numbered(index);
    }
    // A fat tree's `edge-<pod>-<i>` and `agg-<pod>-<i>`, a tree's `s<level>-<i>`.
    object
        .strip_prefix("edge-")
        .or_else(|| object.strip_prefix("agg-"))
        .or_else(|| object.strip_prefix('s'))
        .is_some_and(two_numbers)
}

/// The router namespace of a VPC on an EPM: `merak-<t>.epm-3.r.<vpc>`.
pub fn router_namespace(topology: &str, epm: &str, vpc: &str) -> String {
    format!("{}.r.{vpc}", namespace(topology, epm))
}

/// The prefix of all router namespaces on an EPM.
pub fn router_prefix(topology: &str, epm: &str) -> String {
    format!("{}.r.", namespace(topology, epm))
}

/// An EVM's namespace: `merak-<t>.vm.<group>.<k>`.
pub fn evm_namespace(topology: &str, group: &str, k: u32) -> String {
    namespace(topology, &format!("vm.{group}.{k}"))
}

pub fn evm_name(group: &str, k: u32) -> String {
    format!("{group}-{k}")
}

/// In a router namespace: a subnet's bridge and VXLAN device.
pub fn subnet_bridge(subnet_id: u32) -> String {
    format!("b{}", base36(subnet_id))
}

pub fn subnet_vxlan(subnet_id: u32) -> String {
    format!("x{}", base36(subnet_id))
}

/// The router-side end of EVM `k` of group `group_id`. Group ids stay below
/// 36^4 and EVM indexes below 36^5, so the name fits 15 bytes.
pub fn evm_port(group_id: u32, k: u32) -> String {
    format!("v{}.{}", base36(group_id), base36(k))
}

/// With the hybrid device model: the end, on the subnet's bridge, of the veth
/// pair to the EVM's own bridge (the agent names the plug's other devices
/// after it, changing only the first letter).
pub fn hybrid_port(group_id: u32, k: u32) -> String {
    format!("o{}.{}", base36(group_id), base36(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_is_short_and_distinct() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u32::MAX).len(), 7);
        let names: std::collections::HashSet<_> = (0..50_000).map(host_port).collect();
        assert_eq!(names.len(), 50_000);
        assert!(host_port(u32::MAX).len() <= 15);
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("demo"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("Demo"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn underlay_objects_are_told_from_overlay_ones() {
        assert!(is_underlay_object("epm-12"));
        assert!(is_underlay_object("s2-7"));
        assert!(!is_underlay_object("epm-12.r.blue"));
        assert!(!is_underlay_object("vm.web.3"));
        assert!(!is_underlay_object("s-1"));
        assert!(is_underlay_object("edge-3-1") && is_underlay_object("agg-0-0") && is_underlay_object("core-15"));
        assert!(!is_underlay_object("edge-3") && !is_underlay_object("core-") && !is_underlay_object("netem-probe"));
        assert!(evm_port(36u32.pow(4) - 1, 36u32.pow(5) - 1).len() <= 15);
    }

    #[test]
    fn prefixes_do_not_overlap() {
        let a = namespace("a", &epm_name(1));
        assert!(a.starts_with(&topology_prefix("a")));
        assert!(!namespace("a-b", &epm_name(1)).starts_with(&topology_prefix("a")));
    }
}

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
    fn prefixes_do_not_overlap() {
        let a = namespace("a", &epm_name(1));
        assert!(a.starts_with(&topology_prefix("a")));
        assert!(!namespace("a-b", &epm_name(1)).starts_with(&topology_prefix("a")));
    }
}

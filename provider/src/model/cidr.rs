//! IPv4 prefixes and the addresses handed out from them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not in CIDR notation (like \"10.0.0.0/16\")")]
    Syntax(String),
    #[error("only IPv4 prefixes are supported, got {0:?}")]
    NotIpv4(String),
    #[error("prefix length {0} is larger than 32")]
    PrefixTooLong(u8),
    #[error("{given} has host bits set; the prefix is {network}")]
    HostBitsSet { given: String, network: Ipv4Cidr },
}

impl Ipv4Cidr {
    /// 0.0.0.0/0, which contains every prefix.
    pub const ANY: Ipv4Cidr = Ipv4Cidr { network: Ipv4Addr::UNSPECIFIED, prefix_len: 0 };

    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        let cidr = Ipv4Cidr { network, prefix_len };
        (prefix_len <= 32 && u32::from(network) & !cidr.mask() == 0).then_some(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len)) }
    }

    /// Usable host addresses: all but the network and broadcast addresses
    /// (for /31 and /32, none: they cannot hold a network of hosts).
    pub fn host_capacity(&self) -> u64 {
        let size = 1u64 << (32 - u32::from(self.prefix_len));
        size.saturating_sub(2)
    }

    /// Whether `other` lies wholly inside this prefix.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && u32::from(other.network) & self.mask() == u32::from(self.network)
    }

    /// Whether two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The host index of `ip` (inverse of [`Ipv4Cidr::host`]).
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u64> {
        let offset = u64::from(u32::from(ip)).checked_sub(u64::from(u32::from(self.network)) + 1)?;
        (offset < self.host_capacity()).then_some(offset)
    }

    /// The `n`th host address (0 = the first after the network address).
    pub fn host(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.host_capacity()).then(|| Ipv4Addr::from(u32::from(self.network) + 1 + n as u32))
    }
}

/// Parses the CIDR in configuration attribute `attribute`, with a hint on
/// how to fix it.
pub fn parse_attribute(attribute: &'static str, text: &str) -> Result<Ipv4Cidr, super::SpecError> {
    text.parse::<Ipv4Cidr>().map_err(|error| {
        let hint = match &error {
            CidrError::HostBitsSet { network, .. } => format!(" Use \"{network}\"."),
            _ => " Use an IPv4 prefix such as \"10.0.0.0/16\".".to_string(),
        };
        super::SpecError::new(attribute, format!("Invalid {attribute}"), format!("{error}.{hint}"))
    })
}

/// Ranges no emulated network may use: "this network", loopback,
/// link-local, multicast, and the reserved block up to the broadcast
/// address. Addresses there are refused or handled specially by the kernel.
pub const RESERVED: [(Ipv4Cidr, &str); 5] = [
    (Ipv4Cidr { network: Ipv4Addr::new(0, 0, 0, 0), prefix_len: 8 }, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Cidr { network: Ipv4Addr::new(127, 0, 0, 0), prefix_len: 8 }, "loopback (127.0.0.0/8)"),
    (Ipv4Cidr { network: Ipv4Addr::new(169, 254, 0, 0), prefix_len: 16 }, "link-local (169.254.0.0/16)"),
    (Ipv4Cidr { network: Ipv4Addr::new(224, 0, 0, 0), prefix_len: 4 }, "multicast (224.0.0.0/4)"),
    (Ipv4Cidr { network: Ipv4Addr::new(240, 0, 0, 0), prefix_len: 4 }, "reserved and broadcast (240.0.0.0/4)"),
];

impl Ipv4Cidr {
    /// The reserved range this prefix overlaps, described.
    pub fn reserved_overlap(&self) -> Option<&'static str> {
        RESERVED.iter().find(|(range, _)| range.overlaps(self)).map(|(_, what)| *what)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (address, length) = text.split_once('/').ok_or_else(|| CidrError::Syntax(text.into()))?;
        // Digits only: u8's parser also takes "+24", which would make the
        // planned value differ from the configured one.
        if length.is_empty() || length.len() > 2 || !length.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::Syntax(text.into()));
        }
        let prefix_len: u8 = length.parse().map_err(|_| CidrError::Syntax(text.into()))?;
        let address: Ipv4Addr = match address.parse() {
            Ok(address) => address,
            Err(_) if address.contains(':') => return Err(CidrError::NotIpv4(text.into())),
            Err(_) => return Err(CidrError::Syntax(text.into())),
        };
        if prefix_len > 32 {
            return Err(CidrError::PrefixTooLong(prefix_len));
        }
        let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix_len)) };
        let network = Ipv4Cidr { network: Ipv4Addr::from(u32::from(address) & mask), prefix_len };
        if network.network != address {
            return Err(CidrError::HostBitsSet { given: text.into(), network });
        }
        Ok(network)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let cidr: Ipv4Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.1.0.0/16");
        assert_eq!(cidr.host_capacity(), 65534);
        assert_eq!(cidr.host(0), Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(cidr.host(65533), Some(Ipv4Addr::new(10, 1, 255, 254)));
        assert_eq!(cidr.host(65534), None);
        assert!(matches!("10.1.0.1/16".parse::<Ipv4Cidr>(), Err(CidrError::HostBitsSet { .. })));
        assert!(matches!("10.1.0.0".parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("10.1.0.0/33".parse::<Ipv4Cidr>(), Err(CidrError::PrefixTooLong(33))));
        assert!(matches!("fd00::/64".parse::<Ipv4Cidr>(), Err(CidrError::NotIpv4(_))));
        assert!(matches!("banana/8".parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))));
        for odd in ["10.0.0.0/+24", "10.0.0.0/ 8", "10.0.0.0/024", "10.0.0.0/", "10.0.0.0/-0"] {
            assert!(matches!(odd.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))), "{odd}");
        }
        assert_eq!("10.0.0.0/31".parse::<Ipv4Cidr>().unwrap().host_capacity(), 0);
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().host_capacity(), (1 << 32) - 2);
    }

    #[test]
    fn reserved_ranges() {
        for reserved in [
            "0.0.0.0/0",
            "127.0.0.0/24",
            "224.0.0.0/24",
            "169.254.1.0/24",
            "255.255.255.0/24",
            "0.0.0.0/8",
            "192.0.0.0/2",
        ] {
            assert!(reserved.parse::<Ipv4Cidr>().unwrap().reserved_overlap().is_some(), "{reserved}");
        }
        for fine in ["10.0.0.0/8", "192.168.0.0/16", "100.64.0.0/10", "1.0.0.0/8", "223.255.255.0/24"] {
            assert_eq!(fine.parse::<Ipv4Cidr>().unwrap().reserved_overlap(), None, "{fine}");
        }
    }
}

//! Client address ranges for allow and block lists.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An inclusive range of client addresses of one family, or every address.
///
/// Written as the routing crate writes client patterns: `10.1.2.3`, `2001:db8::1`,
/// `10.0.0.0/8`, `2001:db8::/32`, `10.0.0.1-10.0.0.9`, `192.168.*` / `192.168.*.*` (IPv4
/// wildcard octets) and `*` (any address). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are
/// taken as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IpRange {
    /// Every address of both families.
    Any,
    /// IPv4 `start..=end`.
    V4 {
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
    },
    /// IPv6 `start..=end`.
    V6 {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
}

/// Why an address range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an IP address, CIDR block, range or wildcard: {why}")]
pub struct IpRangeError {
    text: String,
    why: &'static str,
}

impl IpRange {
    /// Exactly `ip`.
    pub fn single(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(a) => Self::V4 { start: a, end: a },
            IpAddr::V6(a) => Self::V6 { start: a, end: a },
        }
    }

    /// `addr/len`. Host bits after the prefix are refused.
    pub fn cidr(addr: IpAddr, len: u8) -> Result<Self, IpRangeError> {
        let text = format!("{addr}/{len}");
        match addr {
            IpAddr::V4(a) => {
                let (start, end) = prefix_bounds(u128::from(u32::from(a)), u32::from(len), 32)
                    .map_err(|why| IpRangeError { text, why })?;
                // Both bounds are below 2^32 because the input was.
                let v4 = |n: u128| Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX));
                Ok(Self::V4 { start: v4(start), end: v4(end) })
            }
            IpAddr::V6(a) => {
                if let Some(v4) = a.to_ipv4_mapped() {
                    if len >= 96 {
                        return Self::cidr(IpAddr::V4(v4), len - 96);
                    }
                }
                let (start, end) = prefix_bounds(u128::from(a), u32::from(len), 128)
                    .map_err(|why| IpRangeError { text, why })?;
                Ok(Self::V6 { start: Ipv6Addr::from(start), end: Ipv6Addr::from(end) })
            }
        }
    }

    /// `start..=end`, both of one family, `start <= end`.
    pub fn range(start: IpAddr, end: IpAddr) -> Result<Self, IpRangeError> {
        let err = |why| IpRangeError { text: format!("{start}-{end}"), why };
        match (canonical(start), canonical(end)) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Ok(Self::V4 { start: a, end: b }),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Ok(Self::V6 { start: a, end: b }),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Err(err("the range runs backwards"))
            }
            _ => Err(err("the range mixes IPv4 and IPv6")),
        }
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, canonical(ip)) {
            (Self::Any, _) => true,
            (Self::V4 { start, end }, IpAddr::V4(a)) => *start <= a && a <= *end,
            (Self::V6 { start, end }, IpAddr::V6(a)) => *start <= a && a <= *end,
            _ => false,
        }
    }

    fn wildcard(t: &str) -> Option<Self> {
        let parts: Vec<&str> = t.split('.').collect();
        if parts.is_empty() || parts.len() > 4 {
            return None;
        }
        let mut start = [0u8; 4];
        let mut end = [255u8; 4];
        let mut wild = false;
        for (i, p) in parts.iter().enumerate() {
            if *p == "*" {
                wild = true;
            } else if wild {
                return None; // `10.*.1.2`: a number after a wildcard
            } else {
                let n: u8 = p.parse().ok()?;
                start[i] = n;
                end[i] = n;
            }
        }
        if !wild {
            return None;
        }
        Some(Self::V4 { start: Ipv4Addr::from(start), end: Ipv4Addr::from(end) })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_bounds(n: u128, len: u32, bits: u32) -> Result<(u128, u128), &'static str> {
    if len > bits {
        return Err("the prefix length is longer than the address");
    }
    let host_bits = bits - len;
    let host_mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    if n & host_mask != 0 {
        return Err("host bits are set after the prefix; write the network address");
    }
    Ok((n, n | host_mask))
}

impl FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = |why| IpRangeError { text: s.to_owned(), why };
        if t == "*" {
            return Ok(Self::Any);
        }
        if let Some((addr, len)) = t.split_once('/') {
            let addr: IpAddr = addr.trim().parse().map_err(|_| err("not an address"))?;
            let len: u8 = len.trim().parse().map_err(|_| err("not a prefix length"))?;
            return Self::cidr(addr, len).map_err(|e| err(e.why));
        }
        if t.contains('*') {
            return Self::wildcard(t).ok_or_else(|| err("bad IPv4 wildcard"));
        }
        if let Some((a, b)) = t.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| err("not an address"))?;
            let b: IpAddr = b.trim().parse().map_err(|_| err("not an address"))?;
            return Self::range(a, b).map_err(|e| err(e.why));
        }
        t.parse::<IpAddr>().map(Self::single).map_err(|_| err("not an address"))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::V4 { start, end } => {
                fmt_range(f, u128::from(u32::from(*start)), u128::from(u32::from(*end)), 32, |n| {
                    IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
                })
            }
            Self::V6 { start, end } => {
                fmt_range(f, u128::from(*start), u128::from(*end), 128, |n| {
                    IpAddr::V6(Ipv6Addr::from(n))
                })
            }
        }
    }
}

/// `a`, `a/len` when the range is exactly a prefix, else `a-b`.
fn fmt_range(
    f: &mut fmt::Formatter<'_>,
    start: u128,
    end: u128,
    bits: u32,
    addr: impl Fn(u128) -> IpAddr,
) -> fmt::Result {
    if start == end {
        return write!(f, "{}", addr(start));
    }
    if let Some(len) = prefix_len(start, end, bits) {
        return write!(f, "{}/{len}", addr(start));
    }
    write!(f, "{}-{}", addr(start), addr(end))
}

/// The prefix length when `start..=end` is exactly one CIDR block.
pub(crate) fn prefix_len(start: u128, end: u128, bits: u32) -> Option<u32> {
    let span = end - start;
    if span.checked_add(1).is_some_and(|n| !n.is_power_of_two()) {
        return None;
    }
    let host_bits = 128 - span.leading_zeros();
    if host_bits > bits || start & span != 0 {
        return None;
    }
    Some(bits - host_bits)
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, shown: &str) {
        let r: IpRange = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(r.to_string(), shown, "{text}");
        assert_eq!(shown.parse::<IpRange>(), Ok(r), "{shown} reads back");
    }

    #[test]
    fn forms() {
        check("10.1.2.3", "10.1.2.3");
        check(" 10.0.0.0/8 ", "10.0.0.0/8");
        check("10.0.0.1-10.0.0.9", "10.0.0.1-10.0.0.9");
        check("10.0.0.0-10.0.0.255", "10.0.0.0/24");
        check("192.168.*", "192.168.0.0/16");
        check("192.168.1.*", "192.168.1.0/24");
        check("*", "*");
        check("2001:db8::/32", "2001:db8::/32");
        check("::ffff:10.0.0.1", "10.0.0.1");
        check("::ffff:10.0.0.0/104", "10.0.0.0/8");
        check("0.0.0.0/0", "0.0.0.0/0");
        check("::/0", "::/0");
    }

    #[test]
    fn bad_forms_say_why() {
        for (text, why) in [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "prefix length is longer"),
            ("10.0.0.9-10.0.0.1", "backwards"),
            ("10.0.0.1-::1", "mixes IPv4 and IPv6"),
            ("10.*.1.2", "wildcard"),
            ("example.com", "not an address"),
        ] {
            let e = text.parse::<IpRange>().expect_err(text).to_string();
            assert!(e.contains(why) && e.contains(text), "{text}: {e}");
        }
    }

    #[test]
    fn contains() {
        let r: IpRange = "10.0.0.0/8".parse().expect("cidr");
        assert!(r.contains("10.200.1.2".parse().expect("ip")));
        assert!(r.contains("::ffff:10.200.1.2".parse().expect("ip")));
        assert!(!r.contains("11.0.0.0".parse().expect("ip")));
        assert!(!r.contains("::1".parse().expect("ip")));
        assert!(IpRange::Any.contains("::1".parse().expect("ip")));
    }
}

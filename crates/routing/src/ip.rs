//! Client address patterns: an address, a CIDR block, a range, IPv4 wildcards, or `*`.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are treated as the IPv4 address, both in
//! patterns and in the addresses checked against them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One client address pattern, compiled to an inclusive range of addresses.
///
/// Accepted forms: `10.1.2.3`, `2001:db8::1`, `10.0.0.0/8`, `2001:db8::/32`,
/// `10.0.0.1-10.0.0.9`, `192.168.*` / `192.168.*.*` (IPv4 wildcard octets), and `*` (any address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPattern {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Any,
    V4 { start: u32, end: u32 },
    V6 { start: u128, end: u128 },
}

/// Why an address pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpPatternError {
    /// Not an address, CIDR block, range or wildcard.
    #[error("`{0}` is not an IP address, CIDR block, range or wildcard")]
    Syntax(String),
    /// The prefix length is longer than the address.
    #[error("prefix length /{len} is too long for `{addr}` (at most /{max})")]
    PrefixTooLong {
        /// The address part.
        addr: String,
        /// The prefix length.
        len: u32,
        /// The longest prefix for this family.
        max: u32,
    },
    /// The CIDR address has bits set after the prefix.
    #[error("`{0}` has host bits set; write the network address (e.g. `{1}`)")]
    HostBits(String, String),
    /// The range runs backwards or mixes families.
    #[error("range `{0}` runs backwards or mixes IPv4 and IPv6")]
    BadRange(String),
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d`; other addresses are returned unchanged.
pub use smartproxy_limits::canonical_ip;

const MAPPED_PREFIX: u128 = 0xffff_0000_0000;

impl IpPattern {
    /// Matches every address.
    pub const ANY: Self = Self { kind: Kind::Any };

    /// Parses a pattern.
    pub fn parse(s: &str) -> Result<Self, IpPatternError> {
        let t = s.trim();
        let syntax = || IpPatternError::Syntax(s.to_owned());
        if t == "*" {
            return Ok(Self::ANY);
        }
        if t.is_empty() {
            return Err(syntax());
        }
        if let Some((addr, len)) = t.split_once('/') {
            let ip: IpAddr = addr.trim().parse().map_err(|_| syntax())?;
            let len: u32 = len.trim().parse().map_err(|_| syntax())?;
            return Self::cidr(ip, len, t);
        }
        if t.contains('*') {
            return Self::wildcard(t).ok_or_else(syntax);
        }
        if let Some((a, b)) = t.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| syntax())?;
            let b: IpAddr = b.trim().parse().map_err(|_| syntax())?;
            let (a, b) = (Self::single(a), Self::single(b));
            return match (a.kind, b.kind) {
                (Kind::V4 { start, .. }, Kind::V4 { end, .. }) if start <= end => {
                    Ok(Self { kind: Kind::V4 { start, end } })
                }
                (Kind::V6 { start, .. }, Kind::V6 { end, .. }) if start <= end => {
                    Ok(Self { kind: Kind::V6 { start, end } })
                }
                _ => Err(IpPatternError::BadRange(t.to_owned())),
            };
        }
        let ip: IpAddr = t.parse().map_err(|_| syntax())?;
        Ok(Self::single(ip))
    }

    /// The pattern matching exactly `ip`.
    pub fn single(ip: IpAddr) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let n = u32::from(v4);
                Self { kind: Kind::V4 { start: n, end: n } }
            }
            IpAddr::V6(v6) => {
                let n = u128::from(v6);
                Self { kind: Kind::V6 { start: n, end: n } }
            }
        }
    }

    fn cidr(ip: IpAddr, len: u32, text: &str) -> Result<Self, IpPatternError> {
        let host_bits = |net: String| IpPatternError::HostBits(text.to_owned(), net);
        match ip {
            IpAddr::V4(v4) => {
                if len > 32 {
                    return Err(IpPatternError::PrefixTooLong {
                        addr: v4.to_string(),
                        len,
                        max: 32,
                    });
                }
                let n = u32::from(v4);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                if n & !mask != 0 {
                    return Err(host_bits(format!("{}/{len}", Ipv4Addr::from(n & mask))));
                }
                Ok(Self { kind: Kind::V4 { start: n, end: n | !mask } })
            }
            IpAddr::V6(v6) => {
                if len > 128 {
                    return Err(IpPatternError::PrefixTooLong {
                        addr: v6.to_string(),
                        len,
                        max: 128,
                    });
                }
                let n = u128::from(v6);
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                if n & !mask != 0 {
                    return Err(host_bits(format!("{}/{len}", Ipv6Addr::from(n & mask))));
                }
                let (start, end) = (n, n | !mask);
                // A block inside ::ffff:0:0/96 is an IPv4 block.
                if len >= 96 && start >> 32 == MAPPED_PREFIX >> 32 {
                    // Both ends are inside the /96, so the low 32 bits are the IPv4 range.
                    let (s4, e4) = ((start & 0xffff_ffff) as u32, (end & 0xffff_ffff) as u32);
                    return Ok(Self { kind: Kind::V4 { start: s4, end: e4 } });
                }
                Ok(Self { kind: Kind::V6 { start, end } })
            }
        }
    }

    /// `10.*`, `10.1.*`, `10.1.*.*`: trailing wildcard octets only.
    fn wildcard(t: &str) -> Option<Self> {
        let parts: Vec<&str> = t.split('.').collect();
        if parts.is_empty() || parts.len() > 4 {
            return None;
        }
        let mut start: u32 = 0;
        let mut end: u32 = 0;
        let mut seen_star = false;
        for i in 0..4 {
            let p = parts.get(i).copied().unwrap_or("*");
            let (lo, hi) = if p == "*" {
                seen_star = true;
                (0u32, 255u32)
            } else if seen_star {
                return None;
            } else {
                let v: u8 = p.parse().ok()?;
                (u32::from(v), u32::from(v))
            };
            start = (start << 8) | lo;
            end = (end << 8) | hi;
        }
        seen_star.then_some(Self { kind: Kind::V4 { start, end } })
    }

    /// Whether `ip` is matched (after mapping `::ffff:a.b.c.d` to IPv4).
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.kind, canonical_ip(ip)) {
            (Kind::Any, _) => true,
            (Kind::V4 { start, end }, IpAddr::V4(v4)) => {
                let n = u32::from(v4);
                start <= n && n <= end
            }
            (Kind::V6 { start, end }, IpAddr::V6(v6)) => {
                let n = u128::from(v6);
                start <= n && n <= end
            }
            _ => false,
        }
    }

    /// Number of leading bits fixed by the pattern, as a specificity measure (`*` is 0, an
    /// IPv4 address 32, an IPv6 address 128).
    pub fn fixed_bits(&self) -> u32 {
        match self.kind {
            Kind::Any => 0,
            Kind::V4 { start, end } => (start ^ end).leading_zeros(),
            Kind::V6 { start, end } => (start ^ end).leading_zeros(),
        }
    }
}

impl fmt::Display for IpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Any => f.write_str("*"),
            Kind::V4 { start, end } if start == end => write!(f, "{}", Ipv4Addr::from(start)),
            Kind::V6 { start, end } if start == end => write!(f, "{}", Ipv6Addr::from(start)),
            Kind::V4 { start, end } => {
                let bits = (start ^ end).leading_zeros();
                if bits < 32 && (start ^ end) == u32::MAX >> bits {
                    write!(f, "{}/{bits}", Ipv4Addr::from(start))
                } else if bits == 0 && start == 0 && end == u32::MAX {
                    write!(f, "0.0.0.0/0")
                } else {
                    write!(f, "{}-{}", Ipv4Addr::from(start), Ipv4Addr::from(end))
                }
            }
            Kind::V6 { start, end } => {
                let bits = (start ^ end).leading_zeros();
                if bits < 128 && (start ^ end) == u128::MAX >> bits {
                    write!(f, "{}/{bits}", Ipv6Addr::from(start))
                } else {
                    write!(f, "{}-{}", Ipv6Addr::from(start), Ipv6Addr::from(end))
                }
            }
        }
    }
}

/// A list of patterns; matches when any pattern matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList(pub(crate) Box<[IpPattern]>);

impl IpList {
    /// Compiles a list, returning the index and error of every bad entry.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, Vec<(usize, IpPatternError)>> {
        let mut ok = Vec::with_capacity(items.len());
        let mut errs = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match IpPattern::parse(s.as_ref()) {
                Ok(p) => ok.push(p),
                Err(e) => errs.push((i, e)),
            }
        }
        if errs.is_empty() { Ok(Self(ok.into_boxed_slice())) } else { Err(errs) }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any pattern matches `ip`.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.0.iter().any(|p| p.contains(ip))
    }

    /// The patterns.
    pub fn patterns(&self) -> &[IpPattern] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forms() {
        let p = IpPattern::parse("10.0.0.0/8").unwrap();
        assert!(p.contains(ip("10.255.1.2")));
        assert!(p.contains(ip("::ffff:10.1.1.1")));
        assert!(!p.contains(ip("11.0.0.0")));
        assert_eq!(p.to_string(), "10.0.0.0/8");

        let p = IpPattern::parse("::ffff:192.168.0.0/112").unwrap();
        assert!(p.contains(ip("192.168.4.4")));
        assert_eq!(p.to_string(), "192.168.0.0/16");

        let p = IpPattern::parse("::ffff:127.0.0.1").unwrap();
        assert!(p.contains(ip("127.0.0.1")));

        let p = IpPattern::parse("192.168.*").unwrap();
        assert!(p.contains(ip("192.168.9.9")) && !p.contains(ip("192.169.0.0")));
        assert_eq!(p.to_string(), "192.168.0.0/16");

        let p = IpPattern::parse("10.0.0.1-10.0.0.9").unwrap();
        assert!(p.contains(ip("10.0.0.9")) && !p.contains(ip("10.0.0.10")));
        assert_eq!(p.to_string(), "10.0.0.1-10.0.0.9");

        let p = IpPattern::parse("2001:db8::/32").unwrap();
        assert!(p.contains(ip("2001:db8:1::1")) && !p.contains(ip("2001:db9::")));
        assert!(!p.contains(ip("10.0.0.1")));

        assert!(IpPattern::parse("*").unwrap().contains(ip("::1")));
        assert!(IpPattern::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert_eq!(IpPattern::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0",
            "x",
            "10.*.1",
            "1.2.3.4-1.2.3.1",
            "::1-1.2.3.4",
            "::/129",
            "10.0.0.0/x",
        ] {
            assert!(IpPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            IpPattern::parse("10.0.0.1/8").unwrap_err().to_string(),
            "`10.0.0.1/8` has host bits set; write the network address (e.g. `10.0.0.0/8`)"
        );
    }
}

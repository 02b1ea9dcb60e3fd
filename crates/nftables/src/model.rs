//! The input: one [`NftRoute`] per route that the kernel forwards. Plain data, no dependency on
//! the route model of `smartproxy-routing`; the engine converts its routes into these.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::ip::IpRange;

/// A route forwarded by kernel NAT rules: packets to one of `ports` on a local address are
/// DNATed to one of `targets`.
///
/// Build one with [`NftRoute::new`] and set the optional fields directly:
///
/// ```
/// use smartproxy_nftables::{NftRoute, PortRange, Protocol, Target};
///
/// let mut route = NftRoute::new("db", [PortRange::single(5432)], [Target::new("10.0.0.5", 5432)]);
/// route.protocol = Protocol::Tcp;
/// route.preserve_source_ip = true;
/// route.max_connections = Some(500);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NftRoute {
    /// The route's name: unique, it keys the counters.
    pub name: String,
    /// Listening ports (numbers or inclusive ranges).
    pub ports: Vec<PortRange>,
    /// The local addresses that listen (the engine's `bind`). Empty, or an unspecified
    /// address (`0.0.0.0`, `::`) of the route's family: every local address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_addresses: Vec<IpAddr>,
    /// `tcp`, `udp`, or `all` (both).
    #[serde(default)]
    pub protocol: Protocol,
    /// Where the packets go. More than one: balanced per new flow by [`Self::balance`].
    pub targets: Vec<Target>,
    /// How a new flow picks one of several targets.
    #[serde(default)]
    pub balance: Balance,
    /// `true`: the target sees the client's address (it must route its replies back through
    /// this host). `false` (default): the source is masqueraded to this host's address.
    #[serde(default)]
    pub preserve_source_ip: bool,
    /// When not empty, only clients in these ranges are forwarded; others are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow_list: Vec<IpRange>,
    /// Clients in these ranges are dropped (checked after the allow list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_block_list: Vec<IpRange>,
    /// At most this many flows of the route tracked by conntrack at once (`ct count`); new
    /// flows beyond it are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl NftRoute {
    /// A TCP route on `ports` to `targets`, masqueraded, round-robin, with no lists or limits.
    pub fn new(
        name: impl Into<String>,
        ports: impl IntoIterator<Item = PortRange>,
        targets: impl IntoIterator<Item = Target>,
    ) -> Self {
        Self {
            name: name.into(),
            ports: ports.into_iter().collect(),
            local_addresses: Vec::new(),
            protocol: Protocol::default(),
            targets: targets.into_iter().collect(),
            balance: Balance::default(),
            preserve_source_ip: false,
            ip_allow_list: Vec::new(),
            ip_block_list: Vec::new(),
            max_connections: None,
        }
    }
}

/// The transport protocols a route forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// TCP only (default).
    #[default]
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    All,
}

impl Protocol {
    /// Whether TCP is forwarded.
    pub const fn tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::All)
    }

    /// Whether UDP is forwarded.
    pub const fn udp(self) -> bool {
        matches!(self, Self::Udp | Self::All)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::All => "all",
        })
    }
}

/// How a new flow picks one of several targets. Established flows stay on their target
/// (conntrack keeps the NAT binding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Balance {
    /// In turn (`numgen inc`), the default.
    #[default]
    RoundRobin,
    /// At random (`numgen random`).
    Random,
    /// By a hash of the client address (`jhash`), so a client keeps its target while the
    /// target list is unchanged (the routing crate's `ip-hash`).
    SourceHash,
}

/// An inclusive range of ports; a single port is `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// One port.
    pub const fn single(port: u16) -> Self {
        Self { start: port, end: port }
    }

    /// `start..=end`. A range written backwards is refused by [`crate::check`].
    pub const fn new(start: u16, end: u16) -> Self {
        Self { start, end }
    }

    /// Whether the two ranges share a port.
    pub const fn overlaps(&self, other: &Self) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Why a port or port range was refused by [`PortRange::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a port or a \"first-last\" port range")]
pub struct PortRangeError(String);

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PortRangeError(s.to_owned());
        let t = s.trim();
        match t.split_once('-') {
            Some((a, b)) => Ok(Self::new(
                a.trim().parse().map_err(|_| err())?,
                b.trim().parse().map_err(|_| err())?,
            )),
            None => t.parse().map(Self::single).map_err(|_| err()),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end { s.serialize_u16(self.start) } else { s.collect_str(self) }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a \"first-last\" range")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortRange, E> {
                u16::try_from(n)
                    .map(PortRange::single)
                    .map_err(|_| E::custom(format_args!("port {n} is out of range 0..=65535")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortRange, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format_args!("port {n} is out of range 0..=65535")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortRange, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One destination: an IP address or a host name (resolved when the ruleset is built), and
/// a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Target {
    /// IP address (`10.0.0.5`, `2001:db8::5`, `[2001:db8::5]`) or host name.
    pub host: String,
    /// The port, or `"preserve"` to keep the port the client connected to.
    pub port: TargetPort,
}

impl Target {
    /// A target at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port: TargetPort::Port(port) }
    }

    /// A target at `host`, on the port the client connected to.
    pub fn preserve(host: impl Into<String>) -> Self {
        Self { host: host.into(), port: TargetPort::Preserve }
    }
}

/// The port of a [`Target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetPort {
    /// This port.
    Port(u16),
    /// The port the client connected to (any port of the route's ranges).
    Preserve,
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port(p) => write!(f, "{p}"),
            Self::Preserve => f.write_str("preserve"),
        }
    }
}

impl Serialize for TargetPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Port(p) => s.serialize_u16(*p),
            Self::Preserve => s.serialize_str("preserve"),
        }
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or \"preserve\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<TargetPort, E> {
                u16::try_from(n)
                    .map(TargetPort::Port)
                    .map_err(|_| E::custom(format_args!("port {n} is out of range 0..=65535")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<TargetPort, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format_args!("port {n} is out of range 0..=65535")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TargetPort, E> {
                if s == "preserve" {
                    Ok(TargetPort::Preserve)
                } else {
                    Err(E::custom(format_args!("`{s}` is not a port number or \"preserve\"")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_from_json() {
        let r: NftRoute = serde_json::from_str(
            r#"{"name":"db","ports":[5432,"9000-9010"],"protocol":"all",
                "targets":[{"host":"10.0.0.5","port":"preserve"},{"host":"10.0.0.6","port":6432}],
                "balance":"source-hash","preserve_source_ip":true,
                "ip_allow_list":["10.0.0.0/8"],"ip_block_list":["10.1.2.3"],"max_connections":7}"#,
        )
        .expect("valid route");
        assert_eq!(r.ports, [PortRange::single(5432), PortRange::new(9000, 9010)]);
        assert_eq!(r.protocol, Protocol::All);
        assert_eq!(r.targets[0], Target::preserve("10.0.0.5"));
        assert_eq!(r.targets[1], Target::new("10.0.0.6", 6432));
        assert_eq!(r.balance, Balance::SourceHash);
        assert_eq!(r.max_connections, Some(7));
        let back: NftRoute =
            serde_json::from_value(serde_json::to_value(&r).expect("serializes")).expect("reads");
        assert_eq!(back, r);
    }

    #[test]
    fn bad_ports_are_refused_with_the_text() {
        let e = serde_json::from_str::<PortRange>(r#""90-x""#).expect_err("not a range");
        assert!(e.to_string().contains("`90-x` is not a port"), "{e}");
        let e = serde_json::from_str::<PortRange>("70000").expect_err("too big");
        assert!(e.to_string().contains("port 70000 is out of range"), "{e}");
        let e = serde_json::from_str::<TargetPort>(r#""keep""#).expect_err("not preserve");
        assert!(e.to_string().contains("`keep` is not a port number"), "{e}");
    }
}

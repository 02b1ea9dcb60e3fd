//! Timeouts of long-lived connections: the route-level `timeouts` table, the keep-alive
//! treatments (SmartProxy's `keepAliveTreatment`) and TCP keepalive probe settings.
//!
//! These are the values as written; the engine resolves them against its `[defaults]` into
//! the timeouts of each connection.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// How the inactivity timeout and the lifetime of a connection are treated (SmartProxy's
/// `keepAliveTreatment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeepaliveTreatment {
    /// The inactivity timeout and the maximum lifetime as configured (default).
    #[default]
    Standard,
    /// The inactivity timeout times `keepalive_inactivity_multiplier`, and the extended
    /// lifetime (`extended_keepalive_lifetime`) unless the route sets `max_lifetime`.
    Extended,
    /// Never closed for inactivity; closed at shutdown, and at the end of a maximum lifetime
    /// only when one is set explicitly.
    Immortal,
}

impl KeepaliveTreatment {
    /// `"standard"`, `"extended"` or `"immortal"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Extended => "extended",
            Self::Immortal => "immortal",
        }
    }
}

impl fmt::Display for KeepaliveTreatment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TCP keepalive probes (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`) on
/// the client and backend sockets: a peer that vanished (behind a NAT, a dead host) is noticed
/// after `idle + interval * count` without traffic, without an application timeout.
///
/// Written as a table `{ idle = "60s", interval = "10s", count = 6 }` (missing keys take these
/// defaults), `false` (off) or `true` (on with the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TcpKeepalive {
    /// No probes.
    Off,
    /// Probes after `idle` without traffic, every `interval`, `count` unanswered ones close.
    On {
        /// Idle time before the first probe (whole seconds, 1 s to 32767 s).
        idle: Duration,
        /// Time between probes (whole seconds, 1 s to 32767 s).
        interval: Duration,
        /// Unanswered probes that declare the peer dead (1 to 127).
        count: u32,
    },
}

impl Default for TcpKeepalive {
    /// On: 60 s idle, 10 s interval, 6 probes (a dead peer is noticed after 2 minutes).
    fn default() -> Self {
        Self::On { idle: Duration::from_secs(60), interval: Duration::from_secs(10), count: 6 }
    }
}

/// The largest `TCP_KEEPIDLE` / `TCP_KEEPINTVL` Linux accepts, in seconds.
pub const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// The largest `TCP_KEEPCNT` Linux accepts.
pub const MAX_KEEPALIVE_COUNT: u32 = 127;

impl TcpKeepalive {
    /// Whether probes are on.
    pub const fn is_on(&self) -> bool {
        matches!(self, Self::On { .. })
    }

    /// The time after the last packet from a silent peer at which the connection is declared
    /// dead: `idle + interval * count` (`None` when off).
    pub fn detection_time(&self) -> Option<Duration> {
        match *self {
            Self::Off => None,
            Self::On { idle, interval, count } => Some(idle.saturating_add(interval * count)),
        }
    }

    /// The problems of these values, as (key, message) pairs: times must be whole seconds
    /// from 1 s to 32767 s, the count 1 to 127 (the kernel's limits).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let Self::On { idle, interval, count } = *self else { return Vec::new() };
        let mut out = Vec::new();
        for (key, d) in [("idle", idle), ("interval", interval)] {
            if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_KEEPALIVE_SECS {
                out.push((
                    key,
                    format!(
                        "`{}`: TCP keepalive times are whole seconds from 1s to {MAX_KEEPALIVE_SECS}s",
                        crate::duration::format(d)
                    ),
                ));
            }
        }
        if count == 0 || count > MAX_KEEPALIVE_COUNT {
            out.push((
                "count",
                format!("{count}: the probe count must be 1 to {MAX_KEEPALIVE_COUNT}"),
            ));
        }
        out
    }
}

impl fmt::Display for TcpKeepalive {
    /// `off`, or `60s+10s*6` (idle, interval, count).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Off => f.write_str("off"),
            Self::On { idle, interval, count } => write!(
                f,
                "{}+{}*{count}",
                crate::duration::format(idle),
                crate::duration::format(interval)
            ),
        }
    }
}

/// The table form of [`TcpKeepalive`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveTable {
    #[serde(default, with = "crate::duration::option")]
    idle: Option<Duration>,
    #[serde(default, with = "crate::duration::option")]
    interval: Option<Duration>,
    #[serde(default)]
    count: Option<u32>,
}

impl<'de> Deserialize<'de> for TcpKeepalive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TcpKeepalive;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false, true, or a table { idle, interval, count }")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<TcpKeepalive, E> {
                Ok(if b { TcpKeepalive::default() } else { TcpKeepalive::Off })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TcpKeepalive, A::Error> {
                // Through the caller's map access, so that key paths reach inside the table.
                let t = KeepaliveTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let TcpKeepalive::On { idle, interval, count } = TcpKeepalive::default() else {
                    unreachable!("the default is on")
                };
                Ok(TcpKeepalive::On {
                    idle: t.idle.unwrap_or(idle),
                    interval: t.interval.unwrap_or(interval),
                    count: t.count.unwrap_or(count),
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for TcpKeepalive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match *self {
            Self::Off => s.serialize_bool(false),
            Self::On { idle, interval, count } => {
                let mut t = s.serialize_struct("TcpKeepalive", 3)?;
                t.serialize_field("idle", &crate::duration::format(idle))?;
                t.serialize_field("interval", &crate::duration::format(interval))?;
                t.serialize_field("count", &count)?;
                t.end()
            }
        }
    }
}

/// A route's `timeouts` table: each key present overrides the engine's `[defaults]` for the
/// route's connections.
///
/// ```toml
/// timeouts = { inactivity = "8h", max_lifetime = "7d", connect = "3s", keepalive_treatment = "immortal" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteTimeouts {
    /// No byte in either direction for this long closes the connection (`[defaults]
    /// inactivity_timeout`).
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub inactivity: Option<Duration>,
    /// The connection is closed this long after it was accepted, whatever it does
    /// (`[defaults] max_connection_lifetime`). Also bounds `immortal` connections.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Duration>,
    /// Deadline of the TCP connect (and upstream TLS handshake) to a target. Wins over the
    /// action's `connect_timeout`, which wins over `[defaults] connect_timeout`.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    /// Deadline of what is read once the route is known: the TLS handshake of terminating
    /// routes, the request head after termination, a handler's request (`[defaults]
    /// initial_data_timeout`; the peek that chooses the route always uses the default).
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub initial_data: Option<Duration>,
    /// HTTP routes: idle client connection between requests (`[defaults]
    /// http_keepalive_timeout`), for connections whose route this is (the first HTTP route
    /// of the port, or the terminating route); the treatment applies to it as to inactivity.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub http_keepalive: Option<Duration>,
    /// `standard`, `extended` or `immortal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_treatment: Option<KeepaliveTreatment>,
    /// The inactivity multiplier of `extended` (1 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_inactivity_multiplier: Option<u32>,
    /// TCP keepalive probes on the client and backend sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// ±5 % jitter on the inactivity timeout and the lifetime of each connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randomize: Option<bool>,
}

/// The largest `keepalive_inactivity_multiplier`.
pub const MAX_INACTIVITY_MULTIPLIER: u32 = 1000;

impl RouteTimeouts {
    /// The problems of these values, as (key, message) pairs with keys relative to the table.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, d) in [
            ("inactivity", self.inactivity),
            ("max_lifetime", self.max_lifetime),
            ("connect", self.connect),
            ("initial_data", self.initial_data),
            ("http_keepalive", self.http_keepalive),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                out.push((key.to_owned(), "must be longer than 0s".to_owned()));
            }
        }
        if let Some(m) = self.keepalive_inactivity_multiplier {
            if let Some(msg) = multiplier_problem(m) {
                out.push(("keepalive_inactivity_multiplier".to_owned(), msg));
            }
        }
        if let Some(k) = &self.tcp_keepalive {
            for (key, msg) in k.problems() {
                out.push((format!("tcp_keepalive.{key}"), msg));
            }
        }
        out
    }
}

/// What is wrong with an inactivity multiplier, if anything.
pub fn multiplier_problem(m: u32) -> Option<String> {
    (m == 0 || m > MAX_INACTIVITY_MULTIPLIER)
        .then(|| format!("{m}: the multiplier must be 1 to {MAX_INACTIVITY_MULTIPLIER}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        k: TcpKeepalive,
    }

    fn read(s: &str) -> Result<TcpKeepalive, String> {
        toml::from_str::<T>(&format!("k = {s}")).map(|t| t.k).map_err(|e| e.to_string())
    }

    #[test]
    fn tcp_keepalive_forms() {
        assert_eq!(read("false"), Ok(TcpKeepalive::Off));
        assert_eq!(read("true"), Ok(TcpKeepalive::default()));
        assert_eq!(
            read("{ idle = \"2s\", interval = \"1s\", count = 2 }"),
            Ok(TcpKeepalive::On {
                idle: Duration::from_secs(2),
                interval: Duration::from_secs(1),
                count: 2
            })
        );
        assert_eq!(
            read("{ idle = \"5m\" }"),
            Ok(TcpKeepalive::On {
                idle: Duration::from_secs(300),
                interval: Duration::from_secs(10),
                count: 6
            })
        );
        assert!(read("{ idel = \"5m\" }").unwrap_err().contains("idel"));
        assert!(read("3").unwrap_err().contains("false, true, or a table"));
    }

    #[test]
    fn tcp_keepalive_limits() {
        let on = |i: u64, n: u32| TcpKeepalive::On {
            idle: Duration::from_millis(i),
            interval: Duration::from_secs(1),
            count: n,
        };
        assert!(on(1000, 1).problems().is_empty());
        let p = on(1500, 0).problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].0, "idle");
        assert!(p[0].1.contains("whole seconds"), "{p:?}");
        assert_eq!(p[1].0, "count");
        assert_eq!(on(0, 128).problems().len(), 2);
        assert_eq!(TcpKeepalive::default().detection_time(), Some(Duration::from_secs(120)));
        assert_eq!(TcpKeepalive::default().to_string(), "1m+10s*6");
    }

    #[test]
    fn serialises_as_written() {
        let j = serde_json::to_string(&TcpKeepalive::default()).unwrap();
        assert_eq!(j, r#"{"idle":"1m","interval":"10s","count":6}"#);
        assert_eq!(serde_json::to_string(&TcpKeepalive::Off).unwrap(), "false");
        let t = RouteTimeouts {
            keepalive_treatment: Some(KeepaliveTreatment::Immortal),
            max_lifetime: Some(Duration::from_secs(7 * 86_400)),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"max_lifetime":"7d","keepalive_treatment":"immortal"}"#
        );
    }
}

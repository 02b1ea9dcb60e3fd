//! The timeouts of a route's connections: its `timeouts` table over `[defaults]`, resolved once
//! per configuration ([`EffectiveTimeouts::resolve`]), and the per-connection values the copy's
//! clock runs on ([`EffectiveTimeouts::for_connection`]: the treatment applied, and the jitter
//! of `randomize_timeouts`).
//!
//! | treatment | inactivity timer (and HTTP keep-alive idle) | lifetime timer |
//! |---|---|---|
//! | `standard` | `inactivity` (`http_keepalive`) | `max_lifetime`, else `[defaults] max_connection_lifetime` |
//! | `extended` | both × `keepalive_inactivity_multiplier` | `max_lifetime`, else `[defaults] extended_keepalive_lifetime` |
//! | `immortal` | none | `max_lifetime`, else `[defaults] max_connection_lifetime` if written, else none |
//!
//! The inactivity timer covers plain, TLS and handler connections and WebSocket tunnels of
//! HTTP routes; HTTP connections between requests have their keep-alive idle timer.
//!
//! Shutdown ends every connection whatever its treatment; TCP keepalive probes run under all
//! three.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use smartproxy_routing::duration as dur;
use smartproxy_routing::{KeepaliveTreatment, RouteAction, RouteConfig, TcpKeepalive};
use tokio::time::Instant;

use crate::config::Defaults;
use crate::copy::Timeouts;

/// The jitter of `randomize_timeouts`: ±5 %.
pub const JITTER: f64 = 0.05;

/// A deadline that never comes (a connection without a lifetime); tokio's timer wheel keeps
/// such far deadlines without firing them early.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The timeouts that apply to a route's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EffectiveTimeouts {
    /// `standard`, `extended` or `immortal`.
    pub keepalive_treatment: KeepaliveTreatment,
    /// No byte for this long closes the connection; `None`: never (`immortal`). Already
    /// multiplied for `extended`.
    #[serde(with = "dur::option")]
    pub inactivity: Option<Duration>,
    /// The connection is closed this long after its accept; `None`: never.
    #[serde(with = "dur::option")]
    pub max_lifetime: Option<Duration>,
    /// Deadline of the connect (and upstream TLS handshake) to a target.
    #[serde(with = "dur")]
    pub connect: Duration,
    /// Deadline of what is read once the route is known (TLS handshake, request head).
    #[serde(with = "dur")]
    pub initial_data: Duration,
    /// HTTP connections of the route: idle time between requests; `None`: never
    /// (`immortal`). Already multiplied for `extended`.
    #[serde(with = "dur::option")]
    pub http_keepalive: Option<Duration>,
    /// Probes on the client and backend sockets.
    pub tcp_keepalive: TcpKeepalive,
    /// ±5 % jitter on inactivity and lifetime, per connection.
    pub randomize: bool,
}

impl EffectiveTimeouts {
    /// The timeouts of connections routed to `route` under `defaults`.
    pub fn resolve(defaults: &Defaults, route: &RouteConfig) -> Self {
        let rt = route.timeouts.clone().unwrap_or_default();
        let treatment = rt.keepalive_treatment.unwrap_or(defaults.keepalive_treatment);
        let multiplier =
            rt.keepalive_inactivity_multiplier.unwrap_or(defaults.keepalive_inactivity_multiplier);
        let base = rt.inactivity.unwrap_or(defaults.inactivity_timeout);
        let http_base = rt.http_keepalive.unwrap_or(defaults.http_keepalive_timeout);
        let (inactivity, http_keepalive, max_lifetime) = match treatment {
            KeepaliveTreatment::Extended => (
                Some(base.saturating_mul(multiplier)),
                Some(http_base.saturating_mul(multiplier)),
                Some(rt.max_lifetime.unwrap_or(defaults.extended_keepalive_lifetime)),
            ),
            KeepaliveTreatment::Immortal => (
                None,
                None,
                rt.max_lifetime.or(defaults
                    .max_connection_lifetime_is_explicit()
                    .then_some(defaults.max_connection_lifetime)),
            ),
            // Standard, and any treatment added later.
            _ => (
                Some(base),
                Some(http_base),
                Some(rt.max_lifetime.unwrap_or(defaults.max_connection_lifetime)),
            ),
        };
        let action_connect = match &route.action {
            RouteAction::Forward(f) => f.connect_timeout,
            _ => None,
        };
        Self {
            keepalive_treatment: treatment,
            inactivity,
            max_lifetime,
            connect: rt.connect.or(action_connect).unwrap_or(defaults.connect_timeout),
            initial_data: rt.initial_data.unwrap_or(defaults.initial_data_timeout),
            http_keepalive,
            tcp_keepalive: rt.tcp_keepalive.unwrap_or(defaults.tcp_keepalive),
            randomize: rt.randomize.unwrap_or(defaults.randomize_timeouts),
        }
    }

    /// The timeouts of connections that have no route yet (`[defaults]` alone).
    pub(crate) fn unrouted(defaults: &Defaults) -> Self {
        Self {
            keepalive_treatment: KeepaliveTreatment::Standard,
            inactivity: Some(defaults.inactivity_timeout),
            max_lifetime: Some(defaults.max_connection_lifetime),
            connect: defaults.connect_timeout,
            initial_data: defaults.initial_data_timeout,
            http_keepalive: Some(defaults.http_keepalive_timeout),
            tcp_keepalive: defaults.tcp_keepalive,
            randomize: defaults.randomize_timeouts,
        }
    }

    /// The copy's timeouts for one connection accepted at `accepted` from `peer`: the
    /// inactivity timeout (`Duration::MAX` when off) and the lifetime's deadline, each with its
    /// own jitter when `randomize` is on. The jitter comes from a hash of the peer address and
    /// the accept time: no shared random state, a few arithmetic instructions, once per
    /// connection.
    pub(crate) fn for_connection(&self, accepted: Instant, peer: SocketAddr) -> Timeouts {
        let (j_inactive, j_life) = if self.randomize {
            let h = mix(peer, accepted);
            (unit(h as u32), unit((h >> 32) as u32))
        } else {
            (0.0, 0.0)
        };
        let inactivity = match self.inactivity {
            Some(d) => jitter(d, j_inactive),
            None => Duration::MAX,
        };
        let life = self.max_lifetime.map_or(NEVER, |d| jitter(d, j_life));
        let deadline = accepted
            .checked_add(life)
            .or_else(|| accepted.checked_add(NEVER))
            .unwrap_or_else(|| accepted + Duration::from_secs(365 * 24 * 3600));
        Timeouts { inactivity, deadline }
    }
}

/// `d` × (1 + JITTER × `x`), `x` in [-1, 1]; `d` when that does not fit.
fn jitter(d: Duration, x: f64) -> Duration {
    if x == 0.0 {
        return d;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * (1.0 + JITTER * x)).unwrap_or(d)
}

/// 32 random-looking bits as a number in [-1, 1].
fn unit(bits: u32) -> f64 {
    f64::from(bits) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// 64 well-mixed bits from the peer address and the accept time (splitmix64's finaliser over
/// the inputs). Connections open at the same time differ by their peer address (port);
/// the wall clock's nanoseconds (a vDSO read) separate reconnects from the same address.
fn mix(peer: SocketAddr, accepted: Instant) -> u64 {
    let ip = match peer.ip() {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let b = u128::from(v6);
            (b as u64) ^ ((b >> 64) as u64)
        }
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // The accept time as seen through the monotonic clock, to the nanosecond.
    let mono = Instant::now().saturating_duration_since(accepted).subsec_nanos();
    let mut z = ip
        ^ (u64::from(peer.port()) << 48)
        ^ u64::from(wall).rotate_left(17)
        ^ u64::from(mono).rotate_left(40);
    for _ in 0..2 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartproxy_routing::{RouteMatch, RouteTimeouts, Target};

    fn route(t: Option<RouteTimeouts>) -> RouteConfig {
        let mut r = RouteConfig::new(
            RouteMatch::ports(1),
            RouteAction::Forward(smartproxy_routing::ForwardAction::to(vec![Target::new(
                "127.0.0.1",
                2,
            )])),
        );
        r.timeouts = t;
        r
    }

    fn rt(f: impl FnOnce(&mut RouteTimeouts)) -> RouteTimeouts {
        let mut t = RouteTimeouts::default();
        f(&mut t);
        t
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn treatments() {
        let mut d = Defaults { inactivity_timeout: secs(10), ..Default::default() };
        let std = EffectiveTimeouts::resolve(&d, &route(None));
        assert_eq!((std.inactivity, std.max_lifetime), (Some(secs(10)), Some(secs(86_400))));

        d.keepalive_treatment = KeepaliveTreatment::Extended;
        let ext = EffectiveTimeouts::resolve(&d, &route(None));
        assert_eq!((ext.inactivity, ext.max_lifetime), (Some(secs(60)), Some(secs(7 * 86_400))));
        let t = rt(|t| {
            t.keepalive_inactivity_multiplier = Some(3);
            t.max_lifetime = Some(secs(5));
        });
        let ext = EffectiveTimeouts::resolve(&d, &route(Some(t)));
        assert_eq!((ext.inactivity, ext.max_lifetime), (Some(secs(30)), Some(secs(5))));

        d.keepalive_treatment = KeepaliveTreatment::Immortal;
        let imm = EffectiveTimeouts::resolve(&d, &route(None));
        assert_eq!((imm.inactivity, imm.max_lifetime), (None, None));
        d.set_max_connection_lifetime(secs(99));
        let imm = EffectiveTimeouts::resolve(&d, &route(None));
        assert_eq!(imm.max_lifetime, Some(secs(99)));
        let t = rt(|t| t.max_lifetime = Some(secs(7)));
        assert_eq!(EffectiveTimeouts::resolve(&d, &route(Some(t))).max_lifetime, Some(secs(7)));
    }

    #[test]
    fn connect_precedence() {
        let d = Defaults::default();
        let mut r = route(None);
        assert_eq!(EffectiveTimeouts::resolve(&d, &r).connect, secs(10));
        if let RouteAction::Forward(f) = &mut r.action {
            f.connect_timeout = Some(secs(4));
        }
        assert_eq!(EffectiveTimeouts::resolve(&d, &r).connect, secs(4));
        r.timeouts = Some(rt(|t| t.connect = Some(secs(3))));
        assert_eq!(EffectiveTimeouts::resolve(&d, &r).connect, secs(3));
    }

    #[test]
    fn jitter_stays_within_five_percent_and_spreads() {
        let mut d = Defaults {
            inactivity_timeout: secs(100),
            max_connection_lifetime: secs(1000),
            randomize_timeouts: true,
            ..Default::default()
        };
        let e = EffectiveTimeouts::resolve(&d, &route(None));
        let now = Instant::now();
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        for port in 1000..3000u16 {
            let peer = SocketAddr::from(([127, 0, 0, 1], port));
            let t = e.for_connection(now, peer);
            let i = t.inactivity.as_secs_f64();
            assert!((95.0..=105.0).contains(&i), "{i}");
            let l = t.deadline.duration_since(now).as_secs_f64();
            assert!((950.0..=1050.0).contains(&l), "{l}");
            lo = lo.min(i);
            hi = hi.max(i);
        }
        assert!(hi - lo > 9.0, "2,000 connections spread over {lo}..{hi}");
        // Off: exact values.
        d.randomize_timeouts = false;
        let e = EffectiveTimeouts::resolve(&d, &route(None));
        let t = e.for_connection(now, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(t.inactivity, secs(100));
        assert_eq!(t.deadline, now + secs(1000));
    }

    #[test]
    fn immortal_has_no_inactivity_and_a_far_deadline() {
        let d = Defaults {
            keepalive_treatment: KeepaliveTreatment::Immortal,
            randomize_timeouts: true,
            ..Default::default()
        };
        let e = EffectiveTimeouts::resolve(&d, &route(None));
        let now = Instant::now();
        let t = e.for_connection(now, SocketAddr::from(([10, 0, 0, 1], 5)));
        assert_eq!(t.inactivity, Duration::MAX);
        assert!(t.deadline.duration_since(now) > secs(50 * 365 * 86_400));
    }
}

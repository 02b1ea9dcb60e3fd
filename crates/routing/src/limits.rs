//! Route limits: open connections per route, and per client IP the open connections and the
//! connection rate (one [`smartproxy_limits::IpLimiter`], the same type the engine uses for its
//! global limits). Sans-I/O: time is passed in as a [`Duration`] since any fixed origin.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use std::hash::{BuildHasher, RandomState};

use smartproxy_limits::{IpLimiter, IpLimits, Rate, RateLimited, RateLimiter, Refused};

use crate::ip::canonical_ip;
use crate::model::RouteSecurity;
use crate::policy::{RateLimitKey, RequestRateLimit};

/// Default bound on the client addresses a route's rate limiter remembers.
pub const DEFAULT_MAX_TRACKED_IPS: usize = smartproxy_limits::DEFAULT_MAX_TRACKED;

/// Why a connection was refused by a route limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// `security.max_connections` connections are open on the route.
    #[error("route has {limit} open connections, its maximum")]
    MaxConnections {
        /// The limit.
        limit: u32,
    },
    /// `security.max_connections_per_ip` connections from this address are open on the route.
    #[error("client has {limit} open connections on the route, its maximum")]
    MaxConnectionsPerIp {
        /// The limit.
        limit: u32,
    },
    /// More than `security.rate_limit_per_minute` new connections from this address.
    #[error(
        "client exceeded {limit_per_minute} new connections per minute; retry after {retry_after:?}"
    )]
    RateLimited {
        /// The limit.
        limit_per_minute: u32,
        /// When the next connection would be accepted.
        retry_after: Duration,
    },
}

impl From<Refused> for LimitExceeded {
    fn from(r: Refused) -> Self {
        match r {
            Refused::TooManyOpen { limit } => Self::MaxConnectionsPerIp { limit },
            Refused::RateLimited { limit_per_minute, retry_after } => {
                Self::RateLimited { limit_per_minute, retry_after }
            }
            // `Refused` is non-exhaustive; a new kind is a per-IP refusal too.
            _ => Self::MaxConnectionsPerIp { limit: 0 },
        }
    }
}

/// Open-connection counters and the per-IP limiter of one route.
///
/// Build one per route (`CompiledRoute::limits`, or [`RouteLimits::new`] for your own scope)
/// and call [`RouteLimits::try_acquire`] when a connection is routed; keep the returned
/// [`LimitGuard`] for the connection's lifetime. Lock-free for the route total; per-IP state
/// is an [`IpLimiter`] (sharded, bounded memory).
#[derive(Debug)]
pub struct RouteLimits {
    max_connections: Option<u32>,
    open: AtomicU32,
    per_ip: Option<Arc<IpLimiter>>,
    requests: Option<RequestLimiter>,
}

impl RouteLimits {
    /// Limits per `security` (`max_connections_per_ip = 0` means no per-IP limit).
    pub fn new(security: &RouteSecurity) -> Self {
        let max_open = security.max_connections_per_ip.unwrap_or(0);
        let per_minute = security.rate_limit_per_minute.unwrap_or(0);
        let per_ip = (max_open > 0 || per_minute > 0).then(|| {
            IpLimiter::new(IpLimits { max_open, per_minute, max_tracked: DEFAULT_MAX_TRACKED_IPS })
        });
        Self {
            max_connections: security.max_connections,
            open: AtomicU32::new(0),
            per_ip,
            requests: security.rate_limit.as_ref().map(RequestLimiter::new),
        }
    }

    /// The per-request rate of an HTTP route (`security.rate_limit`).
    pub fn requests(&self) -> Option<&RequestLimiter> {
        self.requests.as_ref()
    }

    /// Whether no limit is configured (`try_acquire` always succeeds).
    pub fn is_unlimited(&self) -> bool {
        self.max_connections.is_none() && self.per_ip.is_none()
    }

    /// Admits a new connection from `ip` now (the monotonic clock of the per-IP limiter).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<LimitGuard, LimitExceeded> {
        let now = self.per_ip.as_ref().map_or(Duration::ZERO, |p| p.now());
        self.try_acquire_at(ip, now)
    }

    /// Admits a new connection from `ip` at time `now` (any fixed origin; it must not go
    /// backwards between calls).
    ///
    /// Order: the per-IP limiter (its rate first: every attempt counts, also those refused by
    /// the connection limits after it; then `max_connections_per_ip`), then `max_connections`.
    /// On success the guard holds one route slot and one per-IP slot until dropped.
    pub fn try_acquire_at(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Duration,
    ) -> Result<LimitGuard, LimitExceeded> {
        let ip = canonical_ip(ip);
        let ip_guard = match &self.per_ip {
            Some(l) => Some(l.try_acquire_at(ip, now)?),
            None => None,
        };
        if let Some(limit) = self.max_connections {
            self.open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
                .map_err(|_| LimitExceeded::MaxConnections { limit })?;
        } else {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        // The per-IP place is released by the route guard's drop: one small guard per
        // connection instead of two.
        let ip = ip_guard.map_or(ip, smartproxy_limits::IpGuard::detach);
        Ok(LimitGuard { limits: Arc::clone(self), ip })
    }

    /// Connections currently holding a guard.
    pub fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Connections from `ip` currently holding a guard (0 when no per-IP limit is set).
    pub fn open_connections_from(&self, ip: IpAddr) -> u32 {
        self.per_ip.as_ref().map_or(0, |p| p.open(ip))
    }

    /// Addresses the per-IP limiter remembers (0 without per-IP limits).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |p| p.tracked())
    }
}

/// The per-request rate of an HTTP route (`security.rate_limit`): a GCRA budget of
/// `requests` per `window` per client address, or per value of a request header (kept as a
/// keyed 64-bit hash, never stored; requests without the header are counted by address).
/// Memory: at most [`DEFAULT_MAX_TRACKED_IPS`] keys of each kind.
#[derive(Debug)]
pub struct RequestLimiter {
    /// Lower-case header name of `key = "header:NAME"`.
    header: Option<Box<str>>,
    by_ip: RateLimiter<IpAddr>,
    by_value: Option<(RateLimiter<u64>, RandomState)>,
}

impl RequestLimiter {
    /// The limiter of `limit`.
    pub fn new(limit: &RequestRateLimit) -> Self {
        let rate = Rate::new(limit.requests, limit.window);
        let header = match &limit.key {
            RateLimitKey::Header(h) => Some(h.to_ascii_lowercase().into_boxed_str()),
            _ => None,
        };
        let by_value = header
            .is_some()
            .then(|| (RateLimiter::new(rate, DEFAULT_MAX_TRACKED_IPS), RandomState::new()));
        Self { header, by_ip: RateLimiter::new(rate, DEFAULT_MAX_TRACKED_IPS), by_value }
    }

    /// The lower-case name of the header the budget is keyed by (`None`: the address).
    pub fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.by_ip.rate()
    }

    /// Counts one request now: by `header_value` when the limit is keyed by a header and the
    /// request has it, else by `ip`.
    pub fn check(&self, ip: IpAddr, header_value: Option<&[u8]>) -> Result<(), RateLimited> {
        self.check_at(ip, header_value, self.by_ip.now())
    }

    /// [`RequestLimiter::check`] at `now` (any fixed origin, never going backwards).
    pub fn check_at(
        &self,
        ip: IpAddr,
        header_value: Option<&[u8]>,
        now: Duration,
    ) -> Result<(), RateLimited> {
        match (&self.by_value, header_value) {
            (Some((l, hasher)), Some(v)) => l.check_at(&hasher.hash_one(v), now),
            _ => self.by_ip.check_at(&canonical_ip(ip), now),
        }
    }

    /// Keys remembered (addresses and header values).
    pub fn tracked(&self) -> usize {
        self.by_ip.tracked() + self.by_value.as_ref().map_or(0, |(l, _)| l.tracked())
    }
}

/// One admitted connection; dropping it releases its slots exactly once.
#[derive(Debug)]
pub struct LimitGuard {
    limits: Arc<RouteLimits>,
    ip: IpAddr,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = &self.limits.per_ip {
            p.remove_open(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sec(max: Option<u32>, per_ip: Option<u32>, rate: Option<u32>) -> RouteSecurity {
        RouteSecurity {
            max_connections: max,
            max_connections_per_ip: per_ip,
            rate_limit_per_minute: rate,
            ..RouteSecurity::default()
        }
    }

    #[test]
    fn max_connections_and_release() {
        let l = Arc::new(RouteLimits::new(&sec(Some(2), None, None)));
        let a = l.try_acquire(ip("1.1.1.1")).unwrap();
        let _b = l.try_acquire(ip("1.1.1.2")).unwrap();
        assert_eq!(
            l.try_acquire(ip("1.1.1.3")).unwrap_err(),
            LimitExceeded::MaxConnections { limit: 2 }
        );
        drop(a);
        assert_eq!(l.open_connections(), 1);
        let _c = l.try_acquire(ip("1.1.1.3")).unwrap();
    }

    #[test]
    fn per_ip_mapped_is_v4() {
        let l = Arc::new(RouteLimits::new(&sec(None, Some(1), None)));
        let g = l.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(matches!(
            l.try_acquire(ip("::ffff:10.0.0.1")),
            Err(LimitExceeded::MaxConnectionsPerIp { limit: 1 })
        ));
        let _other = l.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(l.open_connections(), 2);
        drop(g);
        assert_eq!(l.open_connections_from(ip("10.0.0.1")), 0);
        assert_eq!(l.tracked_ips(), 1);
    }

    #[test]
    fn gcra() {
        let l = Arc::new(RouteLimits::new(&sec(None, None, Some(3))));
        let a = ip("1.2.3.4");
        let t0 = Duration::from_secs(100);
        let mut keep = Vec::new();
        for _ in 0..3 {
            keep.push(l.try_acquire_at(a, t0).unwrap());
        }
        let Err(LimitExceeded::RateLimited { retry_after, .. }) = l.try_acquire_at(a, t0) else {
            panic!("fourth must be refused")
        };
        assert_eq!(retry_after, Duration::from_secs(20));
        keep.push(l.try_acquire_at(ip("1.2.3.5"), t0).unwrap());
        assert!(l.try_acquire_at(a, t0 + Duration::from_secs(19)).is_err());
        keep.push(l.try_acquire_at(a, t0 + Duration::from_secs(20)).unwrap());
        // A minute later the full burst is back.
        let t1 = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            keep.push(l.try_acquire_at(a, t1).unwrap());
        }
    }

    #[test]
    fn rate_memory_is_bounded() {
        let l = Arc::new(RouteLimits::new(&sec(None, None, Some(10))));
        let t = Duration::from_secs(1);
        for i in 0..200_000u32 {
            let _ = l.try_acquire_at(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(l.tracked_ips() <= DEFAULT_MAX_TRACKED_IPS, "{}", l.tracked_ips());
    }

    #[test]
    fn concurrent_acquire_never_exceeds_limits() {
        let l = Arc::new(RouteLimits::new(&sec(Some(8), Some(3), None)));
        let ips: Vec<IpAddr> = (1..=4u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (l, ips) = (Arc::clone(&l), ips.clone());
                s.spawn(move || {
                    let mut held = Vec::new();
                    for round in 0..2000usize {
                        let ip = ips[(round + t) % ips.len()];
                        if let Ok(g) = l.try_acquire(ip) {
                            held.push(g);
                        }
                        assert!(l.open_connections() <= 8);
                        assert!(l.open_connections_from(ip) <= 3);
                        if round % 3 == 0 && !held.is_empty() {
                            held.swap_remove(round % held.len());
                        }
                    }
                });
            }
        });
        assert_eq!(l.open_connections(), 0, "every guard released exactly once");
        assert_eq!(l.tracked_ips(), 0);
    }

    #[test]
    fn request_rate_by_ip_and_by_header() {
        let mut s = RouteSecurity::default()
            .with_rate_limit(RequestRateLimit::per_ip(2, Duration::from_secs(10)));
        let l = RouteLimits::new(&s);
        assert!(l.is_unlimited(), "connection limits are not request limits");
        let r = l.requests().unwrap();
        assert_eq!(r.header(), None);
        let t = Duration::from_secs(1);
        r.check_at(ip("10.0.0.1"), Some(b"k"), t).unwrap();
        r.check_at(ip("::ffff:10.0.0.1"), None, t).unwrap();
        let e = r.check_at(ip("10.0.0.1"), None, t).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(5));
        r.check_at(ip("10.0.0.2"), None, t).unwrap();

        s.rate_limit = Some(RequestRateLimit {
            requests: 1,
            window: Duration::from_secs(60),
            key: RateLimitKey::Header("X-Api-Key".into()),
        });
        let l = RouteLimits::new(&s);
        let r = l.requests().unwrap();
        assert_eq!(r.header(), Some("x-api-key"));
        r.check_at(ip("10.0.0.1"), Some(b"alpha"), t).unwrap();
        assert!(r.check_at(ip("10.0.0.2"), Some(b"alpha"), t).is_err(), "same key, any address");
        r.check_at(ip("10.0.0.1"), Some(b"beta"), t).unwrap();
        r.check_at(ip("10.0.0.1"), None, t).unwrap();
        assert!(r.check_at(ip("10.0.0.1"), None, t).is_err(), "no header: by address");
        assert_eq!(r.tracked(), 3);
    }

    #[test]
    fn rate_counts_refused_attempts() {
        let l = Arc::new(RouteLimits::new(&sec(Some(1), None, Some(2))));
        let t = Duration::from_secs(5);
        let _g = l.try_acquire_at(ip("1.1.1.1"), t).unwrap();
        assert!(matches!(
            l.try_acquire_at(ip("1.1.1.1"), t),
            Err(LimitExceeded::MaxConnections { .. })
        ));
        assert!(matches!(
            l.try_acquire_at(ip("1.1.1.1"), t),
            Err(LimitExceeded::RateLimited { .. })
        ));
    }
}

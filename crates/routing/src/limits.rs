//! Route limits: open connections (per route and per client IP) and a per-IP connection rate
//! limiter (GCRA), all sans-I/O. Time is passed in as a [`Duration`] since any fixed origin.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ip::canonical_ip;
use crate::model::RouteSecurity;

const SHARDS: usize = 16;

/// Default bound on the client addresses a [`RateLimiter`] remembers.
pub const DEFAULT_MAX_TRACKED_IPS: usize = 65_536;

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

/// Open-connection counters and the rate limiter of one route.
///
/// Build one per route (`CompiledRoute::limits`, or [`RouteLimits::new`] for your own scope)
/// and call [`RouteLimits::try_acquire`] when a connection is routed; keep the returned
/// [`LimitGuard`] for the connection's lifetime. Lock-free for the route total; per-IP state
/// sits in 16 mutex-protected shards.
#[derive(Debug)]
pub struct RouteLimits {
    max_connections: Option<u32>,
    open: AtomicU32,
    per_ip: Option<PerIpCounter>,
    rate: Option<RateLimiter>,
    origin: Instant,
}

impl RouteLimits {
    /// Limits per `security` (`max_connections_per_ip = 0` means no per-IP limit).
    pub fn new(security: &RouteSecurity) -> Self {
        Self {
            max_connections: security.max_connections,
            open: AtomicU32::new(0),
            per_ip: security.max_connections_per_ip.filter(|&n| n > 0).map(PerIpCounter::new),
            rate: security
                .rate_limit_per_minute
                .filter(|&n| n > 0)
                .map(|n| RateLimiter::per_minute(n, DEFAULT_MAX_TRACKED_IPS)),
            origin: Instant::now(),
        }
    }

    /// Whether no limit is configured (`try_acquire` always succeeds).
    pub fn is_unlimited(&self) -> bool {
        self.max_connections.is_none() && self.per_ip.is_none() && self.rate.is_none()
    }

    /// Admits a new connection from `ip` now (monotonic clock of this process).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<LimitGuard, LimitExceeded> {
        self.try_acquire_at(ip, self.origin.elapsed())
    }

    /// Admits a new connection from `ip` at time `now` (any fixed origin; it must not go
    /// backwards between calls).
    ///
    /// Order: the rate limiter first (every attempt counts, also those refused by the
    /// connection limits after it), then `max_connections`, then `max_connections_per_ip`.
    /// On success the guard holds one route slot and one per-IP slot until dropped.
    pub fn try_acquire_at(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Duration,
    ) -> Result<LimitGuard, LimitExceeded> {
        let ip = canonical_ip(ip);
        if let Some(rate) = &self.rate {
            rate.check(ip, now)?;
        }
        if let Some(limit) = self.max_connections {
            self.open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
                .map_err(|_| LimitExceeded::MaxConnections { limit })?;
        } else {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(per_ip) = &self.per_ip
            && let Err(e) = per_ip.try_acquire(ip)
        {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        Ok(LimitGuard { limits: Arc::clone(self), ip })
    }

    /// Connections currently holding a guard.
    pub fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Connections from `ip` currently holding a guard (0 when no per-IP limit is set).
    pub fn open_connections_from(&self, ip: IpAddr) -> u32 {
        self.per_ip.as_ref().map_or(0, |p| p.get(canonical_ip(ip)))
    }

    fn release(&self, ip: IpAddr) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = &self.per_ip {
            p.release(ip);
        }
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
        self.limits.release(self.ip);
    }
}

fn shard_of<K: Hash>(hasher: &RandomState, k: &K) -> usize {
    (hasher.hash_one(k) as usize) % SHARDS
}

/// Open connections per client address, with a limit. Entries are removed at zero, so
/// memory is bounded by the open connections.
#[derive(Debug)]
pub struct PerIpCounter {
    limit: u32,
    hasher: RandomState,
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl PerIpCounter {
    /// At most `limit` open connections per address.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Counts one more connection from `ip` unless it has `limit` already.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<(), LimitExceeded> {
        let ip = canonical_ip(ip);
        let mut m = self.shards[shard_of(&self.hasher, &ip)].lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limit {
            if *n == 0 {
                m.remove(&ip);
            }
            return Err(LimitExceeded::MaxConnectionsPerIp { limit: self.limit });
        }
        *n += 1;
        Ok(())
    }

    /// Counts one connection from `ip` as closed.
    pub fn release(&self, ip: IpAddr) {
        let ip = canonical_ip(ip);
        let mut m = self.shards[shard_of(&self.hasher, &ip)].lock();
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Open connections from `ip`.
    pub fn get(&self, ip: IpAddr) -> u32 {
        let ip = canonical_ip(ip);
        self.shards[shard_of(&self.hasher, &ip)].lock().get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with at least one open connection.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// A per-address rate limiter (GCRA, the virtual-scheduling form of a token bucket):
/// `burst` events at once, then one per `period / burst`, with bounded memory.
///
/// Each address costs one entry (its theoretical arrival time). An entry whose time has
/// passed is the same as no entry and is dropped when a shard is full; if a shard is still
/// full, an arbitrary entry is evicted (that address gets a fresh budget), so memory stays
/// within `max_tracked` entries under an address-spraying flood.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    interval: u64,
    tolerance: u64,
    per_shard: usize,
    hasher: RandomState,
    shards: [Mutex<RateShard>; SHARDS],
}

#[derive(Debug, Default)]
struct RateShard {
    /// Address -> theoretical arrival time (ns).
    tat: HashMap<IpAddr, u64>,
    /// When expired entries were last dropped (ns); a full sweep runs at most once a second.
    last_purge: u64,
}

impl RateLimiter {
    /// `per_minute` events per minute and address (burst of `per_minute`), remembering at
    /// most `max_tracked` addresses. `per_minute` 0 is treated as 1.
    pub fn per_minute(per_minute: u32, max_tracked: usize) -> Self {
        let limit = per_minute.max(1);
        let interval = 60_000_000_000u64 / u64::from(limit);
        Self {
            limit,
            interval,
            tolerance: interval * (u64::from(limit) - 1),
            per_shard: max_tracked.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(RateShard::default())),
        }
    }

    /// Counts one event from `ip` at `now` and says whether it is within the limit.
    pub fn check(&self, ip: IpAddr, now: Duration) -> Result<(), LimitExceeded> {
        let ip = canonical_ip(ip);
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let mut shard = self.shards[shard_of(&self.hasher, &ip)].lock();
        let tat = shard.tat.get(&ip).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            return Err(LimitExceeded::RateLimited {
                limit_per_minute: self.limit,
                retry_after: Duration::from_nanos(tat - now - self.tolerance),
            });
        }
        if shard.tat.len() >= self.per_shard && !shard.tat.contains_key(&ip) {
            // An entry in the past is the same as no entry. Sweep at most once a second so
            // that a flood of new addresses does not make every insert O(shard).
            if now.saturating_sub(shard.last_purge) >= 1_000_000_000 || shard.last_purge > now {
                shard.tat.retain(|_, t| *t > now);
                shard.last_purge = now;
            }
            if shard.tat.len() >= self.per_shard
                && let Some(k) = shard.tat.keys().next().copied()
            {
                shard.tat.remove(&k);
            }
        }
        shard.tat.insert(ip, tat.saturating_add(self.interval));
        Ok(())
    }

    /// Addresses currently remembered.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().tat.len()).sum()
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
        assert_eq!(l.per_ip.as_ref().unwrap().tracked(), 1);
    }

    #[test]
    fn gcra() {
        let r = RateLimiter::per_minute(3, 100);
        let a = ip("1.2.3.4");
        let t0 = Duration::from_secs(100);
        for _ in 0..3 {
            r.check(a, t0).unwrap();
        }
        let Err(LimitExceeded::RateLimited { retry_after, .. }) = r.check(a, t0) else {
            panic!("fourth must be refused")
        };
        assert_eq!(retry_after, Duration::from_secs(20));
        r.check(ip("1.2.3.5"), t0).unwrap();
        assert!(r.check(a, t0 + Duration::from_secs(19)).is_err());
        r.check(a, t0 + Duration::from_secs(20)).unwrap();
        // A minute later the full burst is back.
        let t1 = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            r.check(a, t1).unwrap();
        }
    }

    #[test]
    fn rate_memory_is_bounded() {
        let r = RateLimiter::per_minute(10, 32);
        let t = Duration::from_secs(1);
        for i in 0..10_000u32 {
            let _ = r.check(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(r.tracked() <= 32, "{}", r.tracked());
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
        assert_eq!(l.per_ip.as_ref().unwrap().tracked(), 0);
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

//! Per-client-IP admission for proxies: open connections per address and a connection rate
//! per address, in one sharded table with bounded memory. No I/O: time is passed in (or read
//! from the limiter's own monotonic clock).
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::Duration;
//! use smartproxy_limits::{IpLimiter, IpLimits, Refused};
//!
//! // At most 2 open connections and 3 new connections a minute per address.
//! let limiter = IpLimiter::new(IpLimits { max_open: 2, per_minute: 3, ..IpLimits::default() });
//! let ip: IpAddr = "192.0.2.7".parse().unwrap();
//! let t = Duration::from_secs(10);
//! let a = limiter.try_acquire_at(ip, t).unwrap();
//! let b = limiter.try_acquire_at(ip, t).unwrap();
//! assert_eq!(limiter.try_acquire_at(ip, t).unwrap_err(), Refused::TooManyOpen { limit: 2 });
//! drop((a, b)); // Guards release their place exactly once.
//! // The refused attempt counted against the rate: the fourth in a minute is refused.
//! assert!(matches!(limiter.try_acquire_at(ip, t), Err(Refused::RateLimited { .. })));
//! assert_eq!(limiter.open(ip), 0);
//! ```
//!
//! # The two limits
//!
//! - **Open connections** (`max_open`): a guard per admitted connection, released on drop.
//! - **Rate** (`per_minute`): GCRA, the virtual-scheduling form of a token bucket: a burst of
//!   `per_minute` connections at once, then one every `60 s / per_minute`. Every attempt that
//!   passes the rate check uses a token, also one that the open-connection limit then refuses
//!   (a client hammering a full limit is slowed down too).
//!
//! Both limits can be changed while the limiter runs ([`IpLimiter::set_limits`]); counts and
//! rate state are kept.
//!
//! # Memory
//!
//! An address has an entry while it has an open connection, or while its rate state says it
//! is still inside its burst (a rate state in the past is the same as none). Entries without an
//! open connection are capped at `max_tracked` (default 65,536): when a shard is full, expired
//! states are dropped (at most once a second per shard), then an arbitrary one (that address
//! gets a fresh budget). So the table holds at most *addresses with open connections* +
//! `max_tracked` entries, about 48 bytes each, whatever the number of addresses seen:
//! 1,000,000 distinct addresses leave at most 65,536 entries (about 3 MiB), tested.
//!
//! # Concurrency
//!
//! 64 shards, each behind a `parking_lot` mutex picked by a hash of the address: one short
//! lock per admission and one per release, never per byte. IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) count as the IPv4 address.
//!
//! # A request rate per key
//!
//! [`RateLimiter<K>`] is the rate half alone, for any key type and any window: `requests`
//! per `window` ([`Rate`]), GCRA with a burst of `requests`, the same bounded-memory policy
//! (`max_tracked` keys at most). Keys should be small and of fixed size: a proxy limiting by
//! an API key header hashes the value with a keyed hash (`RandomState`) into a `u64` instead
//! of storing it.
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

mod keyed;

pub use self::keyed::{Rate, RateLimited, RateLimiter};

const SHARDS: usize = 64;

/// Default bound on the addresses kept for their rate state alone.
pub const DEFAULT_MAX_TRACKED: usize = 65_536;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The address has `limit` open connections.
    #[error("{limit} open connections from this address, its maximum")]
    TooManyOpen {
        /// The limit.
        limit: u32,
    },
    /// The address opened more than `limit_per_minute` connections in a minute.
    #[error(
        "more than {limit_per_minute} new connections a minute from this address; retry after {retry_after:?}"
    )]
    RateLimited {
        /// The limit.
        limit_per_minute: u32,
        /// When the next attempt would pass.
        retry_after: Duration,
    },
}

/// The limits of an [`IpLimiter`]. `0` turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimits {
    /// Open connections per address (0: unlimited).
    pub max_open: u32,
    /// New connections per address and minute, with a burst of as many (0: no rate limit).
    pub per_minute: u32,
    /// Addresses kept for their rate state alone (entries of addresses with open connections
    /// do not count).
    pub max_tracked: usize,
}

impl Default for IpLimits {
    fn default() -> Self {
        Self { max_open: 0, per_minute: 0, max_tracked: DEFAULT_MAX_TRACKED }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    open: u32,
    /// GCRA theoretical arrival time (ns on the limiter's clock); 0: none.
    tat: u64,
}

/// An address with its keyed hash, computed once per operation: the shard is chosen by some
/// of its bits and the shard's map uses all of it (through [`Prehashed`]), so that an
/// acquire or a release hashes the address once, not once per lookup. The hash is the
/// limiter's keyed SipHash, so client-chosen addresses cannot be made to collide.
#[derive(Debug, Clone, Copy)]
struct Key {
    hash: u64,
    ip: IpAddr,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.ip == other.ip
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of a shard's map: the key's hash as it was computed.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used ([`Key`]'s `Hash`); anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Key, Entry, BuildHasherDefault<Prehashed>>,
    /// Entries with no open connection (rate state only).
    idle: usize,
    /// When expired rate states were last dropped (ns).
    last_purge: u64,
}

/// Open connections and connection rate per client address (see the crate docs).
#[derive(Debug)]
pub struct IpLimiter {
    max_open: AtomicU32,
    per_minute: AtomicU32,
    /// GCRA emission interval (ns); 0: no rate limit.
    interval: AtomicU64,
    idle_per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    origin: Instant,
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn interval_of(per_minute: u32) -> u64 {
    if per_minute == 0 { 0 } else { 60_000_000_000 / u64::from(per_minute) }
}

fn nanos(d: Duration) -> u64 {
    // Never 0: 0 marks "no rate state" in an entry.
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl IpLimiter {
    /// A limiter with these limits.
    pub fn new(limits: IpLimits) -> Arc<Self> {
        Arc::new(Self {
            max_open: AtomicU32::new(limits.max_open),
            per_minute: AtomicU32::new(limits.per_minute),
            interval: AtomicU64::new(interval_of(limits.per_minute)),
            idle_per_shard: limits.max_tracked.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            origin: Instant::now(),
        })
    }

    /// A limiter with no limits: it only counts open connections per address.
    pub fn counter() -> Arc<Self> {
        Self::new(IpLimits::default())
    }

    /// Changes the limits; open connections and rate states are kept.
    pub fn set_limits(&self, max_open: u32, per_minute: u32) {
        self.max_open.store(max_open, Ordering::Relaxed);
        self.per_minute.store(per_minute, Ordering::Relaxed);
        self.interval.store(interval_of(per_minute), Ordering::Relaxed);
    }

    /// The limits in force: (open connections, per minute).
    pub fn limits(&self) -> (u32, u32) {
        (self.max_open.load(Ordering::Relaxed), self.per_minute.load(Ordering::Relaxed))
    }

    /// `ip` (canonical) with its hash.
    fn key(&self, ip: IpAddr) -> Key {
        Key { hash: self.hasher.hash_one(ip), ip }
    }

    /// The shard of `key`: bits 40..46 of its hash, which the map inside neither uses for
    /// the bucket (the low bits) nor for its tags (the top seven).
    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[((key.hash >> 40) as usize) % SHARDS]
    }

    /// Time on the limiter's own monotonic clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Admits one more connection from `ip` now (the limiter's clock).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refused> {
        self.try_acquire_at(ip, self.now())
    }

    /// Admits one more connection from `ip` at `now` (since any fixed origin; it must not go
    /// backwards between calls). The rate is checked first, then the open connections.
    pub fn try_acquire_at(self: &Arc<Self>, ip: IpAddr, now: Duration) -> Result<IpGuard, Refused> {
        let key = self.key(canonical_ip(ip));
        let now = nanos(now);
        let max_open = self.max_open.load(Ordering::Relaxed);
        let interval = self.interval.load(Ordering::Relaxed);
        let mut shard = self.shard(&key).lock();
        let existing = shard.map.get(&key).copied();
        let mut e = existing.unwrap_or_default();
        if interval > 0 {
            let per_minute = self.per_minute.load(Ordering::Relaxed);
            let tolerance = interval.saturating_mul(u64::from(per_minute.max(1)) - 1);
            let tat = e.tat.max(now);
            if tat - now > tolerance {
                return Err(Refused::RateLimited {
                    limit_per_minute: per_minute,
                    retry_after: Duration::from_nanos(tat - now - tolerance),
                });
            }
            e.tat = tat.saturating_add(interval);
        }
        let refused = max_open > 0 && e.open >= max_open;
        if !refused {
            e.open += 1;
        }
        if e.open == 0 && e.tat == 0 {
            // Nothing to remember (refused with no rate limit).
        } else {
            self.store(&mut shard, key, existing, e, now);
        }
        drop(shard);
        if refused {
            return Err(Refused::TooManyOpen { limit: max_open });
        }
        Ok(IpGuard { limiter: Arc::clone(self), key })
    }

    /// Writes `e` for `ip`, keeping the idle entries of the shard within bounds.
    fn store(&self, shard: &mut Shard, key: Key, old: Option<Entry>, e: Entry, now: u64) {
        let was_idle = old.is_some_and(|o| o.open == 0);
        let is_idle = e.open == 0;
        if is_idle && !was_idle && shard.idle >= self.idle_per_shard {
            self.make_room(shard, now);
        }
        match (was_idle, is_idle) {
            (false, true) => shard.idle += 1,
            (true, false) => shard.idle -= 1,
            _ => {}
        }
        shard.map.insert(key, e);
    }

    /// Drops expired rate states (at most once a second), then, if the shard is still full,
    /// an arbitrary idle entry.
    fn make_room(&self, shard: &mut Shard, now: u64) {
        if now.saturating_sub(shard.last_purge) >= 1_000_000_000 || shard.last_purge > now {
            let before = shard.map.len();
            shard.map.retain(|_, e| e.open > 0 || e.tat > now);
            shard.idle -= before - shard.map.len();
            shard.last_purge = now;
        }
        if shard.idle >= self.idle_per_shard {
            if let Some(k) = shard.map.iter().find(|(_, e)| e.open == 0).map(|(k, _)| *k) {
                shard.map.remove(&k);
                shard.idle -= 1;
            }
        }
    }

    fn release(&self, key: Key) {
        let mut shard = self.shard(&key).lock();
        let Some(e) = shard.map.get_mut(&key) else { return };
        e.open = e.open.saturating_sub(1);
        if e.open > 0 {
            return;
        }
        let now = nanos(self.now());
        if e.tat <= now {
            // No rate state left that matters.
            shard.map.remove(&key);
            return;
        }
        shard.idle += 1;
        if shard.idle > self.idle_per_shard {
            self.make_room(&mut shard, now);
        }
    }

    /// Counts one open connection from `ip` without any limit and without a guard: for a
    /// caller that already pairs opens and closes exactly once (a metrics recorder's drop).
    /// Every call must be matched by one [`IpLimiter::remove_open`].
    pub fn add_open(&self, ip: IpAddr) {
        let key = self.key(canonical_ip(ip));
        let mut shard = self.shard(&key).lock();
        let e = shard.map.entry(key).or_default();
        e.open += 1;
        if e.open == 1 && e.tat != 0 {
            shard.idle -= 1;
        }
    }

    /// The close of a connection counted with [`IpLimiter::add_open`].
    pub fn remove_open(&self, ip: IpAddr) {
        self.release(self.key(canonical_ip(ip)));
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let key = self.key(canonical_ip(ip));
        self.shard(&key).lock().map.get(&key).map_or(0, |e| e.open)
    }

    /// Addresses in the table (with open connections or a rate state).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Every address with open connections, and how many.
    pub fn open_by_ip(&self) -> Vec<(IpAddr, u32)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            out.extend(
                s.lock().map.iter().filter(|(_, e)| e.open > 0).map(|(k, e)| (k.ip, e.open)),
            );
        }
        out
    }
}

/// One admitted connection; dropping it releases its place exactly once.
#[derive(Debug)]
pub struct IpGuard {
    limiter: Arc<IpLimiter>,
    key: Key,
}

impl IpGuard {
    /// The address it counts for.
    pub fn ip(&self) -> IpAddr {
        self.key.ip
    }

    /// Gives up the guard without releasing its place: the caller releases it later with
    /// [`IpLimiter::remove_open`] on the returned address, exactly once (for owners that keep
    /// the limiter elsewhere and want a smaller handle).
    pub fn detach(self) -> IpAddr {
        let ip = self.key.ip;
        std::mem::forget(self);
        ip
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.limiter.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One keyed hash per address picks the shard and is the map's hash: 4,096 addresses
    /// (IPv4 in a row, IPv6 in one /64) fill every shard about evenly, and each shard's map
    /// finds them all again.
    #[test]
    fn one_hash_spreads_over_shards_and_finds_every_address() {
        let l = IpLimiter::counter();
        let v4 = (0..2048u32).map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        let v6 = (0..2048u128)
            .map(|i| IpAddr::from(std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) + i)));
        let all: Vec<IpAddr> = v4.chain(v6).collect();
        let guards: Vec<_> = all.iter().map(|&a| l.try_acquire(a).unwrap()).collect();
        let per_shard: Vec<usize> = l.shards.iter().map(|s| s.lock().map.len()).collect();
        let (min, max) = (per_shard.iter().min().unwrap(), per_shard.iter().max().unwrap());
        assert!(*min >= 32 && *max <= 110, "4096 addresses over 64 shards: {per_shard:?}");
        assert!(all.iter().all(|&a| l.open(a) == 1));
        drop(guards);
        assert_eq!(l.tracked(), 0, "every release found its entry");
    }

    #[test]
    fn open_limit_and_release() {
        let l = IpLimiter::new(IpLimits { max_open: 2, ..IpLimits::default() });
        let a = l.try_acquire(ip("10.0.0.1")).unwrap();
        let _b = l.try_acquire(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(l.try_acquire(ip("10.0.0.1")).unwrap_err(), Refused::TooManyOpen { limit: 2 });
        drop(a);
        assert_eq!(l.open(ip("10.0.0.1")), 1);
        let _c = l.try_acquire(ip("10.0.0.1")).unwrap();
        let _other = l.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn gcra_burst_then_interval() {
        let l = IpLimiter::new(IpLimits { per_minute: 3, ..IpLimits::default() });
        let a = ip("1.2.3.4");
        let t0 = Duration::from_secs(100);
        let mut keep = Vec::new();
        for _ in 0..3 {
            keep.push(l.try_acquire_at(a, t0).unwrap());
        }
        let Err(Refused::RateLimited { retry_after, limit_per_minute: 3 }) =
            l.try_acquire_at(a, t0)
        else {
            panic!("the fourth in a minute is refused")
        };
        assert_eq!(retry_after, Duration::from_secs(20));
        l.try_acquire_at(ip("1.2.3.5"), t0).unwrap();
        assert!(l.try_acquire_at(a, t0 + Duration::from_secs(19)).is_err());
        keep.push(l.try_acquire_at(a, t0 + Duration::from_secs(20)).unwrap());
        let t1 = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            keep.push(l.try_acquire_at(a, t1).unwrap());
        }
    }

    #[test]
    fn counting_only_forgets_closed_addresses() {
        let l = IpLimiter::counter();
        let g: Vec<_> =
            (0..100u32).map(|i| l.try_acquire(IpAddr::from(i.to_be_bytes())).unwrap()).collect();
        assert_eq!(l.tracked(), 100);
        assert_eq!(l.open_by_ip().len(), 100);
        drop(g);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn unguarded_counting_pairs() {
        let l = IpLimiter::counter();
        l.add_open(ip("10.0.0.3"));
        l.add_open(ip("::ffff:10.0.0.3"));
        assert_eq!(l.open(ip("10.0.0.3")), 2);
        l.remove_open(ip("10.0.0.3"));
        l.remove_open(ip("10.0.0.3"));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn limits_change_at_run_time() {
        let l = IpLimiter::new(IpLimits { max_open: 1, ..IpLimits::default() });
        let a = ip("10.0.0.9");
        let _g = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_err());
        l.set_limits(2, 0);
        let _h = l.try_acquire(a).unwrap();
        assert_eq!(l.limits(), (2, 0));
    }
}

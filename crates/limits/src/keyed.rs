//! A request rate per key of any type: GCRA over a sharded table with bounded memory, the same
//! policy as [`crate::IpLimiter`]'s rate states.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const SHARDS: usize = 64;

/// A rate: `requests` per `window`, with a burst of `requests`.
///
/// GCRA admits `requests` at once, then one every `window / requests`. So the
/// `requests + 1`-th request inside one window is the first one refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per window (at least 1).
    pub requests: u32,
    /// The window (longer than zero).
    pub window: Duration,
}

impl Rate {
    /// `requests` per `window`.
    pub const fn new(requests: u32, window: Duration) -> Self {
        Self { requests, window }
    }

    /// The GCRA emission interval in nanoseconds (at least 1).
    fn interval(self) -> u64 {
        let w = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
        (w / u64::from(self.requests.max(1))).max(1)
    }
}

/// A request refused by a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {requests} requests in {window:?}; retry after {retry_after:?}")]
#[non_exhaustive]
pub struct RateLimited {
    /// The limit's requests per window.
    pub requests: u32,
    /// The limit's window.
    pub window: Duration,
    /// When the next request of this key would pass.
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Shard<K> {
    /// GCRA theoretical arrival time per key (ns on the limiter's clock).
    tat: HashMap<K, u64>,
    /// When expired states were last dropped (ns).
    last_purge: u64,
}

/// A GCRA rate per key (client address, a hash of an API key, ...), in 64 shards behind
/// `parking_lot` mutexes: one short lock per check.
///
/// Memory: a key has an entry while its rate state is not yet in the past (a state in the
/// past is the same as none), and at most `max_tracked` entries are kept: when a shard is
/// full, expired states are dropped (at most once a second per shard), then an arbitrary one
/// (that key gets a fresh budget). 1,000,000 distinct keys leave at most `max_tracked`
/// entries, tested. Keep keys small and fixed-size (hash long ones: see the crate docs).
///
/// ```
/// use std::time::Duration;
/// use smartproxy_limits::{Rate, RateLimiter};
///
/// // 3 requests per second per key.
/// let l = RateLimiter::<u64>::new(Rate::new(3, Duration::from_secs(1)), 1024);
/// let t = Duration::from_secs(5);
/// for _ in 0..3 {
///     assert!(l.check_at(&7, t).is_ok());
/// }
/// let refused = l.check_at(&7, t).unwrap_err();
/// assert_eq!(refused.retry_after, Duration::from_nanos(333_333_333));
/// assert!(l.check_at(&8, t).is_ok()); // another key, its own budget
/// ```
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    /// Emission interval (ns).
    interval: u64,
    /// Burst tolerance (ns): `interval * (requests - 1)`.
    tolerance: u64,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
    origin: Instant,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter of `rate` per key that remembers at most `max_tracked` keys (at least one
    /// per shard).
    pub fn new(rate: Rate, max_tracked: usize) -> Self {
        let rate = Rate { requests: rate.requests.max(1), window: rate.window };
        let interval = rate.interval();
        Self {
            rate,
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.requests) - 1),
            per_shard: max_tracked.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { tat: HashMap::new(), last_purge: 0 }))
                .collect(),
            origin: Instant::now(),
        }
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Time on the limiter's own monotonic clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Counts one request of `key` now (the limiter's clock).
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.check_at(key, self.now())
    }

    /// Counts one request of `key` at `now` (since any fixed origin; it must not go backwards
    /// between calls). A refused request uses no budget.
    pub fn check_at(&self, key: &K, now: Duration) -> Result<(), RateLimited> {
        let now = nanos(now);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock();
        let known = shard.tat.get_mut(key);
        let tat = known.as_deref().copied().unwrap_or(0).max(now);
        if tat - now > self.tolerance {
            return Err(RateLimited {
                requests: self.rate.requests,
                window: self.rate.window,
                retry_after: Duration::from_nanos(tat - now - self.tolerance),
            });
        }
        let next = tat.saturating_add(self.interval);
        match known {
            Some(t) => *t = next,
            None => {
                if shard.tat.len() >= self.per_shard {
                    self.make_room(&mut shard, now);
                }
                shard.tat.insert(key.clone(), next);
            }
        }
        Ok(())
    }

    /// Drops expired states (at most once a second), then, if the shard is still full, an
    /// arbitrary one.
    fn make_room(&self, shard: &mut Shard<K>, now: u64) {
        if now.saturating_sub(shard.last_purge) >= 1_000_000_000 || shard.last_purge > now {
            shard.tat.retain(|_, t| *t > now);
            shard.last_purge = now;
        }
        if shard.tat.len() >= self.per_shard {
            if let Some(k) = shard.tat.keys().next().cloned() {
                shard.tat.remove(&k);
            }
        }
    }

    /// Keys in the table.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().tat.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval() {
        let l = RateLimiter::<u32>::new(Rate::new(5, Duration::from_secs(60)), 100);
        let t0 = Duration::from_secs(1000);
        for _ in 0..5 {
            l.check_at(&1, t0).unwrap();
        }
        let e = l.check_at(&1, t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(12));
        assert_eq!((e.requests, e.window), (5, Duration::from_secs(60)));
        // Refused requests cost nothing: still 12 s.
        assert_eq!(l.check_at(&1, t0).unwrap_err().retry_after, Duration::from_secs(12));
        assert!(l.check_at(&1, t0 + Duration::from_secs(11)).is_err());
        l.check_at(&1, t0 + Duration::from_secs(12)).unwrap();
        assert!(l.check_at(&1, t0 + Duration::from_secs(12)).is_err());
        // A full window later the whole burst is back.
        let t1 = t0 + Duration::from_secs(200);
        for _ in 0..5 {
            l.check_at(&1, t1).unwrap();
        }
        assert!(l.check_at(&1, t1).is_err());
    }

    #[test]
    fn one_per_window() {
        let l = RateLimiter::<u8>::new(Rate::new(1, Duration::from_millis(10)), 1);
        let t = Duration::from_secs(1);
        l.check_at(&0, t).unwrap();
        assert_eq!(l.check_at(&0, t).unwrap_err().retry_after, Duration::from_millis(10));
        l.check_at(&0, t + Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn zero_requests_is_one() {
        let l = RateLimiter::<u8>::new(Rate::new(0, Duration::from_secs(1)), 1);
        assert_eq!(l.rate().requests, 1);
        l.check(&0).unwrap();
        assert!(l.check(&0).is_err());
    }
}

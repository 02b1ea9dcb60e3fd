//! Connection limits: global, per client IP (open connections and new connections per minute).
//!
//! Per-IP state lives in sharded maps (one lock per shard, picked by a hash of the address), so
//! connections from different clients rarely touch the same lock. Each admitted connection holds
//! guards that release exactly once, on drop.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::observe::Refusal;

const SHARDS: usize = 64;

#[derive(Debug, Default)]
struct Entry {
    active: u32,
    minute: u64,
    cur: u32,
    prev: u32,
}

/// Per-IP counters: open connections and a sliding-window rate per minute.
#[derive(Debug)]
pub(crate) struct IpLimits {
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
    hasher: RandomState,
    base: Instant,
}

impl IpLimits {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            base: Instant::now(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    fn clock(&self) -> (u64, u64) {
        let secs = self.base.elapsed().as_secs();
        (secs / 60, secs % 60)
    }

    /// Admits one more connection from `ip`, or says which limit it hits. `0` = unlimited.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_active: u32,
        per_minute: u32,
    ) -> Result<IpGuard, Refusal> {
        let (minute, sec) = self.clock();
        let mut map = self.shard(&ip).lock();
        let e = map.entry(ip).or_default();
        if e.minute != minute {
            e.prev = if e.minute + 1 == minute { e.cur } else { 0 };
            e.cur = 0;
            e.minute = minute;
        }
        if max_active > 0 && e.active >= max_active {
            return Err(Refusal::IpLimit);
        }
        if per_minute > 0 {
            // Sliding window: the part of the previous minute still inside the last 60 s.
            let estimate = u64::from(e.prev) * (60 - sec) / 60 + u64::from(e.cur);
            if estimate >= u64::from(per_minute) {
                return Err(Refusal::RateLimit);
            }
        }
        e.active += 1;
        e.cur = e.cur.saturating_add(1);
        Ok(IpGuard { limits: Arc::clone(self), ip })
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock();
        if let Some(e) = map.get_mut(&ip) {
            e.active = e.active.saturating_sub(1);
        }
    }

    /// Open connections from `ip`.
    pub(crate) fn active(&self, ip: IpAddr) -> u32 {
        self.shard(&ip).lock().get(&ip).map_or(0, |e| e.active)
    }

    /// Drops entries with no open connection and no recent rate history.
    pub(crate) fn prune(&self) {
        let (minute, _) = self.clock();
        for s in self.shards.iter() {
            s.lock().retain(|_, e| e.active > 0 || e.minute + 1 >= minute);
        }
    }
}

/// One admitted connection from an IP; released on drop.
#[derive(Debug)]
pub(crate) struct IpGuard {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

/// A counter with a ceiling (global or per-route open connections).
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    active: AtomicU32,
}

impl Gauge {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// One more, unless `max` (0 = unlimited) is reached.
    pub(crate) fn acquire(self: &Arc<Self>, max: u32) -> Option<GaugeGuard> {
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if max > 0 && prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(GaugeGuard(Arc::clone(self)))
    }

    #[cfg(test)]
    pub(crate) fn get(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }
}

/// Releases one unit of a [`Gauge`] on drop.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_ip_and_rate() {
        let l = IpLimits::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = l.acquire(ip, 2, 0).unwrap();
        let _b = l.acquire(ip, 2, 0).unwrap();
        assert_eq!(l.acquire(ip, 2, 0).unwrap_err(), Refusal::IpLimit);
        drop(a);
        assert_eq!(l.active(ip), 1);
        let _c = l.acquire(ip, 2, 0).unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let r = IpLimits::new();
        let mut keep = Vec::new();
        for _ in 0..3 {
            keep.push(r.acquire(other, 0, 3).unwrap());
        }
        drop(keep);
        assert_eq!(r.acquire(other, 0, 3).unwrap_err(), Refusal::RateLimit);
        r.prune();
    }

    #[test]
    fn gauge() {
        let g = Gauge::new();
        let a = g.acquire(1).unwrap();
        assert!(g.acquire(1).is_none());
        drop(a);
        assert!(g.acquire(1).is_some());
        assert_eq!(g.get(), 0);
    }
}

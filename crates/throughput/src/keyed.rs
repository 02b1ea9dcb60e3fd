//! A bounded set of series, one per key (route, client IP...).

use std::collections::HashMap;
use std::hash::Hash;

use crate::sample::{HistoryPoint, Sample, WindowSum};
use crate::series::{Series, SeriesConfig};

/// One series per key, with a bound on the number of keys.
///
/// When a new key arrives and the bound is reached, the least recently active keys (by the time
/// of their last non-empty push) are evicted: one sixteenth of the bound at a time, so that the
/// cost of eviction (a linear selection) is paid once per `max_keys / 16` new keys. Evicted
/// series keep their memory for reuse, so a full tracker stops allocating.
///
/// Every series of the tracker starts at the tracker's start time, so a rate over a window is
/// the key's bytes divided by the window (or the tracker's age), not by the key's own age.
#[derive(Debug, Clone)]
pub struct KeyedSeries<K> {
    cfg: SeriesConfig,
    max_keys: usize,
    start: u64,
    now: u64,
    map: HashMap<K, Entry>,
    free: Vec<Series>,
    evicted: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    series: Series,
    last_active: u64,
}

impl<K: Hash + Eq + Clone> KeyedSeries<K> {
    /// A tracker of at most `max_keys` keys (at least 1), each with rings of `cfg`.
    #[must_use]
    pub fn new(cfg: SeriesConfig, max_keys: usize, start: u64) -> Self {
        Self {
            cfg,
            max_keys: max_keys.max(1),
            start,
            now: start,
            map: HashMap::new(),
            free: Vec::new(),
            evicted: 0,
        }
    }

    /// The bound on the number of keys.
    #[must_use]
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Changes the bound; extra keys are evicted at the next insertion.
    pub fn set_max_keys(&mut self, max_keys: usize) {
        self.max_keys = max_keys.max(1);
    }

    /// Number of keys tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `true` when no key is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys evicted so far.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Newest time seen.
    #[must_use]
    pub fn now(&self) -> u64 {
        self.now
    }

    /// `true` if `key` is tracked.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Moves the tracker clock forward (earlier times are ignored). Series of idle keys are
    /// not touched: they read as zero after their last push.
    pub fn advance(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// Adds `sample` to `key` at `now`. An empty sample neither creates a key nor refreshes
    /// its activity.
    pub fn push(&mut self, key: &K, now: u64, sample: Sample) {
        self.advance(now);
        let now = self.now;
        if sample.is_zero() {
            return;
        }
        if let Some(e) = self.map.get_mut(key) {
            e.series.push(now, sample);
            e.last_active = now;
            return;
        }
        if self.map.len() >= self.max_keys {
            self.evict();
        }
        let mut series = match self.free.pop() {
            Some(mut s) => {
                s.reset(self.start);
                s
            }
            None => Series::new(self.cfg, self.start),
        };
        series.push(now, sample);
        self.map.insert(key.clone(), Entry { series, last_active: now });
    }

    /// Evicts the least recently active keys so that at least one slot is free.
    fn evict(&mut self) {
        let batch = (self.max_keys / 16).max(1);
        let excess = self.map.len() + 1 - self.max_keys.min(self.map.len() + 1);
        let count = (batch + excess).min(self.map.len());
        if count == 0 {
            return;
        }
        let mut ages: Vec<(u64, K)> =
            self.map.iter().map(|(k, e)| (e.last_active, k.clone())).collect();
        if count < ages.len() {
            ages.select_nth_unstable_by_key(count - 1, |(t, _)| *t);
        }
        for (_, k) in ages.into_iter().take(count) {
            if let Some(e) = self.map.remove(&k) {
                if self.free.len() < self.max_keys / 16 + 1 {
                    self.free.push(e.series);
                }
                self.evicted += 1;
            }
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> bool {
        self.map.remove(key).is_some()
    }

    /// Time of the last non-empty push for `key`.
    pub fn last_active(&self, key: &K) -> Option<u64> {
        self.map.get(key).map(|e| e.last_active)
    }

    /// Window totals of `key` over `window` seconds ending at the tracker's newest time.
    pub fn window(&self, key: &K, window: u64) -> Option<WindowSum> {
        self.map.get(key).map(|e| e.series.window(self.now, window))
    }

    /// History of `key` (see [`Series::history`]).
    pub fn history(&self, key: &K, seconds: u64) -> Option<Vec<HistoryPoint>> {
        self.map.get(key).map(|e| e.series.history(self.now, seconds))
    }

    /// Total pushed for `key` since it was (last) inserted.
    pub fn total(&self, key: &K) -> Option<Sample> {
        self.map.get(key).map(|e| e.series.total())
    }

    /// Window totals of every key.
    pub fn windows(&self, window: u64) -> impl Iterator<Item = (&K, WindowSum)> + '_ {
        let now = self.now;
        self.map.iter().map(move |(k, e)| (k, e.series.window(now, window)))
    }

    /// The `n` keys with the most bytes (in + out) over `window`, highest first.
    #[must_use]
    pub fn top(&self, window: u64, n: usize) -> Vec<(K, WindowSum)> {
        let mut all: Vec<(K, WindowSum)> =
            self.windows(window).map(|(k, w)| (k.clone(), w)).collect();
        let key = |w: &WindowSum| std::cmp::Reverse(w.sum.bytes_in.saturating_add(w.sum.bytes_out));
        if n < all.len() {
            if n == 0 {
                return Vec::new();
            }
            all.select_nth_unstable_by_key(n - 1, |(_, w)| key(w));
            all.truncate(n);
        }
        all.sort_by_key(|(_, w)| key(w));
        all
    }

    /// Bytes held by the tracker's series (live and pooled), excluding the hash map itself.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let per = size_of::<Series>() + self.cfg.heap_bytes();
        (self.map.len() + self.free.len()) * per
            + self.map.capacity() * (size_of::<K>() + size_of::<Entry>())
    }
}

//! The registry of open connections, which [`Metrics::tick`](crate::Metrics::tick) samples.
//!
//! 16 mutex shards, connections spread round-robin. Each shard is a slab: a `Vec` of entries,
//! live ([`Slot`]) or free, the free ones linked into a free list, so a connection takes a
//! slot at open and gives it back at close, and the recorder finds its slot again by index
//! ([`SlotId`]). At close the connection's deltas not yet sampled are folded into the shard's
//! pending sums ([`Deltas`]: global, per route, per IP) and the slot is freed at once, so
//! a closed connection holds no memory in the registry; the next tick drains the pending
//! sums together with the deltas of the live slots. Memory is therefore a slot per open
//! connection (plus free slots up to the shard's recent peak, see [`Shard::collect`]) and the
//! pending sums of one interval, not connections per second times the interval.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use smartproxy_throughput::Sample;

use crate::conn::ConnShared;
use crate::route::RouteHandle;

/// Registry shards: opening, closing and sampling do not serialise on one lock.
pub(crate) const SHARDS: usize = 16;

/// End of a shard's free list.
const NONE: usize = usize::MAX;

/// A slab keeps at least this many entries of capacity when it shrinks.
const MIN_CAPACITY: usize = 16;

/// Where a connection's slot is: `index * SHARDS + shard`. Kept by the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotId(usize);

impl SlotId {
    fn new(shard: usize, index: usize) -> Self {
        Self(index * SHARDS + shard)
    }

    fn shard(self) -> usize {
        self.0 % SHARDS
    }

    fn index(self) -> usize {
        self.0 / SHARDS
    }
}

/// A live slot: the connection's counters plus what the sampler already took from them.
#[derive(Debug)]
pub(crate) struct Slot {
    conn: Arc<ConnShared>,
    sampled_in: u64,
    sampled_out: u64,
    sampled_requests: u64,
    /// The connection's own request (one per connection) was counted.
    counted: bool,
}

impl Slot {
    /// The deltas since the last call (the connection's first request included, once), which
    /// are then marked as sampled.
    fn take(&mut self) -> Sample {
        let cin = self.conn.bytes_in.load(Ordering::Relaxed);
        let cout = self.conn.bytes_out.load(Ordering::Relaxed);
        let creq = self.conn.extra_requests.load(Ordering::Relaxed);
        let d = Sample::new(
            cin.wrapping_sub(self.sampled_in),
            cout.wrapping_sub(self.sampled_out),
            creq.wrapping_sub(self.sampled_requests) + u64::from(!self.counted),
        );
        self.sampled_in = cin;
        self.sampled_out = cout;
        self.sampled_requests = creq;
        self.counted = true;
        d
    }
}

/// A slab entry.
#[derive(Debug)]
pub(crate) enum Entry {
    Live(Slot),
    /// Free; `next` is the next free index or [`NONE`].
    Free {
        next: usize,
    },
}

/// Sums of deltas: global, per route (keyed by the route's `Arc` address; the handle keeps
/// that address alive) and per client IP (only when IPs are tracked).
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    pub(crate) global: Sample,
    pub(crate) by_route: HashMap<usize, (RouteHandle, Sample), BuildHasherDefault<AddrHasher>>,
    pub(crate) by_ip: HashMap<IpAddr, Sample>,
}

/// The hasher of [`Deltas::by_route`], whose keys are addresses of the routes' handles (not
/// chosen by clients, so no keyed hash is needed): one folded multiply, which spreads an
/// aligned address over every bit, instead of SipHash on every connection's close.
#[derive(Debug, Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `usize` keys are hashed here; bytes still hash, one multiply each.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    /// Mixes `n` into the state (which `write` relies on for a sequence of bytes).
    fn write_u64(&mut self, n: u64) {
        let m = u128::from(n ^ self.0.rotate_left(8)) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl Deltas {
    fn add(&mut self, conn: &ConnShared, d: Sample, track_ips: bool) {
        if d.is_zero() {
            return;
        }
        self.global += d;
        let key = Arc::as_ptr(&conn.route.0) as usize;
        match self.by_route.entry(key) {
            MapEntry::Occupied(mut e) => e.get_mut().1 += d,
            MapEntry::Vacant(e) => {
                e.insert((conn.route.clone(), d));
            }
        }
        if track_ips {
            *self.by_ip.entry(conn.ip).or_default() += d;
        }
    }

    /// Moves everything in `from` into `self`, leaving `from` empty; `from` keeps its maps'
    /// capacity for the next interval unless it is more than twice what this one used.
    fn drain_from(&mut self, from: &mut Self) {
        self.global += std::mem::take(&mut from.global);
        drain_map(&mut from.by_route, |k, (h, d)| match self.by_route.entry(k) {
            MapEntry::Occupied(mut e) => e.get_mut().1 += d,
            MapEntry::Vacant(e) => {
                e.insert((h, d));
            }
        });
        drain_map(&mut from.by_ip, |ip, d| *self.by_ip.entry(ip).or_default() += d);
    }
}

fn drain_map<K: Eq + Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
    mut f: impl FnMut(K, V),
) {
    let used = map.len();
    for (k, v) in map.drain() {
        f(k, v);
    }
    if map.capacity() > 2 * used.max(MIN_CAPACITY) {
        map.shrink_to(used.max(MIN_CAPACITY));
    }
}

/// One shard: a slab of slots and the sums of the connections closed since the last tick.
#[derive(Debug)]
pub(crate) struct Shard {
    entries: Vec<Entry>,
    /// Head of the free list, lowest index first after each [`collect`](Self::collect).
    free: usize,
    live: usize,
    pending: Deltas,
}

impl Shard {
    fn new() -> Self {
        Self { entries: Vec::new(), free: NONE, live: 0, pending: Deltas::default() }
    }

    fn insert(&mut self, slot: Slot) -> usize {
        self.live += 1;
        if let Some(Entry::Free { next }) = self.entries.get(self.free) {
            let i = self.free;
            self.free = *next;
            self.entries[i] = Entry::Live(slot);
            i
        } else {
            self.entries.push(Entry::Live(slot));
            self.entries.len() - 1
        }
    }

    fn remove(&mut self, index: usize, track_ips: bool) {
        let Some(e) = self.entries.get_mut(index) else {
            debug_assert!(false, "slot {index} out of range");
            return;
        };
        if matches!(e, Entry::Free { .. }) {
            debug_assert!(false, "slot {index} freed twice");
            return;
        }
        if let Entry::Live(mut slot) = std::mem::replace(e, Entry::Free { next: self.free }) {
            self.free = index;
            self.live -= 1;
            let d = slot.take();
            self.pending.add(&slot.conn, d, track_ips);
        }
    }

    /// Adds the deltas of the live slots and the pending sums to `into`. Also drops the free
    /// entries at the end of the slab, relinks the free list lowest index first (so new
    /// connections fill the front and the end can be dropped at a later tick), and gives
    /// back capacity when the slab uses less than a quarter of it.
    fn collect(&mut self, into: &mut Deltas, track_ips: bool) {
        while matches!(self.entries.last(), Some(Entry::Free { .. })) {
            self.entries.pop();
        }
        let mut free = NONE;
        for (i, e) in self.entries.iter_mut().enumerate().rev() {
            match e {
                Entry::Live(slot) => {
                    let d = slot.take();
                    into.add(&slot.conn, d, track_ips);
                }
                Entry::Free { next } => {
                    *next = free;
                    free = i;
                }
            }
        }
        self.free = free;
        let len = self.entries.len();
        if self.entries.capacity() > 4 * len.max(MIN_CAPACITY) {
            self.entries.shrink_to(2 * len.max(MIN_CAPACITY));
        }
        into.drain_from(&mut self.pending);
    }
}

/// The registry: [`SHARDS`] shards.
#[derive(Debug)]
pub(crate) struct Registry {
    shards: Box<[Mutex<Shard>]>,
    next_shard: AtomicUsize,
    track_ips: bool,
}

impl Registry {
    pub(crate) fn new(track_ips: bool) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            next_shard: AtomicUsize::new(0),
            track_ips,
        }
    }

    /// Registers an open connection (one shard lock). `http`: the connection is not counted
    /// as a request of its own (the HTTP layer counts its requests).
    pub(crate) fn insert(&self, conn: Arc<ConnShared>, http: bool) -> SlotId {
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let slot = Slot { conn, sampled_in: 0, sampled_out: 0, sampled_requests: 0, counted: http };
        let index = self.shards[shard].lock().insert(slot);
        SlotId::new(shard, index)
    }

    /// Frees the slot of a closed connection (one shard lock) after folding its deltas not
    /// yet sampled into the shard's pending sums. Call it once, after the connection's last
    /// count, from the thread that closes it.
    pub(crate) fn remove(&self, id: SlotId) {
        self.shards[id.shard()].lock().remove(id.index(), self.track_ips);
    }

    /// Everything counted since the last call: live connections' deltas and the pending
    /// sums of the closed ones. Locks one shard at a time.
    pub(crate) fn collect(&self) -> Deltas {
        let mut d = Deltas::default();
        for shard in &self.shards {
            shard.lock().collect(&mut d, self.track_ips);
        }
        d
    }

    /// Live slots (open connections), over all shards.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.shards.iter().map(|s| s.lock().live).sum()
    }

    /// Slab entries, live or free, over all shards.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }

    /// Slab capacity, in entries, over all shards.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.capacity()).sum()
    }

    /// Client IPs in the pending sums, over all shards.
    #[cfg(test)]
    pub(crate) fn pending_ips(&self) -> usize {
        self.shards.iter().map(|s| s.lock().pending.by_ip.len()).sum()
    }

    /// Capacity of the pending per-IP sums, over all shards.
    #[cfg(test)]
    pub(crate) fn pending_capacity(&self) -> usize {
        self.shards.iter().map(|s| s.lock().pending.by_ip.capacity()).sum()
    }
}

#[cfg(test)]
mod tests;

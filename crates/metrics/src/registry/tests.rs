//! Registry memory (slots freed at close, sizes of what an open connection holds) and the
//! deltas it hands to `tick`, per route and per IP.

use std::mem::size_of;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use smartproxy_throughput::{Sample, SeriesConfig};

use super::{Deltas, Entry, MIN_CAPACITY, Registry, SHARDS, Shard, Slot};
use crate::conn::{ConnShared, ConnectionRecorder};
use crate::route::RouteHandle;
use crate::{Metrics, MetricsConfig, PerIp};

/// Heap and inline bytes one open connection holds in this crate: its `ConnShared` in an
/// `Arc` (two reference counts in front), its slab entry, and the recorder the engine keeps.
const PER_OPEN_CONNECTION: usize = 144;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

fn route(name: &str) -> RouteHandle {
    RouteHandle::new(name, SeriesConfig::new(60, 0), 0)
}

fn conn(ip: IpAddr, route: &RouteHandle) -> Arc<ConnShared> {
    Arc::new(ConnShared {
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        extra_requests: AtomicU64::new(0),
        ip,
        route: route.clone(),
    })
}

fn slot(conn: &Arc<ConnShared>) -> Slot {
    Slot {
        conn: Arc::clone(conn),
        sampled_in: 0,
        sampled_out: 0,
        sampled_requests: 0,
        counted: false,
    }
}

fn route_sum(d: &Deltas, r: &RouteHandle) -> Sample {
    d.by_route.get(&(Arc::as_ptr(&r.0) as usize)).map(|(_, s)| *s).unwrap_or_default()
}

fn free_list(s: &Shard) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = s.free;
    while let Some(Entry::Free { next }) = s.entries.get(i) {
        out.push(i);
        i = *next;
    }
    out
}

#[test]
fn an_open_connection_holds_a_constant_number_of_bytes() {
    let arc_inner = 2 * size_of::<usize>() + size_of::<ConnShared>();
    let per_open = arc_inner + size_of::<Entry>() + size_of::<ConnectionRecorder>();
    assert!(per_open <= PER_OPEN_CONNECTION, "{per_open} bytes per open connection");
    // The parts, so that a regression says where it is (64-bit targets).
    if size_of::<usize>() == 8 {
        assert_eq!(size_of::<ConnShared>(), 56);
        assert_eq!(size_of::<Slot>(), 40);
        assert_eq!(size_of::<Entry>(), 40, "a free entry fits in a live one's layout");
        assert_eq!(size_of::<ConnectionRecorder>(), 32);
        assert_eq!(per_open, 144);
    }
}

#[test]
fn ten_thousand_closed_connections_leave_no_slot_without_a_tick() {
    let m = Metrics::new(MetricsConfig::default(), 0);
    let r = m.route("web");
    // One at a time: each close frees the slot the next open takes.
    for i in 0..10_000u64 {
        let c = m.connection_opened(ip(1), &r);
        c.add_in(i);
        drop(c);
    }
    assert_eq!(m.registry().live(), 0);
    assert!(m.registry().entries() <= SHARDS, "{} entries", m.registry().entries());
    // All open at once, then all closed: the slots are free at once, the entries (40 bytes
    // each) stay until the next tick drops them.
    let open: Vec<_> =
        (0..10_000u32).map(|i| m.connection_opened(ip((i % 200) as u8), &r)).collect();
    assert_eq!(m.registry().live(), 10_000);
    drop(open);
    assert_eq!(m.registry().live(), 0);
    m.tick(1);
    assert_eq!(m.registry().entries(), 0);
    assert!(m.registry().capacity() <= SHARDS * 4 * MIN_CAPACITY, "{}", m.registry().capacity());
    // Per-IP pending sums are kept for one interval, then their room is given back.
    for i in 0..10_000u32 {
        drop(m.connection_opened(IpAddr::from((0x0a01_0000 + i).to_be_bytes()), &r));
    }
    assert_eq!(m.registry().pending_ips(), 10_000);
    m.tick(2);
    assert_eq!(m.registry().pending_ips(), 0);
    m.tick(3);
    assert!(m.registry().pending_capacity() <= SHARDS * 4 * MIN_CAPACITY);
    assert_eq!(m.requests_total(), 30_000);
    assert_eq!(m.bytes_in_total(), (0..10_000).sum::<u64>());
}

#[test]
fn a_connection_opened_and_closed_between_ticks_is_in_the_next_deltas_once() {
    let reg = Registry::new(true);
    let (web, db) = (route("web"), route("db"));
    let a = conn(ip(1), &web);
    let b = conn(ip(2), &db);
    let ida = reg.insert(Arc::clone(&a), false);
    let idb = reg.insert(Arc::clone(&b), false);
    a.bytes_in.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
    a.bytes_out.fetch_add(200, std::sync::atomic::Ordering::Relaxed);
    a.extra_requests.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    b.bytes_out.fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    reg.remove(ida);
    reg.remove(idb);
    assert_eq!(reg.live(), 0);
    let d = reg.collect();
    assert_eq!(d.global, Sample::new(100, 207, 4));
    assert_eq!(route_sum(&d, &web), Sample::new(100, 200, 3));
    assert_eq!(route_sum(&d, &db), Sample::new(0, 7, 1));
    assert_eq!(d.by_ip.get(&ip(1)), Some(&Sample::new(100, 200, 3)));
    assert_eq!(d.by_ip.get(&ip(2)), Some(&Sample::new(0, 7, 1)));
    let again = reg.collect();
    assert!(again.global.is_zero() && again.by_route.is_empty() && again.by_ip.is_empty());
}

#[test]
fn deltas_of_a_connection_sampled_then_closed_are_split_exactly() {
    let reg = Registry::new(false);
    let web = route("web");
    let a = conn(ip(1), &web);
    let id = reg.insert(Arc::clone(&a), false);
    a.bytes_in.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reg.collect().global, Sample::new(10, 0, 1));
    a.bytes_in.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
    a.extra_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    reg.remove(id);
    let d = reg.collect();
    assert_eq!(d.global, Sample::new(5, 0, 1));
    assert!(d.by_ip.is_empty(), "IPs are not tracked");
    // Sampled, then closed with nothing new: no pending entry at all.
    let b = conn(ip(1), &web);
    let id = reg.insert(Arc::clone(&b), false);
    assert_eq!(reg.collect().global, Sample::new(0, 0, 1));
    reg.remove(id);
    let d = reg.collect();
    assert!(d.global.is_zero() && d.by_route.is_empty());
}

#[test]
fn the_slab_reuses_free_slots_lowest_first_and_drops_its_free_end() {
    let web = route("web");
    let conns: Vec<_> = (0..5).map(|i| conn(ip(i), &web)).collect();
    let mut s = Shard::new();
    for (i, c) in conns.iter().enumerate() {
        assert_eq!(s.insert(slot(c)), i);
    }
    s.remove(1, false);
    s.remove(3, false);
    assert_eq!(free_list(&s), vec![3, 1], "last freed first until a collect");
    let mut d = Deltas::default();
    s.collect(&mut d, false);
    assert_eq!(d.global, Sample::new(0, 0, 5));
    assert_eq!(free_list(&s), vec![1, 3]);
    s.remove(4, false);
    s.collect(&mut d, false);
    assert_eq!(s.entries.len(), 3, "the free end (3 and 4) is dropped");
    assert_eq!(free_list(&s), vec![1]);
    assert_eq!(s.insert(slot(&conns[4])), 1);
    assert_eq!(s.insert(slot(&conns[4])), 3);
    assert_eq!(s.insert(slot(&conns[4])), 4);
    assert_eq!(s.live, 5);
    for i in 0..5 {
        s.remove(i, false);
    }
    s.collect(&mut d, false);
    assert_eq!((s.entries.len(), s.live, s.free), (0, 0, super::NONE));
}

#[test]
fn closing_from_many_threads_counts_every_byte() {
    let m = Metrics::new(MetricsConfig { per_ip: PerIp::TopN(100), ..Default::default() }, 0);
    let r = m.route("web");
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (m, r) = (&m, &r);
            s.spawn(move || {
                for i in 0..2_000u64 {
                    let c = m.connection_opened(ip(t), r);
                    c.add_in(i % 7);
                    c.add_out(1);
                }
            });
        }
        let m = &m;
        s.spawn(move || {
            for t in 1..=50 {
                m.tick(t);
                std::thread::yield_now();
            }
        });
    });
    m.tick(51);
    assert_eq!(m.registry().live(), 0);
    assert_eq!(m.registry().entries(), 0);
    assert_eq!(m.requests_total(), 8_000);
    assert_eq!(m.bytes_out_total(), 8_000);
    assert_eq!(m.bytes_in_total(), 4 * (0..2_000u64).map(|i| i % 7).sum::<u64>());
}

/// The per-route sums are keyed by handle addresses, aligned to 8 or more: the hash must
/// still spread them over the low bits (the map's buckets) and the top seven (its tags).
#[test]
fn addr_hasher_spreads_aligned_addresses() {
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    let build = std::hash::BuildHasherDefault::<super::AddrHasher>::default();
    let hashes: Vec<u64> =
        (0..1024usize).map(|i| build.hash_one(0x7f00_0000_1000 + 64 * i)).collect();
    let low: HashSet<u64> = hashes.iter().map(|h| h & 0x3ff).collect();
    let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
    assert!(low.len() > 550, "{} distinct low 10-bit values of 1024", low.len());
    assert_eq!(top.len(), 128, "every tag value used");
}

//! Heap held by open and by closed connections, measured with a counting allocator.
//!
//! One test in this binary: the allocator counts every thread, so nothing else may run here.
#![allow(unsafe_code, reason = "a counting GlobalAlloc wrapper around System; see SAFETY notes")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, Ordering};

use smartproxy_metrics::{Metrics, MetricsConfig};

/// Bytes allocated and not yet freed, by layout size.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counter update has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is; `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn closed_connections_hold_no_heap_and_open_ones_a_constant_amount() {
    const N: u32 = 15_000; // one second of the connection-churn load
    let m = Metrics::new(MetricsConfig::default(), 0);
    let r = m.route("web");
    let ip: IpAddr = [10, 0, 0, 1].into();
    // Warm up: the per-IP gauge map, pending sums and slabs get their first allocations.
    for _ in 0..64 {
        let c = m.connection_opened(ip, &r);
        c.add_in(1);
    }
    m.tick(1);
    let base = live();

    for i in 0..N {
        let c = m.connection_opened(ip, &r);
        c.add_in(u64::from(i));
        c.add_out(1);
    }
    let closed = live() - base;
    eprintln!("heap held after {N} connections opened and closed, before a tick: {closed} B");
    assert!(closed <= 4_096, "{closed} bytes held by {N} closed connections");
    m.tick(2);
    assert_eq!(m.requests_total(), u64::from(N) + 64);

    let base = live();
    let open: Vec<_> = (0..N).map(|_| m.connection_opened(ip, &r)).collect();
    let per_open = (live() - base) as f64 / f64::from(N);
    eprintln!("heap per open connection: {per_open:.1} B (recorders in a Vec included)");
    // 72 (the shared counters with their Arc counts) + 32 (the recorder, here in a Vec)
    // + 40 (the slab entry), and the two Vecs' doubling.
    assert!(per_open <= 2.0 * 144.0, "{per_open} bytes per open connection");
    drop(open);
    m.tick(3);
    let after = live() - base;
    eprintln!("heap held after closing them and a tick: {after} B");
    // The slabs keep room for 32 entries each (16 shards x 32 x 40 B = 20 KiB) once they
    // have grown past it.
    assert!(after <= 24_576, "{after} bytes left after closing {N} connections");
}

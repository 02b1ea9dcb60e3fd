//! Per-connection counters: the hot path.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::collector::Inner;
use crate::registry::SlotId;
use crate::route::RouteHandle;

/// State shared by a connection's recorder and its registry slot.
///
/// The counters are not padded. The engine counts both copy directions of a connection from
/// one tokio task (`try_join!` of the two directions inside that task), so at any moment they
/// are written from one thread and have nothing to gain from separate cache lines; padding
/// each to 128 bytes (as an earlier version did) made every open connection cost 512 bytes
/// of heap instead of the 72 of this struct in its `Arc`. Two *different* connections may
/// share a line when their allocations are adjacent and they run on different cores; the
/// allocator's per-thread arenas make that rare, and the `record` bench's "one connection
/// each" case measures it.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Requests after the first (keep-alive HTTP), counted by the engine.
    pub(crate) extra_requests: AtomicU64,
    pub(crate) ip: IpAddr,
    pub(crate) route: RouteHandle,
}

/// Records the bytes of one connection. Created by
/// [`Metrics::connection_opened`](crate::Metrics::connection_opened).
///
/// [`add_in`](Self::add_in), [`add_out`](Self::add_out) and
/// [`add_request`](Self::add_request) take `&self` and are one relaxed atomic add each, on
/// counters that belong to this connection alone: no lock, no lookup, no allocation. The
/// counters sit next to each other, unpadded, for the common case where one task counts
/// both directions. The recorder is `Sync`, so the two directions may also run on two
/// threads sharing it by reference or in an `Arc`; it stays correct, but then both threads
/// write the same cache line, which moves between their cores on every add (the `record`
/// bench's "in and out" case measures that cost).
///
/// Dropping the recorder closes the connection in the metrics, exactly once: gauges of open
/// connections, the duration and bytes-per-connection histograms, and the registry, which
/// frees the connection's slot at once and keeps only its bytes and requests not yet sampled,
/// summed per route and per IP, until the next [`Metrics::tick`](crate::Metrics::tick).
#[derive(Debug)]
pub struct ConnectionRecorder {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) slot: SlotId,
    /// The clock's `elapsed()` at open, in nanoseconds.
    pub(crate) opened_at: u64,
}

impl ConnectionRecorder {
    /// Counts `n` bytes received from the client.
    #[inline]
    pub fn add_in(&self, n: u64) {
        self.conn.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes sent to the client.
    #[inline]
    pub fn add_out(&self, n: u64) {
        self.conn.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one more request on this connection, after the first: the connection itself
    /// counts as one request (all a layer-4 route ever has); an HTTP keep-alive connection
    /// calls this for its second request and every one after.
    #[inline]
    pub fn add_request(&self) {
        self.conn.extra_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes received from the client so far.
    #[must_use]
    pub fn bytes_in(&self) -> u64 {
        self.conn.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes sent to the client so far.
    #[must_use]
    pub fn bytes_out(&self) -> u64 {
        self.conn.bytes_out.load(Ordering::Relaxed)
    }

    /// Client address.
    #[must_use]
    pub fn client_ip(&self) -> IpAddr {
        self.conn.ip
    }

    /// Route of the connection.
    #[must_use]
    pub fn route(&self) -> &RouteHandle {
        &self.conn.route
    }
}

impl Drop for ConnectionRecorder {
    fn drop(&mut self) {
        self.inner.connection_closed(&self.conn, self.slot, self.opened_at);
    }
}

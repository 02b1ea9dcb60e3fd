//! Per-connection counters (the hot path) and the registry the sampler walks.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::collector::Inner;
use crate::route::RouteHandle;

/// Keeps a value on its own cache line (128 bytes covers adjacent-line prefetch on x86 and
/// the 128-byte lines of Apple silicon), so that the two copy directions of one connection do
/// not invalidate each other's line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// State shared by a connection's recorder and the registry.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) bytes_in: Padded<AtomicU64>,
    pub(crate) bytes_out: Padded<AtomicU64>,
    /// Requests after the first (keep-alive HTTP), counted by the engine.
    pub(crate) extra_requests: AtomicU64,
    /// Set once, by the recorder's drop, after its last byte was counted.
    pub(crate) closed: AtomicBool,
    pub(crate) ip: IpAddr,
    pub(crate) route: RouteHandle,
}

/// A registry slot: the shared state plus what the sampler has already taken from it.
/// Only touched under the shard lock.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) sampled_in: u64,
    pub(crate) sampled_out: u64,
    pub(crate) sampled_requests: u64,
    pub(crate) counted: bool,
}

/// Records the bytes of one connection. Created by
/// [`Metrics::connection_opened`](crate::Metrics::connection_opened).
///
/// [`add_in`](Self::add_in) and [`add_out`](Self::add_out) take `&self` and touch one atomic
/// each, on a cache line owned by this connection: share the recorder between the two copy
/// directions by reference or in an `Arc`. Dropping it closes the connection in the metrics
/// (duration and bytes-per-connection histograms, active gauges), exactly once.
#[derive(Debug)]
pub struct ConnectionRecorder {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) opened_at: Duration,
}

impl ConnectionRecorder {
    /// Counts `n` bytes received from the client.
    #[inline]
    pub fn add_in(&self, n: u64) {
        self.conn.bytes_in.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes sent to the client.
    #[inline]
    pub fn add_out(&self, n: u64) {
        self.conn.bytes_out.0.fetch_add(n, Ordering::Relaxed);
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
        self.conn.bytes_in.0.load(Ordering::Relaxed)
    }

    /// Bytes sent to the client so far.
    #[must_use]
    pub fn bytes_out(&self) -> u64 {
        self.conn.bytes_out.0.load(Ordering::Relaxed)
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
        // Release: the sampler, reading `closed` with Acquire, then sees every byte added
        // before this point.
        self.conn.closed.store(true, Ordering::Release);
        self.inner.connection_closed(&self.conn, self.opened_at);
    }
}

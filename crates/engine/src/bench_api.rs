//! Entry points for the criterion benches in `benches/` (not a stable API: hidden from the
//! documentation, may change in any release).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::TcpStream;

use smartproxy_limits::{IpLimiter, IpLimits};

use crate::limits::Gauge;

/// Runs the plain-TCP copy loop (both directions, half-close, splice-auto where enabled)
/// between `a` and `b` until both directions reach EOF. Returns (bytes a->b, bytes b->a).
/// Counts with one relaxed atomic add per chunk, as a connection's observer does.
pub async fn copy_tcp(a: &TcpStream, b: &TcpStream) -> std::io::Result<(u64, u64)> {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let count = |c: &AtomicU64, n| {
        c.fetch_add(n, Relaxed);
    };
    crate::copy::copy_both(a, b, |n| count(&up, n), |n| count(&down, n)).await?;
    Ok((up.into_inner(), down.into_inner()))
}

/// The TCP keepalive options a connection sets on its backend socket at setup
/// (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`), with the default values;
/// its accepted socket inherits them from the listener on Linux, at no cost.
pub fn set_tcp_keepalive(s: &TcpStream) {
    crate::net::set_keepalive(
        &socket2::SockRef::from(s),
        &smartproxy_routing::TcpKeepalive::default(),
    );
}

/// The per-IP limiter (open connections and rate per minute) as a connection uses it.
#[derive(Debug)]
pub struct Limits {
    ip: Arc<IpLimiter>,
    global: Arc<Gauge>,
}

impl Limits {
    /// The engine's global limits with these settings (`0` = off).
    pub fn new(max_per_ip: u32, per_minute: u32) -> Self {
        let ip =
            IpLimiter::new(IpLimits { max_open: max_per_ip, per_minute, ..IpLimits::default() });
        Self { ip, global: Gauge::new() }
    }

    /// The checks of one accepted connection: global gauge, then per-IP count and rate, then
    /// both guards released. Returns whether it was admitted.
    pub fn admit_and_release(&self, ip: IpAddr) -> bool {
        let Some(g) = self.global.acquire(0) else { return false };
        let ok = self.ip.try_acquire(ip).is_ok();
        drop(g);
        ok
    }
}

/// The size in bytes of a connection's future, the state its task keeps for its whole life
/// (the task adds tokio's header and trailer around it). Guarded by `tests/task_size.rs`.
pub fn connection_future_size() -> usize {
    crate::pipeline::task_size()
}

/// The size in bytes of a connection's setup future (admission, PROXY header, peek, route,
/// connect), boxed at the accept and freed when the copy starts. Guarded by
/// `tests/task_size.rs`.
pub fn setup_future_size() -> usize {
    crate::pipeline::setup_size()
}

/// The size in bytes of the future of a connection accepted on a plain HTTP port: the HTTP
/// layer's state for the connection's whole life, boxed once at the accept (so every byte of
/// it is copied once). Guarded by `tests/task_size.rs`.
pub fn plain_http_future_size() -> usize {
    crate::pipeline::plain_http_task_size()
}

/// Client sockets of plain HTTP ports registered with the reactor so far in this process
/// (`lazy.rs`): at their first wait, or at the accept where the listener's connections are
/// not lazy. A `Connection: close` request answered at once registers none.
pub fn lazy_registrations() -> u64 {
    crate::lazy::REGISTRATIONS.load(Relaxed)
}

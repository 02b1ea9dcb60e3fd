//! Entry points for the criterion benches in `benches/` (not a stable API: hidden from the
//! documentation, may change in any release).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpStream;

use crate::limits::{Gauge, IpLimits};

/// Runs the plain-TCP copy loop (both directions, half-close, splice-auto where enabled)
/// between `a` and `b` until both directions reach EOF. Returns (bytes a->b, bytes b->a).
pub async fn copy_tcp(a: &TcpStream, b: &TcpStream) -> std::io::Result<(u64, u64)> {
    let (mut up, mut down) = (0u64, 0u64);
    let done = [AtomicBool::new(false), AtomicBool::new(false)];
    tokio::try_join!(
        crate::copy::one_way(a, b, |n| up += n, &done[0], &done[1]),
        crate::copy::one_way(b, a, |n| down += n, &done[1], &done[0]),
    )?;
    Ok((up, down))
}

/// The per-IP limiter (open connections and rate per minute) as a connection uses it.
#[derive(Debug)]
pub struct Limits {
    ip: Arc<IpLimits>,
    global: Arc<Gauge>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { ip: IpLimits::new(), global: Gauge::new() }
    }
}

impl Limits {
    /// The checks of one accepted connection: global gauge, then per-IP count and rate, then
    /// both guards released. Returns whether it was admitted.
    pub fn admit_and_release(&self, ip: IpAddr, max_per_ip: u32, per_minute: u32) -> bool {
        let Some(g) = self.global.acquire(0) else { return false };
        let ok = self.ip.acquire(ip, max_per_ip, per_minute).is_ok();
        drop(g);
        ok
    }
}

/// The size in bytes of a connection's future, the state its task keeps for its whole life
/// (the task adds tokio's header and trailer around it). Guarded by `tests/task_size.rs`.
pub fn connection_future_size() -> usize {
    crate::conn::task_size()
}

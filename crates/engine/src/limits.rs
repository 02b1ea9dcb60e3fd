//! The global connection gauge. Per-IP limits are [`smartproxy_limits::IpLimiter`]s (the
//! engine-wide one in [`crate::shared::Shared`], each route's in its compiled table).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A counter with a ceiling (open connections in total).
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

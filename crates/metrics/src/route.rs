//! Per-route counters and series.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use smartproxy_throughput::{Sample, Series, SeriesConfig};

/// A route's metrics. Get one per route with [`Metrics::route`](crate::Metrics::route) when the
/// configuration is (re)loaded, keep it with the compiled route, and pass it to
/// [`Metrics::connection_opened`](crate::Metrics::connection_opened). Cloning is an `Arc`
/// clone.
#[derive(Debug, Clone)]
pub struct RouteHandle(pub(crate) Arc<RouteStats>);

#[derive(Debug)]
pub(crate) struct RouteStats {
    pub(crate) name: String,
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) backend_connects: AtomicU64,
    pub(crate) backend_failures: AtomicU64,
    pub(crate) backend_micros: AtomicU64,
    pub(crate) series: RwLock<Series>,
    pub(crate) http: crate::http::HttpStats,
    /// Traffic counted outside any connection recorder (kernel-forwarded routes), added by
    /// [`Metrics::add_route_traffic`](crate::Metrics::add_route_traffic) and taken by the
    /// next tick.
    pub(crate) external: Mutex<Sample>,
}

impl RouteHandle {
    pub(crate) fn new(name: &str, cfg: SeriesConfig, start: u64) -> Self {
        Self(Arc::new(RouteStats {
            name: name.to_owned(),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            backend_connects: AtomicU64::new(0),
            backend_failures: AtomicU64::new(0),
            backend_micros: AtomicU64::new(0),
            series: RwLock::new(Series::new(cfg, start)),
            http: crate::http::HttpStats::default(),
            external: Mutex::new(Sample::default()),
        }))
    }

    /// Route name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Connections open on this route now.
    #[must_use]
    pub fn active(&self) -> u64 {
        self.0.active.load(Ordering::Relaxed)
    }

    /// Connections opened on this route.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.total.load(Ordering::Relaxed)
    }

    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

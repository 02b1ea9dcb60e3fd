//! hdrhistogram wrapper: percentiles plus cumulative buckets for Prometheus.

use hdrhistogram::Histogram;

use crate::snapshot::{Bucket, HistogramSnapshot, Pct};

/// Bucket bounds (seconds) of connection durations.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14_400.0, 86_400.0,
];
/// Bucket bounds (seconds) of backend connect times.
pub(crate) const CONNECT_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds (bytes) of bytes per connection.
pub(crate) const BYTES_BUCKETS: &[f64] = &[100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// A histogram of integer values in `unit` (e.g. 1e-6 for microseconds), with an exact sum.
#[derive(Debug)]
pub(crate) struct Hist {
    h: Histogram<u64>,
    /// Sum of recorded values, in units.
    sum: u128,
    /// Units per exported base unit (1e6 for microseconds to seconds, 1 for bytes).
    per_base: f64,
    bounds: &'static [f64],
}

impl Hist {
    pub(crate) fn new(max: u64, per_base: f64, bounds: &'static [f64]) -> Self {
        // Bounds are constants that hdrhistogram accepts (1 <= low, high >= 2 * low, sigfig 2).
        let h = Histogram::new_with_bounds(1, max, 2)
            .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()));
        Self { h, sum: 0, per_base, bounds }
    }

    /// Durations in microseconds, up to 31 days.
    pub(crate) fn micros(bounds: &'static [f64]) -> Self {
        Self::new(31 * 86_400 * 1_000_000, 1e6, bounds)
    }

    /// Byte counts up to 1 PB.
    pub(crate) fn bytes() -> Self {
        Self::new(1_000_000_000_000_000, 1.0, BYTES_BUCKETS)
    }

    pub(crate) fn record(&mut self, v: u64) {
        self.h.saturating_record(v);
        self.sum = self.sum.saturating_add(u128::from(v));
    }

    pub(crate) fn pct(&self) -> Pct {
        if self.h.is_empty() {
            return Pct::default();
        }
        // The middle of the value's bucket: within the histogram's 1 % precision either way.
        let q =
            |q: f64| self.h.median_equivalent(self.h.value_at_quantile(q)) as f64 / self.per_base;
        Pct { p50: q(0.5), p95: q(0.95), p99: q(0.99) }
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .bounds
            .iter()
            .map(|&le| {
                // Largest integer value (in units) that is <= le.
                let top = (le * self.per_base).floor();
                let top = if top >= u64::MAX as f64 { u64::MAX } else { top as u64 };
                Bucket { le, count: self.h.count_between(0, top) }
            })
            .collect();
        HistogramSnapshot { buckets, count: self.h.len(), sum: self.sum as f64 / self.per_base }
    }
}

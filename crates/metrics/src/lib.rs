//! Traffic metrics collector for smartproxy: atomics on the hot path, time series, percentiles, snapshots.

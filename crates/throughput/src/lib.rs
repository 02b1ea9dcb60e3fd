//! Time-series throughput rings (1 s samples, 1 min aggregates) with an injected clock.

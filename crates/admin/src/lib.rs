//! Admin HTTP API for smartproxy: metrics, health, readiness, reload.

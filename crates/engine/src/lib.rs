//! The smartproxy engine: listeners, PROXY protocol, limits, TLS, forwarding.

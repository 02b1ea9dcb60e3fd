//! Labels: why a connection was refused or closed, PROXY protocol versions.

/// Why a connection was refused before it was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RefuseReason {
    /// Too many connections from the client IP.
    IpLimit,
    /// The client IP opened connections too fast.
    RateLimit,
    /// The proxy-wide connection limit was reached.
    GlobalLimit,
    /// The route's connection limit was reached.
    RouteLimit,
    /// The route's per-IP limit or connection rate was reached for the client.
    RouteIpLimit,
    /// The client IP is blocked (block list, or not in the allow list).
    Blocked,
    /// A trusted peer sent no PROXY header where one is required.
    ProxyHeaderRequired,
    /// An untrusted peer sent a PROXY header.
    ProxyHeaderUntrusted,
    /// The PROXY header could not be parsed.
    ProxyHeaderInvalid,
    /// The PROXY header did not arrive in time.
    ProxyHeaderTimeout,
    /// No route matched.
    NoRoute,
    /// The data needed for routing (TLS ClientHello, HTTP head) did not arrive in time, was
    /// too large or could not be read.
    InitialData,
    /// The TLS handshake with the client failed.
    TlsHandshake,
    /// No target of the route could be reached.
    BackendUnavailable,
    /// The proxy is shutting down.
    ShuttingDown,
    /// Any other reason.
    Other,
}

impl RefuseReason {
    /// Every reason, in label order.
    pub const ALL: &'static [Self] = &[
        Self::IpLimit,
        Self::RateLimit,
        Self::GlobalLimit,
        Self::RouteLimit,
        Self::RouteIpLimit,
        Self::Blocked,
        Self::ProxyHeaderRequired,
        Self::ProxyHeaderUntrusted,
        Self::ProxyHeaderInvalid,
        Self::ProxyHeaderTimeout,
        Self::NoRoute,
        Self::InitialData,
        Self::TlsHandshake,
        Self::BackendUnavailable,
        Self::ShuttingDown,
        Self::Other,
    ];

    /// The label value (`snake_case`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IpLimit => "ip_limit",
            Self::RateLimit => "rate_limit",
            Self::GlobalLimit => "global_limit",
            Self::RouteLimit => "route_limit",
            Self::RouteIpLimit => "route_ip_limit",
            Self::Blocked => "blocked",
            Self::ProxyHeaderRequired => "proxy_header_required",
            Self::ProxyHeaderUntrusted => "proxy_header_untrusted",
            Self::ProxyHeaderInvalid => "proxy_header_invalid",
            Self::ProxyHeaderTimeout => "proxy_header_timeout",
            Self::NoRoute => "no_route",
            Self::InitialData => "initial_data",
            Self::TlsHandshake => "tls_handshake",
            Self::BackendUnavailable => "backend_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        // ALL lists every variant exactly once; the fallback is unreachable in practice.
        Self::ALL.iter().position(|r| *r == self).unwrap_or(Self::ALL.len() - 1)
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a served connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CloseReason {
    /// A side ended it: EOF from both sides, a reset or broken pipe from the client or the
    /// backend, or a socket handler that finished.
    Peer,
    /// No byte moved for the inactivity timeout.
    Inactivity,
    /// The maximum lifetime passed.
    Lifetime,
    /// TCP keepalive probes went unanswered: the kernel declared the peer dead (`ETIMEDOUT`).
    Keepalive,
    /// The proxy closed it at the end of the shutdown grace.
    Shutdown,
    /// Any other socket or TLS error.
    Error,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: &'static [Self] = &[
        Self::Peer,
        Self::Inactivity,
        Self::Lifetime,
        Self::Keepalive,
        Self::Shutdown,
        Self::Error,
    ];

    /// The label value (`snake_case`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Inactivity => "inactivity",
            Self::Lifetime => "lifetime",
            Self::Keepalive => "keepalive",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ProxyVersion {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

impl ProxyVersion {
    /// The label value: `v1` or `v2`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

impl std::fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_index_follows_all() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
    }
}

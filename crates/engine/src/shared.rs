//! What every connection reads: the configuration in force, the engine-wide limits, the
//! observer, the registered handlers and the forced-close signal. The engine's control block
//! ([`crate::engine`]) owns one and hands connections an `Arc` of it; nothing here reaches back
//! into the control block.

use std::sync::Arc;

use arc_swap::ArcSwap;
use smartproxy_limits::IpLimiter;
use tokio::sync::watch;

use crate::fds::FdWait;
use crate::handler::Registry;
use crate::limits::Gauge;
use crate::observe::EngineObserver;
use crate::state::State;

/// The engine-wide part of every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration in force; a connection loads it once, when accepted.
    pub(crate) state: ArcSwap<State>,
    /// Custom socket handlers, by name.
    pub(crate) handlers: Registry,
    /// Open connections and connection rate per client IP (`[defaults]` limits), counted on
    /// the real client address; the metrics' connections per IP read it too.
    pub(crate) ip_limits: Arc<IpLimiter>,
    /// Open connections in total (`[defaults] max_connections`).
    pub(crate) global: Arc<Gauge>,
    pub(crate) obs: Arc<EngineObserver>,
    /// Turns true when shutdown begins: HTTP connections close after their current request.
    pub(crate) draining: watch::Sender<bool>,
    /// Turns true when the shutdown grace is over: every connection closes.
    pub(crate) force_close: watch::Sender<bool>,
    /// The HTTP layer (pools, per-request routing on the state's table) for HTTP ports.
    pub(crate) http: smartproxy_http::HttpService,
    /// The TCP keepalive probes every listening socket has, and so every accepted socket
    /// inherits (Linux copies them from the listener): `[defaults] tcp_keepalive` at start,
    /// for the life of the engine (a reload that changes the defaults leaves the listeners
    /// alone; its connections then set their probes themselves). `Off` elsewhere.
    pub(crate) listener_keepalive: smartproxy_routing::TcpKeepalive,
    /// Connections waiting for a file descriptor; the accept loops pause while there are any.
    pub(crate) fds: Arc<FdWait>,
}

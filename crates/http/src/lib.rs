//! The HTTP layer of smartproxy: an HTTP/1.1 and HTTP/2 reverse proxy on hyper that routes
//! every request on its own.
//!
//! The engine accepts a connection, reads the PROXY header, terminates TLS, and hands the
//! stream to [`HttpService::serve`] with a [`ConnInfo`] (real client address, whether the
//! peer is trusted, port, TLS session). From there each request is matched with
//! [`smartproxy_routing::RouteTable::lookup`] on Host (or `:authority`), path, headers, client
//! IP and port, and is forwarded to its route's targets over pooled HTTP/1.1 or HTTP/2
//! connections, answered by a `redirect` / `block` / `static` handler, or refused with a short
//! error (404, 403, 502, 504, ...). WebSocket upgrades (HTTP/1.1 and RFC 8441) become tunnels
//! outside the HTTP timers. Request metrics go to [`smartproxy_metrics::Metrics`]; an access
//! log ([`AccessLog`]) is optional.
//!
//! ```no_run
//! # async fn demo(table: std::sync::Arc<smartproxy_routing::RouteTable>, tcp: tokio::net::TcpStream) {
//! use smartproxy_http::{ConnInfo, HttpConfig, HttpService};
//!
//! let http = HttpService::new(HttpConfig::new(table), None);
//! let client = tcp.peer_addr().unwrap();
//! let outcome = http.serve(tcp, ConnInfo::new(client, 8080), std::future::pending()).await;
//! println!("{} requests, {:?}", outcome.requests, outcome.reason);
//! # }
//! ```
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

mod access;
mod auth;
mod body;
mod conn;
mod cors;
mod ctx;
mod h1;
mod h1_server;
mod headers;
mod io;
mod location;
mod policy;
mod pool;
mod proxy;
mod quiet;
mod service;
mod snapshot;
#[cfg(test)]
mod testing;
mod upstream;
mod websocket;

pub use self::access::{AccessLog, TracingAccessLog};
pub use self::auth::{
    Credentials, Htpasswd, HtpasswdError, JwtKeys, MIN_HMAC_SECRET, RouteCredentials,
};
pub use self::conn::{CloseReason, Protocol, ServeOutcome};
pub use self::ctx::{ConnInfo, ProxyHeaderFn, TlsInfo};
pub use self::io::last_write;
pub use self::quiet::Quiet;
pub use self::service::{HttpConfig, HttpService, RouteConnSettings};
pub use self::upstream::{
    TlsConnectFuture, TlsConnectRequest, TlsStream, UpstreamStream, UpstreamTls, set_tcp_keepalive,
};
pub use smartproxy_routing::HttpSettings;

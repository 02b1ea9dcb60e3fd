//! The smartproxy engine: listeners, PROXY protocol, limits, routing, forwarding, socket
//! handlers, reload and graceful shutdown.
//!
//! Load a [`Config`] (TOML or JSON, validated with every error located by key path and line),
//! then start an [`Engine`] inside a tokio runtime:
//!
//! ```no_run
//! use smartproxy_engine::{Config, Engine, Format};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_str(r#"
//!     bind = ["127.0.0.1"]
//!     [[routes]]
//!     match = { ports = [8080] }
//!     action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }
//! "#, Format::Toml)?;
//! let engine = Engine::start(config).await?;
//! // ... later
//! engine.shutdown(std::time::Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! # Custom socket handlers
//!
//! A route with `action = { type = "socket-handler", handler = "NAME" }` runs a handler. Besides
//! the built-ins (`echo`, `static`, `block`, `redirect`), a library user registers their own:
//!
//! ```no_run
//! use std::sync::Arc;
//! use smartproxy_engine::{
//!     ClientStream, Engine, Format, HandlerContext, HandlerFuture, SocketHandler,
//! };
//! use tokio::io::AsyncWriteExt;
//!
//! struct Hello;
//!
//! impl SocketHandler for Hello {
//!     fn handle<'a>(&'a self, mut stream: ClientStream, ctx: HandlerContext) -> HandlerFuture<'a> {
//!         Box::pin(async move {
//!             let line = format!("hello {} on route {}\n", ctx.client_addr, ctx.route_name);
//!             stream.write_all(line.as_bytes()).await?;
//!             stream.shutdown().await
//!         })
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Registered once, by name: the builder parses the configuration knowing it.
//! let engine = Engine::builder()
//!     .handler("hello", Arc::new(Hello))
//!     .config_str(r#"
//!         [[routes]]
//!         match = { ports = [7000] }
//!         action = { type = "socket-handler", handler = "hello" }
//!     "#, Format::Toml)?
//!     .start()
//!     .await?;
//! # drop(engine); Ok(()) }
//! ```
//!
//! # Routes in code
//!
//! The runtime API follows SmartProxy's: routes built in code, [`Engine::update_routes`],
//! [`Engine::add_listening_port`] / [`Engine::remove_listening_port`], [`Engine::metrics`],
//! [`Engine::shutdown`]. See `examples/library.rs`.
//!
//! ```no_run
//! use smartproxy_engine::Engine;
//! use smartproxy_engine::routing::{Target, helpers};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::builder()
//!     .routes(vec![helpers::forward_route(8080, Target::new("127.0.0.1", 9000))])
//!     .start()
//!     .await?;
//! engine.update_routes(vec![helpers::forward_route(8081, Target::new("127.0.0.1", 9000))]).await?;
//! # Ok(()) }
//! ```
//!
//! # Pipeline
//!
//! Each connection flows one way through typed stages (module `pipeline`, one file each):
//! accept → admit (global and per-IP limits, on the peer unless it is a trusted proxy) →
//! PROXY header in (required from `proxy_ips`, refused from anyone else; per-IP limits on the
//! real client) → classify (ClientHello or HTTP head, when the port's routes need it) → route
//! (lookup, allow/block lists, route limits) → upstream (connect with timeout and retries,
//! PROXY header out, replay) → serve (bidirectional copy with half-close and splice, TLS
//! termination, or a socket handler) → close (one log line; limits and metrics released by
//! drop). Timeouts: `proxy_protocol_timeout`, `initial_data_timeout`, `inactivity_timeout`,
//! `max_connection_lifetime`, with the route's `timeouts` and keep-alive treatment
//! ([`EffectiveTimeouts`]); TCP keepalive probes on both sockets (`tcp_keepalive`).
//!
//! An untrusted peer is checked for a PROXY signature: on ports that peek anyway its first
//! bytes are inspected; on other ports the engine waits up to `proxy_protocol_detect_timeout`
//! (200 ms) for the first bytes, and forwards a client that stays silent (server-speaks-first
//! protocols) after that wait.
//!
//! `unsafe` is denied; three functions allow it: the `setsockopt(TCP_DEFER_ACCEPT)` call on
//! listening sockets, an option that no safe wrapper offers, the registration of a
//! listening socket whose connections register lazily (`AsyncFd::register_with_interest`,
//! which tokio marks unsafe because the descriptor must outlive the registration), and
//! `pipeline::in_box`, which writes a connection's future into its box in place
//! (`Box::assume_init` after the write; `Box::write` would need Rust 1.87).
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![deny(unsafe_code)]

#[doc(hidden)]
pub mod bench_api;
mod certs;
mod config;
mod copy;
mod engine;
mod fds;
mod handler;
mod health;
mod http;
mod kernel;
mod lazy;
mod limits;
mod net;
pub mod observe;
mod pipeline;
mod quiet;
mod shared;
mod state;
mod timeouts;
mod tls_setup;

pub use self::config::{
    AdminConfig, AdminToken, CertificateFiles, Config, ConfigError, ConfigErrors, Defaults, Format,
    MetricsConfig, PerIpSetting, REDACTED, Runtime, StatsdConfig, StatsdStyle, TlsSettings,
    redact_secrets,
};
pub use self::engine::{Engine, EngineBuilder, ReloadSummary, ShutdownSummary, StartError, Stats};
pub use self::handler::{ClientStream, HandlerContext, HandlerFuture, SocketHandler};
pub use self::http::{HeadError, RequestHead, read_head};
pub use self::timeouts::{EffectiveTimeouts, JITTER};
/// Certificates ([`smartproxy_acme`]): the manager behind [`Engine::certificates`], its
/// status and errors, and `[acme]`'s [`AcmeConfig`](smartproxy_acme::AcmeConfig).
pub use smartproxy_acme as acme;
pub use smartproxy_metrics::Metrics;
/// The route model, validation and matching ([`smartproxy_routing`]), re-exported so that
/// routes can be built in code with this crate alone.
pub use smartproxy_routing as routing;

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
//!     ClientStream, Config, Engine, Format, HandlerContext, HandlerFuture, SocketHandler,
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
//! let config = Config::from_str_with_handlers(r#"
//!     [[routes]]
//!     match = { ports = [7000] }
//!     action = { type = "socket-handler", handler = "hello" }
//! "#, Format::Toml, &["hello"])?;
//! let engine = Engine::builder().handler("hello", Arc::new(Hello)).config(config).start().await?;
//! # drop(engine); Ok(()) }
//! ```
//!
//! # Pipeline
//!
//! accept → global / per-IP limits (on the peer, unless it is a trusted proxy) → PROXY header
//! (required from `proxy_ips`, refused from anyone else) → per-IP limits on the real client →
//! peek (ClientHello or HTTP head) when the port's routes need it → route lookup → route
//! allow/block lists and limits → forward (connect with timeout, PROXY header out, replay,
//! bidirectional copy with half-close) or socket handler. Timeouts: `proxy_protocol_timeout`,
//! `initial_data_timeout`, `inactivity_timeout`, `max_connection_lifetime`.
//!
//! An untrusted peer is checked for a PROXY signature: on ports that peek anyway its first
//! bytes are inspected; on other ports the engine waits up to `proxy_protocol_detect_timeout`
//! (200 ms) for the first bytes, and forwards a client that stays silent (server-speaks-first
//! protocols) after that wait.
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod bench_api;
mod config;
mod conn;
mod copy;
mod engine;
mod handler;
mod http;
mod limits;
mod listener;
mod net;
pub mod observe;
mod peek;
mod sni;
#[cfg(all(feature = "splice", target_os = "linux"))]
mod splice;
mod tls;

pub use self::config::{
    AdminConfig, Config, ConfigError, ConfigErrors, Defaults, Format, MetricsConfig, PerIpSetting,
    Runtime, StatsdConfig,
};
pub use self::engine::{Engine, EngineBuilder, ReloadSummary, ShutdownSummary, StartError, Stats};
pub use self::handler::{ClientStream, HandlerContext, HandlerFuture, SocketHandler};
pub use self::http::{HeadError, RequestHead, read_head};
pub use smartproxy_metrics::Metrics;

//! Admin HTTP API for smartproxy: the live dashboard, metrics, health, readiness, reload,
//! certificates, the effective configuration and the route table.
//!
//! [`router`] builds an axum [`Router`] over an [`AdminState`]; [`serve`] runs it on a
//! listener until a shutdown future resolves.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text; OpenMetrics when `Accept` asks for `application/openmetrics-text` |
//! | `GET /metrics/json` | the [`Snapshot`](smartproxy_metrics::Snapshot) as JSON |
//! | `GET /api/throughput/history?seconds=N` | JSON array of history points (default 60 s, at most 24 h) |
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /ready` | `200 ready`, or `503 not ready` while starting or draining ([`AdminHooks::ready`]) |
//! | `POST /reload` | calls [`AdminHooks::reload`]: `200` and its message, or `422` and the error |
//! | `GET /api/certificates` | [`AdminHooks::certificates`]: every route's certificate status (JSON array) |
//! | `POST /api/certificates/{route}/renew` | [`AdminHooks::renew_certificate`]: `200` and the new status, or `404` / `409` / `429` / `502` / `500` ([`RenewError`]) and `{"route", "error"}` |
//! | `GET /api/nftables` | the kernel forwarding table as applied ([`AdminHooks::nftables`]), JSON; `404` without |
//! | `GET /` | the live dashboard (one page; every asset is embedded in the binary) |
//! | `GET /api/events` | Server-Sent Events: one `frame` event a second (the dashboard's data) |
//! | `GET /api/dashboard` | the same frame as JSON (the page's polling fallback) |
//! | `GET /api/config` | [`AdminHooks::config`]: the effective configuration, secrets redacted |
//! | `GET /api/routes` | [`AdminHooks::routes`]: the route table with live counters per route and target |
//!
//! Mutations are POST only: `GET /reload` answers `405`. With a token
//! ([`AdminState::with_token`]) every endpoint but `/healthz` and `/ready` answers `401`
//! without it. The router does not count reloads in
//! the metrics (`Metrics::config_reloaded`): the reload path of the binary does, so that a
//! reload by signal and one by HTTP are counted the same way.
//!
//! ```no_run
//! use std::{future::Future, pin::Pin, sync::Arc};
//! use smartproxy_admin::{AdminHooks, AdminState, serve};
//! use smartproxy_metrics::{Metrics, MetricsConfig};
//!
//! #[derive(Debug)]
//! struct Hooks;
//! impl AdminHooks for Hooks {
//!     fn ready(&self) -> bool { true }
//!     fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
//!         Box::pin(async { Ok("reloaded 3 routes".to_owned()) })
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let metrics = Metrics::new(MetricsConfig::default(), 0);
//! let state = AdminState::new(metrics, Default::default(), Arc::new(Hooks));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9900").await?;
//! serve(listener, state, std::future::pending()).await
//! # }
//! ```
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests

mod auth;
mod certs;
mod dashboard;
mod listener;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use smartproxy_metrics::Metrics;
use smartproxy_metrics_export::{ExportOptions, Format, JSON_CONTENT_TYPE};

pub use self::certs::RenewError;

/// The longest history served, seconds (the minute retention).
pub const MAX_HISTORY_SECONDS: u64 = 86_400;

const TEXT: &str = "text/plain; charset=utf-8";

/// What the admin API asks of the process. The binary implements it.
pub trait AdminHooks: Send + Sync + fmt::Debug + 'static {
    /// `true` when the proxy accepts traffic (listeners bound, not draining).
    fn ready(&self) -> bool;

    /// Reloads the configuration. `Ok` carries a message for the operator; `Err` the reason the
    /// new configuration was refused (the old one stays).
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

    /// `GET /api/certificates`: the status of every route's certificate, as a JSON array
    /// (route, source `manual` | `acme`, domains, validity, issuer, last renewal attempt and
    /// error, ...). Default: an empty array.
    fn certificates(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }

    /// `POST /api/certificates/{route}/renew`: orders a new certificate for the route now and
    /// waits for the outcome: the route's new status, or why not. Default: no route has a
    /// certificate ([`RenewError::UnknownRoute`]).
    fn renew_certificate(
        &self,
        route: String,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, RenewError>> + Send>> {
        Box::pin(async move {
            Err(RenewError::UnknownRoute(format!("no certificate is managed for route `{route}`")))
        })
    }

    /// The nftables table of the kernel-forwarded routes as applied, for `GET /api/nftables`
    /// (the engine's `nftables_status`). `None` (the default) answers `404`: the process has
    /// no kernel forwarding.
    fn nftables(&self) -> Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send>> {
        Box::pin(async { None })
    }

    /// `GET /api/config`: the effective configuration (every default filled in) with its
    /// secrets redacted. Default: `null` (the endpoint then answers `404`).
    fn config(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// `GET /api/routes` and the dashboard's route table: the compiled route table with live
    /// counters per route (open connections, refusals) and per target (open connections,
    /// up/down, last failure), as a JSON object with a `routes` array. Default: no routes.
    fn routes(&self) -> serde_json::Value {
        serde_json::json!({ "routes": [] })
    }

    /// The latest configuration reloads, newest first, for the dashboard: a JSON array of
    /// objects (`time` in UNIX seconds, `trigger`, `ok`, `message`). Default: none.
    fn reloads(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }
}

/// State shared by the handlers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminState {
    /// The collector.
    pub metrics: Arc<Metrics>,
    /// Options of the Prometheus / OpenMetrics output.
    pub export: ExportOptions,
    /// Readiness and reload.
    pub hooks: Arc<dyn AdminHooks>,
    /// The bearer token every endpoint but `/healthz` and `/ready` asks for (`None`: open).
    token: Option<auth::Token>,
    /// Turns true when [`serve`] begins its graceful stop: the event streams end then
    /// (`None` outside `serve`: they end when their client goes away).
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl AdminState {
    /// Bundles the state (no token: every endpoint is open).
    #[must_use]
    pub fn new(metrics: Arc<Metrics>, export: ExportOptions, hooks: Arc<dyn AdminHooks>) -> Self {
        Self { metrics, export, hooks, token: None, stop: None }
    }

    /// Requires `token` on every endpoint but `/healthz` and `/ready`: as
    /// `Authorization: Bearer TOKEN` (API clients, Prometheus), or as the password of HTTP
    /// Basic authentication with any user name (browsers, which then prompt for it). A blank
    /// token is ignored.
    #[must_use]
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.and_then(auth::Token::new);
        self
    }

    /// Whether a token is required.
    #[must_use]
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// The admin router (see the crate docs for the endpoints).
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/", get(dashboard::page))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/api/events", get(dashboard::events))
        .route("/api/dashboard", get(dashboard::frame_json))
        .route("/api/config", get(config))
        .route("/api/routes", get(routes))
        .route("/metrics", get(metrics))
        .route("/metrics/json", get(metrics_json))
        .route("/api/throughput/history", get(history))
        .route("/reload", post(reload))
        .route("/api/certificates", get(certs::list))
        .route("/api/certificates/{route}/renew", post(certs::renew))
        .route("/api/nftables", get(nftables))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ready", get(ready))
        .merge(protected)
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then finishes the requests in
/// flight and returns.
///
/// The listener holds a few spare file descriptors (`/dev/null`): when the process is out of
/// fds (EMFILE / ENFILE), it closes them to accept, so that `/healthz` still answers.
///
/// # Errors
/// When accepting fails in a way hyper does not retry.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, token = state.has_token(), "admin API listening");
    }
    // Event streams never finish on their own: they end when the stop begins, so that the
    // graceful stop does not wait for them.
    let (tx, stop) = tokio::sync::watch::channel(false);
    let state = AdminState { stop: Some(stop), ..state };
    let shutdown = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    // Spare fds keep the API answering when the process is out of them (`listener`).
    axum::serve(listener::AdminListener::new(listener), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn metrics(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let body = smartproxy_metrics_export::encode(&st.metrics.snapshot(), &st.export, format);
    respond(StatusCode::OK, format.content_type(), body)
}

async fn metrics_json(State(st): State<AdminState>) -> Response {
    respond(
        StatusCode::OK,
        JSON_CONTENT_TYPE,
        smartproxy_metrics_export::json(&st.metrics.snapshot()),
    )
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    seconds: Option<u64>,
}

async fn history(State(st): State<AdminState>, Query(p): Query<HistoryParams>) -> Response {
    let seconds = p.seconds.unwrap_or(60);
    if seconds == 0 || seconds > MAX_HISTORY_SECONDS {
        return respond(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!("seconds must be between 1 and {MAX_HISTORY_SECONDS}\n"),
        );
    }
    let points = st.metrics.throughput_history(seconds);
    match serde_json::to_string(&points) {
        Ok(body) => respond(StatusCode::OK, JSON_CONTENT_TYPE, body),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}

async fn nftables(State(st): State<AdminState>) -> Response {
    match st.hooks.nftables().await {
        Some(v) => json_response(&v),
        None => respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "kernel forwarding (nftables) is not part of this process\n".to_owned(),
        ),
    }
}

fn json_response(value: &serde_json::Value) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => respond(StatusCode::OK, JSON_CONTENT_TYPE, body + "\n"),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}

async fn config(State(st): State<AdminState>) -> Response {
    match st.hooks.config() {
        serde_json::Value::Null => {
            respond(StatusCode::NOT_FOUND, TEXT, "no configuration to show\n".to_owned())
        }
        v => json_response(&v),
    }
}

async fn routes(State(st): State<AdminState>) -> Response {
    json_response(&st.hooks.routes())
}

async fn healthz() -> Response {
    respond(StatusCode::OK, TEXT, "ok\n".to_owned())
}

async fn ready(State(st): State<AdminState>) -> Response {
    if st.hooks.ready() {
        respond(StatusCode::OK, TEXT, "ready\n".to_owned())
    } else {
        respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".to_owned())
    }
}

async fn reload(State(st): State<AdminState>) -> Response {
    match st.hooks.reload().await {
        Ok(msg) => {
            tracing::info!(%msg, "reload requested over the admin API: applied");
            respond(StatusCode::OK, TEXT, format!("{msg}\n"))
        }
        Err(err) => {
            tracing::warn!(%err, "reload requested over the admin API: refused");
            respond(StatusCode::UNPROCESSABLE_ENTITY, TEXT, format!("{err}\n"))
        }
    }
}

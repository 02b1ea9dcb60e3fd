//! The live dashboard: one page whose assets are compiled into the binary (no CDN, nothing
//! fetched from anywhere but this listener), fed by Server-Sent Events (`GET /api/events`,
//! one frame a second) or, where those fail, by polling `GET /api/dashboard`.
//!
//! A frame is the metrics [`Snapshot`](smartproxy_metrics::Snapshot) (its history cut to the
//! newest point; the page loads the history once from `/api/throughput/history`), the route
//! table with live counters ([`AdminHooks::routes`](crate::AdminHooks::routes)) and the
//! reload history ([`AdminHooks::reloads`](crate::AdminHooks::reloads)).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use smartproxy_metrics_export::{JSON_CONTENT_TYPE, PerIp};

use crate::AdminState;

/// How often the event stream sends a frame.
pub(crate) const FRAME_EVERY: Duration = Duration::from_secs(1);

const INDEX: &str = include_str!("../assets/index.html");

/// `/assets/{name}`: content type and bytes. uPlot is vendored with its licence
/// (assets/vendor/uPlot.LICENSE, version in the crate README).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("dashboard.js", "text/javascript; charset=utf-8", include_bytes!("../assets/dashboard.js")),
    ("dashboard.css", "text/css; charset=utf-8", include_bytes!("../assets/dashboard.css")),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../assets/vendor/uPlot.min.css")),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/vendor/uPlot.LICENSE"),
    ),
    ("favicon.svg", "image/svg+xml", include_bytes!("../assets/favicon.svg")),
];

/// Headers of every page and asset: nothing but this origin may be loaded or framed.
fn page_headers(content_type: &'static str) -> [(HeaderName, &'static str); 6] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ]
}

pub(crate) async fn page() -> Response {
    (page_headers("text/html; charset=utf-8"), INDEX).into_response()
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ct, bytes)) => (page_headers(ct), *bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// One frame of the dashboard.
pub(crate) fn frame(st: &AdminState) -> serde_json::Value {
    let mut snap = st.metrics.snapshot();
    let keep_from = snap.throughput.history.len().saturating_sub(1);
    snap.throughput.history.drain(..keep_from);
    let per_ip = !matches!(st.export.per_ip, PerIp::Off);
    if !per_ip {
        snap.ips.clear();
    }
    serde_json::json!({
        "per_ip": per_ip,
        "snapshot": snap,
        "routes": st.hooks.routes(),
        "reloads": st.hooks.reloads(),
    })
}

pub(crate) async fn frame_json(State(st): State<AdminState>) -> Response {
    match serde_json::to_string(&frame(&st)) {
        Ok(body) => ([(header::CONTENT_TYPE, JSON_CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `GET /api/events`: a `frame` event at once, then one a second, until the client goes away
/// or the admin API stops.
pub(crate) async fn events(
    State(st): State<AdminState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(FRAME_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = st.stop.clone();
    let stream = futures_util::stream::unfold(
        (st, tick, stop, true),
        |(st, mut tick, mut stop, first)| async move {
            let stopped = async {
                match &mut stop {
                    Some(rx) => {
                        let _ = rx.wait_for(|v| *v).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = stopped => return None,
            }
            let data = serde_json::to_string(&frame(&st))
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            let mut ev = Event::default().event("frame").data(data);
            if first {
                // Reconnect quickly after a restart of the proxy.
                ev = ev.retry(Duration::from_secs(1));
            }
            Some((Ok(ev), (st, tick, stop, false)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

//! Stage 7, close: the one log line of a connection that was served (a refused one logged its
//! refusal instead), and its close reason counted (metrics: `connections_closed{reason}`).
//! The books close when the connection's observer is dropped, after its guards: metrics and
//! limits are released exactly once, by drop.

use std::net::SocketAddr;

use super::serve_http::HttpEnd;
use crate::copy::Outcome;
use crate::observe::ConnObserver;

/// Logs how a served connection ended, with its bytes.
pub(crate) fn log_close(
    obs: &ConnObserver,
    client: SocketAddr,
    port: u16,
    route: &str,
    outcome: &Outcome,
) {
    let (bytes_in, bytes_out) = (obs.bytes_in(), obs.bytes_out());
    let close = outcome.close_reason();
    obs.closed(close);
    let close = close.as_str();
    match outcome {
        Outcome::Error(e) => {
            tracing::debug!(%client, port, route, bytes_in, bytes_out, close, error = %e, "connection closed on error");
        }
        o => {
            tracing::debug!(%client, port, route, bytes_in, bytes_out, close, reason = o.as_str(), "connection closed")
        }
    }
}

/// Logs how an HTTP connection ended: its requests and the reason; counts its close reason.
pub(crate) fn log_close_http(obs: &ConnObserver, client: SocketAddr, port: u16, end: HttpEnd) {
    let (bytes_in, bytes_out) = (obs.bytes_in(), obs.bytes_out());
    let close = end.close_reason();
    obs.closed(close);
    let close = close.as_str();
    match end {
        HttpEnd::Served(o) => tracing::debug!(
            %client, port, bytes_in, bytes_out, close, requests = o.requests, reason = ?o.reason,
            "connection closed"
        ),
        HttpEnd::Lifetime => {
            tracing::debug!(%client, port, bytes_in, bytes_out, close, reason = "max_lifetime", "connection closed")
        }
        HttpEnd::Forced => {
            tracing::debug!(%client, port, bytes_in, bytes_out, close, reason = "shutdown", "connection closed")
        }
    }
}

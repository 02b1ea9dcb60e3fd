//! Stage 7, close: the one log line of a connection that was served (a refused one logged its
//! refusal instead). The books close when the connection's observer is dropped, after its
//! guards: metrics and limits are released exactly once, by drop.

use std::net::SocketAddr;

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
    match outcome {
        Outcome::Error(e) => {
            tracing::debug!(%client, port, route, bytes_in, bytes_out, error = %e, "connection closed on error");
        }
        o => {
            tracing::debug!(%client, port, route, bytes_in, bytes_out, reason = o.as_str(), "connection closed")
        }
    }
}

/// Logs how an HTTP connection ended: its requests and the reason (`None`: its lifetime
/// limit ended it).
pub(crate) fn log_close_http(
    obs: &ConnObserver,
    client: SocketAddr,
    port: u16,
    outcome: Option<smartproxy_http::ServeOutcome>,
) {
    let (bytes_in, bytes_out) = (obs.bytes_in(), obs.bytes_out());
    match outcome {
        Some(o) => tracing::debug!(
            %client, port, bytes_in, bytes_out, requests = o.requests, reason = ?o.reason,
            "connection closed"
        ),
        None => {
            tracing::debug!(%client, port, bytes_in, bytes_out, reason = "max_lifetime", "connection closed")
        }
    }
}

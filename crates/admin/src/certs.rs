//! `GET /api/certificates` and `POST /api/certificates/{route}/renew`.

use std::fmt;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use smartproxy_metrics_export::JSON_CONTENT_TYPE;

use crate::AdminState;

/// Why [`AdminHooks::renew_certificate`](crate::AdminHooks::renew_certificate) did not renew,
/// and the HTTP status it answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewError {
    /// No certificate is managed for this route: `404`.
    UnknownRoute(String),
    /// The route's certificate is not renewed by the proxy (PEM files): `409`.
    NotRenewable(String),
    /// The CA asked to wait (its `Retry-After`); nothing was sent: `429` with `Retry-After`.
    RateLimited {
        /// Seconds until the CA accepts orders again.
        retry_after_secs: u64,
        /// What to tell the operator.
        message: String,
    },
    /// The order failed at the CA (unreachable, validation failed, timed out): `502`. The
    /// error is also in the certificate's status.
    Upstream(String),
    /// The proxy could not store or use what it got: `500`.
    Internal(String),
}

impl RenewError {
    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownRoute(_) => StatusCode::NOT_FOUND,
            Self::NotRenewable(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for RenewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownRoute(m)
            | Self::NotRenewable(m)
            | Self::Upstream(m)
            | Self::Internal(m)
            | Self::RateLimited { message: m, .. } => f.write_str(m),
        }
    }
}

impl std::error::Error for RenewError {}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_owned());
    (status, [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)], body + "\n").into_response()
}

pub(crate) async fn list(State(st): State<AdminState>) -> Response {
    json(StatusCode::OK, &st.hooks.certificates())
}

pub(crate) async fn renew(State(st): State<AdminState>, Path(route): Path<String>) -> Response {
    match st.hooks.renew_certificate(route.clone()).await {
        Ok(status) => {
            tracing::info!(%route, "certificate renewal requested over the admin API: done");
            json(StatusCode::OK, &status)
        }
        Err(e) => {
            tracing::warn!(%route, error = %e, "certificate renewal requested over the admin API: failed");
            let mut rsp =
                json(e.status(), &serde_json::json!({ "route": route, "error": e.to_string() }));
            if let RenewError::RateLimited { retry_after_secs, .. } = &e {
                if let Ok(v) = header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                    rsp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            rsp
        }
    }
}

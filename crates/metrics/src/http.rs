//! HTTP request metrics: counters by status class and method, in-flight gauges, a duration
//! histogram with fixed buckets. Every record is a few relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::snapshot::{Bucket, HistogramSnapshot, HttpRequestCount, HttpRouteSnapshot};

/// Request method, as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `CONNECT` (RFC 8441 WebSocket over HTTP/2 included).
    Connect,
    /// `OPTIONS`.
    Options,
    /// `TRACE`.
    Trace,
    /// `PATCH`.
    Patch,
    /// Any other method (extension methods are not labels of their own).
    Other,
}

impl HttpMethod {
    /// Every method label, in label order.
    pub const ALL: &'static [Self] = &[
        Self::Get,
        Self::Head,
        Self::Post,
        Self::Put,
        Self::Delete,
        Self::Connect,
        Self::Options,
        Self::Trace,
        Self::Patch,
        Self::Other,
    ];

    /// The label value (`GET`, …, `other`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "other",
        }
    }

    /// The label of a method token (case-sensitive, as HTTP methods are).
    #[must_use]
    pub fn from_token(m: &str) -> Self {
        match m {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "CONNECT" => Self::Connect,
            "OPTIONS" => Self::Options,
            "TRACE" => Self::Trace,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Why the HTTP layer answered (or closed) on its own instead of passing a target's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HttpErrorReason {
    /// 400: a malformed request head.
    BadRequest,
    /// 431: a request head larger than `max_request_header_bytes` (or too many headers).
    HeaderTooLarge,
    /// 414: a request target longer than the parser takes.
    UriTooLong,
    /// 408 / closed: the request head did not arrive within `request_header_timeout`.
    HeaderTimeout,
    /// 404: no route took the request.
    NoRoute,
    /// 403: the route's allow/block list, its JWT `required_claims` or its CORS policy
    /// refused the request.
    Forbidden,
    /// 401: the route's `basic_auth` / `jwt` found no valid credentials.
    Unauthorized,
    /// 429: the route's `rate_limit` was exceeded.
    RateLimited,
    /// 405: a method the proxy does not forward (plain `CONNECT`).
    MethodNotAllowed,
    /// 502: no target of the route could be connected (refused, unreachable, TLS failed).
    BackendUnavailable,
    /// 504: connecting to the target took longer than its connect timeout.
    BackendConnectTimeout,
    /// 504: the target sent no response head within the response timeout.
    BackendResponseTimeout,
    /// 502: the target closed or reset the connection, or broke the protocol, before a
    /// response head.
    BackendError,
}

impl HttpErrorReason {
    /// Every reason, in label order.
    pub const ALL: &'static [Self] = &[
        Self::BadRequest,
        Self::HeaderTooLarge,
        Self::UriTooLong,
        Self::HeaderTimeout,
        Self::NoRoute,
        Self::Forbidden,
        Self::Unauthorized,
        Self::RateLimited,
        Self::MethodNotAllowed,
        Self::BackendUnavailable,
        Self::BackendConnectTimeout,
        Self::BackendResponseTimeout,
        Self::BackendError,
    ];

    /// The label value (`snake_case`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::HeaderTooLarge => "header_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::HeaderTimeout => "request_header_timeout",
            Self::NoRoute => "no_route",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendConnectTimeout => "backend_connect_timeout",
            Self::BackendResponseTimeout => "backend_response_timeout",
            Self::BackendError => "backend_error",
        }
    }

    /// The status the client gets (`408` for a header timeout, when anything is sent).
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::HeaderTooLarge => 431,
            Self::UriTooLong => 414,
            Self::HeaderTimeout => 408,
            Self::NoRoute => 404,
            Self::Forbidden => 403,
            Self::Unauthorized => 401,
            Self::RateLimited => 429,
            Self::MethodNotAllowed => 405,
            Self::BackendUnavailable | Self::BackendError => 502,
            Self::BackendConnectTimeout | Self::BackendResponseTimeout => 504,
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for HttpErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a route's per-request policy refused a request (the label of
/// `smartproxy_http_policy_refusals_total{route, reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HttpPolicyReason {
    /// 403: `ip_allow_list` / `ip_block_list`.
    IpBlocked,
    /// 401: `basic_auth` / `jwt` and no credentials (no or another `Authorization` scheme).
    AuthMissing,
    /// 401: wrong user or password, or a token that is not valid (signature, `exp`, `nbf`,
    /// `iss`, `aud`, algorithm, key).
    AuthInvalid,
    /// 403: a valid token without the route's `required_claims`.
    AuthForbidden,
    /// 429: `rate_limit`.
    RateLimited,
    /// 403: a CORS preflight from an origin, or for a method or header, that `cors` does
    /// not allow.
    CorsRefused,
}

impl HttpPolicyReason {
    /// Every reason, in label order.
    pub const ALL: &'static [Self] = &[
        Self::IpBlocked,
        Self::AuthMissing,
        Self::AuthInvalid,
        Self::AuthForbidden,
        Self::RateLimited,
        Self::CorsRefused,
    ];

    /// The label value (`snake_case`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IpBlocked => "ip_blocked",
            Self::AuthMissing => "auth_missing",
            Self::AuthInvalid => "auth_invalid",
            Self::AuthForbidden => "auth_forbidden",
            Self::RateLimited => "rate_limited",
            Self::CorsRefused => "cors_refused",
        }
    }

    /// The status the client gets.
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::AuthMissing | Self::AuthInvalid => 401,
            Self::RateLimited => 429,
            Self::IpBlocked | Self::AuthForbidden | Self::CorsRefused => 403,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for HttpPolicyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const POLICY_REASONS: usize = 6;

/// Status classes 1xx..5xx.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const METHODS: usize = 10;

/// Bucket bounds (seconds) of request durations.
pub(crate) const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
const BUCKET_MICROS: [u64; 17] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];
const BUCKETS: usize = BUCKET_MICROS.len() + 1;

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// The HTTP counters of one route (or of requests no route took).
#[derive(Debug)]
pub(crate) struct HttpStats {
    requests: [AtomicU64; CLASSES.len() * METHODS],
    in_flight: AtomicU64,
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
    /// Total requests already folded into the series (written by `tick` only).
    sampled: AtomicU64,
    /// Requests refused by the route's policies, by [`HttpPolicyReason`].
    refusals: [AtomicU64; POLICY_REASONS],
}

impl Default for HttpStats {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl HttpStats {
    #[inline]
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn finished(&self, method: HttpMethod, status: u16, took: Duration) {
        // A `finished` without its `started` must not leave the gauge wrapped: undo it (one
        // atomic in the normal case, unlike a compare-and-swap loop).
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 0 {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.requests[class_index(status) * METHODS + method.index()]
            .fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let b = BUCKET_MICROS.iter().position(|&le| us <= le).unwrap_or(BUCKETS - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn refused(&self, reason: HttpPolicyReason) {
        self.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_count(&self, reason: HttpPolicyReason) -> u64 {
        self.refusals[reason.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Finished requests (live).
    pub(crate) fn total(&self) -> u64 {
        self.requests.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Requests finished since the previous call (the tick's share).
    pub(crate) fn take_delta(&self) -> u64 {
        let total = self.total();
        let before = self.sampled.swap(total, Ordering::Relaxed);
        total.saturating_sub(before)
    }

    pub(crate) fn histogram(&self) -> HistogramSnapshot {
        let mut cum = 0u64;
        let buckets = REQUEST_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, c)| {
                cum += c.load(Ordering::Relaxed);
                Bucket { le, count: cum }
            })
            .collect();
        let count = cum + self.buckets[BUCKETS - 1].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Adds this histogram's per-bucket counts and sum into `acc` (same bounds).
    pub(crate) fn add_histogram(&self, acc: &mut ([u64; BUCKETS], u64)) {
        for (a, c) in acc.0.iter_mut().zip(&self.buckets) {
            *a += c.load(Ordering::Relaxed);
        }
        acc.1 += self.sum_micros.load(Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HttpRouteSnapshot {
        let mut requests = Vec::new();
        for (ci, class) in CLASSES.iter().enumerate() {
            for m in HttpMethod::ALL {
                let n = self.requests[ci * METHODS + m.index()].load(Ordering::Relaxed);
                if n > 0 {
                    requests.push(HttpRequestCount {
                        code_class: (*class).to_owned(),
                        method: m.as_str().to_owned(),
                        count: n,
                    });
                }
            }
        }
        let policy_refusals = HttpPolicyReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.refused_count(*r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        HttpRouteSnapshot {
            in_flight: self.in_flight(),
            requests_total: requests.iter().map(|r| r.count).sum(),
            requests,
            request_duration_seconds: self.histogram(),
            policy_refusals,
        }
    }
}

/// Turns summed per-bucket counts into a cumulative histogram.
pub(crate) fn histogram_of(acc: &([u64; BUCKETS], u64)) -> HistogramSnapshot {
    let mut cum = 0u64;
    let buckets = REQUEST_BUCKETS
        .iter()
        .zip(&acc.0)
        .map(|(&le, c)| {
            cum += c;
            Bucket { le, count: cum }
        })
        .collect();
    HistogramSnapshot { buckets, count: cum + acc.0[BUCKETS - 1], sum: acc.1 as f64 / 1e6 }
}

pub(crate) const EMPTY_ACC: ([u64; BUCKETS], u64) = ([0; BUCKETS], 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_buckets() {
        assert_eq!(BUCKET_MICROS.len(), REQUEST_BUCKETS.len());
        for (us, s) in BUCKET_MICROS.iter().zip(REQUEST_BUCKETS) {
            assert_eq!(*us as f64 / 1e6, *s);
        }
        for (i, m) in HttpMethod::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert_eq!(
                HttpMethod::from_token(m.as_str()),
                if *m == HttpMethod::Other { HttpMethod::Other } else { *m }
            );
        }
        for (i, r) in HttpErrorReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(HttpPolicyReason::ALL.len(), POLICY_REASONS);
        for (i, r) in HttpPolicyReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(HttpMethod::from_token("get"), HttpMethod::Other);
        assert_eq!(
            [
                class_index(101),
                class_index(204),
                class_index(399),
                class_index(404),
                class_index(503),
                class_index(999),
                class_index(0)
            ],
            [0, 1, 2, 3, 4, 4, 0]
        );
    }

    #[test]
    fn records_and_snapshots() {
        let s = HttpStats::default();
        s.started();
        s.started();
        assert_eq!(s.in_flight(), 2);
        s.finished(HttpMethod::Get, 200, Duration::from_micros(400));
        s.finished(HttpMethod::Post, 502, Duration::from_secs(1000));
        s.finished(HttpMethod::Get, 204, Duration::from_millis(3));
        assert_eq!(s.in_flight(), 0);
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 3);
        assert_eq!(snap.requests[0].count, 2);
        assert_eq!(
            (snap.requests[1].code_class.as_str(), snap.requests[1].method.as_str()),
            ("5xx", "POST")
        );
        let h = snap.request_duration_seconds;
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0].count, 1);
        assert_eq!(h.buckets[3].count, 2); // <= 5 ms
        assert_eq!(h.buckets.last().map(|b| b.count), Some(2)); // 1000 s is over the last bound
        assert!((h.sum - 1000.0034).abs() < 1e-9);
        assert_eq!(s.take_delta(), 3);
        assert_eq!(s.take_delta(), 0);
        s.refused(HttpPolicyReason::RateLimited);
        s.refused(HttpPolicyReason::RateLimited);
        s.refused(HttpPolicyReason::AuthMissing);
        let r = s.snapshot().policy_refusals;
        assert_eq!(r.len(), 2, "only the non-zero reasons");
        assert_eq!((r["rate_limited"], r["auth_missing"]), (2, 1));
    }
}

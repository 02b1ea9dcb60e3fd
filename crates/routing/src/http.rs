//! The `http` table of a forward action (the route is served by the HTTP layer, request by
//! request) and the HTTP settings of `[defaults]`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

fn default_true() -> bool {
    true
}

/// `action.http`: the route is served by the HTTP layer. Every request on the route's ports is
/// routed on its own (Host or `:authority`, path, headers, client IP, port).
///
/// ```toml
/// action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], http = {
///   upstream = "http1", forwarded_headers = true, forwarded = false, preserve_host = true,
///   websocket = true, via = false, response_timeout = "60s" } }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpOptions {
    /// HTTP version towards the targets: `"http1"` (default), `"http2"` (h2 over TLS when
    /// re-encrypting, h2c with prior knowledge otherwise), `"auto"` (ALPN when re-encrypting,
    /// HTTP/1.1 on plain connections).
    #[serde(default)]
    pub upstream: UpstreamProtocol,
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` from the real client
    /// (default true). `X-Forwarded-For` is appended to when the immediate peer is trusted
    /// (`proxy_ips`), replaced otherwise.
    #[serde(default = "default_true")]
    pub forwarded_headers: bool,
    /// RFC 7239 `Forwarded` header as well (default false); appended to or replaced like
    /// `X-Forwarded-For`.
    #[serde(default)]
    pub forwarded: bool,
    /// Keep the client's `Host` (default true); `false` sends the target's `host:port`.
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// Pass WebSocket upgrades (HTTP/1.1 `Upgrade`, RFC 8441 extended CONNECT over h2) through
    /// (default true). When false the `Upgrade` header is removed like any hop-by-hop header.
    #[serde(default = "default_true")]
    pub websocket: bool,
    /// `Via` header on requests and responses: `false` (default), `true` (`1.1 smartproxy`),
    /// or a pseudonym string (`"edge-1"` -> `1.1 edge-1`).
    #[serde(default, skip_serializing_if = "Via::is_off")]
    pub via: Via,
    /// Time the target has to send its response head after the request was sent; overrides
    /// `[defaults] http_response_timeout`. On expiry the client gets a 504.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<Duration>,
    /// Headers changed on the request before it goes to the target (after the forwarding
    /// headers): `remove`, then `set`, then `add`. Values are templates (`{clientIp}`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<HeaderActions>>,
    /// Headers changed on the target's response, the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<HeaderActions>>,
    /// Rewrites the request path (not the query) with a regular expression before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_path: Option<Box<RewritePath>>,
    /// Rewrites a response's `Location` that points at the target back to the client's
    /// host and scheme, and undoes a prefix `rewrite_path` on its path (default true; as
    /// nginx's `proxy_redirect default`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub rewrite_location: bool,
    /// Cross-origin requests: preflights answered here, CORS headers added to responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<crate::policy::Cors>>,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `request_headers` / `response_headers`: `{ set = { NAME = "template" }, add = { … },
/// remove = ["NAME"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HeaderActions {
    /// Replace (or create) these headers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set: std::collections::BTreeMap<String, String>,
    /// Append these values (existing values stay).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub add: std::collections::BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderActions {
    /// No operation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (replaces) header `name` to the template `value`.
    pub fn with_set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set.insert(name.into(), value.into());
        self
    }

    /// Appends the template `value` to header `name`.
    pub fn with_add(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.add.insert(name.into(), value.into());
        self
    }

    /// Removes header `name`.
    pub fn with_remove(mut self, name: impl Into<String>) -> Self {
        self.remove.push(name.into());
        self
    }
}

/// `rewrite_path = { from = "^/v1/(.*)$", to = "/api/$1" }`: the first match of `from` in the
/// path is replaced by `to` (`$1`, `${name}` refer to groups).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RewritePath {
    /// Regular expression matched against the path.
    pub from: String,
    /// Replacement.
    pub to: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            upstream: UpstreamProtocol::default(),
            forwarded_headers: true,
            forwarded: false,
            preserve_host: true,
            websocket: true,
            via: Via::Off,
            response_timeout: None,
            request_headers: None,
            response_headers: None,
            rewrite_path: None,
            rewrite_location: true,
            cors: None,
        }
    }
}

impl HttpOptions {
    /// Sets the upstream protocol.
    pub fn with_upstream(mut self, upstream: UpstreamProtocol) -> Self {
        self.upstream = upstream;
        self
    }

    /// Sets `preserve_host`.
    pub fn with_preserve_host(mut self, v: bool) -> Self {
        self.preserve_host = v;
        self
    }

    /// Sets `forwarded` (RFC 7239 header).
    pub fn with_forwarded(mut self, v: bool) -> Self {
        self.forwarded = v;
        self
    }

    /// Sets `via`.
    pub fn with_via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    /// Sets `websocket`.
    pub fn with_websocket(mut self, v: bool) -> Self {
        self.websocket = v;
        self
    }

    /// Sets the per-route response timeout.
    pub fn with_response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = Some(d);
        self
    }

    /// Sets `request_headers`.
    pub fn with_request_headers(mut self, a: HeaderActions) -> Self {
        self.request_headers = Some(Box::new(a));
        self
    }

    /// Sets `response_headers`.
    pub fn with_response_headers(mut self, a: HeaderActions) -> Self {
        self.response_headers = Some(Box::new(a));
        self
    }

    /// Sets `rewrite_path`.
    pub fn with_rewrite_path(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rewrite_path = Some(Box::new(RewritePath { from: from.into(), to: to.into() }));
        self
    }

    /// Sets `rewrite_location`.
    pub fn with_rewrite_location(mut self, v: bool) -> Self {
        self.rewrite_location = v;
        self
    }

    /// Sets `cors`.
    pub fn with_cors(mut self, c: crate::policy::Cors) -> Self {
        self.cors = Some(Box::new(c));
        self
    }
}

/// HTTP version spoken to the targets of an HTTP route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (default).
    #[default]
    Http1,
    /// HTTP/2: over TLS when re-encrypting (ALPN `h2`), h2c with prior knowledge otherwise.
    Http2,
    /// ALPN decides (`h2`, then `http/1.1`) when re-encrypting; HTTP/1.1 on plain connections.
    Auto,
}

impl UpstreamProtocol {
    /// `"http1"`, `"http2"` or `"auto"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Auto => "auto",
        }
    }
}

/// The `via` key: off, on with the default pseudonym, or on with a given one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Via {
    /// No `Via` header is added (default).
    #[default]
    Off,
    /// `Via: <version> <pseudonym>` is appended on requests and responses.
    On(String),
}

impl Via {
    /// The pseudonym used by `via = true`.
    pub const DEFAULT_PSEUDONYM: &'static str = "smartproxy";

    /// Whether no header is added.
    pub const fn is_off(&self) -> bool {
        matches!(self, Self::Off)
    }

    /// The pseudonym, when on.
    pub fn pseudonym(&self) -> Option<&str> {
        match self {
            Self::Off => None,
            Self::On(p) => Some(p),
        }
    }
}

impl<'de> Deserialize<'de> for Via {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Via;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a pseudonym string")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Via, E> {
                Ok(if b { Via::On(Via::DEFAULT_PSEUDONYM.to_owned()) } else { Via::Off })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Via, E> {
                Ok(Via::On(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Via {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::On(p) if p == Self::DEFAULT_PSEUDONYM => s.serialize_bool(true),
            Self::On(p) => s.serialize_str(p),
        }
    }
}

/// HTTP timeouts and caps of `[defaults]` (the engine reads them and hands them to the HTTP
/// layer). Every field has a default, so an empty table is valid.
///
/// ```toml
/// [defaults]
/// request_header_timeout = "10s"     # whole request head, from its first byte (slowloris)
/// http_keepalive_timeout = "60s"     # idle client connection between requests
/// http_response_timeout = "60s"      # target's response head after the request -> 504
/// max_request_header_bytes = 65536   # larger request heads -> 431
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HttpSettings {
    /// Time a client has to send a whole request head, from its first byte (and, on a new
    /// connection, from accept). Slow heads are cut (slowloris). Default 10 s.
    #[serde(with = "crate::duration")]
    pub request_header_timeout: Duration,
    /// How long a client connection may sit idle between requests. Default 60 s. An upgraded
    /// (WebSocket) connection is not subject to it.
    #[serde(with = "crate::duration")]
    pub http_keepalive_timeout: Duration,
    /// Time a target has to send its response head once the request was sent -> 504.
    /// Default 60 s; a route's `http.response_timeout` overrides it.
    #[serde(with = "crate::duration")]
    pub http_response_timeout: Duration,
    /// Largest request head (request line and headers) accepted -> 431. Default 65 536.
    pub max_request_header_bytes: usize,
    /// Idle HTTP/1.1 connections kept per target and worker thread in the upstream pool.
    /// Default 256 (nginx needed 256 in the h2-term benchmark, where 160 requests are in
    /// flight: a smaller pool reopens connections all the time).
    pub http_pool_max_idle: usize,
    /// How long an idle upstream connection is kept. Default 60 s.
    #[serde(with = "crate::duration")]
    pub http_pool_idle_timeout: Duration,
    /// Streams a client may open at once on an HTTP/2 connection. Default 256.
    pub http2_max_concurrent_streams: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            request_header_timeout: Duration::from_secs(10),
            http_keepalive_timeout: Duration::from_secs(60),
            http_response_timeout: Duration::from_secs(60),
            max_request_header_bytes: 65_536,
            http_pool_max_idle: 256,
            http_pool_idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 256,
        }
    }
}

impl HttpSettings {
    /// Every problem with the values, as (key, message): zero durations and caps too small
    /// to hold a request line.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (key, d) in [
            ("request_header_timeout", self.request_header_timeout),
            ("http_keepalive_timeout", self.http_keepalive_timeout),
            ("http_response_timeout", self.http_response_timeout),
            ("http_pool_idle_timeout", self.http_pool_idle_timeout),
        ] {
            if d.is_zero() {
                out.push((key, format!("{key} must be longer than zero")));
            }
        }
        if self.max_request_header_bytes < 1024 {
            out.push((
                "max_request_header_bytes",
                format!(
                    "max_request_header_bytes = {} is too small for a request head; use at least 1024",
                    self.max_request_header_bytes
                ),
            ));
        }
        if self.http2_max_concurrent_streams == 0 {
            out.push((
                "http2_max_concurrent_streams",
                "http2_max_concurrent_streams = 0 would refuse every HTTP/2 request".to_owned(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tables_take_the_defaults() {
        let o: HttpOptions = toml::from_str("").unwrap();
        assert_eq!(o, HttpOptions::default());
        assert!(o.forwarded_headers && o.preserve_host && o.websocket && !o.forwarded);
        assert_eq!(o.upstream, UpstreamProtocol::Http1);
        let s: HttpSettings = toml::from_str("").unwrap();
        assert_eq!(s, HttpSettings::default());
        assert!(s.check().is_empty());
    }

    #[test]
    fn keys_read() {
        let o: HttpOptions = toml::from_str(
            "upstream = \"auto\"\nforwarded = true\npreserve_host = false\nvia = \"edge\"\nresponse_timeout = \"5s\"",
        )
        .unwrap();
        assert_eq!(o.upstream, UpstreamProtocol::Auto);
        assert!(o.forwarded && !o.preserve_host);
        assert_eq!(o.via.pseudonym(), Some("edge"));
        assert_eq!(o.response_timeout, Some(Duration::from_secs(5)));
        let on: HttpOptions = toml::from_str("via = true").unwrap();
        assert_eq!(on.via.pseudonym(), Some("smartproxy"));
        let err = toml::from_str::<HttpOptions>("upstream = \"h3\"").unwrap_err().to_string();
        assert!(err.contains("h3"), "{err}");
        let err = toml::from_str::<HttpOptions>("websockets = true").unwrap_err().to_string();
        assert!(err.contains("websockets"), "{err}");
        let s: HttpSettings =
            toml::from_str("request_header_timeout = \"0s\"\nmax_request_header_bytes = 10")
                .unwrap();
        let keys: Vec<&str> = s.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["request_header_timeout", "max_request_header_bytes"]);
    }

    #[test]
    fn via_round_trips() {
        for v in [Via::Off, Via::On("smartproxy".into()), Via::On("edge".into())] {
            let j = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Via>(&j).unwrap(), v);
        }
    }
}

//! The public service: configuration, reload, and the request entry point.

use std::future::{Future, Ready, ready};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use smartproxy_metrics::{HttpErrorReason, HttpMethod, HttpPolicyReason, Metrics};
use smartproxy_routing::{HeaderSource, HttpSettings, MatchInput, RouteTable, TemplateVars};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::access::{AccessEntry, AccessLog};
use crate::auth::Credentials;
use crate::body::{ClientBody, RequestGuard, ResponseBody};
use crate::conn::ServeOutcome;
use crate::ctx::{ConnCtx, ConnInfo};
use crate::proxy::Answer;
use crate::snapshot::{HandlerRoute, Pools, RouteKind, Settings, Snapshot};
use crate::upstream::{DEFAULT_CONNECT_TIMEOUT, UpstreamTls};
use tokio_util::either::Either;

/// What the HTTP layer serves: the routes, the settings, and the engine's hooks. Given to
/// [`HttpService::new`] and [`HttpService::reload`].
#[derive(Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The compiled routes (the same table the engine routes connections with).
    pub table: Arc<RouteTable>,
    /// `[defaults]` HTTP timeouts and caps.
    pub settings: HttpSettings,
    /// Default deadline for connecting to a target (a route's `connect_timeout` wins).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// An upgraded connection (WebSocket) is closed after this long without a byte either
    /// way (the engine's `inactivity_timeout`). Default 4 h.
    pub tunnel_inactivity_timeout: Duration,
    /// TLS towards targets of `terminate-and-reencrypt` routes.
    pub upstream_tls: Option<Arc<dyn UpstreamTls>>,
    /// The htpasswd users and JWT keys of the routes with `basic_auth` / `jwt`.
    pub credentials: Option<Arc<Credentials>>,
    /// Per route (by index in `table`), what the engine resolved for its connections: tunnel
    /// inactivity, connect timeout and TCP keepalive. Empty: the settings above for all.
    pub route_settings: Vec<RouteConnSettings>,
}

/// A route's connection settings as the engine resolved them (its `timeouts` table over
/// `[defaults]`, keep-alive treatment applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteConnSettings {
    /// An upgraded connection (WebSocket) of the route is closed after this long without a
    /// byte either way (`Duration::MAX`: never, the `immortal` treatment).
    pub tunnel_inactivity: Duration,
    /// Deadline for connecting to a target of the route.
    pub connect_timeout: Duration,
    /// TCP keepalive probes on the backend connections the route opens (pooled connections
    /// keep the probes of the route that opened them).
    pub tcp_keepalive: smartproxy_routing::TcpKeepalive,
}

impl RouteConnSettings {
    /// These settings.
    pub fn new(
        tunnel_inactivity: Duration,
        connect_timeout: Duration,
        tcp_keepalive: smartproxy_routing::TcpKeepalive,
    ) -> Self {
        Self { tunnel_inactivity, connect_timeout, tcp_keepalive }
    }
}

impl HttpConfig {
    /// These routes with default settings.
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self {
            table,
            settings: HttpSettings::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tunnel_inactivity_timeout: Duration::from_secs(4 * 3600),
            upstream_tls: None,
            credentials: None,
            route_settings: Vec::new(),
        }
    }

    /// Sets the `[defaults]` HTTP settings.
    pub fn with_settings(mut self, s: HttpSettings) -> Self {
        self.settings = s;
        self
    }

    /// Sets the default connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the inactivity timeout of upgraded connections.
    pub fn with_tunnel_inactivity_timeout(mut self, d: Duration) -> Self {
        self.tunnel_inactivity_timeout = d;
        self
    }

    /// Sets the TLS connector for re-encrypting routes.
    pub fn with_upstream_tls(mut self, tls: Arc<dyn UpstreamTls>) -> Self {
        self.upstream_tls = Some(tls);
        self
    }

    /// Sets the credentials of the authenticating routes ([`Credentials::load`], read when
    /// the configuration is loaded and again on every reload).
    pub fn with_credentials(mut self, c: Arc<Credentials>) -> Self {
        self.credentials = Some(c);
        self
    }

    /// Sets the per-route connection settings (by route index in the table).
    pub fn with_route_settings(mut self, s: Vec<RouteConnSettings>) -> Self {
        self.route_settings = s;
        self
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("routes", &self.table.routes().len())
            .field("settings", &self.settings)
            .field("connect_timeout", &self.connect_timeout)
            .field("tunnel_inactivity_timeout", &self.tunnel_inactivity_timeout)
            .field("upstream_tls", &self.upstream_tls.is_some())
            .field("credentials", &self.credentials.is_some())
            .field("route_settings", &self.route_settings.len())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) access_log: Option<Arc<dyn AccessLog>>,
    pub(crate) pools: Pools,
}

/// The HTTP layer. Build one per process (or per engine), [`reload`](Self::reload) it with
/// every new route table, and call [`serve`](Self::serve) for every client connection on an
/// HTTP port. Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct HttpService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpService")
            .field("metrics", &self.inner.metrics.is_some())
            .field("access_log", &self.inner.access_log.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpService {
    /// A service for `config`, recording into `metrics` (if any).
    pub fn new(config: HttpConfig, metrics: Option<Arc<Metrics>>) -> Self {
        Self::with_access_log(config, metrics, None)
    }

    /// Same, writing one JSON line per request to `access_log`.
    pub fn with_access_log(
        config: HttpConfig,
        metrics: Option<Arc<Metrics>>,
        access_log: Option<Arc<dyn AccessLog>>,
    ) -> Self {
        let pools = Pools::default();
        let snap = build(config, metrics.as_deref(), &pools);
        Self {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(snap),
                metrics,
                access_log,
                pools,
            }),
        }
    }

    /// Swaps in new routes and settings. Requests that start after this use them (requests
    /// in progress finish on the old ones); pooled backend connections of unchanged targets
    /// are kept.
    pub fn reload(&self, config: HttpConfig) {
        let snap = build(config, self.inner.metrics.as_deref(), &self.inner.pools);
        self.inner.snapshot.store(Arc::new(snap));
    }

    /// Whether requests may read the local address of their connection
    /// ([`ConnInfo::with_local`]): a route sends a PROXY header to its targets, redirects, or
    /// sets templated header values. Without any, the engine saves a `getsockname` per
    /// connection accepted on a wildcard address.
    pub fn needs_local_addr(&self) -> bool {
        self.inner.snapshot.load().needs_local
    }

    /// The route table requests are routed with now.
    pub fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.inner.snapshot.load().table)
    }

    /// Idle and shared backend connections over all pools (for tests and status pages).
    pub fn pooled_connections(&self) -> usize {
        self.inner.pools.idle()
    }

    /// Serves one client connection until it closes: HTTP/1.1 (keep-alive, pipelining,
    /// upgrades) or HTTP/2 (by ALPN `h2`, or detected from the client's preface on a plain
    /// connection), every request routed on its own. `shutdown` resolving starts a graceful
    /// close (HTTP/1.1: after the request in progress; HTTP/2: GOAWAY); dropping the
    /// future closes at once, upgraded connections included.
    ///
    /// (Not an `async fn`: the connection's future is `conn::serve`'s itself, without a
    /// wrapper state that would keep its arguments a second time.)
    pub fn serve<I, F>(
        &self,
        io: I,
        info: ConnInfo,
        shutdown: F,
    ) -> impl Future<Output = ServeOutcome> + use<I, F>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        F: Future<Output = ()>,
    {
        crate::conn::serve(Arc::clone(&self.inner), io, info, shutdown)
    }
}

fn build(config: HttpConfig, metrics: Option<&Metrics>, pools: &Pools) -> Snapshot {
    use crate::snapshot::cap;
    let mut http = config.settings;
    http.request_header_timeout = cap(http.request_header_timeout);
    http.http_keepalive_timeout = cap(http.http_keepalive_timeout);
    http.http_response_timeout = cap(http.http_response_timeout);
    http.http_pool_idle_timeout = cap(http.http_pool_idle_timeout);
    let settings = Settings {
        http,
        connect_timeout: cap(config.connect_timeout),
        tunnel_idle: cap(config.tunnel_inactivity_timeout),
    };
    Snapshot::build(
        config.table,
        settings,
        &config.route_settings,
        config.upstream_tls,
        metrics,
        pools,
        config.credentials.as_deref(),
    )
}

/// Request headers for routing criteria.
struct Headers<'a>(&'a http::HeaderMap);

impl HeaderSource for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The Host of a request: the URI authority (HTTP/2 `:authority`, HTTP/1.1 absolute form),
/// else the `Host` header.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST).and_then(|v| v.to_str().ok()),
    }
}

/// What one proxied request carries beyond the route's fixed settings: the template values
/// of its header operations and its CORS origin.
#[derive(Debug, Default)]
pub(crate) struct Expanded {
    pub(crate) request: Vec<HeaderValue>,
    pub(crate) response: Vec<HeaderValue>,
    /// `Access-Control-Allow-Origin` of an allowed CORS request.
    pub(crate) cors: Option<HeaderValue>,
}

/// What routing decided for a request.
enum Decision {
    NoRoute,
    /// A route that the HTTP layer does not serve matched (a layer-4 route).
    NotHttp(usize),
    Forbidden(usize),
    Proxy(usize),
    Respond(usize, Box<Response<ResponseBody>>),
}

fn decide(snap: &Snapshot, ctx: &ConnCtx, req: &Request<ClientBody>) -> Decision {
    let host = request_host(req);
    let headers = Headers(req.headers());
    let mut input = MatchInput::new(ctx.port, ctx.client.ip()).with_path(req.uri().path());
    if let Some(h) = host {
        input = input.with_domain(h);
    }
    if let Some(tls) = &ctx.tls {
        input = input.with_tls(tls.version);
    }
    input = input.with_headers(&headers);
    let Some(m) = snap.table.lookup(&input) else { return Decision::NoRoute };
    let Some((route, state)) = snap.route(m.index) else { return Decision::NoRoute };
    if !route.allows_ip(ctx.client.ip()) {
        return Decision::Forbidden(m.index);
    }
    match &state.kind {
        RouteKind::Proxy(_) => Decision::Proxy(m.index),
        RouteKind::Other => Decision::NotHttp(m.index),
        RouteKind::Handler(HandlerRoute::Respond { status, headers, body }) => {
            let mut resp = Response::new(ResponseBody::full(body.clone()));
            *resp.status_mut() = *status;
            *resp.headers_mut() = headers.clone();
            if !body.is_empty() && !resp.headers().contains_key(header::CONTENT_TYPE) {
                resp.headers_mut().insert(header::CONTENT_TYPE, TEXT_PLAIN);
            }
            Decision::Respond(m.index, Box::new(resp))
        }
        RouteKind::Handler(HandlerRoute::Redirect { location, status }) => {
            // `{domain}` falls back to the local address only without a Host (no allocation else).
            let fallback = match (host, ctx.local) {
                (None, Some(a)) => a.ip().to_string(),
                _ => String::new(),
            };
            let mut vars = TemplateVars::new(ctx.client.ip(), ctx.port)
                .with_path(req.uri().path())
                .with_route_name(route.name())
                .with_headers(&headers)
                .with_params(&m.params)
                .with_fallback_domain(&fallback);
            let domain = host.map(strip_port);
            if let Some(d) = domain {
                vars = vars.with_domain(d);
            }
            if let Some(q) = req.uri().query() {
                vars = vars.with_query(q);
            }
            let loc = location.expand_to_string(&vars);
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = *status;
            match HeaderValue::from_str(&loc) {
                Ok(v) => {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => {
                    tracing::warn!(route = route.name(), location = %loc, "redirect location is not a valid header value");
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
            }
            Decision::Respond(m.index, Box::new(resp))
        }
    }
}

/// `example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The template values of a proxied request (after its policies: `{jwt.sub}` is known) and
/// its CORS origin; `None` when the route needs neither.
fn expand<B>(
    ctx: &ConnCtx,
    route: &smartproxy_routing::CompiledRoute,
    pr: &crate::snapshot::ProxyRoute,
    req: &Request<B>,
    passed: crate::policy::Passed,
) -> Option<Box<Expanded>> {
    if !pr.has_templated_ops() {
        return passed.cors.map(|c| Box::new(Expanded { cors: Some(c), ..Expanded::default() }));
    }
    let host = request_host(req);
    let headers = Headers(req.headers());
    let path = req.uri().path();
    let params = route.path_params(path);
    let fallback = ctx.local.map(|a| a.ip().to_string()).unwrap_or_default();
    let ip_text = ctx.xff.to_str().ok();
    let mut vars = TemplateVars::new(ctx.client.ip(), ctx.port)
        .with_path(path)
        .with_route_name(route.name())
        .with_headers(&headers)
        .with_params(&params)
        .with_fallback_domain(&fallback);
    if let Some(d) = host.map(strip_port) {
        vars = vars.with_domain(d);
    }
    if let Some(q) = req.uri().query() {
        vars = vars.with_query(q);
    }
    if let Some(ip) = ip_text {
        vars = vars.with_client_ip_text(ip);
    }
    if let Some(sub) = passed.token.as_ref().and_then(|t| t.sub.as_deref()) {
        vars = vars.with_jwt_sub(sub);
    }
    let ex = |o: &Option<crate::snapshot::HeaderOps>| {
        o.as_ref().map(|o| o.expand(&vars)).unwrap_or_default()
    };
    Some(Box::new(Expanded {
        request: ex(&pr.request_ops),
        response: ex(&pr.response_ops),
        cors: passed.cors,
    }))
}

/// The answer of a route policy: a preflight's 204, or a refusal (401, 403, 429) counted per
/// route and reason.
fn policy_answer(
    mut guard: RequestGuard,
    snap: &Snapshot,
    index: usize,
    stop: crate::policy::Stop,
) -> Response<ResponseBody> {
    use crate::policy::Stop;
    match stop {
        Stop::Preflight(headers) => {
            guard.upstream = None;
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.headers_mut() = headers;
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, body.with_guard(guard, 204))
        }
        Stop::Refused(r) => {
            if let (Some(m), Some(h)) = (&guard.ctx.service.metrics, snap.route_metrics(index)) {
                m.http_policy_refused(h, r.reason);
            }
            let reason = match r.reason.status() {
                401 => HttpErrorReason::Unauthorized,
                429 => HttpErrorReason::RateLimited,
                _ => HttpErrorReason::Forbidden,
            };
            let mut resp = error_response(guard, reason, &r.detail);
            let h = resp.headers_mut();
            if let Some(v) = r.www_authenticate {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
            if let Some(secs) = r.retry_after {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            if let (Some(origin), Some((_, state))) = (&r.cors, snap.route(index))
                && let RouteKind::Proxy(pr) = &state.kind
                && let Some(c) = pr.policy.as_ref().and_then(|p| p.cors.as_ref())
            {
                c.apply(h, origin);
            }
            resp
        }
    }
}

pub(crate) const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The short answer of the HTTP layer itself for `reason`, counted and logged once.
pub(crate) fn error_response(
    mut guard: RequestGuard,
    reason: HttpErrorReason,
    detail: &dyn std::fmt::Display,
) -> Response<ResponseBody> {
    let ctx = Arc::clone(&guard.ctx);
    if let Some(m) = &ctx.service.metrics {
        m.http_error(reason);
    }
    let route = match (&guard.snap, guard.route) {
        (Some(s), Some(i)) => s.route_name(i).to_owned(),
        _ => String::new(),
    };
    let status = reason.status();
    match reason {
        HttpErrorReason::NoRoute
        | HttpErrorReason::Forbidden
        | HttpErrorReason::Unauthorized
        | HttpErrorReason::RateLimited
        | HttpErrorReason::MethodNotAllowed => {
            tracing::debug!(client = %ctx.client, port = ctx.port, route = %route, status, reason = reason.as_str(), "{detail}");
        }
        _ => {
            tracing::warn!(client = %ctx.client, port = ctx.port, route = %route, status, reason = reason.as_str(), "{detail}");
        }
    }
    let body: &'static str = match reason {
        HttpErrorReason::NoRoute => "no route for this request\n",
        HttpErrorReason::Forbidden => "forbidden\n",
        HttpErrorReason::Unauthorized => "unauthorized\n",
        HttpErrorReason::RateLimited => "too many requests\n",
        HttpErrorReason::MethodNotAllowed => "method not allowed\n",
        HttpErrorReason::BackendUnavailable => "bad gateway: the backend is unavailable\n",
        HttpErrorReason::BackendError => "bad gateway: the backend failed\n",
        HttpErrorReason::BackendConnectTimeout => "gateway timeout: connecting to the backend\n",
        HttpErrorReason::BackendResponseTimeout => "gateway timeout: the backend did not answer\n",
        HttpErrorReason::HeaderTooLarge => "request header fields too large\n",
        HttpErrorReason::UriTooLong => "request target too long\n",
        HttpErrorReason::HeaderTimeout => "request header timeout exceeded\n",
        _ => "bad request\n",
    };
    // No more upstream: the backend connection (if any) is not reused.
    guard.upstream = None;
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert(header::CONTENT_TYPE, TEXT_PLAIN);
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.with_guard(guard, status))
}

/// One request: route it, then answer, redirect, or forward it. Everything up to the
/// exchange with a target happens here, before the request's future exists (see
/// [`crate::proxy::forward`]); only a route with policies (which may wait) runs them in a
/// boxed future of its own. `boxed`: the exchange goes in a box (an HTTP/2 stream's,
/// `conn::handle_h2`).
pub(crate) fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<ClientBody>,
    boxed: bool,
) -> Either<Ready<Answer>, Either<impl Future<Output = Answer> + Send + 'static, Boxed>> {
    let now = |resp| Either::Left(ready(Ok(resp)));
    let method = HttpMethod::from_token(req.method().as_str());
    let mut guard = RequestGuard::new(Arc::clone(&ctx), method);
    let snap = ctx.service.snapshot.load_full();
    if let Some(sink) = &ctx.service.access_log {
        guard.access = Some(Box::new(AccessEntry {
            sink: Some(Arc::clone(sink)),
            time: Some(SystemTime::now()),
            method: req.method().as_str().to_owned(),
            host: request_host(&req).unwrap_or("").to_owned(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            upstream: String::new(),
        }));
    }
    // More than one `Host` is a bad request (RFC 9112 §3.2; nginx answers it so too): which
    // one a route matched and which one a target reads could differ. `h1_server.rs` (the
    // only source of `ClientBody::Empty`) hands such a request to hyper's path, so only
    // that path looks.
    if !matches!(req.body(), ClientBody::Empty)
        && req.version() < Version::HTTP_2
        && req.headers().get_all(header::HOST).iter().nth(1).is_some()
    {
        guard.routed(snap, None);
        return now(error_response(
            guard,
            HttpErrorReason::BadRequest,
            &"more than one Host field",
        ));
    }
    let decision = decide(&snap, &ctx, &req);
    match decision {
        Decision::NoRoute => {
            guard.routed(snap, None);
            now(error_response(guard, HttpErrorReason::NoRoute, &"no route took the request"))
        }
        Decision::NotHttp(i) => {
            guard.routed(snap, None);
            let _ = i;
            now(error_response(
                guard,
                HttpErrorReason::NoRoute,
                &"the matching route is not an HTTP route",
            ))
        }
        Decision::Forbidden(i) => {
            if let (Some(m), Some(h)) = (&ctx.service.metrics, snap.route_metrics(i)) {
                m.http_policy_refused(h, HttpPolicyReason::IpBlocked);
            }
            guard.routed(snap, Some(i));
            now(error_response(guard, HttpErrorReason::Forbidden, &"client address not allowed"))
        }
        Decision::Respond(i, resp) => {
            guard.routed(snap, Some(i));
            let status = resp.status().as_u16();
            let (parts, body) = (*resp).into_parts();
            now(Response::from_parts(parts, body.with_guard(guard, status)))
        }
        Decision::Proxy(i) => {
            guard.routed(Arc::clone(&snap), Some(i));
            if req.method() == Method::CONNECT
                && req.extensions().get::<hyper::ext::Protocol>().is_none()
            {
                return now(error_response(
                    guard,
                    HttpErrorReason::MethodNotAllowed,
                    &"CONNECT is not forwarded",
                ));
            }
            let Some((route, state)) = snap.route(i) else {
                return now(error_response(guard, HttpErrorReason::NoRoute, &"route vanished"));
            };
            let RouteKind::Proxy(pr) = &state.kind else {
                return now(error_response(guard, HttpErrorReason::NoRoute, &"not an HTTP route"));
            };
            if pr.policy.is_some() {
                return Either::Right(Either::Right(Box::pin(with_policies(
                    ctx, snap, i, req, guard,
                ))));
            }
            let expanded = expand(&ctx, route, pr, &req, crate::policy::Passed::default());
            crate::proxy::forward(ctx, snap, i, req, guard, expanded, boxed)
        }
    }
}

/// The future of a request on a route with policies.
pub(crate) type Boxed = std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Security, in its fixed order (crate::policy), then the request rewrite and the exchange.
async fn with_policies(
    ctx: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
    i: usize,
    req: Request<ClientBody>,
    guard: RequestGuard,
) -> Answer {
    let Some((route, state)) = snap.route(i) else {
        return Ok(error_response(guard, HttpErrorReason::NoRoute, &"route vanished"));
    };
    let RouteKind::Proxy(pr) = &state.kind else {
        return Ok(error_response(guard, HttpErrorReason::NoRoute, &"not an HTTP route"));
    };
    let passed = match &pr.policy {
        None => crate::policy::Passed::default(),
        Some(pol) => {
            match crate::policy::run(ctx.client.ip(), route, pol, &req, &ctx.basic_memo).await {
                Ok(p) => p,
                Err(stop) => return Ok(policy_answer(guard, &snap, i, stop)),
            }
        }
    };
    let expanded = expand(&ctx, route, pr, &req, passed);
    crate::proxy::forward(ctx, snap, i, req, guard, expanded, false).await
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("::1"), "::1");
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    fn ret_size<B, F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<ConnCtx>, Request<B>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// An HTTP/2 stream's future (what hyper moves to its executor per stream) holds the
    /// exchange in a box: its size is that of a ready answer (a response, 288 bytes when
    /// this bound was set), not the exchange's.
    #[test]
    fn h2_request_future_is_small() {
        let n = ret_size(crate::conn::handle_h2);
        eprintln!("HTTP/2 request future: {n} bytes");
        assert!(n <= 320, "the HTTP/2 request future grew to {n} bytes");
    }

    /// hyper moves every request's future into its slot once (an HTTP/2 stream's into a
    /// task, several times): its size is copied per request. The request is rewritten
    /// before the future exists and rare paths (connect, adoption, policies, the spare
    /// copy) are boxed to keep it down (3,888 bytes before, 2,224 when this bound was set);
    /// this bounds it.
    #[test]
    fn request_future_size() {
        let n = ret_size(|ctx, req: Request<ClientBody>| handle(ctx, req, false));
        eprintln!("request future: {n} bytes");
        assert!(n <= 2304, "the request future grew to {n} bytes");
    }
}

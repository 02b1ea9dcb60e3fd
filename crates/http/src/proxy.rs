//! Forwarding one request to a target of its route and streaming the response back.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::upgrade::OnUpgrade;
use smartproxy_metrics::HttpErrorReason;
use smartproxy_routing::{CompiledRoute, SendProxyProtocol, UpstreamProtocol};
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;

use crate::body::{BackBody, ClientBody, Progress, RequestGuard, ResponseBody, UpBody, Upstream};
use crate::ctx::ConnCtx;
use crate::h1::{BoxError, ExchangeError, RawHead};
use crate::headers::{self, Forwarding, append_via, forwarded, forwarded_headers, join_cookies};
use crate::pool::{Pool, Sender};
use crate::service::{Expanded, TEXT_PLAIN, error_response};
use crate::snapshot::{ProxyRoute, RouteKind, Snapshot, TargetState};
use crate::upstream::{ConnectError, ConnectParams, adopt, connect, is_timeout, unix_ms};

const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// The outcome of one exchange on one backend connection.
enum Sent {
    /// The response, and the connection to pool once its body is read (hyper's; a direct
    /// body carries its connection itself).
    Response(Response<BackBody>, Option<Sender>),
    /// The pooled connection was gone before the request went out (or, for an idempotent
    /// request on a direct connection, closed without a byte of response): the request is
    /// back in its slot.
    Retry,
    Failed(BoxError),
    Timeout,
}

/// What the request looks like before the per-connection details (URI form, Host, version).
struct Prepared {
    req: Request<UpBody>,
    pq: PathAndQuery,
    /// The client's Host / `:authority`.
    host: Option<HeaderValue>,
    /// `host` is the request's only `Host` field, still in its map: a target that gets the
    /// client's host needs no new field.
    host_in_map: bool,
    te_trailers: bool,
    /// The forwarding fields are not in the map yet: a connection of this task writes them
    /// as it encodes the head (`headers::Forwarding`), any other sender gets them in the map
    /// once it is known.
    fwd_pending: bool,
    client_h2: bool,
    /// A WebSocket upgrade (HTTP/1.1 Upgrade, or RFC 8441 extended CONNECT when
    /// `ext_connect`), with the client side's upgrade.
    ws: bool,
    ext_connect: bool,
    client_upgrade: Option<OnUpgrade>,
    /// Whether a direct exchange's response may keep its fields raw (`h1.rs`).
    raw: RawHead,
}

/// What [`forward`] resolves to: the request's response (the HTTP layer's own on an error).
pub(crate) type Answer = Result<Response<ResponseBody>, std::convert::Infallible>;

/// Forwards `req` on route `index` of `snap`. The request is rewritten here, before the
/// future exists: the future of every request is moved whole (into hyper's slot, into a
/// task for an HTTP/2 stream), and what it holds only to rewrite it would be moved too.
/// `boxed`: the exchange goes in a box (an HTTP/2 stream's future, which hyper moves
/// several times on its way into a task of its own).
pub(crate) fn forward(
    ctx: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
    index: usize,
    req: Request<ClientBody>,
    mut guard: RequestGuard,
    expanded: Option<Box<Expanded>>,
    boxed: bool,
) -> Either<
    Ready<Answer>,
    Either<impl Future<Output = Answer> + Send + 'static, crate::service::Boxed>,
> {
    // In the type the service returns, so that it passes this on without a copy of the
    // future (a re-wrapping `match` would move all of it once more per request).
    match prepare(&ctx, &snap, index, req, &mut guard, expanded.as_deref()) {
        Ok(prep) if boxed => Either::Right(Either::Right(Box::pin(exchange(
            ctx, snap, index, prep, guard, expanded,
        )))),
        Ok(prep) => Either::Right(Either::Left(exchange(ctx, snap, index, prep, guard, expanded))),
        Err((reason, detail)) => Either::Left(ready(Ok(error_response(guard, reason, &detail)))),
    }
}

/// The request as it goes to a target of the route: hop-by-hop fields out, forwarding
/// fields and the route's header operations in, the path rewritten, the body wrapped.
fn prepare(
    ctx: &ConnCtx,
    snap: &Snapshot,
    index: usize,
    req: Request<ClientBody>,
    guard: &mut RequestGuard,
    expanded: Option<&Expanded>,
) -> Result<Prepared, (HttpErrorReason, String)> {
    let Some((_, state)) = snap.route(index) else {
        return Err((HttpErrorReason::NoRoute, "route vanished".to_owned()));
    };
    let RouteKind::Proxy(pr) = &state.kind else {
        return Err((HttpErrorReason::NoRoute, "not an HTTP route".to_owned()));
    };
    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    // The client's connection is served by `h1_server.rs` (the only source of
    // `ClientBody::Empty`), which writes raw response fields; the route changes none.
    let raw = if matches!(body, ClientBody::Empty)
        && pr.via.is_none()
        && pr.response_ops.is_none()
        && pr.policy.as_ref().is_none_or(|p| p.cors.is_none())
        && parts.method != Method::HEAD
    {
        if pr.rewrite_location { RawHead::UnlessLocation } else { RawHead::Always }
    } else {
        RawHead::Never
    };
    let ws =
        pr.websocket && headers::is_websocket(&parts.method, &parts.headers, &parts.extensions);
    let client_upgrade = if ws { parts.extensions.remove::<OnUpgrade>() } else { None };
    let ext_connect = ws && parts.method == Method::CONNECT;

    // The client's host, then the generic header work.
    let (host, host_in_map) = match parts.uri.authority() {
        Some(a) => (HeaderValue::from_str(a.as_str()).ok(), false),
        None => {
            let host = parts.headers.get(header::HOST).cloned();
            // `h1_server.rs` (the only source of `ClientBody::Empty`) takes no request with
            // more than one `Host`; the route's header operations may change it.
            let single = matches!(body, ClientBody::Empty) && pr.request_ops.is_none();
            (host.clone(), single && host.is_some())
        }
    };
    let te_trailers = headers::remove_hop_by_hop(&mut parts.headers, ws && !ext_connect, false);
    // Left to the exchange, which knows the sender: a connection of this task writes them
    // as it encodes the head, any other gets them in the map. Unless the route's own header
    // operations, applied after them, could change them.
    let fwd_pending = pr.forwarded_headers && pr.request_ops.is_none();
    if pr.forwarded_headers && !fwd_pending {
        forwarded_headers(&mut parts.headers, Forwarding::new(ctx, host.as_ref()));
    }
    if pr.forwarded {
        forwarded(&mut parts.headers, ctx, host.as_ref());
    }
    if let Some(via) = &pr.via {
        append_via(&mut parts.headers, &via[headers::via_index(client_version)]);
    }
    if let Some(ops) = &pr.request_ops {
        ops.apply(&mut parts.headers, expanded.map_or(&[][..], |e| &e.request[..]));
    }
    if ws {
        // The target gets an HTTP/1.1 upgrade, whatever the client spoke.
        parts.headers.insert(header::CONNECTION, UPGRADE);
        parts.headers.insert(header::UPGRADE, WEBSOCKET);
        if ext_connect {
            parts.method = Method::GET;
            parts.headers.insert(SEC_WEBSOCKET_KEY, websocket_key());
            if !parts.headers.contains_key(SEC_WEBSOCKET_VERSION) {
                parts.headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            parts.extensions.remove::<hyper::ext::Protocol>();
        }
    }
    let mut pq =
        parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    // A rewrite that only swaps a literal prefix (`^/v1/(.*)$` -> `/api/$1`, the common
    // case) is done without the regex: the same result, one allocation.
    let swapped = pr.location_inverse.as_ref().and_then(|inv| {
        let rest = pq.path().strip_prefix(&*inv.from)?;
        let q = pq.query();
        let mut s = String::with_capacity(inv.to.len() + rest.len() + q.map_or(0, |q| q.len() + 1));
        s.push_str(&inv.to);
        s.push_str(rest);
        if let Some(q) = q {
            s.push('?');
            s.push_str(q);
        }
        Some(s)
    });
    let rewritten = match (&pr.rewrite, swapped) {
        (Some(_), Some(s)) => Some(s),
        (Some((re, to)), None) if pr.location_inverse.is_none() => {
            match re.replace(pq.path(), to.as_str()) {
                std::borrow::Cow::Owned(path) => Some(match pq.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                }),
                std::borrow::Cow::Borrowed(_) => None,
            }
        }
        _ => None,
    };
    if let Some(rewritten) = rewritten {
        match PathAndQuery::try_from(rewritten) {
            Ok(p) => pq = p,
            Err(e) => {
                return Err((
                    HttpErrorReason::BadRequest,
                    format!("rewritten path is not valid: {e}"),
                ));
            }
        }
    }
    let body = match body {
        ClientBody::Hyper(body) if !ws && !body.is_end_stream() => {
            let progress = Arc::new(Progress::new());
            guard.bytes_in = Some(Arc::clone(&progress));
            UpBody::Stream { inner: body, progress }
        }
        _ => UpBody::Empty,
    };
    Ok(Prepared {
        req: Request::from_parts(parts, body),
        pq,
        host,
        host_in_map,
        te_trailers,
        fwd_pending,
        client_h2: client_version == Version::HTTP_2,
        ws,
        ext_connect,
        client_upgrade,
        raw: if ws { RawHead::Never } else { raw },
    })
}

/// Sends the prepared request to a target of the route (a pooled connection, else a new
/// one; the next target after a failed connect) and passes the response on.
#[allow(clippy::manual_async_fn)] // On purpose: see the comment at the `async` block.
fn exchange(
    ctx: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
    index: usize,
    mut prep: Prepared,
    mut guard: RequestGuard,
    expanded: Option<Box<Expanded>>,
) -> impl Future<Output = Answer> + Send {
    // An `async` block rather than an `async fn`: the block uses what it captured in place,
    // where an `async fn` moves its arguments into locals of the same future, which then
    // holds both copies (`prep` and `guard`, 512 bytes more to move and to allocate).
    async move {
        let ctx = &ctx;
        let Some((route, state)) = snap.route(index) else {
            return Ok(error_response(guard, HttpErrorReason::NoRoute, &"route vanished"));
        };
        let RouteKind::Proxy(pr) = &state.kind else {
            return Ok(error_response(guard, HttpErrorReason::NoRoute, &"not an HTTP route"));
        };
        let (ws, ext_connect) = (prep.ws, prep.ext_connect);
        let client_upgrade = prep.client_upgrade.take();
        let progress = guard.bytes_in.clone();
        // Targets: the route's choice, then the next ones after a failed connect (at most 3).
        let client_ip = ctx.client.ip();
        let max_attempts = pr.targets.len().clamp(1, 3);
        let mut attempts = 0usize;
        let mut next = route.select_target(client_ip, ctx.port, 0);
        let mut last_err: Option<ConnectError> = None;
        let metrics = ctx.service.metrics.as_deref();
        let route_metrics = snap.route_metrics(index);
        while let Some(sel) = next.take() {
            attempts += 1;
            let Some(t) = pr.targets.get(sel.index()) else { break };
            let port = sel.port();
            let pool = if pr.proxy_protocol != SendProxyProtocol::Off {
                private_pool(ctx, &snap, t, port)
            } else {
                let sni = ctx.tls.as_ref().and_then(|t| t.sni.as_deref());
                snap.pool(&ctx.service.pools, route, pr, t, port, sni)
            };
            // A pooled connection first (never for an upgrade: that one is dedicated). A request
            // without a body to a plain HTTP/1.1 target runs in this task (`h1.rs`).
            let direct = !ws
                && !pr.tls
                && pr.upstream != UpstreamProtocol::Http2
                && matches!(prep.req.body(), UpBody::Empty);
            let mut idle_for = Duration::ZERO;
            let mut pooled = if ws {
                None
            } else if let Some(tx) =
                (pr.upstream != UpstreamProtocol::Http1).then(|| pool.h2()).flatten()
            {
                Some(Sender::H2(tx))
            } else {
                let found = if direct {
                    pool.take_raw(guard.started)
                        .map(|(c, idle)| (Sender::Raw(c), idle))
                        .or_else(|| pool.take_h1(guard.started).map(|(tx, i)| (Sender::H1(tx), i)))
                } else {
                    match pool.take_h1(guard.started) {
                        Some((tx, idle)) => Some((Sender::H1(tx), idle)),
                        // A request with a body: hyper takes over an idle direct connection.
                        None => match pool.take_raw(guard.started) {
                            Some((c, idle)) => Box::pin(adopt(c)).await.map(|s| (s, idle)),
                            None => None,
                        },
                    }
                };
                found.map(|(s, idle)| {
                    idle_for = idle;
                    s
                })
            };
            let outcome = loop {
                let reused = pooled.is_some();
                // A connection idle for a while may be closed by the target just as the request
                // goes out (the keep-alive race): keep a copy of a replayable request to send
                // again on a new connection. Hot connections are not worth the copy.
                let spare =
                    (reused && idle_for >= STALE_AFTER).then(|| replayable(&prep.req)).flatten();
                let fwd_pending_in_spare = prep.fwd_pending;
                // The response timeout counts from here (a pooled connection) or from the
                // end of the connect.
                let mut sent_from = guard.started;
                let sender = match pooled.take() {
                    Some(s) => s,
                    None => {
                        let started = Instant::now();
                        let params = ConnectParams {
                            ctx,
                            route,
                            pr,
                            target: t,
                            port,
                            tls: snap.tls.as_deref(),
                            upgrade: ws,
                            direct,
                        };
                        // Boxed: rare (pooled connections), and its state would make every
                        // request's future (moved and polled per request) larger.
                        match Box::pin(connect(params)).await {
                            Ok(s) => {
                                sent_from = Instant::now();
                                route.target_connected(sel.index(), unix_ms);
                                if let (Some(m), Some(r)) = (metrics, route_metrics) {
                                    m.backend_connected(
                                        r,
                                        sent_from.saturating_duration_since(started),
                                    );
                                }
                                if let Sender::H2(tx) = &s {
                                    pool.set_h2(tx.clone());
                                }
                                s
                            }
                            Err(e) => {
                                if let (Some(m), Some(r)) = (metrics, route_metrics) {
                                    m.backend_connect_failed(r);
                                }
                                route.target_connect_failed(sel.index(), unix_ms(), e.failure());
                                tracing::debug!(client = %ctx.client, route = route.name(), target = %t.authority(port), "connect failed: {e}");
                                break Err(e);
                            }
                        }
                    }
                };
                let h2 = sender.is_h2();
                finish(&mut prep, pr, t, port, h2, snap.tls.is_some() && pr.tls);
                let mut fwd = prep.fwd_pending.then(|| Forwarding::new(ctx, prep.host.as_ref()));
                if let Some(f) = fwd.take_if(|_| !matches!(sender, Sender::Raw(_))) {
                    forwarded_headers(prep.req.headers_mut(), f);
                    prep.fwd_pending = false;
                }
                // The request stays in `prep` (its slot, not a copy in the future: the future of
                // every request is moved whole, so what it holds twice costs twice).
                match send(
                    ctx,
                    sender,
                    &mut prep.req,
                    Direct { raw: prep.raw, fwd },
                    pr.response_timeout,
                    progress.as_deref(),
                    sent_from,
                )
                .await
                {
                    // A stale keep-alive connection: the same target, a new connection.
                    Sent::Retry if reused => {}
                    Sent::Retry => {
                        break Ok(Err((
                            HttpErrorReason::BackendError,
                            "the new backend connection closed at once".to_owned(),
                        )));
                    }
                    Sent::Failed(e) => {
                        if let Some(req) = spare {
                            tracing::debug!(client = %ctx.client, route = route.name(), "idle backend connection failed ({e}); sending again on a new one");
                            prep.req = *req;
                            prep.fwd_pending = fwd_pending_in_spare;
                            idle_for = Duration::ZERO;
                            continue;
                        }
                        break Ok(Err((
                            HttpErrorReason::BackendError,
                            format!("backend failed: {e}"),
                        )));
                    }
                    Sent::Timeout => {
                        break Ok(Err((
                            HttpErrorReason::BackendResponseTimeout,
                            format!("no response head within {:?}", pr.response_timeout),
                        )));
                    }
                    Sent::Response(resp, sender) => break Ok(Ok((resp, sender))),
                }
            };
            match outcome {
                Err(e) => {
                    last_err = Some(e);
                    if attempts < max_attempts {
                        next = route.next_target(&sel, attempts, ctx.port);
                    }
                }
                Ok(Err((reason, detail))) => return Ok(error_response(guard, reason, &detail)),
                Ok(Ok((resp, sender))) => {
                    if let Some(a) = &mut guard.access {
                        a.upstream = t.authority(port);
                    }
                    let upstream = Upstream {
                        sender: sender.filter(|_| !ws),
                        pool: Some(pool),
                        _target: sel.into_guard(),
                    };
                    let back = Back {
                        target: t,
                        port,
                        client_host: prep.host.as_ref(),
                        extras: expanded.as_deref(),
                    };
                    return Ok(respond(
                        ctx,
                        route,
                        pr,
                        resp,
                        upstream,
                        guard,
                        ws,
                        client_upgrade,
                        ext_connect,
                        &back,
                    ));
                }
            }
        }
        let (reason, detail) = match &last_err {
            Some(e) if is_timeout(e) => (HttpErrorReason::BackendConnectTimeout, e.to_string()),
            Some(e) => {
                (HttpErrorReason::BackendUnavailable, format!("no target could be connected: {e}"))
            }
            None => (HttpErrorReason::BackendUnavailable, "the route has no target".to_owned()),
        };
        Ok(error_response(guard, reason, &detail))
    }
}

/// Idle time after which a pooled connection's first request is kept for a resend.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// A copy of `req` if it can be sent again: no body and an idempotent method.
/// Boxed: rare, and kept across the exchange (in every request's future otherwise).
fn replayable(req: &Request<UpBody>) -> Option<Box<Request<UpBody>>> {
    if !matches!(req.body(), UpBody::Empty)
        || !matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    {
        return None;
    }
    let mut copy = Request::new(UpBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(Box::new(copy))
}

/// The pool of connections that carry this client's PROXY header.
fn private_pool(ctx: &ConnCtx, snap: &Snapshot, t: &TargetState, port: u16) -> Arc<Pool> {
    let key = t.id.wrapping_mul(65_536).wrapping_add(usize::from(port));
    let mut v = ctx.private_pools.lock();
    if let Some((_, p)) = v.iter().find(|(k, _)| *k == key) {
        return Arc::clone(p);
    }
    let s = &snap.settings.http;
    let p = Pool::private(s.http_pool_max_idle, s.http_pool_idle_timeout);
    v.push((key, Arc::clone(&p)));
    p
}

/// URI form, Host and version for the connection's protocol.
fn finish(prep: &mut Prepared, pr: &ProxyRoute, t: &TargetState, port: u16, h2: bool, tls: bool) {
    let target_host = || -> Option<(HeaderValue, Authority)> {
        if let Some(Some(v)) = pr.target_hosts.get(target_index(pr, t)) {
            return Some(v.clone());
        }
        let a = t.authority(port);
        Some((HeaderValue::from_str(&a).ok()?, a.parse().ok()?))
    };
    let req = &mut prep.req;
    if h2 {
        let authority = if pr.preserve_host {
            prep.host.as_ref().and_then(|h| Authority::try_from(h.as_bytes()).ok())
        } else {
            None
        }
        .or_else(|| target_host().map(|(_, a)| a));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = authority;
        parts.path_and_query = Some(prep.pq.clone());
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        req.headers_mut().remove(header::HOST);
        prep.host_in_map = false;
        if prep.te_trailers {
            req.headers_mut().insert(header::TE, TRAILERS);
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.uri_mut() = Uri::from(prep.pq.clone());
        if !(pr.preserve_host && prep.host_in_map) {
            let host = if pr.preserve_host { prep.host.clone() } else { None };
            prep.host_in_map = false;
            match host.or_else(|| target_host().map(|(h, _)| h)) {
                Some(h) => {
                    req.headers_mut().insert(header::HOST, h);
                }
                None => {
                    req.headers_mut().remove(header::HOST);
                }
            }
        }
        // `prepare` removed the client's `TE`; only the route's header operations or an
        // earlier attempt on an HTTP/2 connection can have put one back.
        if prep.te_trailers || pr.request_ops.is_some() {
            req.headers_mut().remove(header::TE);
        }
        if prep.client_h2 {
            join_cookies(req.headers_mut());
        }
        *req.version_mut() = Version::HTTP_11;
    }
}

fn target_index(pr: &ProxyRoute, t: &TargetState) -> usize {
    pr.targets.iter().position(|x| std::ptr::eq(x, t)).unwrap_or(usize::MAX)
}

/// What only a direct exchange (`h1.rs`) reads.
#[derive(Clone, Copy)]
struct Direct<'a> {
    /// Whether the response's fields may come raw.
    raw: RawHead,
    /// The forwarding fields for its head encoder (hyper's senders get them in the map).
    fwd: Option<Forwarding<'a>>,
}

/// Sends `req` and waits for the response head. The response timeout counts from the last
/// byte of the request body that went out, so a long upload is not cut.
async fn send(
    ctx: &ConnCtx,
    sender: Sender,
    // Taken by hyper's senders (and put back if they hand it back); only read by a direct
    // exchange.
    slot: &mut Request<UpBody>,
    direct: Direct<'_>,
    timeout: Duration,
    progress: Option<&Progress>,
    // When the request starts going out (the caller's clock read, saved here).
    started: Instant,
) -> Sent {
    let exchange = async move {
        match sender {
            Sender::H1(mut tx) => {
                if tx.ready().await.is_err() {
                    return Sent::Retry;
                }
                let req = std::mem::replace(slot, Request::new(UpBody::Empty));
                match tx.try_send_request(req).await {
                    Ok(resp) => Sent::Response(resp.map(BackBody::Hyper), Some(Sender::H1(tx))),
                    Err(mut e) => match e.take_message() {
                        Some(req) => {
                            *slot = req;
                            Sent::Retry
                        }
                        None => Sent::Failed(e.into_error().into()),
                    },
                }
            }
            Sender::H2(mut tx) => {
                if tx.ready().await.is_err() {
                    return Sent::Retry;
                }
                let req = std::mem::replace(slot, Request::new(UpBody::Empty));
                match tx.try_send_request(req).await {
                    Ok(resp) => Sent::Response(resp.map(BackBody::Hyper), Some(Sender::H2(tx))),
                    Err(mut e) => match e.take_message() {
                        Some(req) => {
                            *slot = req;
                            Sent::Retry
                        }
                        None => Sent::Failed(e.into_error().into()),
                    },
                }
            }
            Sender::Raw(conn) => match conn.exchange(slot, direct.raw, direct.fwd).await {
                Ok(resp) => Sent::Response(resp.map(BackBody::Direct), None),
                // Nothing was taken from the request: it can go out again on a new
                // connection if the target cannot have acted on it, or if acting twice is
                // harmless (RFC 9110 §9.2.2).
                Err(ExchangeError::Write(_)) => Sent::Retry,
                Err(ExchangeError::Closed(_)) if slot.method().is_idempotent() => Sent::Retry,
                Err(e) => Sent::Failed(Box::new(e)),
            },
        }
    };
    let exchange = std::pin::pin!(exchange);
    let deadline = started + timeout;
    match ctx.take_response_timer(deadline) {
        Some(mut kept) => {
            let sent = timed(exchange, kept.as_mut(), started, timeout, progress).await;
            ctx.put_response_timer(kept);
            sent
        }
        None => {
            let own = std::pin::pin!(tokio::time::sleep_until(deadline));
            timed(exchange, own, started, timeout, progress).await
        }
    }
}

/// Runs `exchange` until it ends or no response head came within `timeout` of `started` or
/// of the last byte of the request body that went out (`progress`); `timer` is set to the
/// first deadline.
async fn timed<F: Future<Output = Sent>>(
    mut exchange: Pin<&mut F>,
    mut timer: Pin<&mut Sleep>,
    started: Instant,
    timeout: Duration,
    progress: Option<&Progress>,
) -> Sent {
    loop {
        tokio::select! {
            // The exchange first (no random pick per poll): the timer only matters once the
            // exchange is pending.
            biased;
            sent = exchange.as_mut() => return sent,
            () = timer.as_mut() => {
                let last = progress.map_or(started, Progress::last).max(started);
                if Instant::now() >= last + timeout {
                    return Sent::Timeout;
                }
                timer.as_mut().reset(last + timeout);
            }
        }
    }
}

/// What the response of a request is rewritten with.
struct Back<'a> {
    target: &'a TargetState,
    port: u16,
    /// The client's Host / `:authority`.
    client_host: Option<&'a HeaderValue>,
    extras: Option<&'a Expanded>,
}

/// Passes the target's response on (hop-by-hop headers out, `Via` in, then `Location`,
/// CORS headers and the route's `response_headers`), or sets up the tunnel of a WebSocket.
#[allow(clippy::too_many_arguments)]
fn respond(
    ctx: &Arc<ConnCtx>,
    route: &CompiledRoute,
    pr: &ProxyRoute,
    mut resp: Response<BackBody>,
    upstream: Upstream,
    mut guard: RequestGuard,
    ws: bool,
    client_upgrade: Option<OnUpgrade>,
    ext_connect: bool,
    back: &Back<'_>,
) -> Response<ResponseBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !ws {
        return error_response(
            guard,
            HttpErrorReason::BackendError,
            &"backend switched protocols unasked",
        );
    }
    let client_version = if ctx.h2.load(std::sync::atomic::Ordering::Relaxed) {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if ws && switching {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        parts.version = client_version;
        let Some(client_upgrade) = client_upgrade else {
            return error_response(
                guard,
                HttpErrorReason::BackendError,
                &"client connection cannot be upgraded",
            );
        };
        if ext_connect {
            // RFC 8441: the client gets a 200 on its stream; the HTTP/1.1 handshake headers
            // stay between us and the target.
            parts.status = StatusCode::OK;
            headers::remove_hop_by_hop(&mut parts.headers, false, false);
            parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
        } else {
            headers::remove_hop_by_hop(&mut parts.headers, true, false);
            parts.headers.insert(header::CONNECTION, UPGRADE);
        }
        if let Some(via) = &pr.via {
            append_via(&mut parts.headers, &via[headers::via_index(client_version)]);
        }
        let status = parts.status.as_u16();
        guard.status = status;
        guard.upstream = Some(upstream);
        let idle = pr.tunnel_idle;
        let name = route.name().to_owned();
        let client = ctx.client;
        let mut tunnels = ctx.tunnels.lock();
        let tunnels = tunnels.get_or_insert_with(tokio::task::JoinSet::new);
        while tunnels.try_join_next().is_some() {}
        tunnels.spawn(async move {
            crate::websocket::tunnel(client_upgrade, backend_upgrade, idle, guard, &name, client)
                .await;
        });
        return Response::from_parts(parts, ResponseBody::empty());
    }
    let (mut parts, body) = resp.into_parts();
    // The client gets our version, not the target's: an HTTP/1.0 target's answer must not
    // turn the client's kept-alive HTTP/1.1 connection into a one-shot HTTP/1.0 one.
    parts.version = client_version;
    // Empty when the fields come raw (then none is hop-by-hop, and the route changes none).
    if !parts.headers.is_empty() {
        headers::remove_hop_by_hop(&mut parts.headers, false, false);
    }
    if let Some(via) = &pr.via {
        append_via(&mut parts.headers, &via[headers::via_index(client_version)]);
    }
    if pr.rewrite_location
        && let Some(loc) = parts.headers.get(header::LOCATION)
    {
        let cx = crate::location::LocationContext {
            target_host: &back.target.host,
            target_port: back.port,
            client_host: back.client_host.and_then(|h| h.to_str().ok()),
            client_tls: ctx.is_tls(),
            inverse: pr.location_inverse.as_ref(),
        };
        if let Some(v) = crate::location::rewrite(loc, &cx) {
            parts.headers.insert(header::LOCATION, v);
        }
    }
    if let (Some(origin), Some(c)) = (
        back.extras.and_then(|e| e.cors.as_ref()),
        pr.policy.as_ref().and_then(|p| p.cors.as_ref()),
    ) {
        c.apply(&mut parts.headers, origin);
    }
    if let Some(ops) = &pr.response_ops {
        ops.apply(&mut parts.headers, back.extras.map_or(&[][..], |e| &e.response[..]));
    }
    let status = parts.status.as_u16();
    guard.upstream = Some(upstream);
    Response::from_parts(parts, ResponseBody::proxied(body).with_guard(guard, status))
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64) for an RFC 8441 request turned
/// into an HTTP/1.1 upgrade.
fn websocket_key() -> HeaderValue {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        h.write_u128(Instant::now().elapsed().as_nanos());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    HeaderValue::from_str(&base64(&bytes)).unwrap_or(TEXT_PLAIN)
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0u8; 16]).len(), 24);
    }
}

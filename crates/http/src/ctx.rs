//! What one client connection shares between its serve loop, its requests and its IO.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};

use http::HeaderValue;
use parking_lot::Mutex;
use smartproxy_routing::SendProxyProtocol;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::pool::Pool;
use crate::service::Inner;

/// Builds the PROXY header a backend connection starts with (`v1` or `v2`), for routes with
/// `send_proxy_protocol`. The engine knows the addresses; the HTTP layer only writes the bytes.
pub type ProxyHeaderFn = Arc<dyn Fn(SendProxyProtocol) -> Vec<u8> + Send + Sync>;

/// The TLS session of a connection the engine terminated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// Server name the client sent.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol (`h2` selects HTTP/2, `http/1.1` HTTP/1.1; none: detected).
    pub alpn: Option<Vec<u8>>,
    /// Negotiated TLS version, for routes with a `tls_version` criterion.
    pub version: Option<smartproxy_routing::TlsVersion>,
}

impl TlsInfo {
    /// A TLS session with this SNI and ALPN.
    pub fn new(sni: Option<String>, alpn: Option<Vec<u8>>) -> Self {
        Self { sni, alpn, version: None }
    }
}

/// What the engine knows about a client connection when it hands it to
/// [`HttpService::serve`](crate::HttpService::serve).
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The real client address (after a PROXY header).
    pub client: SocketAddr,
    /// Whether the immediate peer is trusted (`proxy_ips`): then `X-Forwarded-For` and
    /// `Forwarded` are appended to, otherwise replaced.
    pub peer_trusted: bool,
    /// The listening port (routing input).
    pub port: u16,
    /// The local address the client connected to (`{domain}` of redirect templates when the
    /// request has no Host).
    pub local: Option<SocketAddr>,
    /// Set when the engine terminated TLS.
    pub tls: Option<TlsInfo>,
    /// PROXY header source for routes that send one to their targets.
    pub proxy_header: Option<ProxyHeaderFn>,
    /// This connection's idle time between requests, instead of `http_keepalive_timeout`
    /// (the engine's keep-alive treatment of the connection's route; `Duration::MAX`: never).
    pub keepalive_timeout: Option<std::time::Duration>,
    /// For a client socket that registers with the reactor only when a read has to wait
    /// (the engine's plain HTTP connections): an HTTP/1.1 request with `Connection: close`
    /// is watched for the client leaving early only once it has run this long, so that one
    /// answered sooner never makes its socket register (an `epoll_ctl` to add it and one to
    /// remove it, two of the nine system calls of such a request). `None`: watched at once.
    pub close_watch_delay: Option<std::time::Duration>,
}

impl ConnInfo {
    /// A plain connection from `client` on `port`, peer not trusted.
    pub fn new(client: SocketAddr, port: u16) -> Self {
        Self {
            client,
            peer_trusted: false,
            port,
            local: None,
            tls: None,
            proxy_header: None,
            keepalive_timeout: None,
            close_watch_delay: None,
        }
    }

    /// Marks the immediate peer as trusted (`proxy_ips`).
    pub fn trusted(mut self, v: bool) -> Self {
        self.peer_trusted = v;
        self
    }

    /// Sets the local address.
    pub fn with_local(mut self, local: SocketAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Marks the connection as TLS-terminated.
    pub fn with_tls(mut self, tls: TlsInfo) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the PROXY header source.
    pub fn with_proxy_header(mut self, f: ProxyHeaderFn) -> Self {
        self.proxy_header = Some(f);
        self
    }

    /// Sets this connection's idle time between requests (`Duration::MAX`: never), instead
    /// of the settings' `http_keepalive_timeout`.
    pub fn with_keepalive_timeout(mut self, d: std::time::Duration) -> Self {
        self.keepalive_timeout = Some(d);
        self
    }

    /// Sets [`Self::close_watch_delay`].
    pub fn with_close_watch_delay(mut self, d: std::time::Duration) -> Self {
        self.close_watch_delay = Some(d);
        self
    }
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("client", &self.client)
            .field("peer_trusted", &self.peer_trusted)
            .field("port", &self.port)
            .field("local", &self.local)
            .field("tls", &self.tls)
            .field("proxy_header", &self.proxy_header.is_some())
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("close_watch_delay", &self.close_watch_delay)
            .finish()
    }
}

/// Timing and request state of a connection, shared by the serve loop (timers), the requests
/// (in flight) and the IO wrapper (first byte of a head). Relaxed atomics: they are written
/// and read from the connection's own task almost always.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests being served (responses not finished, open tunnels).
    pub(crate) in_flight: AtomicU32,
    /// When the connection last became idle (nanoseconds since it started).
    pub(crate) idle_since: AtomicU64,
    /// When the first byte of the current request head arrived (ns since start, plus 1;
    /// 0 = none). HTTP/1 only.
    pub(crate) head_started: AtomicU64,
    /// HTTP/1: no head was delivered since the last response was finished and flushed, so
    /// anything hyper writes now is its automatic error answer to a bad head.
    pub(crate) expect_head: AtomicBool,
    /// A response finished; the next flush makes the connection wait for a head.
    pub(crate) response_done: AtomicBool,
    /// The serve loop waits for the last request to finish.
    pub(crate) closing: AtomicBool,
    /// Requests seen.
    pub(crate) requests: AtomicU64,
    /// Status of the automatic answer to a bad head (400, 431, 414), 0 if none.
    pub(crate) auto_status: AtomicU16,
}

/// One client connection.
pub(crate) struct ConnCtx {
    pub(crate) service: Arc<Inner>,
    pub(crate) client: SocketAddr,
    /// The client address as an `X-Forwarded-For` element.
    pub(crate) xff: HeaderValue,
    pub(crate) peer_trusted: bool,
    pub(crate) port: u16,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) proxy_header: Option<ProxyHeaderFn>,
    /// [`ConnInfo::close_watch_delay`].
    pub(crate) close_watch_delay: Option<std::time::Duration>,
    pub(crate) start: Instant,
    pub(crate) state: ConnState,
    pub(crate) drained: Notify,
    /// HTTP/2 towards the client (labels the access log).
    pub(crate) h2: AtomicBool,
    /// Backend connections that carry this client's PROXY header: never shared with another
    /// client, dropped with the connection.
    pub(crate) private_pools: Mutex<Vec<(usize, Arc<Pool>)>>,
    /// Upgraded connections (WebSocket) being relayed; aborted if the connection is dropped.
    /// Created with the first one.
    pub(crate) tunnels: Mutex<Option<JoinSet<()>>>,
    /// The last `Authorization` value a `basic_auth` route accepted on this connection
    /// (crate::policy): the same value again skips the cache lookup and its hash.
    pub(crate) basic_memo: crate::policy::BasicMemo,
    /// The response timer of an HTTP/1 connection's requests, kept between them: set again
    /// to a later deadline, a registered timer only moves its expiry (one atomic operation),
    /// where a timer per request registers with the time driver and deregisters (a lock
    /// each). HTTP/2 streams (concurrent, each in its own task, whose waker a kept timer
    /// would hold on to) make their own.
    response_timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ConnCtx {
    pub(crate) fn new(service: Arc<Inner>, info: ConnInfo) -> Self {
        let ip = smartproxy_routing::canonical_ip(info.client.ip());
        // An address is ASCII: the conversion cannot fail.
        let xff = HeaderValue::from_maybe_shared(ip_text(ip))
            .unwrap_or(HeaderValue::from_static("unknown"));
        let state = ConnState::default();
        // The first head counts from accept.
        state.head_started.store(1, Ordering::Relaxed);
        state.expect_head.store(true, Ordering::Relaxed);
        Self {
            service,
            client: SocketAddr::new(ip, info.client.port()),
            xff,
            peer_trusted: info.peer_trusted,
            port: info.port,
            local: info.local,
            tls: info.tls,
            proxy_header: info.proxy_header,
            close_watch_delay: info.close_watch_delay,
            start: Instant::now(),
            state,
            drained: Notify::new(),
            h2: AtomicBool::new(false),
            private_pools: Mutex::new(Vec::new()),
            tunnels: Mutex::new(None),
            basic_memo: crate::policy::BasicMemo::default(),
            response_timer: Mutex::new(None),
        }
    }

    /// The connection's response timer set to `deadline` (HTTP/1; `None` for HTTP/2, or
    /// while another request has it: the request then makes its own).
    pub(crate) fn take_response_timer(&self, deadline: Instant) -> Option<Pin<Box<Sleep>>> {
        if self.h2.load(Ordering::Relaxed) {
            return None;
        }
        let kept = self.response_timer.lock().take();
        Some(match kept {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            // The first request of the connection: made once, kept between requests.
            None => Box::pin(tokio::time::sleep_until(deadline)),
        })
    }

    /// Keeps a response timer for the connection's next request (HTTP/1).
    pub(crate) fn put_response_timer(&self, t: Pin<Box<Sleep>>) {
        if self.h2.load(Ordering::Relaxed) {
            return;
        }
        let mut slot = self.response_timer.lock();
        if slot.is_none() {
            *slot = Some(t);
        }
    }

    /// Nanoseconds since the connection started (tokio's clock: paused in tests).
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A request head was delivered: the connection is busy.
    pub(crate) fn request_started(&self) {
        let s = &self.state;
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.head_started.store(0, Ordering::Relaxed);
        s.expect_head.store(false, Ordering::Relaxed);
    }

    /// A response finished (or a tunnel closed) at `now`.
    pub(crate) fn request_finished(&self, now: Instant) {
        let s = &self.state;
        if s.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = u64::try_from(now.saturating_duration_since(self.start).as_nanos())
                .unwrap_or(u64::MAX);
            s.idle_since.store(since, Ordering::Relaxed);
            s.response_done.store(true, Ordering::Relaxed);
            if s.closing.load(Ordering::Acquire) {
                self.drained.notify_one();
            }
        }
    }
}

/// The text of `ip` for `X-Forwarded-For`, once per connection: an IPv4 address written
/// digit by digit (`Display` goes through the formatter's padding support, about twenty
/// times the work), IPv6 by `Display`.
fn ip_text(ip: std::net::IpAddr) -> bytes::Bytes {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
            bytes::Bytes::from(out)
        }
        std::net::IpAddr::V6(v6) => bytes::Bytes::from(v6.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::ip_text;

    #[test]
    fn ip_texts_are_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.9",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(&ip_text(addr)[..], addr.to_string().as_bytes());
        }
        for n in (0..=u32::MAX).step_by(16_777_259) {
            let addr = std::net::IpAddr::V4(n.into());
            assert_eq!(&ip_text(addr)[..], addr.to_string().as_bytes());
        }
    }
}

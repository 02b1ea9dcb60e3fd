//! Test harness: the HTTP layer on a real loopback listener (accept, optional rustls
//! termination, then `HttpService::serve`, which is the code path the engine uses), hyper
//! backends, real clients (curl, h2load, nginx), certificates made with rcgen.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use smartproxy_http::{
    AccessLog, ConnInfo, Credentials, HttpConfig, HttpService, HttpSettings, ServeOutcome, TlsInfo,
};
use smartproxy_metrics::{Metrics, MetricsConfig};
use smartproxy_routing::{RouteConfig, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Fails naming the missing program and its Debian package.
pub(crate) fn require(cmd: &str, package: &str) -> String {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{cmd}` is required by this test and is missing: apt-get install {package} \
         (cargo xtask deps installs it)"
    );
    cmd.to_owned()
}

/// Polls `f` every 10 ms until it is true; fails after 10 s naming `what`.
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `[[routes]]` of a TOML document.
pub(crate) fn route_configs(doc: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let f: F = toml::from_str(doc).unwrap_or_else(|e| panic!("routes: {e}\n{doc}"));
    f.routes
}

/// Routes from a TOML `[[routes]]` document.
pub(crate) fn routes(doc: &str) -> Arc<RouteTable> {
    Arc::new(RouteTable::compile(route_configs(doc)).unwrap_or_else(|e| panic!("routes: {e:?}")))
}

/// The credentials the routes of a document name (their files read now, as the engine does
/// at load and reload).
pub(crate) fn credentials(doc: &str) -> Arc<Credentials> {
    Arc::new(
        Credentials::load(&route_configs(doc)).unwrap_or_else(|e| panic!("credentials: {e:?}")),
    )
}

// ----- PKI -----------------------------------------------------------------------------------

/// A throwaway CA; leaves are written as PEM files into a temporary directory.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

pub(crate) struct Leaf {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "smartproxy-http test CA");
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    pub(crate) fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub(crate) fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.ca.der().clone()).unwrap();
        r
    }

    pub(crate) fn leaf(&self, name: &str, dns: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, dns[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// A rustls server config for `leaf` offering these ALPN protocols.
    pub(crate) fn server_config(&self, leaf: &Leaf, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&leaf.cert).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let mut sc = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        sc.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(sc)
    }

    pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ----- the proxy -----------------------------------------------------------------------------

/// How the harness hands connections to the HTTP layer.
#[derive(Default)]
pub(crate) struct Opts {
    pub(crate) settings: Option<HttpSettings>,
    /// Terminate TLS with this config (ALPN as configured) before `serve`.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Pretend the engine read a PROXY header with this client address from a trusted peer.
    pub(crate) real_client: Option<SocketAddr>,
    pub(crate) access_log: bool,
    pub(crate) upstream_tls: Option<Arc<dyn smartproxy_http::UpstreamTls>>,
    /// Give the layer a PROXY header source (v1 text from the real client address).
    pub(crate) proxy_header: bool,
    pub(crate) tunnel_idle: Option<Duration>,
    pub(crate) connect_timeout: Option<Duration>,
    /// `ConnInfo::with_close_watch_delay` for every connection.
    pub(crate) close_watch_delay: Option<Duration>,
}

pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) service: HttpService,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access: Arc<Mutex<Vec<String>>>,
    pub(crate) outcomes: Arc<Mutex<Vec<ServeOutcome>>>,
    shutdown: watch::Sender<bool>,
    opts: Arc<OptsShared>,
}

struct OptsShared {
    settings: HttpSettings,
    upstream_tls: Option<Arc<dyn smartproxy_http::UpstreamTls>>,
    tunnel_idle: Option<Duration>,
    connect_timeout: Option<Duration>,
}

impl Proxy {
    /// Binds 127.0.0.1:0, then builds the routes for that port with `routes(port)`.
    pub(crate) async fn start(routes_for: impl FnOnce(u16) -> String, opts: Opts) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = routes_for(addr.port());
        let table = routes(&doc);
        let creds = credentials(&doc);
        let shared = Arc::new(OptsShared {
            settings: opts.settings.clone().unwrap_or_default(),
            upstream_tls: opts.upstream_tls.clone(),
            tunnel_idle: opts.tunnel_idle,
            connect_timeout: opts.connect_timeout,
        });
        let metrics = Metrics::new(MetricsConfig::default(), 0);
        let access = Arc::new(Mutex::new(Vec::new()));
        let sink: Option<Arc<dyn AccessLog>> = if opts.access_log {
            let a = Arc::clone(&access);
            Some(Arc::new(move |line: &str| a.lock().push(line.to_owned())))
        } else {
            None
        };
        let service = HttpService::with_access_log(
            config(&shared, table, creds),
            Some(Arc::clone(&metrics)),
            sink,
        );
        let (shutdown, rx) = watch::channel(false);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let svc = service.clone();
        let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let real = opts.real_client;
        let proxy_header = opts.proxy_header;
        let close_watch_delay = opts.close_watch_delay;
        let outs = Arc::clone(&outcomes);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { return };
                tcp.set_nodelay(true).unwrap();
                let svc = svc.clone();
                let tls = tls.clone();
                let mut rx = rx.clone();
                let outs = Arc::clone(&outs);
                tokio::spawn(async move {
                    let client = real.unwrap_or(peer);
                    let mut info =
                        ConnInfo::new(client, addr.port()).with_local(addr).trusted(real.is_some());
                    if let Some(d) = close_watch_delay {
                        info = info.with_close_watch_delay(d);
                    }
                    if proxy_header {
                        info = info.with_proxy_header(Arc::new(move |_v| {
                            let (src, dst) = (client, addr);
                            format!(
                                "PROXY TCP4 {} {} {} {}\r\n",
                                src.ip(),
                                dst.ip(),
                                src.port(),
                                dst.port()
                            )
                            .into_bytes()
                        }));
                    }
                    let stop = async move {
                        let _ = rx.wait_for(|v| *v).await;
                    };
                    let out = match tls {
                        None => svc.serve(tcp, info, stop).await,
                        Some(acceptor) => {
                            let Ok(s) = acceptor.accept(tcp).await else { return };
                            let (_, conn) = s.get_ref();
                            let t = TlsInfo::new(
                                conn.server_name().map(str::to_owned),
                                conn.alpn_protocol().map(<[u8]>::to_vec),
                            );
                            svc.serve(s, info.with_tls(t), stop).await
                        }
                    };
                    outs.lock().push(out);
                });
            }
        });
        Proxy { addr, service, metrics, access, outcomes, shutdown, opts: shared }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    /// Swaps in new routes (same settings); their credential files are read again.
    pub(crate) fn reload(&self, doc: &str) {
        self.service.reload(config(&self.opts, routes(doc), credentials(doc)));
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

fn config(o: &OptsShared, table: Arc<RouteTable>, creds: Arc<Credentials>) -> HttpConfig {
    let mut c = HttpConfig::new(table).with_settings(o.settings.clone()).with_credentials(creds);
    if let Some(t) = &o.upstream_tls {
        c = c.with_upstream_tls(Arc::clone(t));
    }
    if let Some(d) = o.tunnel_idle {
        c = c.with_tunnel_inactivity_timeout(d);
    }
    if let Some(d) = o.connect_timeout {
        c = c.with_connect_timeout(d);
    }
    c
}

// ----- backends ------------------------------------------------------------------------------

pub(crate) type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).boxed()
}

/// A hyper backend on 127.0.0.1:0.
///
/// Paths: anything -> JSON of what arrived (`backend`, `method`, `path`, `version`, `headers`,
/// `body_len`, `conn`: the connection's number on this backend, `proxy`: the PROXY line it
/// started with); `/bytes/N` -> N bytes streamed in 64 KiB chunks; `/upload` -> the body
/// length, read as it streams; `/sleep` -> never answers; `/trailers` -> a body and trailers;
/// `/ws` -> a WebSocket echo; `/status/N` -> status N; `/delay/MS` -> the JSON after MS ms.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    pub(crate) name: String,
    /// TCP connections accepted.
    pub(crate) accepted: Arc<AtomicUsize>,
    /// Requests served.
    pub(crate) requests: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    H1,
    H2c,
}

pub(crate) struct BackendOpts {
    pub(crate) proto: Proto,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Expect a PROXY v1 line before HTTP.
    pub(crate) proxy_header: bool,
}

impl Backend {
    pub(crate) async fn h1(name: &str) -> Backend {
        Self::start(name, BackendOpts { proto: Proto::H1, tls: None, proxy_header: false }).await
    }

    pub(crate) async fn h2c(name: &str) -> Backend {
        Self::start(name, BackendOpts { proto: Proto::H2c, tls: None, proxy_header: false }).await
    }

    pub(crate) async fn start(name: &str, o: BackendOpts) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (acc, reqs) = (Arc::clone(&accepted), Arc::clone(&requests));
        let name_s = name.to_owned();
        let tls = o.tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = l.accept().await else { return };
                let conn_no = acc.fetch_add(1, Ordering::SeqCst) + 1;
                let reqs = Arc::clone(&reqs);
                let name = name_s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut proxy_line = String::new();
                    if o.proxy_header {
                        // Byte by byte up to the line end: nothing of the HTTP stream is read.
                        let mut b = [0u8; 1];
                        while !proxy_line.ends_with("\r\n") && proxy_line.len() < 120 {
                            if tcp.read_exact(&mut b).await.is_err() {
                                return;
                            }
                            proxy_line.push(char::from(b[0]));
                        }
                    }
                    let proxy_line = Arc::new(proxy_line.trim_end().to_owned());
                    let svc = hyper::service::service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        backend_handle(req, name.clone(), conn_no, Arc::clone(&proxy_line))
                    });
                    match tls {
                        Some(acceptor) => {
                            let Ok(s) = acceptor.accept(tcp).await else { return };
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_backend(
                                TokioIo::new(s),
                                svc,
                                if h2 { Proto::H2c } else { Proto::H1 },
                            )
                            .await;
                        }
                        None => serve_backend(TokioIo::new(tcp), svc, o.proto).await,
                    }
                });
            }
        });
        Backend { addr, name: name.to_owned(), accepted, requests }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve_backend<I, S>(io: I, svc: S, proto: Proto)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = BoxBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match proto {
        Proto::H1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
                .await;
        }
        Proto::H2c => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .serve_connection(io, svc)
                .await;
        }
    }
}

async fn backend_handle(
    mut req: Request<Incoming>,
    name: String,
    conn: usize,
    proxy_line: Arc<String>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let take = left.min(chunk.len() as u64);
                Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..take as usize))), left - take))
            }
        });
        let mut resp = Response::new(StreamBody::new(stream).boxed());
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, n.into());
        return Ok(resp);
    }
    if path == "/sleep" {
        std::future::pending::<()>().await;
    }
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut resp = Response::new(full(format!("status {code}\n")));
        *resp.status_mut() =
            code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::OK);
        return Ok(resp);
    }
    if path == "/ws" {
        return Ok(websocket_echo(&mut req));
    }
    // A redirect to wherever the client asks (`X-Location`), as an application would send.
    if let Some(loc) = req.headers().get("x-location").cloned() {
        let mut resp = Response::new(full("moved\n"));
        *resp.status_mut() = StatusCode::FOUND;
        resp.headers_mut().insert(http::header::LOCATION, loc);
        return Ok(resp);
    }
    if path == "/trailers" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers(trailers)),
        ];
        return Ok(Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed()));
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(v.to_str().unwrap_or("?").to_owned());
    }
    // The body, counted as it streams (a 1 GiB upload is never held).
    let mut body = req.into_body();
    let mut len = 0u64;
    let mut trailers = BTreeMap::new();
    while let Some(f) = body.frame().await {
        let Ok(f) = f else { break };
        if let Some(d) = f.data_ref() {
            len += d.len() as u64;
        }
        if let Some(t) = f.trailers_ref() {
            for (k, v) in t {
                trailers.insert(k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned());
            }
        }
    }
    let doc = serde_json::json!({
        "backend": name,
        "method": method,
        "path": path,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": len,
        "trailers": trailers,
        "conn": conn,
        "proxy": *proxy_line,
    });
    let mut resp = Response::new(full(doc.to_string()));
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut().insert("x-backend", name.parse().unwrap());
    // A hop-by-hop header the proxy must drop.
    resp.headers_mut().insert("keep-alive", "timeout=30".parse().unwrap());
    Ok(resp)
}

/// Answers a WebSocket upgrade (HTTP/1.1 or RFC 8441) and echoes messages.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<BoxBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let h2 = req.method() == http::Method::CONNECT;
    let key = req.headers().get("sec-websocket-key").cloned();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
            if ws.send(m).await.is_err() {
                break;
            }
        }
    });
    if h2 {
        return Response::new(full(""));
    }
    let accept = key
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

// ----- clients -------------------------------------------------------------------------------

/// Runs curl with `args` (plus `-sS` and a max time); returns its output.
pub(crate) async fn curl(args: &[&str]) -> Output {
    let bin = require("curl", "curl");
    let mut c = tokio::process::Command::new(bin);
    c.args(["-sS", "--max-time", "20"]).args(args).stdin(Stdio::null());
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .unwrap_or_else(|_| panic!("curl {args:?} did not finish"))
        .unwrap_or_else(|e| panic!("curl: {e}"))
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A raw exchange: writes `req`, reads until the peer closes (or 10 s).
pub(crate) async fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The backends' JSON documents in curl's output (each on a line of its own).
pub(crate) fn json_docs(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// A hyper HTTP/1.1 or HTTP/2 (prior knowledge) client connection to `addr`.
pub(crate) async fn h2_client(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

pub(crate) async fn h1_client(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) =
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    tx
}

pub(crate) fn empty() -> BoxBody {
    full("")
}

pub(crate) fn body(s: impl Into<Bytes>) -> BoxBody {
    full(s)
}

/// The response body as a string.
pub(crate) async fn text(resp: Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

// ----- logs ----------------------------------------------------------------------------------

static LOGS: Mutex<String> = Mutex::new(String::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of the process (once per test binary).
pub(crate) fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("smartproxy_http=debug"))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .try_init();
    });
}

/// Captured log lines that contain `needle`.
pub(crate) fn log_lines(needle: &str) -> Vec<String> {
    LOGS.lock().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

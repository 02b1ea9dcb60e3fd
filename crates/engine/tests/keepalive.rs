//! Long-lived connections (issue 20): the keep-alive treatments on plain, TLS-terminated and
//! handler routes with real sockets and bounded time assertions (closed no earlier than the
//! timeout and no later than the timeout plus a margin), `immortal` under shutdown and under a
//! lifetime, route-level overrides, TCP keepalive probes on both sockets (read back from the
//! kernel's `/proc/net/tcp`), and the close reasons in the metrics.
//!
//! The vanished peer (probes unanswered) and the 1,000 randomized closes run through the binary
//! in `tests/tests/keepalive.rs` at the workspace root.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use smartproxy_engine::Engine;
use smartproxy_metrics::CloseReason;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How late a close may come after its timeout: the inactivity check runs every quarter of the
/// timeout, plus scheduling on a loaded 2-core CI machine.
const MARGIN: Duration = Duration::from_millis(900);
/// How early: the proxy saw the last byte a little before the client did.
const EARLY: Duration = Duration::from_millis(30);

/// A self-signed certificate for `localhost`, its files, and a client trusting it.
struct Tls {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn new() -> Self {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self { _dir: dir, cert, key, client: Arc::new(client) }
    }
}

/// One port of each kind: a plain forward to an echo backend, a TLS-terminating forward to
/// it, and the `echo` socket handler; `extra` goes into every route's table (e.g. a
/// `timeouts = ...` line) and `defaults` into `[defaults]`.
struct Kinds {
    engine: Engine,
    plain: u16,
    tls: u16,
    handler: u16,
    tls_files: Tls,
    _backend: tokio::task::JoinHandle<()>,
}

async fn kinds(defaults: &str, route_extra: &str) -> Kinds {
    let (backend, task) = echo_backend().await;
    let tls_files = Tls::new();
    let b = backend.port();
    let toml = |[plain, tls, handler]: [u16; 3]| {
        format!(
            r#"[defaults]
{defaults}
[[routes]]
name = "plain"
match = {{ ports = [{plain}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {b} }}] }}
{route_extra}
[[routes]]
name = "tls"
match = {{ ports = [{tls}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {b} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{}", key = "{}" }} }} }}
{route_extra}
[[routes]]
name = "handler"
match = {{ ports = [{handler}] }}
action = {{ type = "socket-handler", handler = "echo" }}
{route_extra}
"#,
            tls_files.cert.display(),
            tls_files.key.display()
        )
    };
    let (engine, [plain, tls, handler]) = engine_on(toml).await;
    Kinds { engine, plain, tls, handler, tls_files, _backend: task }
}

/// A client stream of any kind.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Kinds {
    /// Connected clients on the three ports, each after one echoed round trip (the last
    /// activity); with the instant that round trip ended.
    async fn clients(&self) -> Vec<(&'static str, Box<dyn Stream>, Instant)> {
        let mut out: Vec<(&'static str, Box<dyn Stream>)> = Vec::new();
        out.push(("plain", Box::new(connect(self.plain).await)));
        let tcp = connect(self.tls).await;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls_files.client))
            .connect(name, tcp)
            .await
            .unwrap();
        out.push(("tls", Box::new(tls)));
        out.push(("handler", Box::new(connect(self.handler).await)));
        let mut ready = Vec::new();
        for (kind, mut s) in out {
            roundtrip(&mut *s, kind).await;
            ready.push((kind, s, Instant::now()));
        }
        ready
    }

    fn closed(&self, r: CloseReason) -> u64 {
        self.engine.metrics().unwrap().closed_count(r)
    }
}

async fn roundtrip(s: &mut dyn Stream, kind: &str) {
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .unwrap_or_else(|_| panic!("{kind}: no echo"))
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert_eq!(&b, b"ping", "{kind}");
}

/// Waits (at most `limit`) for the proxy to close `s`: EOF or an error. Returns when it closed,
/// or `None` if it was still open at `limit`.
async fn closed_at(s: &mut dyn Stream, limit: Duration) -> Option<Instant> {
    let mut b = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut b)).await {
        Err(_) => None,
        Ok(Ok(0)) | Ok(Err(_)) => Some(Instant::now()),
        Ok(Ok(n)) => panic!("unexpected {n} bytes"),
    }
}

/// Every client closed no earlier than `timeout` after its last activity and no later than
/// `timeout + MARGIN`.
async fn all_close_after(
    clients: Vec<(&'static str, Box<dyn Stream>, Instant)>,
    timeout: Duration,
) {
    let waits = clients.into_iter().map(|(kind, mut s, last)| async move {
        let at = closed_at(&mut *s, timeout + MARGIN + Duration::from_secs(2)).await;
        let at = at.unwrap_or_else(|| panic!("{kind}: still open {timeout:?} + 2 s after"));
        let after = at - last;
        assert!(
            after + EARLY >= timeout && after <= timeout + MARGIN,
            "{kind}: closed {after:?} after the last byte, expected {timeout:?} .. {:?}",
            timeout + MARGIN
        );
        (kind, after)
    });
    let got = futures_join_all(waits).await;
    eprintln!("closed after: {got:?}");
}

/// `futures::future::join_all` without the dependency: the futures run concurrently.
async fn futures_join_all<F: Future>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in set.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test]
async fn standard_closes_idle_connections_of_every_kind_at_the_inactivity_timeout() {
    let k = kinds("inactivity_timeout = \"400ms\"", "").await;
    let clients = k.clients().await;
    all_close_after(clients, Duration::from_millis(400)).await;
    wait_eq("3 closes by inactivity", || k.closed(CloseReason::Inactivity), 3).await;
    settle(&k.engine).await;
}

#[tokio::test]
async fn extended_multiplies_the_inactivity_timeout_on_every_kind() {
    let k = kinds(
        "inactivity_timeout = \"300ms\"\nkeepalive_treatment = \"extended\"\nkeepalive_inactivity_multiplier = 3",
        "",
    )
    .await;
    let clients = k.clients().await;
    all_close_after(clients, Duration::from_millis(900)).await;
    wait_eq("3 closes by inactivity", || k.closed(CloseReason::Inactivity), 3).await;
}

#[tokio::test]
async fn immortal_connections_of_every_kind_outlive_many_inactivity_timeouts() {
    let k = kinds("inactivity_timeout = \"200ms\"\nkeepalive_treatment = \"immortal\"", "").await;
    let clients = k.clients().await;
    // 1.5 s idle: seven inactivity timeouts.
    let waits = clients.into_iter().map(|(kind, mut s, _)| async move {
        assert!(
            closed_at(&mut *s, Duration::from_millis(1500)).await.is_none(),
            "{kind}: an immortal connection was closed while idle"
        );
        roundtrip(&mut *s, kind).await;
        s
    });
    let clients = futures_join_all(waits).await;
    assert_eq!(k.engine.stats().active_connections, 3);
    assert_eq!(k.closed(CloseReason::Inactivity), 0);
    drop(clients);
    settle(&k.engine).await;
    wait_eq("3 closes by peer", || k.closed(CloseReason::Peer), 3).await;
}

#[tokio::test]
async fn immortal_connections_close_at_shutdown() {
    let k = kinds("inactivity_timeout = \"200ms\"\nkeepalive_treatment = \"immortal\"", "").await;
    let clients = k.clients().await;
    let summary = k.engine.shutdown(Duration::from_millis(300)).await;
    assert_eq!(summary.forced, 3);
    for (kind, mut s, _) in clients {
        assert!(closed_at(&mut *s, Duration::from_secs(5)).await.is_some(), "{kind}");
    }
    assert_eq!(k.engine.stats().active_connections, 0);
    assert_eq!(k.closed(CloseReason::Shutdown), 3);
}

#[tokio::test]
async fn immortal_connections_close_at_a_route_max_lifetime() {
    // The lifetime counts from the accept; the clients connect and do their round trip right
    // after `accepted`.
    let k = kinds(
        "inactivity_timeout = \"200ms\"",
        "timeouts = { keepalive_treatment = \"immortal\", max_lifetime = \"1500ms\" }",
    )
    .await;
    let accepted = Instant::now();
    let clients = k.clients().await;
    let waits = clients.into_iter().map(|(kind, mut s, _)| async move {
        let at = closed_at(&mut *s, Duration::from_secs(5)).await;
        let at = at.unwrap_or_else(|| panic!("{kind}: not closed at its lifetime"));
        let life = at - accepted;
        assert!(
            // Late by up to 2 s: the lifetime check is periodic and a loaded 2-core CI machine
            // delays timers (3.1 s measured once while four builds ran); never closing is
            // caught by the 5 s wait above.
            life + EARLY >= Duration::from_millis(1500) && life <= Duration::from_millis(3500),
            "{kind}: closed {life:?} after the accept, lifetime 1.5 s"
        );
    });
    futures_join_all(waits).await;
    wait_eq("3 closes by lifetime", || k.closed(CloseReason::Lifetime), 3).await;
    assert_eq!(k.closed(CloseReason::Inactivity), 0);
}

#[tokio::test]
async fn immortal_obeys_a_lifetime_written_in_defaults_only() {
    // Written: obeyed.
    let k = kinds(
        "inactivity_timeout = \"100ms\"\nkeepalive_treatment = \"immortal\"\nmax_connection_lifetime = \"800ms\"",
        "",
    )
    .await;
    let accepted = Instant::now();
    let mut clients = k.clients().await;
    let (kind, s, _) = &mut clients[0];
    let at = closed_at(&mut **s, Duration::from_secs(5)).await.expect("closed at 800 ms");
    assert!(at - accepted + EARLY >= Duration::from_millis(800), "{kind}");
    assert!(at - accepted <= Duration::from_millis(1700), "{kind}: {:?}", at - accepted);
    // The effective values say so too.
    let t = k.engine.config().route_timeouts();
    assert_eq!(t[0].1.max_lifetime, Some(Duration::from_millis(800)));
    assert_eq!(t[0].1.inactivity, None);
    // Not written: no lifetime at all.
    let cfg = smartproxy_engine::Config::from_str(
        "[defaults]\nkeepalive_treatment = \"immortal\"\n[[routes]]\nmatch = { ports = [1] }\naction = { type = \"socket-handler\", handler = \"echo\" }\n",
        smartproxy_engine::Format::Toml,
    )
    .unwrap();
    assert_eq!(cfg.route_timeouts()[0].1.max_lifetime, None);
}

#[tokio::test]
async fn route_timeouts_override_the_defaults() {
    let (backend, _b) = echo_backend().await;
    let bp = backend.port();
    let (engine, [a, b, c]) = engine_on(|[a, b, c]| format!(
        r#"[defaults]
inactivity_timeout = "30s"
[[routes]]
name = "short"
match = {{ ports = [{a}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}] }}
timeouts = {{ inactivity = "300ms" }}
[[routes]]
name = "extended"
match = {{ ports = [{b}] }}
action = {{ type = "socket-handler", handler = "echo" }}
timeouts = {{ inactivity = "250ms", keepalive_treatment = "extended", keepalive_inactivity_multiplier = 2 }}
[[routes]]
name = "defaults"
match = {{ ports = [{c}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}] }}
"#
    )).await;
    let mut clients: Vec<(&'static str, Box<dyn Stream>, Instant)> = Vec::new();
    for (kind, port) in [("short", a), ("extended", b)] {
        let mut s: Box<dyn Stream> = Box::new(connect(port).await);
        roundtrip(&mut *s, kind).await;
        clients.push((kind, s, Instant::now()));
    }
    let mut long: Box<dyn Stream> = Box::new(connect(c).await);
    roundtrip(&mut *long, "defaults").await;
    let (short, ext) = (clients.remove(0), clients.remove(0));
    let ((), ()) = tokio::join!(
        all_close_after(vec![short], Duration::from_millis(300)),
        all_close_after(vec![ext], Duration::from_millis(500)),
    );
    // The route on the defaults (30 s) is still open.
    roundtrip(&mut *long, "defaults").await;
    let t = engine.config().route_timeouts();
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["short", "extended", "defaults"]);
    assert_eq!(t[0].1.inactivity, Some(Duration::from_millis(300)));
    assert_eq!(t[1].1.inactivity, Some(Duration::from_millis(500)));
    assert_eq!(t[2].1.inactivity, Some(Duration::from_secs(30)));
}

/// A TCP socket of the kernel's table (`/proc/net/tcp`): its addresses and its timer.
#[derive(Debug)]
struct KernelSocket {
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    /// 2 when the keepalive timer runs.
    timer: u8,
    /// Clock ticks (1/100 s) until the timer fires.
    when: u64,
}

/// The established TCP sockets (state `01`) of this network namespace.
fn kernel_sockets() -> Vec<KernelSocket> {
    fn addr(s: &str) -> std::net::SocketAddr {
        let (ip, port) = s.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap();
        // The address is in network order, printed as a host-order (little-endian) word.
        let ip = std::net::Ipv4Addr::from(ip.swap_bytes());
        std::net::SocketAddr::new(ip.into(), u16::from_str_radix(port, 16).unwrap())
    }
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&"01") {
                return None;
            }
            let (timer, when) = f.get(5)?.split_once(':')?;
            Some(KernelSocket {
                local: addr(f[1]),
                remote: addr(f[2]),
                timer: timer.parse().ok()?,
                when: u64::from_str_radix(when, 16).ok()?,
            })
        })
        .collect()
}

#[tokio::test]
async fn tcp_keepalive_probes_run_on_the_client_and_backend_sockets() {
    let (backend, _b) = echo_backend().await;
    let bp = backend.port();
    let (engine, [on, off, handler]) = engine_on(|[on, off, handler]| {
        format!(
            r#"[defaults]
tcp_keepalive = {{ idle = "37s", interval = "5s", count = 3 }}
[[routes]]
match = {{ ports = [{on}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}] }}
[[routes]]
match = {{ ports = [{off}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {bp} }}] }}
timeouts = {{ tcp_keepalive = false }}
[[routes]]
match = {{ ports = [{handler}] }}
action = {{ type = "socket-handler", handler = "echo" }}
timeouts = {{ tcp_keepalive = {{ idle = "23s" }} }}
"#
        )
    })
    .await;
    let mut c_on = connect(on).await;
    let mut c_off = connect(off).await;
    let mut c_h = connect(handler).await;
    for (s, kind) in [(&mut c_on, "on"), (&mut c_off, "off"), (&mut c_h, "handler")] {
        roundtrip(s, kind).await;
    }
    // A plain connection's backend gets its probes once the connection is a second old
    // (KEEPALIVE_AFTER): wait for the kernel to show them, at most 10 s.
    let started = std::time::Instant::now();
    let sockets = loop {
        let sockets = kernel_sockets();
        if sockets.iter().any(|s| s.remote == backend && s.timer == 2) {
            break sockets;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no backend socket of the `on` route got keepalive probes: {sockets:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The proxy's accepted socket of a client: local = the proxy port, remote = the client.
    let accepted = |c: &tokio::net::TcpStream| {
        let me = c.local_addr().unwrap();
        sockets.iter().find(|s| s.remote == me && s.local == c.peer_addr().unwrap())
    };
    // The proxy's backend sockets: remote = the backend (the echo backend's own sockets have
    // it as their local address).
    let to_backend: Vec<&KernelSocket> = sockets.iter().filter(|s| s.remote == backend).collect();
    let on_side = accepted(&c_on).expect("the proxy's socket of the `on` client");
    assert_eq!(on_side.timer, 2, "keepalive timer on the client side: {on_side:?}");
    assert!((3000..=3700).contains(&on_side.when), "idle 37 s: {on_side:?}");
    let off_side = accepted(&c_off).expect("the proxy's socket of the `off` client");
    assert_eq!(off_side.timer, 0, "no timer without keepalive: {off_side:?}");
    let h_side = accepted(&c_h).expect("the proxy's socket of the handler client");
    assert_eq!(h_side.timer, 2, "{h_side:?}");
    assert!((1600..=2300).contains(&h_side.when), "idle 23 s: {h_side:?}");
    // Two backend connections: one with probes (route `on`), one without (route `off`).
    assert_eq!(to_backend.len(), 2, "{to_backend:?}");
    let mut timers: Vec<u8> = to_backend.iter().map(|s| s.timer).collect();
    timers.sort_unstable();
    assert_eq!(timers, [0, 2], "{to_backend:?}");
    let probed = to_backend.iter().find(|s| s.timer == 2).unwrap();
    assert!((3000..=3700).contains(&probed.when), "{probed:?}");
    drop((c_on, c_off, c_h));
    settle(&engine).await;
}

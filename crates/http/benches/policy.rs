//! What route policies cost per request (issue 13): the same keep-alive HTTP/1.1 request,
//! end to end on loopback on one current-thread runtime (as an engine worker runs), through
//!
//! - `direct`: straight to the backend (no proxy: the client's and backend's share),
//! - `bare`: a bare HTTP route (`http = {}`),
//! - `policy`: a route with five header rules (two of them templates), a `rewrite_path` and
//!   `basic_auth` (a bcrypt user; the client sends the same credentials every time, as
//!   clients do, so the verification cache answers after the first request).
//!
//! `cargo bench -p smartproxy-http --bench policy` compares the times. For a figure that does
//! not depend on a quiet machine, count instructions: `POLICY_BENCH=VARIANT:N` runs N requests
//! of one variant (after the setup) and exits, so under valgrind
//! `(Ir(N2) - Ir(N1)) / (N2 - N1)` is the instructions per request of the whole process
//! (client, proxy, backend), and `policy - bare` is the policies' share:
//!
//! ```text
//! B=$(ls target/release/deps/policy-* | grep -v '\.d$')
//! for v in direct bare policy; do for n in 200 2200; do
//!   POLICY_BENCH=$v:$n valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null $B 2>&1 | grep 'I *refs'
//! done; done
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use smartproxy_http::{ConnInfo, Credentials, HttpConfig, HttpService};
use smartproxy_metrics::{Metrics, MetricsConfig};
use smartproxy_routing::{RouteConfig, RouteTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const BODY: &[u8] = b"hello from the bench backend\n";
/// `alice:s3cret`.
const AUTH: &str = "Basic YWxpY2U6czNjcmV0";

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        // Whether the path arrived rewritten (the policy route's rewrite),
                        // checked by the client.
                        let rewritten =
                            if req.uri().path().starts_with("/api/") { "1" } else { "0" };
                        let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
                        r.headers_mut().insert("server", http::HeaderValue::from_static("bench"));
                        r.headers_mut()
                            .insert("x-rewritten", http::HeaderValue::from_static(rewritten));
                        Ok::<_, Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The route of a variant, on `port`, to `target`.
fn route(variant: &str, port: u16, target: u16, htpasswd: &str) -> String {
    let head = format!(
        "[[routes]]\nname = \"bench\"\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {target} }}], http = {{"
    );
    match variant {
        "bare" => format!("{head} }} }}\n"),
        _ => format!(
            r#"{head}
  request_headers = {{ set = {{ "X-Route" = "{{routeName}} {{clientIp}}", "X-Uri" = "{{uri}}" }}, remove = ["X-Debug"] }},
  response_headers = {{ set = {{ "Strict-Transport-Security" = "max-age=63072000" }}, remove = ["Server"] }},
  rewrite_path = {{ from = "^/v1/(.*)$", to = "/api/$1" }} }} }}
security = {{ basic_auth = {{ realm = "bench", htpasswd = "{htpasswd}" }} }}
"#
        ),
    }
}

async fn proxy(variant: &str, target: SocketAddr, htpasswd: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let doc = route(variant, addr.port(), target.port(), htpasswd);
    let f: F = toml::from_str(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
    let creds = Arc::new(Credentials::load(&f.routes).unwrap_or_else(|e| panic!("{e:?}")));
    let table = Arc::new(RouteTable::compile(f.routes).unwrap_or_else(|e| panic!("{e:?}")));
    let m = Metrics::new(MetricsConfig::default(), 0);
    let svc = HttpService::new(HttpConfig::new(table).with_credentials(creds), Some(m));
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.serve(s, ConnInfo::new(peer, addr.port()), std::future::pending()).await;
            });
        }
    });
    addr
}

type Tx = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1(addr: SocketAddr) -> Tx {
    let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    tx
}

/// The same request for every variant (the bare route and the backend ignore what they do
/// not use); only the `policy` variant's path reaches the backend rewritten.
async fn get(tx: &mut Tx, variant: &str) {
    tx.ready().await.unwrap_or_else(|e| panic!("{e}"));
    let req = Request::get("/v1/items/42?q=1")
        .header("host", "bench.test")
        .header("authorization", AUTH)
        .header("x-debug", "1")
        .body(Empty::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = tx.send_request(req).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(resp.status().is_success(), "{}", resp.status());
    let rewritten = resp.headers().get("x-rewritten").is_some_and(|v| v == "1");
    assert_eq!(rewritten, variant == "policy", "{variant}: rewritten {rewritten}");
    let b = resp.into_body().collect().await.unwrap_or_else(|e| panic!("{e}")).to_bytes();
    assert_eq!(b.len(), BODY.len());
}

struct Setup {
    rt: Runtime,
    addrs: Vec<(&'static str, SocketAddr)>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("users.htpasswd");
    // As `htpasswd -B` writes it (cost 5).
    let hash = bcrypt::hash_with_salt("s3cret", 5, *b"bench-salt-16byt")
        .unwrap_or_else(|e| panic!("{e}"))
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(&file, format!("alice:{hash}\n")).unwrap_or_else(|e| panic!("{e}"));
    let htpasswd = file.to_str().unwrap_or_else(|| panic!("path")).to_owned();
    let addrs = rt.block_on(async {
        let b = backend().await;
        vec![
            ("direct", b),
            ("bare", proxy("bare", b, &htpasswd).await),
            ("policy", proxy("policy", b, &htpasswd).await),
        ]
    });
    Setup { rt, addrs, _dir: dir }
}

fn main() {
    let s = setup();
    if let Ok(spec) = std::env::var("POLICY_BENCH") {
        let (variant, n) = spec.split_once(':').unwrap_or_else(|| panic!("VARIANT:N"));
        let n: usize = n.parse().unwrap_or_else(|e| panic!("{e}"));
        let addr = s.addrs.iter().find(|(v, _)| *v == variant).map(|(_, a)| *a);
        let addr = addr.unwrap_or_else(|| panic!("variants: direct, bare, policy"));
        s.rt.block_on(async {
            let mut tx = h1(addr).await;
            for _ in 0..n {
                get(&mut tx, variant).await;
            }
        });
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("policy");
    for (name, addr) in &s.addrs {
        let mut tx = s.rt.block_on(h1(*addr));
        g.bench_function(format!("h1_keepalive_{name}"), |b| {
            b.iter(|| s.rt.block_on(get(&mut tx, name)));
        });
    }
    g.finish();
    c.final_summary();
}

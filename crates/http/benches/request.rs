//! Cost of one proxied request, end to end on loopback, on one current-thread runtime (as an
//! engine worker runs): a hyper HTTP/1.1 client with keep-alive -> the HTTP layer -> a hyper
//! backend answering 29 bytes. `direct` is the same client straight to the backend; the
//! difference is the layer's share (routing, headers, pool, metrics, two more hops).
//! `h2c` sends the client's requests over one HTTP/2 connection, 10 at a time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use smartproxy_http::{ConnInfo, HttpConfig, HttpService};
use smartproxy_metrics::{Metrics, MetricsConfig};
use smartproxy_routing::{RouteConfig, RouteTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const BODY: &[u8] = b"hello from the bench backend\n";

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn proxy(target: SocketAddr, metrics: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let doc = format!(
        "[[routes]]\nname = \"bench\"\nmatch = {{ ports = [{}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}], http = {{}} }}\n",
        addr.port(),
        target.port()
    );
    let f: F = toml::from_str(&doc).unwrap_or_else(|e| panic!("{e}"));
    let table = Arc::new(RouteTable::compile(f.routes).unwrap_or_else(|e| panic!("{e:?}")));
    let m = metrics.then(|| Metrics::new(MetricsConfig::default(), 0));
    let svc = HttpService::new(HttpConfig::new(table), m);
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

async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    tx
}

async fn get(tx: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
    tx.ready().await.unwrap_or_else(|e| panic!("{e}"));
    let req = Request::get("/")
        .header("host", "bench.test")
        .body(Empty::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = tx.send_request(req).await.unwrap_or_else(|e| panic!("{e}"));
    let b = resp.into_body().collect().await.unwrap_or_else(|e| panic!("{e}")).to_bytes();
    assert_eq!(b.len(), BODY.len());
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let rt: &Runtime = &rt;
    let (b, p, pm) = rt.block_on(async {
        let b = backend().await;
        (b, proxy(b, false).await, proxy(b, true).await)
    });
    let mut g = c.benchmark_group("request");
    for (name, addr) in [("direct", b), ("proxied", p), ("proxied_metrics", pm)] {
        let mut tx = rt.block_on(h1(addr));
        g.bench_function(format!("h1_keepalive_{name}"), |bch| {
            bch.iter(|| rt.block_on(get(&mut tx)));
        });
    }
    // HTTP/2 from the client, 10 concurrent streams per iteration.
    let mut h2 = rt.block_on(async {
        let s = TcpStream::connect(pm).await.unwrap_or_else(|e| panic!("{e}"));
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(conn);
        tx
    });
    g.bench_function("h2c_10_streams_proxied_metrics", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                let mut all = Vec::with_capacity(10);
                for _ in 0..10 {
                    let req = Request::get(format!("http://127.0.0.1:{}/", pm.port()))
                        .body(Empty::<Bytes>::new())
                        .unwrap_or_else(|e| panic!("{e}"));
                    all.push(h2.send_request(req));
                }
                for f in all {
                    let r = f.await.unwrap_or_else(|e| panic!("{e}"));
                    let _ = r.into_body().collect().await;
                }
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The pieces of the data path on their own: the plain-TCP copy loop (small request/response
//! messages and bulk, against tokio's `copy_bidirectional` in the same run), the accept path
//! (connect, accept, route, handler, close through a running engine) and the limit checks.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smartproxy_engine::bench_api::{Limits, copy_tcp, set_tcp_keepalive};
use smartproxy_engine::{Config, Engine, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// app <-> [proxy_in | copy | proxy_out] <-> echo: returns the app's end.
async fn chain(rt_custom: bool) -> TcpStream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (app, proxy_in) = pair(&l).await;
    let (mut proxy_out, mut echo) = pair(&l).await;
    tokio::spawn(async move {
        let (mut r, mut w) = echo.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    tokio::spawn(async move {
        if rt_custom {
            let _ = copy_tcp(&proxy_in, &proxy_out).await;
        } else {
            let mut proxy_in = proxy_in;
            let _ = tokio::io::copy_bidirectional(&mut proxy_in, &mut proxy_out).await;
        }
    });
    app
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn copy_loop(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("copy_loop");
    g.measurement_time(Duration::from_secs(3));
    for (name, custom) in [("smartproxy", true), ("tokio_copy_bidirectional", false)] {
        let mut app = rt.block_on(chain(custom));
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("ping_pong_64B", name), |b| {
            b.iter(|| {
                rt.block_on(async {
                    app.write_all(&msg).await.unwrap();
                    app.read_exact(&mut back).await.unwrap();
                })
            })
        });
        const BULK: usize = 1 << 20;
        let data = vec![0x5au8; BULK];
        let mut sink = vec![0u8; BULK];
        g.throughput(Throughput::Bytes(BULK as u64 * 2));
        g.bench_function(BenchmarkId::new("bulk_1MiB_round_trip", name), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let (mut r, mut w) = app.split();
                    let (x, y) = tokio::join!(w.write_all(&data), r.read_exact(&mut sink));
                    x.unwrap();
                    y.unwrap();
                })
            })
        });
    }
    g.finish();
}

fn accept_path(c: &mut Criterion) {
    let rt = current_thread();
    let mut g = c.benchmark_group("accept_path");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    // The default (TCP keepalive probes set on the client socket) and without them.
    for (name, keepalive) in
        [("connect_echo_byte_close", ""), ("no_tcp_keepalive", "tcp_keepalive = false\n")]
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = format!(
            "bind = [\"127.0.0.1\"]\n[defaults]\nmax_connections_per_ip = 0\n{keepalive}\
             [[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
        );
        let _engine = rt
            .block_on(async { Engine::start(Config::from_str(&text, Format::Toml).unwrap()).await })
            .unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                    s.write_all(b"x").await.unwrap();
                    let mut one = [0u8; 1];
                    s.read_exact(&mut one).await.unwrap();
                })
            })
        });
    }
    g.finish();
}

/// The socket options a connection sets once at setup: TCP keepalive (four `setsockopt`
/// calls) on an established loopback socket.
fn socket_options(c: &mut Criterion) {
    let rt = current_thread();
    let (a, _b) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        pair(&l).await
    });
    let mut g = c.benchmark_group("socket_options");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tcp_keepalive", |b| b.iter(|| set_tcp_keepalive(&a)));
    g.finish();
}

fn limit_checks(c: &mut Criterion) {
    let counting = Limits::new(100, 0);
    let rated = Limits::new(100, 1_000_000);
    let one = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let many: Vec<IpAddr> =
        (0..10_000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))).collect();
    let mut g = c.benchmark_group("limit_checks");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_ip_count_and_rate", |b| {
        b.iter(|| counting.admit_and_release(std::hint::black_box(one)))
    });
    let mut i = 0usize;
    g.bench_function("10k_ips_count_and_rate", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            rated.admit_and_release(many[i])
        })
    });
    g.finish();
}

criterion_group!(benches, copy_loop, accept_path, limit_checks, socket_options);
criterion_main!(benches);

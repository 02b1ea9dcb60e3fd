//! Throughput of one forwarded connection (client -> engine -> echo backend -> engine ->
//! client) over loopback, and the cost of opening a connection through the engine.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smartproxy_engine::{Config, Engine, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn setup() -> (Engine, u16) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bport = backend.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let port = free_port();
    let text = format!(
        "bind = [\"127.0.0.1\"]\n[defaults]\nmax_connections_per_ip = 0\nconnection_rate_limit_per_minute = 0\n\
         [[routes]]\nmatch = {{ ports = [{port}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {bport} }}] }}\n"
    );
    let engine = Engine::start(Config::from_str(&text, Format::Toml).unwrap()).await.unwrap();
    (engine, port)
}

fn forward(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_engine, port) = rt.block_on(setup());
    let mut conn = rt.block_on(TcpStream::connect(("127.0.0.1", port))).unwrap();
    conn.set_nodelay(true).unwrap();
    const CHUNK: usize = 256 * 1024;
    let data = vec![0x5au8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Bytes(CHUNK as u64 * 2));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("echo_256KiB_round_trip", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (mut r, mut w) = conn.split();
                let wr = w.write_all(&data);
                let rd = r.read_exact(&mut back);
                let (a, b) = tokio::join!(wr, rd);
                a.unwrap();
                b.unwrap();
            })
        })
    });
    g.bench_function("connect_and_first_byte", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                s.write_all(b"x").await.unwrap();
                let mut one = [0u8; 1];
                s.read_exact(&mut one).await.unwrap();
            })
        })
    });
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);

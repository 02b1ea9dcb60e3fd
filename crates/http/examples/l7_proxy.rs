//! A minimal HTTP reverse proxy on the HTTP layer, for profiling and for the shared bench
//! harness before the engine is wired (one current-thread runtime, like one engine worker):
//!
//! ```text
//! cargo build --release -p smartproxy-http --example l7_proxy
//! target/release/examples/l7_proxy --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000
//! PROXY_CMD='target/release/examples/l7_proxy --listen {listen_host}:{listen_port} --upstream {backend_host}:{backend_port}' \
//!   PROXY_NAME=l7 ../shared/bench/run --proxies haproxy,nginx,custom --workloads l7-ka,l7-close
//! ```
//!
//! `--no-metrics` leaves the collector out.

use std::net::SocketAddr;
use std::sync::Arc;

use smartproxy_http::{ConnInfo, HttpConfig, HttpService};
use smartproxy_metrics::{Metrics, MetricsConfig};
use smartproxy_routing::{
    ForwardAction, HttpOptions, RouteAction, RouteConfig, RouteMatch, RouteTable, Target,
};

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn main() {
    let listen: SocketAddr = arg("--listen")
        .and_then(|v| v.trim_matches(['[', ']']).parse().ok().or_else(|| v.parse().ok()))
        .unwrap_or_else(|| panic!("--listen HOST:PORT"));
    let upstream: SocketAddr = arg("--upstream")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("--upstream HOST:PORT"));
    let metrics = !std::env::args().any(|a| a == "--no-metrics");
    let route = RouteConfig::new(
        RouteMatch::ports(listen.port()),
        RouteAction::Forward(
            ForwardAction::to(vec![Target::new(upstream.ip().to_string(), upstream.port())])
                .with_http(HttpOptions::default()),
        ),
    )
    .with_name("bench");
    let table = Arc::new(RouteTable::compile(vec![route]).unwrap_or_else(|e| panic!("{e:?}")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async move {
        let m = metrics.then(|| Metrics::new(MetricsConfig::default(), 0));
        if let Some(m) = &m {
            let m = Arc::clone(m);
            tokio::spawn(async move {
                let mut t = 0;
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    t += 1;
                    m.tick(t);
                }
            });
        }
        let http = HttpService::new(HttpConfig::new(table), m);
        let l = tokio::net::TcpListener::bind(listen).await.unwrap_or_else(|e| panic!("{e}"));
        loop {
            let Ok((s, peer)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            let http = http.clone();
            tokio::spawn(async move {
                let info = ConnInfo::new(peer, listen.port()).with_local(listen);
                http.serve(s, info, std::future::pending()).await;
            });
        }
    });
}

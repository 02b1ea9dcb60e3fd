//! The engine as a library, the way SmartProxy's runtime API is used: routes built in code, a
//! custom socket handler registered once by name, routes replaced at run time, a listening
//! port added and removed, metrics read, and a graceful shutdown.
//!
//! ```text
//! cargo run -p smartproxy-engine --example library
//! ```
//!
//! Everything listens on 127.0.0.1 (ports 18080-18082 and an echo backend on a free port);
//! the example drives its own traffic and exits.
#![allow(clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use smartproxy_engine::routing::{
    HandlerAction, RouteAction, RouteConfig, RouteMatch, Target, helpers,
};
use smartproxy_engine::{
    ClientStream, Config, Engine, HandlerContext, HandlerFuture, SocketHandler,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers each connection with one line naming the client and the route.
struct Hello;

impl SocketHandler for Hello {
    fn handle<'a>(&'a self, mut stream: ClientStream, ctx: HandlerContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let line = format!("hello {} from route {}\n", ctx.client_addr, ctx.route_name);
            stream.write_all(line.as_bytes()).await?;
            stream.shutdown().await
        })
    }
}

/// Sends `msg`, half-closes, and returns everything that came back.
async fn ask(port: u16, msg: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A backend: echoes what it gets.
    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let backend_port = backend.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // Routes in code: a forward route and a route served by the custom handler.
    let hello = RouteConfig::new(
        RouteMatch::ports(18081u16),
        RouteAction::SocketHandler(HandlerAction::new("hello")),
    )
    .with_name("hello");
    let forward =
        helpers::forward_route(18080u16, Target::new("127.0.0.1", backend_port)).with_name("echo");
    // Every other setting at its default, but listening on loopback only.
    let mut base = Config::default();
    base.bind = vec![Ipv4Addr::LOCALHOST.into()];
    let engine = Engine::builder()
        .handler("hello", Arc::new(Hello))
        .config(base)
        .routes(vec![forward, hello.clone()])
        .start()
        .await?;
    println!("listening on {:?}", engine.local_addrs());
    println!("18080 -> {:?}", ask(18080, b"ping").await?);
    print!("18081 -> {}", ask(18081, b"").await?);

    // Replace the routes: the forward route moves to 18082, the handler stays.
    let moved =
        helpers::forward_route(18082u16, Target::new("127.0.0.1", backend_port)).with_name("echo");
    let summary = engine.update_routes(vec![moved, hello]).await?;
    println!(
        "routes updated: added {:?}, removed {:?}",
        summary.added_ports, summary.removed_ports
    );
    println!("18082 -> {:?}", ask(18082, b"pong").await?);

    // A port no route uses: connections there are refused (no route), until it is removed.
    engine.add_listening_port(18083).await?;
    println!("18083 answers (and closes): {:?}", ask(18083, b"x").await?);
    println!("18083 removed: {}", engine.remove_listening_port(18083).await);

    if let Some(m) = engine.metrics() {
        m.tick(m.now() + 1);
        let s = m.snapshot();
        println!(
            "metrics: {} connections, {} bytes in, {} bytes out",
            s.totals.connections, s.totals.bytes_in, s.totals.bytes_out
        );
    }
    let summary = engine.shutdown(Duration::from_secs(5)).await;
    println!("stopped; {} connections forced closed", summary.forced);
    Ok(())
}

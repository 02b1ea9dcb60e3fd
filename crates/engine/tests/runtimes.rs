//! Worker runtimes (`EngineBuilder::runtimes`, the binary's `runtime = "per-worker"`): one
//! `SO_REUSEPORT` listener per runtime and port, connections served on the runtime that
//! accepted them, reload and shutdown across all of them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use smartproxy_engine::{
    ClientStream, Config, Engine, Format, HandlerContext, HandlerFuture, SocketHandler,
};
use tokio::io::AsyncWriteExt;

/// Answers with the name of the thread that serves the connection.
struct Where(Arc<Mutex<BTreeMap<String, usize>>>);

impl SocketHandler for Where {
    fn handle<'a>(&'a self, mut s: ClientStream, _ctx: HandlerContext) -> HandlerFuture<'a> {
        Box::pin(async move {
            let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
            *self.0.lock().entry(name.clone()).or_default() += 1;
            s.write_all(name.as_bytes()).await?;
            s.shutdown().await
        })
    }
}

/// `n` current-thread runtimes, each on its own named thread, until the returned guard drops.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> Self {
        let mut w = Self { handles: Vec::new(), stop: Vec::new(), threads: Vec::new() };
        for i in 0..n {
            let (htx, hrx) = std::sync::mpsc::channel();
            let (stx, srx) = tokio::sync::oneshot::channel::<()>();
            let t = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let rt =
                        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    htx.send(rt.handle().clone()).unwrap();
                    rt.block_on(async {
                        let _ = srx.await;
                    });
                })
                .unwrap();
            w.handles.push(hrx.recv().unwrap());
            w.stop.push(stx);
            w.threads.push(t);
        }
        w
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn config(ports: &[u16], backend_port: u16) -> Config {
    let mut text = String::from("bind = [\"127.0.0.1\"]\n");
    for (i, p) in ports.iter().enumerate() {
        if i == 0 {
            text += &format!(
                "[[routes]]\nname = \"where\"\nmatch = {{ ports = [{p}] }}\naction = {{ type = \"socket-handler\", handler = \"where\" }}\n"
            );
        } else {
            text += &format!(
                "[[routes]]\nname = \"fwd{i}\"\nmatch = {{ ports = [{p}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {backend_port} }}] }}\n"
            );
        }
    }
    Config::parse(&text, Format::Toml, &["where"]).unwrap()
}

async fn whereis(port: u16) -> String {
    let mut c = connect(port).await;
    c.write_all(b"?").await.unwrap();
    String::from_utf8(read_all(&mut c, 5).await).unwrap()
}

#[tokio::test]
async fn connections_spread_over_worker_runtimes_and_stay_there() {
    let workers = Workers::start(2);
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let (echo, _e) = echo_backend().await;
    // Worker runtimes bind with SO_REUSEPORT: `start_on` also checks that no other process
    // shares the ports.
    let (engine, [p_where, p_fwd]) = start_on(|ports| {
        Engine::builder()
            .handler("where", Arc::new(Where(Arc::clone(&seen))))
            .config(config(&ports, echo.port()))
            .runtimes(workers.handles.clone())
            .start()
    })
    .await;
    // One address per port, although each has one socket per runtime.
    let mut addrs = engine.local_addrs();
    addrs.sort();
    assert_eq!(addrs.len(), 2, "{addrs:?}");

    // SO_REUSEPORT spreads connections by a hash of the client's port: 64 connections all
    // on one socket would have odds of 2^-63.
    for _ in 0..64 {
        let name = whereis(p_where).await;
        assert!(name.starts_with("worker-"), "served on {name}, not on a worker runtime");
    }
    let counts = seen.lock().clone();
    assert_eq!(counts.values().sum::<usize>(), 64);
    assert_eq!(counts.len(), 2, "both workers accept: {counts:?}");

    // Forwarding runs on the workers too, byte-exact.
    let data = pattern(300_000, 9);
    let mut c = connect(p_fwd).await;
    let got = write_then_read_to_end(&mut c, &data).await;
    assert!(got == data, "echo through a worker differs");
    drop(c);
    settle(&engine).await;

    // Reload: a new port gets a socket on every runtime, a removed one stops on every runtime.
    let p_new = reserve_port();
    let summary = engine.reload(config(&[p_where, p_new], echo.port())).await.unwrap();
    assert_eq!(summary.added_ports, vec![p_new]);
    assert_eq!(summary.removed_ports, vec![p_fwd]);
    let mut c = connect(p_new).await;
    c.write_all(b"after reload").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut c, 5).await, b"after reload");
    // Reload returns once the removed port's sockets are closed on every runtime.
    assert_eq!(listeners(p_fwd), [], "the removed port still listens on some runtime");
    wait_refused(p_fwd).await;
    assert_eq!(listeners(p_new).len(), 2, "one socket per worker runtime on the new port");

    // Shutdown stops every runtime's listeners.
    engine.shutdown(Duration::from_secs(1)).await;
    assert_eq!(listeners(p_where), [], "shutdown closed every runtime's socket");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", p_where)).await.is_err());
    drop(engine);
    drop(workers);
}

#[test]
fn runtime_key_is_checked() {
    let c = Config::from_str("runtime = \"multi-thread\"\nworkers = 3\n", Format::Toml).unwrap();
    assert_eq!(c.runtime, smartproxy_engine::Runtime::MultiThread);
    assert_eq!(Config::default().runtime, smartproxy_engine::Runtime::PerWorker);
    let e = Config::from_str("workers = 2\nruntime = \"fibers\"\n", Format::Toml).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("runtime"), "{text}");
    assert!(text.contains("line 2"), "{text}");
}

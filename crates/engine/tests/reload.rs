//! Reload: ports added and removed, established connections kept, bad configurations refused.

mod common;

use common::*;
use smartproxy_engine::{Config, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(ports: &[u16]) -> Config {
    let mut text = String::from("bind = [\"127.0.0.1\"]\n");
    for p in ports {
        text.push_str(&format!(
            "[[routes]]\nname = \"echo-{p}\"\nmatch = {{ ports = [{p}] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
        ));
    }
    Config::from_str(&text, Format::Toml).unwrap()
}

/// Whether an echo round trip works on `c` (a close is `false`; no answer at all within
/// [`WAIT`] fails the test).
async fn round_trip(c: &mut tokio::net::TcpStream) -> bool {
    if c.write_all(b"r").await.is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    match tokio::time::timeout(WAIT, c.read(&mut b)).await {
        Ok(Ok(1)) => b == *b"r",
        Ok(_) => false,
        Err(_) => panic!("no echo and no close within {WAIT:?}"),
    }
}

#[tokio::test]
async fn reload_adds_and_removes_ports() {
    let (engine, [a]) = start_on(|[a]| smartproxy_engine::Engine::start(config(&[a]))).await;
    let b = reserve_port();
    let mut old = connect(a).await;
    assert!(round_trip(&mut old).await);

    let summary = engine.reload(config(&[b])).await.unwrap();
    assert_eq!(summary.added_ports, vec![b]);
    assert_eq!(summary.removed_ports, vec![a]);
    assert!(!port_listening(a), "port {a} closed by the time reload returns");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", a)).await.is_err(), "port {a} closed");
    let mut new = connect(b).await;
    assert!(round_trip(&mut new).await);
    assert!(round_trip(&mut old).await, "established connection survives the reload");

    // A bad configuration is refused and the old one stays. (A `Config` is checked when it
    // is made, so the bad routes come through `update_routes`, which counts a refused reload.)
    let mut bad = Config::from_str(
        "[[routes]]\nmatch = { ports = [1] }\naction = { type = \"socket-handler\", handler = \"echo\" }\n",
        Format::Toml,
    )
    .unwrap()
    .routes()
    .to_vec();
    bad[0].matcher.ports = smartproxy_routing::PortSpec::from(0u16);
    let err = engine.update_routes(bad).await.unwrap_err();
    assert!(err.to_string().contains("routes[0].match.ports[0]"), "{err}");
    let mut again = connect(b).await;
    assert!(round_trip(&mut again).await);
    assert_eq!(engine.stats().reloads, 1);
    assert_eq!(engine.stats().reloads_failed, 1);
    drop((old, new, again));
    settle(&engine).await;
}

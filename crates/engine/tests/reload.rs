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

/// A port that served plain HTTP when its listener started (connections accepted as HTTP
/// connections from the start, `pipeline::spawn`) and whose routes a reload turned into
/// a layer-4 handler: its listener stays, and new connections take the general path (the
/// echo handler answers raw bytes), while an HTTP connection accepted before the reload is
/// still served as HTTP (its next request routed on the new table: no HTTP route, a 404).
#[tokio::test]
async fn a_plain_http_port_reloaded_to_layer_4_serves_new_connections_the_new_way() {
    let (target, _backend) = ok_http_backend().await;
    let http = |p: u16| {
        let text = format!(
            "bind = [\"127.0.0.1\"]\n[[routes]]\nname = \"web\"\nmatch = {{ ports = [{p}] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {} }}], http = {{}} }}\n",
            target.port()
        );
        Config::from_str(&text, Format::Toml).unwrap()
    };
    let (engine, [p]) = start_on(|[p]| smartproxy_engine::Engine::start(http(p))).await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut kept = connect(p).await;
    kept.write_all(request).await.unwrap();
    let before = http_answer(&mut kept, b"\r\n\r\nok").await;
    assert!(before.starts_with("HTTP/1.1 200 OK\r\n"), "{before}");

    let summary = engine.reload(config(&[p])).await.unwrap();
    assert!(summary.added_ports.is_empty() && summary.removed_ports.is_empty(), "{summary:?}");
    let mut new = connect(p).await;
    assert!(round_trip(&mut new).await, "a new connection reaches the echo handler");
    new.write_all(request).await.unwrap();
    let mut echoed = vec![0u8; request.len()];
    tokio::time::timeout(WAIT, new.read_exact(&mut echoed)).await.expect("the echo").unwrap();
    assert_eq!(echoed, request, "the request comes back as bytes, not as an HTTP answer");

    kept.write_all(request).await.unwrap();
    let after = http_answer(&mut kept, b"no route for this request\n").await;
    assert!(after.starts_with("HTTP/1.1 404 "), "{after}");
    drop((kept, new));
    settle(&engine).await;
}

/// Reads one HTTP answer, up to the end of its body (`end`; its headers vary: the proxy
/// adds some).
async fn http_answer(c: &mut tokio::net::TcpStream, end: &[u8]) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.ends_with(end) {
        match tokio::time::timeout(WAIT, c.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            other => panic!("no whole answer ({other:?}): {}", String::from_utf8_lossy(&buf)),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

//! TLS passthrough routed by SNI: the ClientHello is peeked and replayed byte-exact.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal TLS 1.3 ClientHello record for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression
    let mut exts = Vec::new();
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    exts.extend_from_slice(&[0x00, 0x00]);
    exts.extend_from_slice(&(sn.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sn);
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]); // supported_versions
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

async fn recording_backend() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let (addr, _t) = backend(move |mut s| {
        let seen = Arc::clone(&s2);
        async move {
            let mut buf = Vec::new();
            tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
                .await
                .expect("the engine half-closed after the client's shutdown")
                .expect("read");
            seen.lock().push(buf);
            let _ = s.write_all(b"ok").await;
        }
    })
    .await;
    (addr.port(), seen)
}

#[tokio::test]
async fn routes_by_sni_and_replays_the_hello() {
    let (pa, seen_a) = recording_backend().await;
    let (pb, seen_b) = recording_backend().await;
    let (engine, [port]) = engine_on(|[port]| format!(
        "[[routes]]\nname = \"a\"\nmatch = {{ ports = [{port}], domains = [\"a.test\"] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {pa} }}], tls = {{ mode = \"passthrough\" }} }}\n\
         [[routes]]\nname = \"b\"\nmatch = {{ ports = [{port}], domains = [\"*.b.test\"] }}\naction = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {pb} }}], tls = {{ mode = \"passthrough\" }} }}\n"
    )).await;
    let hello = client_hello("www.B.test");
    let mut c = connect(port).await;
    // The ClientHello in two reads of the engine: the rest is sent only once the engine has
    // read the first 20 bytes (none left unread on its socket), so the split is certain.
    let me = c.local_addr().unwrap().port();
    c.write_all(&hello[..20]).await.unwrap();
    wait_eq("the engine read the first 20 bytes", || unread_by_server(port, me), Some(0)).await;
    c.write_all(&hello[20..]).await.unwrap();
    c.write_all(b"after").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut c, 5).await, b"ok");
    let mut want = hello.clone();
    want.extend_from_slice(b"after");
    assert_eq!(seen_b.lock().as_slice(), &[want]);
    assert!(seen_a.lock().is_empty());

    // No route for this name: refused.
    let mut c = connect(port).await;
    c.write_all(&client_hello("c.test")).await.unwrap();
    expect_closed_without_data(&mut c).await;
    drop(c);
    settle(&engine).await;
}

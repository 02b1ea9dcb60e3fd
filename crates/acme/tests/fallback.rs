//! Without a working CA: the self-signed fallback while a certificate is being obtained,
//! refused domains, and manual certificates in the same status.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use smartproxy_acme::{AcmeConfig, CertManager, CertSource, CertState, Error, RouteCert};
use support::{TlsServer, curl, eventually, require};
use tokio::net::TcpListener;

/// A "CA" whose every connection is closed at once (down behind its load balancer).
async fn dead_ca() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (addr, task)
}

fn manual_key(name: &str) -> Arc<rustls::sign::CertifiedKey> {
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&kp).unwrap();
    let key = PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(
        rustls::sign::CertifiedKey::from_der(
            vec![CertificateDer::from(cert.der().to_vec())],
            key,
            &provider,
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_is_served_while_obtaining_and_bad_routes_are_refused() {
    require("curl", "curl");
    require("openssl", "openssl");
    let (ca, _ca_task) = dead_ca().await;
    let dir = tempfile::tempdir().unwrap();
    // Some CA file for ca_roots (the dead CA never gets as far as TLS).
    let roots = dir.path().join("roots.pem");
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&roots, params.self_signed(&kp).unwrap().pem()).unwrap();
    let storage = dir.path().join("acme");
    let cfg = AcmeConfig::new(format!("https://localhost:{}/dir", ca.port()), &storage)
        .with_ca_roots(&roots)
        .with_retry(Duration::from_secs(60), Duration::from_secs(600));

    // A stored certificate that is garbage is ignored (and replaced on issuance).
    std::fs::create_dir_all(storage.join("certs")).unwrap();
    std::fs::write(storage.join("certs/web.pem"), "not a certificate").unwrap();

    let m = CertManager::new(Some(cfg)).unwrap();
    let files = manual_key("m.example.test");
    m.sync(vec![
        RouteCert::acme("web", ["a.example.test"]),
        RouteCert::manual("files", ["m.example.test"], Arc::clone(&files)),
    ])
    .unwrap();

    // Wildcards (and other names no HTTP-01/TLS-ALPN-01 CA issues for) are refused, and
    // the refused sync changes nothing.
    let errors = m
        .sync(vec![
            RouteCert::acme("wild", ["*.example.test"]),
            RouteCert::acme("ip", ["127.0.0.1"]),
            RouteCert::acme("none", Vec::<String>::new()),
        ])
        .unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(
        matches!(&errors[0], Error::Domain { route, domain, .. } if route == "wild" && domain == "*.example.test")
    );
    assert!(text[0].contains("DNS-01"), "{}", text[0]);
    assert!(text[1].contains("IP address"), "{}", text[1]);
    assert!(text[2].contains("at least one domain"), "{}", text[2]);
    let routes: Vec<String> = m.status().into_iter().map(|s| s.route).collect();
    assert_eq!(routes, ["files", "web"]);

    let _task = m.start();
    eventually("a failed first order", Duration::from_secs(30), || {
        let s = m.route_status("web").unwrap();
        async move { s.failures >= 1 && !s.in_progress }
    })
    .await;
    let s = m.route_status("web").unwrap();
    assert_eq!(s.state, CertState::Obtaining, "{s:#?}");
    assert!(s.last_error.as_deref().unwrap_or_default().starts_with("ACME "), "{s:#?}");
    assert!(s.next_attempt > s.last_attempt, "backoff planned: {s:#?}");
    assert!(
        s.not_after.is_none() && s.issuer.is_none(),
        "the fallback is not reported as a certificate"
    );
    assert!(m.acme_requests() >= 1);

    // The handshake completes with the self-signed fallback: verifying clients refuse it,
    // the others get through.
    let handle = m.handle("web").unwrap();
    assert!(handle.is_fallback());
    let server = TlsServer::start(handle).await;
    let (code, _, err) = curl(server.addr, "a.example.test", &roots).await;
    assert_eq!(code, 60, "curl must refuse the fallback: {err}");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "10", "--resolve"])
        .arg(format!("a.example.test:{}:127.0.0.1", server.addr.port()))
        .arg(format!("https://a.example.test:{}/", server.addr.port()))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(server.addr.to_string())
        .args(["-servername", "a.example.test"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("smartproxy fallback"), "{text}");

    // The manual certificate is in the same status, and is not renewed.
    let f = m.route_status("files").unwrap();
    assert_eq!((f.source, f.state), (CertSource::Manual, CertState::Valid));
    assert_eq!(f.names, ["m.example.test"]);
    assert!(f.not_after.is_some() && f.issuer.is_some() && f.renew_at.is_none());
    assert!(Arc::ptr_eq(&m.handle("files").unwrap().certified_key(), &files));
    assert!(matches!(m.renew_now("files").await, Err(Error::NotAcme(r)) if r == "files"));
    assert!(matches!(m.renew_now("nope").await, Err(Error::UnknownRoute(_))));
    let json = serde_json::to_value(m.status()).unwrap();
    assert_eq!(json[0]["source"], "manual");
    assert_eq!(json[1]["state"], "obtaining");
}

/// A CA front that answers every request with `503` and `Retry-After: 3600` (rate limited
/// or in maintenance), over real TLS with a certificate made here. Pebble has no rate
/// limits, so this is the one scripted peer of the suite. Returns its address, the CA file
/// to trust, and how many requests it saw.
async fn busy_ca(
    dir: &std::path::Path,
) -> (std::net::SocketAddr, std::path::PathBuf, Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let roots = dir.join("busy-ca.pem");
    std::fs::write(&roots, ca_cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), Arc::clone(&count));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"come back later","status":503}"#;
                let rsp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\n\
                     Content-Type: application/problem+json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(rsp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, roots, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_from_the_ca_is_honoured_over_the_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, roots, seen) = busy_ca(dir.path()).await;
    // A 1 s backoff: only the CA's Retry-After keeps the loop from asking again at once.
    let cfg =
        AcmeConfig::new(format!("https://localhost:{}/dir", ca.port()), dir.path().join("acme"))
            .with_ca_roots(&roots)
            .with_retry(Duration::from_secs(1), Duration::from_secs(1));
    let m = CertManager::new(Some(cfg)).unwrap();
    let routes = || vec![RouteCert::acme("web", ["a.example.test"])];
    m.sync(routes()).unwrap();
    let _task = m.start();
    eventually("the first failed order", Duration::from_secs(30), || {
        let s = m.route_status("web").unwrap();
        async move { s.failures >= 1 && !s.in_progress }
    })
    .await;
    let s = m.route_status("web").unwrap();
    let wait = s.next_attempt.unwrap().unix_seconds() - s.last_attempt.unwrap().unix_seconds();
    assert!(wait >= 3590, "the next attempt waits for Retry-After: {s:#?}");
    let requests = m.acme_requests();
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), requests);

    // Neither the operator nor the loop gets a request through before then.
    match m.renew_now("web").await {
        Err(Error::RateLimited { until }) => assert!(until >= s.next_attempt.unwrap()),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // The pass that made the first attempt has ended (renew_now woke the loop once more).
    eventually("the first loop pass", Duration::from_secs(10), || {
        let s = m.route_status("web").unwrap();
        let n = m.checks();
        async move { n >= 1 && !s.in_progress }
    })
    .await;
    let checks = m.checks();
    m.sync(routes()).unwrap(); // wakes the loop
    eventually("a loop pass after the wake-up", Duration::from_secs(10), || {
        let n = m.checks();
        async move { n > checks }
    })
    .await;
    assert_eq!(m.acme_requests(), requests, "nothing was sent during Retry-After");
    assert_eq!(m.route_status("web").unwrap().failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_order_is_not_left_in_progress() {
    // A CA that accepts connections and never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&roots, params.self_signed(&kp).unwrap().pem()).unwrap();
    let cfg = AcmeConfig::new(format!("https://localhost:{}/dir", ca.port()), dir.path().join("s"))
        .with_ca_roots(&roots);
    let m = CertManager::new(Some(cfg)).unwrap();
    m.sync(vec![RouteCert::acme("web", ["a.example.test"])]).unwrap();

    // An admin request that goes away while the order waits for the CA.
    let m2 = m.clone();
    let request = tokio::spawn(async move { m2.renew_now("web").await });
    eventually("the order reaching the CA", Duration::from_secs(10), || {
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    assert!(m.route_status("web").unwrap().in_progress);
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    let s = m.route_status("web").unwrap();
    assert!(!s.in_progress, "{s:#?}");
    assert!(s.last_attempt.is_some() && s.failures == 0 && s.last_error.is_none(), "{s:#?}");
}

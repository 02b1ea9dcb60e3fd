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

//! Against a real ACME CA: Debian's `pebble`, started per test with its own configuration,
//! `PEBBLE_VA_NOSLEEP=1`, its HTTPS endpoint trusted through `ca_roots`, `httpPort` /
//! `tlsPort` pointed at responders built from this crate's challenge helpers, and
//! `pebble-challtestsrv` as its DNS (every name is 127.0.0.1).

mod support;

use std::path::Path;
use std::time::Duration;

use smartproxy_acme::{
    AcmeConfig, CertManager, CertSource, CertState, CertStatus, Challenge, Error, RouteCert,
};
use support::{
    Client, Current, Http01Responder, Pebble, PebbleOptions, Relay, TlsAlpnResponder, TlsServer,
    curl, eventually,
};

const WAIT: Duration = Duration::from_secs(60);

fn config(directory: String, pebble: &Pebble, storage: &Path, challenge: Challenge) -> AcmeConfig {
    AcmeConfig::new(directory, storage)
        .with_email("ops@example.com")
        .with_ca_roots(&pebble.https_ca)
        .with_challenge(challenge)
        .with_retry(Duration::from_secs(1), Duration::from_secs(2))
        .with_order_timeout(Duration::from_secs(30))
}

fn status(m: &CertManager, route: &str) -> CertStatus {
    m.route_status(route).expect("route is managed")
}

/// Waits until the route has had a successful issuance and no order is running.
async fn issued(m: &CertManager, route: &str, pebble: &Pebble) -> CertStatus {
    let what = format!("an issued certificate for `{route}`");
    eventually(&what, WAIT, || {
        let s = status(m, route);
        async move { s.last_success.is_some() && !s.in_progress }
    })
    .await;
    let s = status(m, route);
    assert!(s.last_error.is_none(), "{s:#?}\n{}", pebble.logs());
    s
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_chain_that_curl_verifies_and_a_restart_orders_nothing() {
    let current = Current::default();
    let http = Http01Responder::start(current.clone()).await;
    let pebble = Pebble::start(PebbleOptions {
        http_port: http.addr.port(),
        tls_port: http.addr.port(),
        validity_secs: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let cfg = config(pebble.directory(), &pebble, &storage, Challenge::Http01);
    let routes = || vec![RouteCert::acme("web", ["a.example.test", "B.example.test"])];

    let m = CertManager::new(Some(cfg.clone())).unwrap();
    current.set(&m);
    m.sync(routes()).unwrap();
    let handle = m.handle("web").unwrap();
    assert!(handle.is_fallback());
    assert_eq!(status(&m, "web").state, CertState::Obtaining);
    assert_eq!(m.acme_requests(), 0, "nothing is sent before the loop runs");

    let task = m.start();
    let s = issued(&m, "web", &pebble).await;
    assert_eq!(s.state, CertState::Valid, "{s:#?}");
    assert_eq!(s.source, CertSource::Acme);
    assert_eq!(s.domains, ["a.example.test", "b.example.test"]);
    assert_eq!(s.names, ["a.example.test", "b.example.test"]);
    assert!(s.issuer.as_deref().unwrap_or_default().contains("Pebble Intermediate"), "{s:#?}");
    assert!(s.not_before < s.not_after && s.failures == 0);
    assert!(!handle.is_fallback());
    assert!(http.answered.load(std::sync::atomic::Ordering::Relaxed) >= 2, "one answer per domain");
    let expiries = m.expiries();
    assert_eq!(expiries.len(), 2);
    assert!(expiries.iter().all(|e| e.route == "web" && Some(e.not_after) == s.not_after));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["source"], "acme");
    assert!(json["not_after"].as_str().unwrap().ends_with('Z'), "{json}");

    // The store: 0700 directories, 0600 files, one account.
    #[cfg(unix)]
    {
        assert_eq!(mode(&storage), 0o700);
        let accounts: Vec<_> = std::fs::read_dir(storage.join("accounts")).unwrap().collect();
        assert_eq!(accounts.len(), 1);
        assert_eq!(mode(&accounts[0].as_ref().unwrap().path()), 0o600);
        assert_eq!(mode(&storage.join("certs/web.pem")), 0o600);
        assert_eq!(mode(&storage.join("certs/web.json")), 0o600);
    }

    // The served chain verifies against pebble's issuing root, for both names.
    let root = pebble.issuing_root().await;
    let server = TlsServer::start(handle.clone()).await;
    for name in ["a.example.test", "b.example.test"] {
        let (code, out, err) = curl(server.addr, name, &root).await;
        assert_eq!((code, out.as_str()), (0, "ok\n"), "curl {name}: {err}");
    }

    // A restart with a valid certificate: the stored one is served, nothing is sent.
    task.stop();
    drop(m);
    let m = CertManager::new(Some(cfg)).unwrap();
    current.set(&m);
    m.sync(routes()).unwrap();
    let handle = m.handle("web").unwrap();
    assert!(!handle.is_fallback());
    let _task = m.start();
    eventually("a renewal check after the restart", WAIT, || {
        let n = m.checks();
        async move { n >= 1 }
    })
    .await;
    assert_eq!(m.acme_requests(), 0, "a restart with a valid certificate sends nothing");
    let again = status(&m, "web");
    assert_eq!((again.serial.as_ref(), again.state), (s.serial.as_ref(), CertState::Valid));
    assert_eq!(again.last_success, s.last_success);
    let server = TlsServer::start(handle).await;
    let (code, out, err) = curl(server.addr, "a.example.test", &root).await;
    assert_eq!((code, out.as_str()), (0, "ok\n"), "curl after restart: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_chain_that_openssl_verifies() {
    support::require("openssl", "openssl");
    let current = Current::default();
    let alpn = TlsAlpnResponder::start(current.clone()).await;
    let pebble = Pebble::start(PebbleOptions {
        http_port: alpn.addr.port(),
        tls_port: alpn.addr.port(),
        validity_secs: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(pebble.directory(), &pebble, dir.path(), Challenge::TlsAlpn01);
    let m = CertManager::new(Some(cfg)).unwrap();
    current.set(&m);
    m.sync(vec![RouteCert::acme("tls", ["c.example.test"])]).unwrap();
    let _task = m.start();
    let s = issued(&m, "tls", &pebble).await;
    assert_eq!(s.names, ["c.example.test"]);
    assert!(
        alpn.answered.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "pebble validated through acme-tls/1"
    );
    // The challenge answer is withdrawn with the order.
    assert!(m.tls_alpn01_certificate("c.example.test").is_none());

    let root = pebble.issuing_root().await;
    let server = TlsServer::start(m.handle("tls").unwrap()).await;
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(server.addr.to_string())
        .args(["-servername", "c.example.test", "-verify_hostname", "c.example.test"])
        .args(["-verify_return_error", "-CAfile"])
        .arg(&root)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        "openssl s_client: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // After the order, an acme-tls/1 handshake for the name is refused (no answer left).
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(alpn.addr.to_string())
        .args(["-servername", "c.example.test", "-alpn", "acme-tls/1"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_renew_before_forces_renewal_swapped_in_without_dropping_connections() {
    let current = Current::default();
    let http = Http01Responder::start(current.clone()).await;
    // Certificates valid for one hour.
    let pebble = Pebble::start(PebbleOptions {
        http_port: http.addr.port(),
        tls_port: http.addr.port(),
        validity_secs: Some(3600),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = config(pebble.directory(), &pebble, dir.path(), Challenge::Http01);
    let routes = || vec![RouteCert::acme("web", ["r.example.test"])];

    // First run: renew 30 min before expiry, so the new certificate is not due.
    let m =
        CertManager::new(Some(base.clone().with_renew_before(Duration::from_secs(1800)))).unwrap();
    current.set(&m);
    m.sync(routes()).unwrap();
    let task = m.start();
    let first = issued(&m, "web", &pebble).await;
    assert_eq!(first.state, CertState::Valid);
    task.stop();
    drop(m);
    let account_file =
        std::fs::read_dir(dir.path().join("accounts")).unwrap().next().unwrap().unwrap().path();
    let account = std::fs::read(&account_file).unwrap();

    // Second run: renew_before (2 h) is longer than the remaining validity: due at start,
    // and again at every check (every 2 s here).
    let cfg = base
        .with_renew_before(Duration::from_secs(7200))
        .with_check_interval(Duration::from_secs(2));
    let m = CertManager::new(Some(cfg)).unwrap();
    current.set(&m);
    m.sync(routes()).unwrap();
    assert_eq!(status(&m, "web").state, CertState::RenewalDue);
    let server = TlsServer::start(m.handle("web").unwrap()).await;
    let root = pebble.issuing_root().await;
    let mut before = Client::connect(server.addr, "r.example.test", &root).await.unwrap();
    assert_eq!(Some(before.serial()), first.serial);
    before.round_trip().await.unwrap();

    let _task = m.start();
    eventually("the renewed certificate", WAIT, || {
        let s = status(&m, "web");
        let renewed = s.serial != first.serial && s.last_success > first.last_success;
        async move { renewed }
    })
    .await;
    let second = status(&m, "web");
    assert!(second.last_error.is_none(), "{second:#?}");
    // The connection made with the old certificate keeps working; a new one gets the new.
    before.round_trip().await.expect("established connection survives the swap");
    let after = Client::connect(server.addr, "r.example.test", &root).await.unwrap();
    assert_eq!(Some(after.serial()), second.serial);
    // The account was reused, not created again.
    assert_eq!(std::fs::read(&account_file).unwrap(), account);
    assert_eq!(std::fs::read_dir(dir.path().join("accounts")).unwrap().count(), 1);
    // The next periodic check renews again (still inside renew_before).
    eventually("a renewal at the next periodic check", WAIT, || {
        let s = status(&m, "web");
        let again = s.serial != second.serial && s.serial != first.serial;
        async move { again }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_is_down_backs_off_keeps_the_old_certificate_and_recovers() {
    let current = Current::default();
    let http = Http01Responder::start(current.clone()).await;
    let pebble = Pebble::start(PebbleOptions {
        http_port: http.addr.port(),
        tls_port: http.addr.port(),
        validity_secs: Some(3600),
    })
    .await;
    let relay = Relay::start(pebble.acme).await;
    let dir = tempfile::tempdir().unwrap();
    // renew_before longer than the validity: every certificate is due, so after a failure
    // only the backoff spaces the attempts. No periodic check within the test.
    let cfg = config(pebble.directory_via(&relay), &pebble, dir.path(), Challenge::Http01)
        .with_renew_before(Duration::from_secs(7200))
        .with_check_interval(Duration::from_secs(3600));
    let m = CertManager::new(Some(cfg)).unwrap();
    current.set(&m);
    m.sync(vec![RouteCert::acme("web", ["d.example.test"])]).unwrap();
    let _task = m.start();
    let first = issued(&m, "web", &pebble).await;
    let root = pebble.issuing_root().await;
    let server = TlsServer::start(m.handle("web").unwrap()).await;

    relay.set_up(false).await;
    let down_at = tokio::time::Instant::now();
    let requests_before = m.acme_requests();
    let err = m.renew_now("web").await.unwrap_err();
    assert!(matches!(err, Error::Acme { .. }), "{err}");
    let s = status(&m, "web");
    assert_eq!((s.failures, s.state), (1, CertState::RenewalDue), "{s:#?}");
    assert!(s.last_error.as_deref().unwrap_or_default().starts_with("ACME "), "{s:#?}");
    let gap = s.next_attempt.unwrap().unix_seconds() - s.last_attempt.unwrap().unix_seconds();
    assert!((0..=3).contains(&gap), "first backoff ~1s: {s:#?}");

    // The loop retries with growing waits (1 s, then 2 s).
    eventually("three failed attempts", WAIT, || {
        let f = status(&m, "web").failures;
        async move { f >= 3 }
    })
    .await;
    let elapsed = down_at.elapsed();
    assert!(elapsed >= Duration::from_millis(2500), "1 s + 2 s of backoff, took {elapsed:?}");
    let s = status(&m, "web");
    let gap = s.next_attempt.unwrap().unix_seconds() - s.last_attempt.unwrap().unix_seconds();
    assert!((1..=4).contains(&gap), "capped backoff ~2s: {s:#?}");
    let sent = m.acme_requests() - requests_before;
    assert!(sent <= u64::from(s.failures) * 3, "{sent} requests for {} attempts", s.failures);
    // The old certificate is still served and still verifies.
    assert_eq!(s.serial, first.serial);
    assert!(!m.handle("web").unwrap().is_fallback());
    let c = Client::connect(server.addr, "d.example.test", &root).await.unwrap();
    assert_eq!(Some(c.serial()), first.serial);

    // The CA comes back: the next retry succeeds and clears the error.
    relay.set_up(true).await;
    eventually("a renewal once the CA is back", WAIT, || {
        let s = status(&m, "web");
        let ok = s.serial != first.serial && s.failures == 0 && s.last_error.is_none();
        async move { ok }
    })
    .await;
    let (code, out, err) = curl(server.addr, "d.example.test", &root).await;
    assert_eq!((code, out.as_str()), (0, "ok\n"), "curl after recovery: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_forgot_is_set_aside_and_created_again() {
    let current = Current::default();
    let http = Http01Responder::start(current.clone()).await;
    let opts = PebbleOptions {
        http_port: http.addr.port(),
        tls_port: http.addr.port(),
        validity_secs: None,
    };
    let first_ca = Pebble::start(opts).await;
    let relay = Relay::start(first_ca.acme).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(first_ca.directory_via(&relay), &first_ca, dir.path(), Challenge::Http01);
    let m = CertManager::new(Some(cfg)).unwrap();
    current.set(&m);
    m.sync(vec![RouteCert::acme("web", ["e.example.test"])]).unwrap();
    let _task = m.start();
    let first = issued(&m, "web", &first_ca).await;
    let accounts = dir.path().join("accounts");
    let account_file = std::fs::read_dir(&accounts).unwrap().next().unwrap().unwrap().path();
    let account = std::fs::read(&account_file).unwrap();

    // The same directory URL now reaches a CA that has never seen the account.
    let second_ca = Pebble::start_sharing_https(opts, &first_ca).await;
    relay.retarget(second_ca.acme).await;
    let err = m.renew_now("web").await.unwrap_err().to_string();
    assert!(err.contains("accountDoesNotExist"), "{err}\n{}", second_ca.logs());
    let mut aside = account_file.clone().into_os_string();
    aside.push(".rejected");
    assert_eq!(std::fs::read(&aside).unwrap(), account, "the old account is kept aside");

    let s = m.renew_now("web").await.unwrap_or_else(|e| panic!("{e}\n{}", second_ca.logs()));
    assert_ne!(s.issuer, first.issuer, "issued by the second CA");
    assert_eq!((s.failures, s.last_error.as_deref()), (0, None));
    let new_account = std::fs::read(&account_file).unwrap();
    assert_ne!(new_account, account, "a new account was created");
}

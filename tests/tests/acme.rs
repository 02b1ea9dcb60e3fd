//! Certificates through the real binary: `certificate = "auto"` against Debian's pebble (an
//! RFC 8555 CA started per test, `httpPort` / `tlsPort` pointed at the binary's own
//! listeners), HTTP-01 on a port that reads request heads and on a plain TCP port, TLS-ALPN-01
//! on the TLS port, curl verifying the served chains against pebble's root, a restart that
//! orders nothing, renewal (by request, and by a `renew_before` longer than the lifetime)
//! under an established TLS connection, a CA that is down or never reachable (backoff, old
//! certificate or self-signed fallback served, error in `/api/certificates`), the expiry
//! metric through promtool; and, without a CA, `[tls] default_certificate` and the upstream
//! TLS name of `terminate-and-reencrypt` against an `openssl s_server` backend.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use smartproxy_tests::pebble::{Pebble, PebbleOptions};
use smartproxy_tests::*;

/// Longest wait for an ACME exchange (pebble answers in well under a second).
const ACME_WAIT: Duration = Duration::from_secs(60);

/// Debug lines of the renewal loop, to see that a check ran.
const LOG: &[(&str, &str)] = &[("RUST_LOG", "info,smartproxy_acme=debug")];

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[acme]` for pebble, with short retries.
fn acme_section(pebble: &Pebble, storage: &Path, challenge: &str, extra: &str) -> String {
    format!(
        r#"
[acme]
directory = "{}"
email = "ops@example.com"
storage = "{}"
ca_roots = "{}"
challenge = "{challenge}"
retry_initial = "1s"
retry_max = "2s"
order_timeout = "30s"
{extra}
"#,
        pebble.directory(),
        storage.display(),
        pebble.https_ca.display()
    )
}

fn auto_route(name: &str, port: u16, domains: &[&str], backend: u16) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}], domains = [{}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate", certificate = "auto" }} }}
"#,
        domains.join(", ")
    )
}

fn head(admin: u16) -> String {
    format!("bind = [\"127.0.0.1\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n")
}

/// `GET /api/certificates`: the status of `route`.
fn cert_status(admin: u16, route: &str) -> Value {
    let r = get(admin, "/api/certificates");
    assert_eq!(r.status, 200, "{}", r.body);
    let all: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["route"] == route).cloned())
        .unwrap_or_else(|| panic!("no status for route {route}: {}", r.body))
}

/// Waits until `route` has an issued certificate and no order runs; returns its status.
fn issued(admin: u16, route: &str, pebble: &Pebble, proxy: &Proxy) -> Value {
    wait_for(&format!("a certificate for `{route}`"), ACME_WAIT, || {
        let s = cert_status(admin, route);
        !s["last_success"].is_null() && s["in_progress"] == false
    });
    let s = cert_status(admin, route);
    assert!(s["last_error"].is_null(), "{s:#}\n{}\n{}", pebble.logs(), proxy.output());
    s
}

/// curl verifying the chain served for `name` on `port` against `root`.
fn https(root: &Path, name: &str, port: u16, extra: &[&str]) -> (i32, String, String) {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}/");
    let root = root.display().to_string();
    let mut args = vec!["--cacert", &root, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// What `openssl x509` says about the certificate served on `port` for `sni` (`None`: no
/// SNI): `-serial`, `-issuer` or `-subject`, the value after `=`.
fn served(port: u16, sni: Option<&str>, field: &str) -> String {
    let openssl = require("openssl", "openssl");
    let mut cmd = Command::new(&openssl);
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    match sni {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pem =
        match (text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----")) {
            (Some(a), Some(b)) => text[a..b + 25].to_owned(),
            _ => return String::new(),
        };
    x509_field(pem.as_bytes(), "PEM", field)
}

/// `openssl x509 -noout -FIELD` of a certificate (`PEM` or `DER`).
fn x509_field(cert: &[u8], form: &str, field: &str) -> String {
    let openssl = require("openssl", "openssl");
    let mut child = Command::new(openssl)
        .args(["x509", "-noout", "-inform", form, &format!("-{field}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(cert).unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    line.split_once('=').map_or(line.clone(), |(_, v)| v.trim().to_owned())
}

/// Two hex serials (openssl: upper case, no leading zero; the status: DER bytes in lower case).
fn same_serial(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    !a.is_empty() && norm(a) == norm(b)
}

fn promtool_check(text: &str) {
    let promtool = require("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS client connection kept open across a certificate renewal; verifies the chain
/// against one root, like any client.
struct TlsClient {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    fn connect(port: u16, name: &str, root: &Path) -> TlsClient {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(root).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, connect(port));
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        TlsClient { s }
    }

    /// The leaf the server presented (DER).
    fn leaf(&self) -> Vec<u8> {
        self.s.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// One request on this connection; the body of the answer.
    fn round_trip(&mut self, body: &str) -> Result<(), String> {
        self.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.ends_with(body.as_bytes()) {
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

#[test]
fn http01_issuance_verified_chain_status_metrics_renewal_and_a_restart_that_orders_nothing() {
    let site = HttpBackend::start("site web");
    let pki = Pki::new();
    let manual = pki.leaf("manual", &["manual.test"]);
    let [admin, http_port, https_port] = reserve_ports::<3>();
    let pebble =
        Pebble::start(PebbleOptions { http_port, tls_port: https_port, validity_secs: None });
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let config = format!(
        r#"{}{}{}
[[routes]]
name = "manual"
match = {{ ports = [{https_port}], domains = ["manual.test"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{}", key = "{}" }} }} }}

[[routes]]
name = "to-https"
match = {{ ports = [{http_port}], domains = ["a.example.test", "b.example.test"] }}
action = {{ type = "socket-handler", handler = "redirect", location = "https://{{domain}}:{https_port}{{path}}" }}
"#,
        head(admin),
        acme_section(&pebble, &storage, "http-01", ""),
        auto_route("web", https_port, &["a.example.test", "b.example.test"], site.port()),
        site.port(),
        manual.cert.display(),
        manual.key.display(),
    );
    let proxy = Proxy::start_with(&config, "toml", &[http_port, https_port], LOG);
    let s = issued(admin, "web", &pebble, &proxy);
    assert_eq!(s["state"], "valid", "{s:#}");
    assert_eq!(s["source"], "acme");
    assert_eq!(s["domains"], serde_json::json!(["a.example.test", "b.example.test"]));
    assert_eq!(s["names"], serde_json::json!(["a.example.test", "b.example.test"]));
    assert!(s["issuer"].as_str().unwrap().contains("Pebble"), "{s:#}");
    for k in ["not_before", "not_after", "renew_at", "last_attempt", "serial"] {
        assert!(s[k].is_string(), "{k}: {s:#}");
    }
    assert_eq!(s["failures"], 0);
    let m = cert_status(admin, "manual");
    assert_eq!((m["source"].as_str(), m["state"].as_str()), (Some("manual"), Some("valid")));
    assert!(m["issuer"].as_str().unwrap().contains("smartproxy test CA"), "{m:#}");
    // Pebble validated both names on the binary's own port, through the port-80 route
    // (whose request heads are read for routing).
    let out = proxy.output();
    assert!(out.matches("ACME http-01 validation answered").count() >= 2, "{out}");

    // The served chain verifies against pebble's root, for both names.
    let root = pebble.issuing_root();
    for name in ["a.example.test", "b.example.test"] {
        let (code, body, err) = https(&root, name, https_port, &[]);
        assert_eq!((code, body.as_str()), (0, "site web"), "curl {name}: {err}");
    }
    let serial = s["serial"].as_str().unwrap().to_owned();
    assert!(same_serial(&served(https_port, Some("a.example.test"), "serial"), &serial));
    // The port-80 route still redirects what is not a validation request.
    let (code, out, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--resolve",
        &format!("a.example.test:{http_port}:127.0.0.1"),
        &format!("http://a.example.test:{http_port}/x"),
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, format!("301 https://a.example.test:{https_port}/x").as_str()),
        "{err}"
    );

    // The expiry gauge, for the ACME and the manual certificate, in a file promtool accepts.
    let metrics = get(admin, "/metrics").body;
    for (route, domain) in
        [("web", "a.example.test"), ("web", "b.example.test"), ("manual", "manual.test")]
    {
        let series = format!(
            "smartproxy_tls_certificate_expiry_timestamp_seconds{{route=\"{route}\",domain=\"{domain}\"}} "
        );
        let value: i64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                as i64;
        assert!(value > now + 86_400, "{series}{value}");
    }
    promtool_check(&metrics);

    // POST renew: a new certificate, served to the next handshake.
    let r = http(admin, "POST", "/api/certificates/web/renew", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed: Value = serde_json::from_str(&r.body).unwrap();
    let new_serial = renewed["serial"].as_str().unwrap().to_owned();
    assert_ne!(new_serial, serial);
    assert!(same_serial(&served(https_port, Some("b.example.test"), "serial"), &new_serial));
    let (code, _, err) = https(&root, "a.example.test", https_port, &[]);
    assert_eq!(code, 0, "{err}");
    for (method, path, want) in [
        ("POST", "/api/certificates/manual/renew", 409),
        ("POST", "/api/certificates/nope/renew", 404),
        ("GET", "/api/certificates/web/renew", 405),
    ] {
        let r = http(admin, method, path, &[]);
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
    }

    // A restart with valid certificates in the store sends nothing to the CA.
    let orders = pebble.orders();
    assert!(orders >= 2, "pebble logs its orders:\n{}", pebble.logs());
    drop(proxy);
    let mut proxy = Proxy::start_with(&config, "toml", &[http_port, https_port], LOG);
    proxy.wait_for_log("certificate renewal check done");
    let out = proxy.output();
    assert!(!out.contains("ordering an ACME certificate"), "{out}");
    assert_eq!(pebble.orders(), orders);
    let s = cert_status(admin, "web");
    assert_eq!(
        (s["state"].as_str(), s["serial"].as_str()),
        (Some("valid"), Some(new_serial.as_str()))
    );
    let (code, body, err) = https(&root, "b.example.test", https_port, &[]);
    assert_eq!((code, body.as_str()), (0, "site web"), "{err}");
    // Files of the store: keys 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(storage.join("certs/web.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(pebble);
}

#[test]
fn tls_alpn01_issuance_then_renewal_under_an_open_connection_then_the_ca_goes_down() {
    let site = HttpBackend::start("site alpn");
    let [admin, https_port, unused_http] = reserve_ports::<3>();
    // Certificates of one hour, renewed two hours before expiry: due at every check (2 s).
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: unused_http,
        tls_port: https_port,
        validity_secs: Some(3600),
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = "renew_before = \"2h\"\ncheck_interval = \"2s\"";
    let config = format!(
        "{}{}{}",
        head(admin),
        acme_section(&pebble, &dir.path().join("acme"), "tls-alpn-01", extra),
        auto_route("web", https_port, &["alpn.example.test"], site.port()),
    );
    let mut proxy = Proxy::start_with(&config, "toml", &[https_port], LOG);
    issued(admin, "web", &pebble, &proxy);
    proxy.wait_for_log("ACME tls-alpn-01 validation answered");
    proxy.wait_for_log("renew_before is not shorter than the certificate's lifetime");
    let root = pebble.issuing_root();

    // An established connection keeps working while renewals swap the certificate.
    let mut open = TlsClient::connect(https_port, "alpn.example.test", &root);
    open.round_trip("site alpn").unwrap();
    let first = x509_field(&open.leaf(), "DER", "serial");
    wait_for("a renewed certificate served to new handshakes", ACME_WAIT, || {
        let now = served(https_port, Some("alpn.example.test"), "serial");
        !now.is_empty() && now != first
    });
    open.round_trip("site alpn").unwrap();
    let (code, body, err) = https(&root, "alpn.example.test", https_port, &[]);
    assert_eq!((code, body.as_str()), (0, "site alpn"), "{err}");

    // The CA goes down: the failures back off and are reported; the current certificate
    // stays in service.
    pebble.stop();
    let served_before = served(https_port, Some("alpn.example.test"), "serial");
    wait_for("two failed renewals in a row", ACME_WAIT, || {
        cert_status(admin, "web")["failures"].as_u64().unwrap_or(0) >= 2
    });
    let s = cert_status(admin, "web");
    assert!(s["last_error"].as_str().is_some_and(|e| e.starts_with("ACME")), "{s:#}");
    assert!(s["next_attempt"].is_string(), "{s:#}");
    assert_eq!(s["state"], "renewal_due", "{s:#}");
    let out = proxy.output();
    assert!(out.contains("ACME order failed") && out.contains("failures=2"), "{out}");
    assert!(out.contains("next_attempt="), "{out}");
    let (code, body, err) = https(&root, "alpn.example.test", https_port, &[]);
    assert_eq!((code, body.as_str()), (0, "site alpn"), "the old certificate is served: {err}");
    assert_eq!(served(https_port, Some("alpn.example.test"), "serial"), served_before);
    open.round_trip("site alpn").unwrap();
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics.contains(
            "smartproxy_tls_certificate_expiry_timestamp_seconds{route=\"web\",domain=\"alpn.example.test\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn http01_on_a_plain_tcp_port_that_reads_nothing_otherwise_and_reloads() {
    let site = HttpBackend::start("site plain");
    let echo = Backend::echo();
    let [admin, plain_port, https_port] = reserve_ports::<3>();
    let pebble = Pebble::start(PebbleOptions {
        http_port: plain_port,
        tls_port: https_port,
        validity_secs: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let config = |domains: &[&str], acme_extra: &str| {
        format!(
            r#"{}{}{}
[[routes]]
name = "plain"
match = {{ ports = [{plain_port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}] }}
"#,
            head(admin),
            acme_section(&pebble, &storage, "http-01", acme_extra),
            auto_route("web", https_port, domains, site.port()),
            echo.port(),
        )
    };
    let mut proxy = Proxy::start_with(
        &config(&["plain.example.test"], ""),
        "toml",
        &[plain_port, https_port],
        LOG,
    );
    issued(admin, "web", &pebble, &proxy);
    proxy.wait_for_log("ACME http-01 validation answered");
    let root = pebble.issuing_root();
    let (code, body, err) = https(&root, "plain.example.test", https_port, &[]);
    assert_eq!((code, body.as_str()), (0, "site plain"), "{err}");
    // No order waits: the plain port forwards, a validation-like request included.
    let mut s = connect(plain_port);
    let req = b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(echo_roundtrip(&mut s, req).unwrap(), req);
    assert_eq!(echo_roundtrip(&mut s, b"more\n").unwrap(), b"more\n");

    // Reload with another domain on the route: the same manager orders a certificate for
    // both names (validated on the plain port again), the open connection is untouched.
    let reloads = |n: usize| move |o: &str| o.matches("configuration reloaded").count() >= n;
    proxy.reload(&config(&["plain.example.test", "second.example.test"], ""));
    proxy.wait_for_output("the first reload", reloads(1));
    wait_for("a certificate for both names", ACME_WAIT, || {
        let s = cert_status(admin, "web");
        s["names"] == serde_json::json!(["plain.example.test", "second.example.test"])
            && s["in_progress"] == false
    });
    let st = cert_status(admin, "web");
    let serial = st["serial"].as_str().unwrap().to_owned();
    let renew_at_30d = st["renew_at"].as_str().unwrap().to_owned();
    let (code, _, err) = https(&root, "second.example.test", https_port, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(echo_roundtrip(&mut s, b"still\n").unwrap(), b"still\n");

    // Reload with a changed [acme] table: a new manager reads the store, orders nothing.
    let orders = pebble.orders();
    let checks = |o: &str| o.matches("certificate renewal check done").count();
    let before = checks(&proxy.output());
    proxy.reload(&config(&["plain.example.test", "second.example.test"], "renew_before = \"20d\""));
    proxy.wait_for_output("the second reload", reloads(2));
    proxy.wait_for_output("the new manager's first check", |o| checks(o) > before);
    assert_eq!(pebble.orders(), orders, "{}", pebble.logs());
    let st = cert_status(admin, "web");
    assert_eq!(
        (st["state"].as_str(), st["serial"].as_str()),
        (Some("valid"), Some(serial.as_str()))
    );
    // RFC 3339 times in UTC compare as strings: 20 days before expiry is later than 30.
    assert!(st["renew_at"].as_str().unwrap() > renew_at_30d.as_str(), "{st:#}");
}

#[test]
fn an_unreachable_ca_leaves_the_self_signed_fallback_and_the_error_in_the_status() {
    let site = HttpBackend::start("site fallback");
    let [admin, https_port, closed] = reserve_ports::<3>();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}
[acme]
directory = "https://localhost:{closed}/dir"
storage = "{}"
retry_initial = "1s"
retry_max = "2s"
{}"#,
        head(admin),
        dir.path().join("acme").display(),
        auto_route("web", https_port, &["fallback.example.test"], site.port()),
    );
    let proxy = Proxy::start_with(&config, "toml", &[https_port], LOG);
    wait_for("a failed order", ACME_WAIT, || {
        cert_status(admin, "web")["failures"].as_u64().unwrap_or(0) >= 1
    });
    let s = cert_status(admin, "web");
    assert_eq!(s["state"], "obtaining", "{s:#}");
    assert!(s["not_after"].is_null() && s["issuer"].is_null(), "{s:#}");
    assert!(s["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{s:#}");
    // The handshake completes with a self-signed certificate for the route's domains:
    // verifying clients refuse it, others get through.
    let issuer = served(https_port, Some("fallback.example.test"), "issuer");
    assert!(issuer.contains("smartproxy fallback"), "{issuer}");
    let resolve = format!("fallback.example.test:{https_port}:127.0.0.1");
    let url = format!("https://fallback.example.test:{https_port}/");
    let (code, _, err) = curl(&["--resolve", &resolve, &url]);
    assert_ne!(code, 0, "{err}");
    let (code, body, err) = curl(&["-k", "--resolve", &resolve, &url]);
    assert_eq!((code, body.as_str()), (0, "site fallback"), "{err}");
    // No expiry series for a certificate that does not exist yet.
    let metrics = get(admin, "/metrics").body;
    assert!(!metrics.contains("tls_certificate_expiry"), "{metrics}");
    let out = proxy.output();
    assert!(out.contains("ACME order failed"), "{out}");
}

#[test]
fn validate_refuses_auto_routes_that_cannot_get_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smartproxy.toml");
    std::fs::write(
        &file,
        r#"[[routes]]
name = "wild"
match = { ports = [443], domains = ["*.example.com", "10.0.0.1"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], tls = { mode = "terminate", certificate = "auto" } }
"#,
    )
    .unwrap();
    let out = Command::new(smartproxy_bin()).args(["validate", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "smartproxy.toml:4: routes[0].action.tls.certificate: certificate = \"auto\" needs an [acme] section",
        "smartproxy.toml:3: routes[0].match.domains[0]: `*.example.com`: certificate = \"auto\" cannot cover a wildcard (it needs the DNS-01 challenge",
        "smartproxy.toml:3: routes[0].match.domains[1]: `10.0.0.1`: certificate = \"auto\": IP addresses cannot get ACME certificates",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
}

#[test]
fn default_certificate_answers_handshakes_that_no_route_names() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let fallback = pki.leaf("default", &["default.test"]);
    let site = HttpBackend::start("catch-all");
    let [with_default, without, admin] = reserve_ports::<3>();
    let route = |port: u16| {
        format!(
            r#"
[[routes]]
name = "catch-all-{port}"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{}", key = "{}" }} }} }}
"#,
            site.port(),
            a.cert.display(),
            a.key.display()
        )
    };
    let config = format!(
        "{}[tls]\ndefault_certificate = {{ cert = \"{}\", key = \"{}\" }}\n{}",
        head(admin),
        fallback.cert.display(),
        fallback.key.display(),
        route(with_default)
    );
    let _one = Proxy::start(&config, &[with_default]);
    let _two = Proxy::start(&format!("bind = [\"127.0.0.1\"]\n{}", route(without)), &[without]);
    let cn = |port, sni| served(port, sni, "subject");
    // A name the route's certificate has: that certificate.
    assert!(cn(with_default, Some("a.test")).contains("a.test"));
    // An unknown name, or none: the default certificate.
    assert!(cn(with_default, Some("unknown.test")).contains("default.test"));
    assert!(cn(with_default, None).contains("default.test"));
    // Without [tls] default_certificate: the route's own, as before.
    assert!(cn(without, Some("unknown.test")).contains("a.test"));
    assert!(cn(without, None).contains("a.test"));
    let ca = pki.ca_pem.display().to_string();
    let (code, body, err) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &format!("default.test:{with_default}:127.0.0.1"),
        &format!("https://default.test:{with_default}/"),
    ]);
    assert_eq!((code, body.as_str()), (0, "catch-all"), "{err}");
    // The default certificate is in the status and the expiry metric like a route's.
    let d = cert_status(admin, "tls.default_certificate");
    assert_eq!((d["source"].as_str(), d["state"].as_str()), (Some("manual"), Some("valid")));
    assert_eq!(d["domains"], serde_json::json!(["default.test"]));
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics.contains("{route=\"tls.default_certificate\",domain=\"default.test\"} "),
        "{metrics}"
    );
    assert!(metrics.contains("{route=\"catch-all-"), "{metrics}");
}

#[test]
fn upstream_tls_name_is_the_target_host_unless_named_or_sni() {
    let pki = Pki::new();
    let front = pki.leaf("front", &["front.test", "backend.local"]);
    // The backend's certificate: backend.local and 127.0.0.1 (Pki adds the address).
    let backend = OpensslServer::start(&pki.leaf("backend", &["backend.local"]));
    let [by_host, named, wrong, sni] = reserve_ports::<4>();
    let route = |name: &str, port: u16, extra: &str| {
        format!(
            r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}], tls = {{ mode = "terminate-and-reencrypt", certificate = {{ cert = "{}", key = "{}" }}, upstream_ca = "{}"{extra} }} }}
"#,
            backend.port,
            front.cert.display(),
            front.key.display(),
            pki.ca_pem.display()
        )
    };
    let config = format!(
        "bind = [\"127.0.0.1\"]\n{}{}{}{}",
        route("by-host", by_host, ""),
        route("named", named, ", upstream_server_name = \"backend.local\""),
        route("wrong", wrong, ", upstream_server_name = \"other.local\""),
        route("sni", sni, ", upstream_server_name = \"{sni}\""),
    );
    let mut proxy = Proxy::start(&config, &[by_host, named, wrong, sni]);
    let ca = pki.ca_pem.display().to_string();
    let get = |port: u16, name: &str| {
        curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/"),
        ])
    };
    // By default the backend dialled as 127.0.0.1 is verified as 127.0.0.1, whatever the
    // client's SNI (front.test, which the backend's certificate does not have).
    for (port, client_name, ok) in [
        (by_host, "front.test", true),
        (named, "front.test", true),
        (wrong, "front.test", false),
        (sni, "backend.local", true),
        (sni, "front.test", false),
    ] {
        let (code, body, err) = get(port, client_name);
        if ok {
            assert_eq!(code, 0, "port {port} with SNI {client_name}: {err}");
            assert!(body.contains("Cipher"), "s_server -www status page: {body}");
        } else {
            assert_ne!(code, 0, "port {port} with SNI {client_name} must fail: {body}");
        }
    }
    // The refusal is logged as the client's connection closes: curl may return before the
    // log line has been read from the proxy's output, so wait for both lines.
    proxy.wait_for_output("both upstream handshake failures logged", |out| {
        out.contains("wrong: upstream TLS handshake failed")
            && out.contains("sni: upstream TLS handshake failed")
    });
}

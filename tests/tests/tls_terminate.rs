//! TLS termination with real clients (curl, openssl s_client): a certificate per domain on one
//! port, re-encryption to a TLS backend (openssl s_server) with the upstream verified against
//! the test CA, a mismatch refused, `upstream_verify = false`, and HTTP -> HTTPS redirects.

use smartproxy_tests::*;

const HEAD: &str = "bind = [\"127.0.0.1\"]\n";

fn terminate(name: &str, port: u16, domain: &str, backend: u16, leaf: &LeafFiles) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}], domains = ["{domain}"] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate", certificate = {{ cert = "{c}", key = "{k}" }} }} }}
"#,
        c = leaf.cert.display(),
        k = leaf.key.display()
    )
}

fn https(ca: &str, domain: &str, port: u16, path: &str) -> (i32, String, String) {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    let url = format!("https://{domain}:{port}{path}");
    curl(&["--cacert", ca, "--resolve", &resolve, &url])
}

#[test]
fn terminates_two_domains_on_one_port_with_their_own_certificates() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let site_a = HttpBackend::start("site a");
    let site_b = HttpBackend::start("site b");
    let (_proxy, [port]) = Proxy::start_on(|[port]| {
        format!(
            "{HEAD}{}{}",
            terminate("a", port, "a.test", site_a.port(), &a),
            terminate("b", port, "b.test", site_b.port(), &b)
        )
    });
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    for (domain, body) in [("a.test", "site a"), ("b.test", "site b"), ("a.test", "site a")] {
        // curl verifies the certificate against the test CA and the name.
        let (code, out, err) = https(&ca, domain, port, "/");
        assert_eq!(code, 0, "curl {domain}: {err}");
        assert_eq!(out, body);
        let subject = served_subject(port, domain);
        assert!(subject.contains(&format!("CN = {domain}")), "{domain}: {subject}");
    }
    assert_eq!((site_a.requests(), site_b.requests()), (2, 1));
    // A client that does not trust the CA refuses the proxy's certificate.
    let resolve = format!("a.test:{port}:127.0.0.1");
    let (code, _, _) = curl(&["--resolve", &resolve, &format!("https://a.test:{port}/")]);
    assert_ne!(code, 0);
    // TLS 1.2 and 1.3 are both accepted by default.
    for v in ["--tlsv1.2", "--tlsv1.3"] {
        let resolve = format!("b.test:{port}:127.0.0.1");
        let url = format!("https://b.test:{port}/");
        let max = if v == "--tlsv1.2" { "1.2" } else { "1.3" };
        let (code, out, err) =
            curl(&["--cacert", &ca, "--resolve", &resolve, v, "--tls-max", max, &url]);
        assert_eq!((code, out.as_str()), (0, "site b"), "{v}: {err}");
    }
}

#[test]
fn tls13_only_route_refuses_a_tls12_client() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let site = HttpBackend::start("v13");
    let (_proxy, [port]) = Proxy::start_on(|[port]| {
        let route = terminate("a", port, "a.test", site.port(), &a).replace(
            "tls = { mode",
            "tls = { min_version = \"1.3\", session_resumption = false, mode",
        );
        format!("{HEAD}{route}")
    });
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/");
    let (code, _, _) = curl(&["--cacert", &ca, "--resolve", &resolve, "--tls-max", "1.2", &url]);
    assert_ne!(code, 0, "TLS 1.2 refused");
    let (code, out, err) = curl(&["--cacert", &ca, "--resolve", &resolve, &url]);
    assert_eq!((code, out.as_str()), (0, "v13"), "{err}");
    assert_eq!(site.requests(), 1);
}

fn reencrypt(name: &str, port: u16, backend: u16, front: &LeafFiles, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
match = {{ ports = [{port}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], tls = {{ mode = "terminate-and-reencrypt", certificate = {{ cert = "{c}", key = "{k}" }}{extra} }} }}
"#,
        c = front.cert.display(),
        k = front.key.display()
    )
}

#[test]
fn reencrypts_to_a_tls_backend_and_refuses_an_upstream_mismatch() {
    let pki = Pki::new();
    let front = pki.leaf("front", &["front.test"]);
    let back = pki.leaf("back", &["backend.test"]);
    let server = OpensslServer::start(&back);
    // A backend whose certificate comes from a CA the proxy does not trust.
    let stranger_ca = Pki::new();
    let stranger = OpensslServer::start(&stranger_ca.leaf("stranger", &["backend.test"]));
    let ca_file = pki.ca_pem.display().to_string();
    let ports = |[ok, by_ip, wrong_name, wrong_ca, no_verify]: [u16; 5]| {
        format!(
            "{HEAD}{}{}{}{}{}",
            reencrypt(
                "ok",
                ok,
                server.port,
                &front,
                &format!(r#", upstream_ca = "{ca_file}", upstream_server_name = "backend.test""#)
            ),
            // The target host (127.0.0.1, in the leaf's SANs) named explicitly; it is also what
            // is verified without upstream_server_name (tests/acme.rs covers the default).
            reencrypt(
                "by-ip",
                by_ip,
                server.port,
                &front,
                &format!(r#", upstream_ca = "{ca_file}", upstream_server_name = "127.0.0.1""#)
            ),
            reencrypt(
                "wrong-name",
                wrong_name,
                server.port,
                &front,
                &format!(r#", upstream_ca = "{ca_file}", upstream_server_name = "other.test""#)
            ),
            reencrypt(
                "wrong-ca",
                wrong_ca,
                stranger.port,
                &front,
                &format!(r#", upstream_ca = "{ca_file}", upstream_server_name = "backend.test""#)
            ),
            reencrypt("no-verify", no_verify, stranger.port, &front, ", upstream_verify = false"),
        )
    };
    let (mut proxy, [ok, by_ip, wrong_name, wrong_ca, no_verify]) = Proxy::start_on(ports);
    // The one route without verification is named in a warning.
    proxy.wait_for_events(
        1,
        "upstream_verify = false: the certificates of this route's targets are NOT verified",
        &[("route", "no-verify")],
    );
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    for port in [ok, by_ip, no_verify] {
        let (code, body, err) = https(&ca, "front.test", port, "/");
        assert_eq!(code, 0, "port {port}: {err}");
        // s_server -www answers with its status page, which names the negotiated cipher.
        assert!(body.contains("Cipher"), "port {port}: {body}");
    }
    for port in [wrong_name, wrong_ca] {
        let (code, body, err) = https(&ca, "front.test", port, "/");
        assert_ne!(code, 0, "port {port} must fail: {body}");
        assert!(body.is_empty(), "nothing served on {port}: {body}");
        assert!(
            err.contains("Empty reply") || err.contains("closed") || err.contains("reset"),
            "{err}"
        );
    }
    // Refused for the upstream handshake, on each of the two ports.
    for (port, route) in [(wrong_name, "wrong-name"), (wrong_ca, "wrong-ca")] {
        let line = proxy.wait_for_event(
            "connection refused",
            &[("port", &port.to_string()), ("reason", "backend_unavailable")],
        );
        assert!(
            line.contains(&format!(" detail=\"{route}: upstream TLS handshake failed: ")),
            "{line}"
        );
    }
}

#[test]
fn http_is_redirected_to_https_which_is_terminated() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let site = HttpBackend::start("secure");
    let (_proxy, [http_port, https_port]) = Proxy::start_on(|[http_port, https_port]| {
        format!(
            r#"{HEAD}
[[routes]]
name = "http-to-https"
match = {{ ports = [{http_port}] }}
action = {{ type = "socket-handler", handler = "redirect", location = "https://{{domain}}:{https_port}{{path}}?{{query}}", status = 301 }}
{}"#,
            terminate("https", https_port, "a.test", site.port(), &a)
        )
    });
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    let resolve_http = format!("a.test:{http_port}:127.0.0.1");
    let (code, out, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--resolve",
        &resolve_http,
        &format!("http://a.test:{http_port}/some/path?q=1"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("301 https://a.test:{https_port}/some/path?q=1"));
    // Following the redirect lands on the terminated HTTPS route.
    let resolve_https = format!("a.test:{https_port}:127.0.0.1");
    let (code, out, err) = curl(&[
        "-L",
        "--cacert",
        &ca,
        "--resolve",
        &resolve_http,
        "--resolve",
        &resolve_https,
        &format!("http://a.test:{http_port}/x"),
    ]);
    assert_eq!((code, out.as_str()), (0, "secure"), "{err}");
}

#[test]
fn a_bad_certificate_is_refused_at_start_and_on_sighup() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let site = HttpBackend::start("ok");
    let good = |port: u16| format!("{HEAD}{}", terminate("a", port, "a.test", site.port(), &a));
    let (mut proxy, [port]) = Proxy::start_on(|[port]| good(port));
    let good = good(port);
    let bad_cert = pki.dir.path().join("bad.pem");
    std::fs::write(&bad_cert, "garbage\n").unwrap();
    let bad = good.replace(&a.cert.display().to_string(), &bad_cert.display().to_string());
    proxy.reload(&bad);
    proxy.wait_for_events(1, "configuration refused, keeping the old one", &[]);
    // The error line that follows names the file's line, the key and the certificate file.
    let file = proxy.config_path.display().to_string();
    let out = proxy.output();
    assert!(
        out.lines().any(|l| l.starts_with(&format!("  {file}:"))
            && l.contains(": routes[0].action.tls.certificate.cert: ")
            && l.contains("bad.pem")),
        "{out}"
    );
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    let (code, out, err) = https(&ca, "a.test", port, "/");
    assert_eq!((code, out.as_str()), (0, "ok"), "the old certificate still serves: {err}");

    // `smartproxy validate` reports the same error.
    let cfg = pki.dir.path().join("bad.toml");
    std::fs::write(&cfg, &bad).unwrap();
    let out = std::process::Command::new(smartproxy_bin())
        .args(["validate", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("routes[0].action.tls.certificate.cert") && text.contains("bad.pem"),
        "{text}"
    );
}

#[test]
fn reencrypts_to_nginx_over_https_with_alpn() {
    let pki = Pki::new();
    let front = pki.leaf("front", &["front.test"]);
    let back = pki.leaf("back", &["backend.test"]);
    let nginx = NginxTls::start(&back, "hello from nginx");
    let ca_file = pki.ca_pem.display().to_string();
    let (_proxy, [port]) = Proxy::start_on(|[port]| {
        let route = reencrypt(
            "to-nginx",
            port,
            nginx.port,
            &front,
            &format!(
                r#", upstream_ca = "{ca_file}", upstream_server_name = "backend.test", alpn = ["http/1.1"]"#
            ),
        );
        format!("{HEAD}{route}")
    });
    for _ in 0..3 {
        let (code, body, err) = https(&ca_file, "front.test", port, "/");
        assert_eq!((code, body.as_str()), (0, "hello from nginx"), "{err}");
    }
}

#[test]
fn path_routes_behind_termination_pick_the_backend_per_request_path() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let (api, web) = (HttpBackend::start("api"), HttpBackend::start("web"));
    let (_proxy, [port]) = Proxy::start_on(|[port]| {
        let api_route = terminate("api", port, "a.test", api.port(), &a)
            .replace("domains = [\"a.test\"] }", "domains = [\"a.test\"], path = \"/api/*\" }");
        format!("{HEAD}{}{api_route}", terminate("web", port, "a.test", web.port(), &a))
    });
    let ca = pki.ca_pem.to_string_lossy().into_owned();
    for (path, body) in
        [("/api/v1/users", "api"), ("/", "web"), ("/apis", "web"), ("/api/x", "api")]
    {
        let (code, out, err) = https(&ca, "a.test", port, path);
        assert_eq!((code, out.as_str()), (0, body), "{path}: {err}");
    }
}

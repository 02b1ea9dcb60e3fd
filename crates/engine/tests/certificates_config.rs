//! `[acme]`, `certificate = "auto"`, `[tls] default_certificate` and `upstream_server_name`
//! in the configuration: every error with its key path and line.

use smartproxy_engine::routing::{ForwardAction, RouteAction, RouteConfig, RouteMatch};
use smartproxy_engine::routing::{Target, TlsConfig, TlsMode};
use smartproxy_engine::{Config, Format};

fn errors(text: &str) -> String {
    Config::from_str(text, Format::Toml).unwrap_err().to_string()
}

#[test]
fn acme_and_auto_route_errors_have_keys_and_lines() {
    let text = r#"[acme]
directory = "http://ca.example/dir"
email = "ops"
storage = "/tmp/smartproxy-acme-test-never-created"
renew_before = "0s"
challenge = "dns-01"

[tls]
default_certificate = { cert = "/nonexistent/default.pem", key = "/nonexistent/default.key" }

[[routes]]
name = "ip"
match = { ports = [443], domains = ["a.example.com", "127.0.0.1", "localhost"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], tls = { mode = "terminate", certificate = "auto" } }

[[routes]]
name = "wildcard"
match = { ports = [444], domains = ["*.example.com"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], tls = { mode = "terminate", certificate = "auto" } }

[[routes]]
name = "placeholder"
match = { ports = [445] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], tls = { mode = "terminate-and-reencrypt", certificate = "auto", upstream_server_name = "{host}" } }
"#;
    // After the serde error (`dns-01`), the other [acme] values are still checked.
    insta::assert_snapshot!("acme_errors", errors(text));
}

#[test]
fn auto_needs_an_acme_section() {
    let text = r#"
[[routes]]
name = "web"
match = { ports = [443], domains = ["a.example.com"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], tls = { mode = "terminate", certificate = "auto" } }
"#;
    insta::assert_snapshot!(errors(text), @r#"
    1 configuration error
      line 5: routes[0].action.tls.certificate: certificate = "auto" needs an [acme] section (the CA, the certificate store)
    "#);
    // Routes written in code are checked the same way.
    let route = RouteConfig::new(
        RouteMatch::ports(443).with_domains(["a.example.com"]),
        RouteAction::Forward(
            ForwardAction::to(vec![Target::new("127.0.0.1", 9000)])
                .with_tls(TlsConfig::new(TlsMode::Terminate).with_auto_certificate()),
        ),
    )
    .with_name("web");
    let e = Config::from_routes(vec![route.clone()]).unwrap_err().to_string();
    assert!(
        e.contains("routes[0].action.tls.certificate: certificate = \"auto\" needs an [acme]"),
        "{e}"
    );
    let e = Config::default().with_routes(vec![route.clone()], &[]).unwrap_err().to_string();
    assert!(e.contains("needs an [acme] section"), "{e}");

    // With [acme] (no directory is created by parsing), the same route is fine, also when
    // routes are replaced later.
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let with_acme = format!(
        "[acme]\nstorage = \"{}\"\nemail = \"ops@example.com\"\nrenew_before = \"20d\"\n{text}",
        storage.display()
    );
    let c = Config::from_str(&with_acme, Format::Toml).unwrap();
    let acme = c.acme.clone().unwrap();
    assert_eq!(acme.renew_before, std::time::Duration::from_secs(20 * 86_400));
    assert_eq!(acme.directory, smartproxy_engine::acme::LETS_ENCRYPT_DIRECTORY);
    assert!(!storage.exists(), "validation does not create the store");
    assert!(c.with_routes(vec![route], &[]).is_ok());
}

#[test]
fn default_certificate_is_loaded_once_and_kept_with_new_routes() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["default.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("d.pem"), dir.path().join("d.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let text = format!(
        "[tls]\ndefault_certificate = {{ cert = \"{}\", key = \"{}\" }}\n",
        c.display(),
        k.display()
    );
    let config = Config::from_str(&text, Format::Toml).unwrap();
    assert_eq!(config.tls.default_certificate.as_ref().unwrap().cert, c);
    // The files are read at load: removing them afterwards changes nothing.
    std::fs::remove_file(&c).unwrap();
    assert!(config.with_routes(Vec::new(), &[]).is_ok());
    // A key that is not the certificate's names the key.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, other.serialize_pem()).unwrap();
    let e = errors(&format!("workers = 1\n{text}"));
    assert!(e.contains("line 3: tls.default_certificate.key: "), "{e}");
    assert!(e.contains("does not fit the certificate"), "{e}");
    let e = errors("[tls]\ndefault_certificate = { cert = \"a.pem\" }\n");
    assert!(e.contains("tls.default_certificate: missing field `key`"), "{e}");
    // Its name in the certificate status is taken.
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let e = errors(&format!(
        "{text}[[routes]]\nname = \"tls.default_certificate\"\nmatch = {{ ports = [1] }}\naction = {{ type = \"socket-handler\", handler = \"echo\" }}\n"
    ));
    assert!(
        e.contains(
            "line 4: routes[0].name: `tls.default_certificate` names [tls] default_certificate"
        ),
        "{e}"
    );
}

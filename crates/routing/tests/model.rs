//! The route model reads the keys of DESIGN.md section 3.

use smartproxy_routing::*;

#[derive(Debug, serde::Deserialize)]
struct File {
    routes: Vec<RouteConfig>,
}

/// The `[[routes]]` example of DESIGN.md section 3.
const DESIGN: &str = include_str!("fixtures/design_routes.toml");

#[test]
fn design_example_reads() {
    let f: File = toml::from_str(DESIGN).unwrap();
    assert_eq!(f.routes.len(), 4);
    let r = &f.routes[0];
    assert_eq!(r.priority, 10);
    assert!(r.matcher.ports.contains(8443) && r.matcher.ports.contains(9005));
    assert!(!r.matcher.ports.contains(9011));
    let RouteAction::Forward(fwd) = &r.action else { panic!("forward") };
    assert_eq!(fwd.send_proxy_protocol, SendProxyProtocol::V2);
    assert_eq!(fwd.tls.as_ref().unwrap().mode, TlsMode::Passthrough);
    let RouteAction::SocketHandler(h) = &f.routes[3].action else { panic!("handler") };
    assert_eq!(h.handler, "redirect");
    assert_eq!(h.status, Some(301));
}

#[test]
fn send_proxy_protocol_forms() {
    for (text, want) in [
        ("false", SendProxyProtocol::Off),
        ("true", SendProxyProtocol::V1),
        ("\"v1\"", SendProxyProtocol::V1),
        ("\"v2\"", SendProxyProtocol::V2),
    ] {
        let doc = format!(
            "[[routes]]\nmatch = {{ ports = 1 }}\naction = {{ type = \"forward\", target = {{ host = \"h\", port = \"preserve\" }}, send_proxy_protocol = {text} }}"
        );
        let f: File = toml::from_str(&doc).unwrap();
        let RouteAction::Forward(fwd) = &f.routes[0].action else { panic!() };
        assert_eq!(fwd.send_proxy_protocol, want, "{text}");
        assert_eq!(fwd.targets[0].port, TargetPort::Preserve);
    }
}

#[test]
fn unknown_keys_are_errors() {
    let doc = "[[routes]]\nmatch = { ports = 1, portz = 2 }\naction = { type = \"forward\", targets = [] }";
    let err = toml::from_str::<File>(doc).unwrap_err().to_string();
    assert!(err.contains("portz"), "{err}");
    let doc = "[[routes]]\nmatch = { ports = 1 }\naction = { type = \"forward\", targets = [], sendproxy = true }";
    let err = toml::from_str::<File>(doc).unwrap_err().to_string();
    assert!(err.contains("sendproxy"), "{err}");
}

#[test]
fn json_reads_too() {
    let j = r#"{"routes":[{"name":"x","match":{"ports":["80-81", 443],"domains":"a.com"},"action":{"type":"forward","targets":[{"host":"h","port":1}]}}]}"#;
    let f: File = serde_json::from_str(j).unwrap();
    assert_eq!(f.routes[0].matcher.ports.ports(), vec![80, 81, 443]);
    assert_eq!(f.routes[0].matcher.domains, vec!["a.com"]);
}

#[test]
fn certificate_is_files_or_auto_and_round_trips() {
    let doc = r#"
[[routes]]
match = { ports = 443, domains = ["a.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = "auto" } }

[[routes]]
match = { ports = 443, domains = ["b.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate-and-reencrypt", certificate = { cert = "b.pem", key = "b.key" }, upstream_server_name = "{sni}" } }
"#;
    let f: File = toml::from_str(doc).unwrap();
    let cert = |i: usize| match &f.routes[i].action {
        RouteAction::Forward(fwd) => fwd.tls.as_ref().unwrap().certificate.clone().unwrap(),
        _ => panic!("forward"),
    };
    assert_eq!(cert(0), CertificateConfig::Auto);
    assert!(cert(0).is_auto());
    assert_eq!(cert(1), CertificateConfig::files("b.pem", "b.key"));
    // Serialised back as written: the string "auto", the table of files.
    let json = serde_json::to_value(&f.routes).unwrap();
    assert_eq!(json[0]["action"]["tls"]["certificate"], "auto");
    assert_eq!(json[1]["action"]["tls"]["certificate"]["cert"], "b.pem");
    let back: Vec<RouteConfig> = serde_json::from_value(json).unwrap();
    assert_eq!(back, f.routes);

    for (bad, want) in [
        (r#""manual""#, "invalid value: string \"manual\", expected \"auto\" or a table"),
        (r#"{ cert = "c" }"#, "missing field `key`"),
        (r#"{ cert = "c", key = "k", chain = "x" }"#, "unknown field `chain`"),
        ("true", "expected \"auto\" or a table"),
    ] {
        let doc = format!(
            "[[routes]]\nmatch = {{ ports = 1 }}\naction = {{ type = \"forward\", target = {{ host = \"h\", port = 1 }}, tls = {{ mode = \"terminate\", certificate = {bad} }} }}"
        );
        let e = toml::from_str::<File>(&doc).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

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

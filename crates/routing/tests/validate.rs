//! Validation: every error with its key path (insta snapshots of the error lists).

use smartproxy_routing::*;

fn routes(doc: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    toml::from_str::<F>(doc).unwrap().routes
}

fn errors(doc: &str) -> Vec<String> {
    match validate(&routes(doc)) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn design_example_is_valid() {
    let doc = include_str!("fixtures/design_routes.toml");
    assert_eq!(errors(doc), Vec::<String>::new());
    let t = RouteTable::compile(routes(doc)).unwrap();
    assert_eq!(t.ports().len(), 1 + 11 + 1 + 1 + 1);
}

#[test]
fn match_errors() {
    insta::assert_debug_snapshot!(errors(
        r#"
[[routes]]
match = { ports = [] }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
match = { ports = [0, "90-80", "0-5", 443], domains = ["", "a..b", "bad domain", "ok.example.com", "**.x"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
match = { ports = 80, path = "api/*", client_ip = ["10.0.0.0/33", "10.0.0.1/8", "nope", "::1"], tls_version = ["1.1", "1.3"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
match = { ports = 80, path = "/a*/:", headers = { "x-good" = "/^ok$/", "x-bad" = "/(unclosed/", "bad name" = "v" } }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
"#
    ));
}

#[test]
fn action_errors() {
    insta::assert_debug_snapshot!(errors(
        r#"
[[routes]]
name = "no-targets"
match = { ports = 1 }
action = { type = "forward", targets = [] }

[[routes]]
name = "bad-targets"
match = { ports = 2 }
action = { type = "forward", targets = [{ host = "", port = 1 }, { host = "a b", port = 0 }, { host = "[::1]", port = "preserve" }], connect_timeout = "0s" }

[[routes]]
name = "terminate-no-cert"
match = { ports = 3 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate" } }

[[routes]]
name = "reencrypt-no-cert"
match = { ports = 3 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate-and-reencrypt", upstream_server_name = " " } }

[[routes]]
name = "passthrough-with-cert"
match = { ports = 4 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough", certificate = { cert = "c", key = "k" }, upstream_ca = "ca.pem", alpn = ["h2"] } }

[[routes]]
name = "unknown-handler"
match = { ports = 5 }
action = { type = "socket-handler", handler = "teapot" }

[[routes]]
name = "bad-redirect"
match = { ports = 6 }
action = { type = "socket-handler", handler = "redirect", status = 303 }

[[routes]]
name = "echo-with-extras"
match = { ports = 7 }
action = { type = "socket-handler", handler = "echo", status = 200, body = "x", location = "y", headers = { a = "b" } }

[[routes]]
name = "static-bad-status"
match = { ports = 8 }
action = { type = "socket-handler", handler = "static", status = 999, headers = { "bad header" = "v" } }
"#
    ));
}

#[test]
fn security_and_table_errors() {
    insta::assert_debug_snapshot!(errors(
        r#"
[[routes]]
name = "dup"
match = { ports = 1 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
security = { ip_allow_list = ["10.0.0.0/8", "x"], ip_block_list = ["1.2.3.4/40"], max_connections = 0, rate_limit_per_minute = 0 }

[[routes]]
name = "dup"
match = { ports = 1 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
name = ""
match = { ports = 1 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
match = { ports = 1 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
name = "route-3"
match = { ports = 1 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
name = "pass"
match = { ports = ["440-450"], domains = ["*.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }

[[routes]]
name = "term"
match = { ports = 443, domains = ["api.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }

[[routes]]
name = "term-other-domain"
match = { ports = 443, domains = ["example.org"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }

[[routes]]
name = "term-disabled"
enabled = false
match = { ports = 443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }
"#
    ));
}

#[test]
fn timeout_errors() {
    insta::assert_debug_snapshot!(errors(
        r#"
[[routes]]
name = "db"
match = { ports = [5432] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 5432 }] }
timeouts = { inactivity = "8h", max_lifetime = "7d", connect = "3s", keepalive_treatment = "immortal" }

[[routes]]
name = "bad"
match = { ports = [5433] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 5432 }] }
timeouts = { inactivity = "0s", max_lifetime = "0s", connect = "0ms", initial_data = "0s", keepalive_inactivity_multiplier = 0, tcp_keepalive = { idle = "1500ms", interval = "0s", count = 200 } }

[[routes]]
name = "big-multiplier"
match = { ports = [5434] }
action = { type = "socket-handler", handler = "echo" }
timeouts = { keepalive_treatment = "extended", keepalive_inactivity_multiplier = 1001, tcp_keepalive = false }
"#
    ));
}

#[test]
fn timeout_keys_read_and_unknown_ones_are_refused() {
    let r = routes(
        r#"
[[routes]]
match = { ports = [5432] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 5432 }] }
timeouts = { inactivity = "8h", max_lifetime = "7d", connect = "3s", keepalive_treatment = "immortal", tcp_keepalive = { idle = "2s", interval = "1s", count = 2 }, randomize = true }
"#,
    );
    let t = r[0].timeouts.as_ref().unwrap();
    assert_eq!(t.inactivity, Some(std::time::Duration::from_secs(8 * 3600)));
    assert_eq!(t.max_lifetime, Some(std::time::Duration::from_secs(7 * 86_400)));
    assert_eq!(t.connect, Some(std::time::Duration::from_secs(3)));
    assert_eq!(t.keepalive_treatment, Some(KeepaliveTreatment::Immortal));
    assert_eq!(t.randomize, Some(true));
    assert_eq!(t.tcp_keepalive.unwrap().detection_time(), Some(std::time::Duration::from_secs(4)));
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let bad = "[[routes]]\nmatch = { ports = 1 }\naction = { type = \"socket-handler\", handler = \"echo\" }\ntimeouts = { inactivity = \"1s\", idle = \"2s\" }";
    let e = toml::from_str::<F>(bad).unwrap_err().to_string();
    assert!(e.contains("idle"), "{e}");
    let bad = bad.replace("idle = \"2s\"", "keepalive_treatment = \"forever\"");
    let e = toml::from_str::<F>(&bad).unwrap_err().to_string();
    assert!(e.contains("forever") && e.contains("immortal"), "{e}");
    // The dump carries the table as written.
    let table = RouteTable::compile(r).unwrap();
    let dump = serde_json::to_value(table.dump()).unwrap();
    assert_eq!(dump["routes"][0]["timeouts"]["keepalive_treatment"], "immortal");
    assert_eq!(dump["routes"][0]["timeouts"]["max_lifetime"], "7d");
}

#[test]
fn custom_handlers() {
    let r = routes(
        r#"
[[routes]]
match = { ports = 5 }
action = { type = "socket-handler", handler = "teapot" }
"#,
    );
    assert!(validate(&r).is_err());
    let opts = ValidationOptions::default().with_custom_handlers(["teapot"]);
    validate_with(&r, &opts).unwrap();
    RouteTable::compile_with(r.clone(), &opts).unwrap();
    assert_eq!(RouteTable::compile(r).unwrap_err()[0].path, "routes[0].action.handler");
}

#[test]
fn display_and_collect() {
    let e = validate(&routes(
        r#"
[[routes]]
match = { ports = 0 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
"#,
    ))
    .unwrap_err();
    assert_eq!(e[0].to_string(), "routes[0].match.ports[0]: port 0 in `0` is not a listening port");
    let all = ValidationErrors::from(e);
    assert_eq!(
        all.to_string(),
        "1 route configuration error(s): routes[0].match.ports[0]: port 0 in `0` is not a listening port"
    );
}

mod props {
    use proptest::prelude::*;
    use smartproxy_routing::*;

    fn route(
        ports: Vec<(u16, u16)>,
        domains: Vec<String>,
        path: Option<String>,
        ips: Vec<String>,
        header: Option<(String, String)>,
        host: String,
    ) -> RouteConfig {
        let mut m = RouteMatch::ports(PortSpec(
            ports.into_iter().map(|(start, end)| PortRange { start, end }).collect(),
        ))
        .with_domains(domains);
        m.path = path;
        m.client_ip = ips;
        m.headers.extend(header);
        RouteConfig::new(m, RouteAction::Forward(ForwardAction::to(vec![Target::new(host, 80)])))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Validation never panics on any strings, every error names a route key, and
        /// compile succeeds exactly when validation does.
        #[test]
        fn validation_is_total(
            ports in proptest::collection::vec((0u16..5, 0u16..5), 0..3),
            domains in proptest::collection::vec("[a-z*. é/-]{0,12}", 0..3),
            path in proptest::option::of("[/a-z:*?. ]{0,12}"),
            ips in proptest::collection::vec("[0-9a-f.:/*-]{0,20}", 0..3),
            header in proptest::option::of(("[a-z -]{0,6}", "/?[a-z(\\[*+]{0,6}/?")),
            host in "[a-z0-9.\\[\\]: -]{0,10}",
        ) {
            let routes = vec![route(ports, domains, path, ips, header, host)];
            let v = validate(&routes);
            if let Err(errs) = &v {
                prop_assert!(!errs.is_empty());
                for e in errs {
                    prop_assert!(e.path.starts_with("routes[0]."), "{}", e);
                    prop_assert!(!e.message.is_empty());
                }
            }
            prop_assert_eq!(v.is_ok(), RouteTable::compile(routes).is_ok());
        }
    }
}

#[test]
fn auto_certificates_need_named_domains_and_sni_is_the_only_placeholder() {
    let doc = r#"
[[routes]]
name = "ok"
match = { ports = 443, domains = ["a.example.com", "b.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = "auto" } }

[[routes]]
name = "sni"
match = { ports = 8443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate-and-reencrypt", certificate = { cert = "c", key = "k" }, upstream_server_name = "{sni}" } }
"#;
    assert_eq!(errors(doc), Vec::<String>::new());
    let doc = r#"
[[routes]]
name = "no-domains"
match = { ports = 443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = "auto" } }

[[routes]]
name = "wildcard"
match = { ports = 444, domains = ["a.example.com", "*.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate-and-reencrypt", certificate = "auto" } }

[[routes]]
name = "passthrough"
match = { ports = 445, domains = ["*.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough", certificate = "auto" } }

[[routes]]
name = "placeholder"
match = { ports = 446 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate-and-reencrypt", certificate = { cert = "c", key = "k" }, upstream_server_name = "{host}" } }
"#;
    insta::assert_debug_snapshot!(errors(doc), @r#"
    [
        "routes[0].match.domains: certificate = \"auto\" needs the route's domains: the ACME certificate is issued for them",
        "routes[1].match.domains[1]: `*.example.com`: certificate = \"auto\" cannot cover a wildcard (it needs the DNS-01 challenge, which smartproxy does not answer); list the names, or give the route certificate files",
        "routes[2].action.tls.certificate: a passthrough route does not use a certificate: the backend terminates TLS",
        "routes[3].action.tls.upstream_server_name: `{host}`: the only placeholder is \"{sni}\" (the client's SNI); otherwise give a DNS name or IP address",
    ]
    "#);
}

#[test]
fn half_close_is_for_plain_and_passthrough_copies_only() {
    let doc = r#"
[[routes]]
name = "plain"
match = { ports = 80 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], half_close = false }

[[routes]]
name = "passthrough"
match = { ports = 443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" }, half_close = true }
"#;
    assert_eq!(errors(doc), Vec::<String>::new());
    let doc = r#"
[[routes]]
name = "http"
match = { ports = 8080 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], http = {}, half_close = false }

[[routes]]
name = "terminated"
match = { ports = 8443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } }, half_close = false }

[[routes]]
name = "kernel"
match = { ports = 9000 }
action = { type = "forward", targets = [{ host = "10.0.0.2", port = 1 }], forwarding_engine = "nftables", half_close = false }
"#;
    insta::assert_debug_snapshot!(errors(doc), @r#"
    [
        "routes[0].action.half_close: half_close applies to plain TCP and TLS passthrough copies; the HTTP layer serves this route request by request: a half-closed client still gets its answers",
        "routes[1].action.half_close: half_close applies to plain TCP and TLS passthrough copies; this route terminates TLS, whose end of stream is a close_notify alert, not the TCP FIN this setting decides on",
        "routes[2].action.half_close: half_close applies to plain TCP and TLS passthrough copies; kernel forwarding (forwarding_engine = \"nftables\") passes the FINs through as they come",
    ]
    "#);
}

//! Lookup semantics: ports, domains, path, client IP, TLS version, headers, selection order.

use std::net::IpAddr;

use smartproxy_routing::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table(toml_routes: &str) -> RouteTable {
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let f: F = toml::from_str(toml_routes).unwrap();
    RouteTable::compile(f.routes).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn name<'a>(t: &'a RouteTable, input: &MatchInput<'a>) -> Option<&'a str> {
    t.lookup(input).map(|m| m.route.name())
}

const C: &str = "192.0.2.1";

#[test]
fn ports_ranges_and_lists() {
    let t = table(
        r#"
[[routes]]
name = "a"
match = { ports = [80, "8000-8002"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
[[routes]]
name = "b"
match = { ports = "8002-8003" }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
[[routes]]
name = "off"
enabled = false
match = { ports = 9999 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
"#,
    );
    assert_eq!(t.ports(), vec![80, 8000, 8001, 8002, 8003]);
    let n = |p| name(&t, &MatchInput::new(p, ip(C)));
    assert_eq!(n(80), Some("a"));
    assert_eq!(n(8001), Some("a"));
    assert_eq!(n(8002), Some("a"), "same priority and specificity: config order");
    assert_eq!(n(8003), Some("b"));
    assert_eq!(n(81), None);
    assert_eq!(n(9999), None, "disabled routes never match");
    assert_eq!(t.peek_need(80), PeekNeed::None);
    assert_eq!(t.peek_need(9999), PeekNeed::None);
}

#[test]
fn domains() {
    let t = table(
        r#"
[[routes]]
name = "catch-all"
match = { ports = 443, domains = "*" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "wild"
match = { ports = 443, domains = ["*.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "deep-wild"
match = { ports = 443, domains = ["*.api.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "exact"
match = { ports = 443, domains = ["www.example.com", "Example.COM."] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "tld"
match = { ports = 443, domains = ["example.*"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
"#,
    );
    assert_eq!(t.peek_need(443), PeekNeed::Tls);
    let n = |d: &'static str| name(&t, &MatchInput::new(443, ip(C)).with_domain(d).with_tls(None));
    assert_eq!(n("www.example.com"), Some("exact"));
    assert_eq!(n("WWW.Example.Com."), Some("exact"));
    assert_eq!(n("example.com"), Some("exact"));
    assert_eq!(n("a.example.com"), Some("wild"));
    assert_eq!(n("a.b.c.example.com"), Some("wild"));
    assert_eq!(n("x.api.example.com"), Some("deep-wild"), "longer suffix is more specific");
    assert_eq!(n("example.org"), Some("tld"));
    assert_eq!(n("other.net"), Some("catch-all"));
    // No SNI: a route with domains never matches.
    assert_eq!(name(&t, &MatchInput::new(443, ip(C)).with_tls(None)), None);
    // Not TLS on a TLS-only port: routes with a tls block do not match.
    assert_eq!(name(&t, &MatchInput::new(443, ip(C)).with_domain("www.example.com")), None);
    // Over-long names match no pattern.
    let long = "a.".repeat(200) + "example.com";
    assert_eq!(name(&t, &MatchInput::new(443, ip(C)).with_domain(&long).with_tls(None)), None);
}

#[test]
fn priority_beats_specificity_then_order() {
    let t = table(
        r#"
[[routes]]
name = "exact-low"
match = { ports = 443, domains = "a.example.com" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "wild-high"
priority = 5
match = { ports = 443, domains = "*.example.com" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "no-domain-higher"
priority = 9
match = { ports = 443, client_ip = "10.0.0.0/8" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "twin-1"
match = { ports = 444, domains = "t.example.com" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "twin-2"
match = { ports = 444, domains = "t.example.com" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
"#,
    );
    let i = |port, c: &str, d: &'static str| {
        name(&t, &MatchInput::new(port, ip(c)).with_domain(d).with_tls(None))
    };
    assert_eq!(i(443, C, "a.example.com"), Some("wild-high"));
    assert_eq!(i(443, "10.1.2.3", "a.example.com"), Some("no-domain-higher"));
    assert_eq!(i(443, "::ffff:10.1.2.3", "a.example.com"), Some("no-domain-higher"));
    assert_eq!(i(444, C, "t.example.com"), Some("twin-1"));
}

#[test]
fn path_headers_and_params() {
    let t = table(
        r#"
[[routes]]
name = "root"
match = { ports = 80 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
[[routes]]
name = "api"
match = { ports = 80, path = "/api/*" }
action = { type = "forward", targets = [{ host = "h", port = 2 }] }
[[routes]]
name = "user"
match = { ports = 80, path = "/api/users/:id" }
action = { type = "forward", targets = [{ host = "h", port = 3 }] }
[[routes]]
name = "health"
match = { ports = 80, path = "/api/health" }
action = { type = "forward", targets = [{ host = "h", port = 4 }] }
[[routes]]
name = "beta"
match = { ports = 80, path = "/api/*", headers = { x-beta = "1", user-agent = "/^curl/" } }
action = { type = "forward", targets = [{ host = "h", port = 5 }] }
"#,
    );
    assert_eq!(t.peek_need(80), PeekNeed::Http);
    let base = MatchInput::new(80, ip(C));
    assert_eq!(name(&t, &base), Some("root"));
    assert_eq!(name(&t, &base.with_path("/other")), Some("root"));
    assert_eq!(name(&t, &base.with_path("/api/x")), Some("api"));
    assert_eq!(name(&t, &base.with_path("/api/health?x=1")), Some("health"));
    let m = t.lookup(&base.with_path("/api/users/42")).unwrap();
    assert_eq!(m.route.name(), "user");
    assert_eq!(m.params.get("id"), Some("42"));
    let m = t.lookup(&base.with_path("/api/a/b")).unwrap();
    assert_eq!(m.params.remainder(), Some("a/b"));

    let h = [("X-Beta", "1"), ("User-Agent", "curl/8.0")];
    assert_eq!(name(&t, &base.with_path("/api/x").with_headers(&h)), Some("beta"));
    let h2 = [("X-Beta", "1"), ("User-Agent", "Mozilla")];
    assert_eq!(name(&t, &base.with_path("/api/x").with_headers(&h2)), Some("api"));
    let h3 = [("User-Agent", "curl/8.0")];
    assert_eq!(name(&t, &base.with_path("/api/x").with_headers(&h3)), Some("api"));
}

#[test]
fn tls_version_and_mixed_port() {
    let t = table(
        r#"
[[routes]]
name = "tls13"
match = { ports = 443, tls_version = ["1.3"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "tls-any"
match = { ports = 443 }
action = { type = "forward", targets = [{ host = "h", port = 2 }], tls = { mode = "passthrough" } }
[[routes]]
name = "plain-fallback"
match = { ports = 443 }
action = { type = "socket-handler", handler = "echo" }
"#,
    );
    assert_eq!(t.peek_need(443), PeekNeed::TlsOrHttp);
    let b = MatchInput::new(443, ip(C));
    assert_eq!(name(&t, &b.with_tls(Some(TlsVersion::Tls13))), Some("tls13"));
    assert_eq!(name(&t, &b.with_tls(Some(TlsVersion::Tls12))), Some("tls-any"));
    assert_eq!(name(&t, &b), Some("plain-fallback"));
}

#[test]
fn peek_needs() {
    let t = table(
        r#"
[[routes]]
match = { ports = 1, domains = "a.com" }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
[[routes]]
match = { ports = 2, domains = "a.com" }
action = { type = "socket-handler", handler = "redirect", location = "https://{domain}{path}" }
[[routes]]
match = { ports = 3 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }
[[routes]]
match = { ports = 4 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }
[[routes]]
match = { ports = 4 }
action = { type = "socket-handler", handler = "redirect", location = "https://{domain}{path}" }
"#,
    );
    assert_eq!(t.peek_need(1), PeekNeed::TlsOrHttp, "SNI or Host");
    assert_eq!(t.peek_need(2), PeekNeed::Http);
    assert_eq!(t.peek_need(3), PeekNeed::None, "a dedicated terminate port routes at once");
    assert_eq!(t.peek_need(4), PeekNeed::TlsOrHttp, "TLS and plain routes share the port");
    assert_eq!(name(&t, &MatchInput::new(4, ip(C))), Some("route-4"));
    assert_eq!(name(&t, &MatchInput::new(4, ip(C)).with_tls(None)), Some("route-3"));
    // On a no-peek port is_tls is not looked at.
    assert_eq!(name(&t, &MatchInput::new(3, ip(C))), Some("route-2"));
}

#[test]
fn security_lists() {
    let t = table(
        r#"
[[routes]]
name = "r"
match = { ports = 80 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
security = { ip_allow_list = ["10.0.0.0/8", "::1"], ip_block_list = ["10.9.0.0/16"] }
[[routes]]
name = "open"
match = { ports = 81 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
"#,
    );
    let r = t.route("r").unwrap();
    assert!(r.allows_ip(ip("10.1.1.1")));
    assert!(r.allows_ip(ip("::ffff:10.1.1.1")));
    assert!(r.allows_ip(ip("::1")));
    assert!(!r.allows_ip(ip("10.9.1.1")), "block wins");
    assert!(!r.allows_ip(ip("::ffff:10.9.1.1")), "block wins, mapped");
    assert!(!r.allows_ip(ip("192.0.2.1")));
    assert!(t.route("open").unwrap().allows_ip(ip("192.0.2.1")));
}

/// A target's host is parsed as an IP address once, when the route is compiled: literal
/// IPv4 and IPv6 hosts come with their address, names with none (they are
/// resolved at connect).
#[test]
fn selected_targets_carry_their_parsed_address() {
    let t = table(
        r#"
[[routes]]
name = "mixed"
match = { ports = 80 }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 1 }, { host = "::1", port = 2 }, { host = "2001:db8::7", port = 3 }, { host = "backend.internal", port = 4 }, { host = "10.0.0.256", port = 5 }] }
"#,
    );
    let r = t.route("mixed").unwrap();
    let got: Vec<_> = (0..5)
        .map(|_| {
            let s = r.select_target(ip(C), 80, 0).unwrap();
            (s.host(), s.ip())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.5", Some(ip("10.0.0.5"))),
            ("::1", Some(ip("::1"))),
            ("2001:db8::7", Some(ip("2001:db8::7"))),
            ("backend.internal", None),
            ("10.0.0.256", None),
        ]
    );
}

#[test]
fn target_selection() {
    let t = table(
        r#"
[[routes]]
name = "rr"
match = { ports = 80 }
action = { type = "forward", targets = [{ host = "a", port = 1 }, { host = "b", port = "preserve" }, { host = "c", port = 3 }] }
[[routes]]
name = "hash"
match = { ports = 81 }
action = { type = "forward", load_balancing = "ip-hash", targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }, { host = "c", port = 3 }] }
[[routes]]
name = "least"
match = { ports = 82 }
action = { type = "forward", load_balancing = "least-connections", targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }, { host = "c", port = 3 }] }
"#,
    );
    let c = ip(C);
    let rr = t.route("rr").unwrap();
    let hosts: Vec<_> =
        (0..6).map(|_| rr.select_target(c, 80, 0).map(|s| (s.host(), s.port())).unwrap()).collect();
    assert_eq!(hosts, [("a", 1), ("b", 80), ("c", 3), ("a", 1), ("b", 80), ("c", 3)]);
    // Retry after refusals: every target once, then None.
    let first = rr.select_target(c, 80, 0).unwrap();
    let second = rr.next_target(&first, 1, 80).unwrap();
    let third = rr.next_target(&second, 2, 80).unwrap();
    let mut seen = [first.index(), second.index(), third.index()];
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2]);
    assert!(rr.next_target(&third, 3, 80).is_none());
    assert!(rr.select_target(c, 80, 3).is_none());

    let hash = t.route("hash").unwrap();
    let h1 = hash.select_target(c, 81, 0).unwrap().index();
    for _ in 0..5 {
        assert_eq!(hash.select_target(c, 81, 0).unwrap().index(), h1);
    }
    assert_eq!(hash.select_target(ip("::ffff:192.0.2.1"), 81, 0).unwrap().index(), h1);
    assert_eq!(hash.select_target(c, 81, 1).unwrap().index(), (h1 + 1) % 3);
    let spread: std::collections::HashSet<usize> = (0..64u8)
        .map(|i| hash.select_target(IpAddr::from([10, 0, 0, i]), 81, 0).unwrap().index())
        .collect();
    assert_eq!(spread.len(), 3);

    let least = t.route("least").unwrap();
    let g0 = least.select_target(c, 82, 0).unwrap().into_guard();
    let g1 = least.select_target(c, 82, 0).unwrap().into_guard();
    let g2 = least.select_target(c, 82, 0).unwrap().into_guard();
    let mut idx = [g0.index(), g1.index(), g2.index()];
    idx.sort_unstable();
    assert_eq!(idx, [0, 1, 2], "each idle target once");
    let busy = g1.index();
    drop(g1);
    assert_eq!(least.target_active(busy), 0);
    assert_eq!(least.select_target(c, 82, 0).unwrap().index(), busy);
    // attempt 1 is the second least loaded: never the first choice.
    let a0 = least.select_target(c, 82, 0).unwrap();
    let a1 = least.select_target(c, 82, 1).unwrap();
    assert_ne!(a0.index(), a1.index());
    drop((g0, g2));
}

#[test]
fn reload_keeps_state() {
    let routes = |max: u32| {
        vec![
            RouteConfig::new(
                RouteMatch::ports(80),
                RouteAction::Forward(ForwardAction::to(vec![Target::new("a", 1)])),
            )
            .with_name("x")
            .with_security({
                let mut s = RouteSecurity::default();
                s.max_connections = Some(max);
                s
            }),
        ]
    };
    let old = RouteTable::compile(routes(5)).unwrap();
    let guard = old.route("x").unwrap().limits().try_acquire(ip(C)).unwrap();
    let tg = old.route("x").unwrap().select_target(ip(C), 80, 0).unwrap().into_guard();
    let same = RouteTable::compile_reusing(routes(5), &ValidationOptions::default(), &old).unwrap();
    assert_eq!(same.route("x").unwrap().limits().open_connections(), 1);
    assert_eq!(same.route("x").unwrap().target_active(0), 1);
    let changed =
        RouteTable::compile_reusing(routes(6), &ValidationOptions::default(), &old).unwrap();
    assert_eq!(changed.route("x").unwrap().limits().open_connections(), 0);
    drop((guard, tg));
    assert_eq!(same.route("x").unwrap().limits().open_connections(), 0);
    assert_eq!(same.route("x").unwrap().target_active(0), 0);
}

#[test]
fn send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable>();
    assert_send_sync::<std::sync::Arc<RouteTable>>();
    assert_send_sync::<ConnectionGuard>();
    assert_send_sync::<LimitGuard>();
}

#[test]
fn table_dump_snapshot() {
    let t = table(
        r#"
[[routes]]
name = "tls-passthrough"
priority = 10
match = { ports = [8443, "9000-9002"], domains = ["Example.com.", "*.example.com"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9443 }], tls = { mode = "passthrough" }, send_proxy_protocol = "v2" }

[[routes]]
name = "plain"
match = { ports = [8080, 9001], client_ip = ["::ffff:10.0.0.0/104", "192.168.*"] }
action = { type = "forward", load_balancing = "least-connections", targets = [{ host = "a", port = 9000 }, { host = "b", port = "preserve" }] }
security = { ip_allow_list = ["127.0.0.0/8"], ip_block_list = ["127.0.0.9"], max_connections = 1000, max_connections_per_ip = 10, rate_limit_per_minute = 60 }

[[routes]]
name = "api"
match = { ports = 8080, path = "/api/:v/*", headers = { X-Env = "/^prod$/" } }
action = { type = "forward", targets = [{ host = "c", port = 1 }] }

[[routes]]
name = "https-terminate"
match = { ports = [8444], domains = ["a.example.org"], tls_version = "1.3" }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9001 }], tls = { mode = "terminate", certificate = { cert = "certs/a.pem", key = "certs/a.key" } } }

[[routes]]
match = { ports = [8000] }
action = { type = "socket-handler", handler = "redirect", location = "https://{domain}:8444{path}", status = 301 }

[[routes]]
name = "off"
enabled = false
match = { ports = [7000] }
action = { type = "socket-handler", handler = "echo" }
"#,
    );
    let _g = t.route("plain").unwrap().select_target(ip(C), 8080, 0).unwrap();
    insta::assert_json_snapshot!(t.dump());
}

#[test]
fn match_input_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let h = [("a", "b")];
    assert_send_sync(&MatchInput::new(1, ip(C)).with_headers(&h));
}

#[test]
fn path_routing_behind_termination() {
    let t = table(
        r#"
[[routes]]
name = "api"
match = { ports = 443, domains = "a.example.com", path = "/api/*" }
action = { type = "forward", targets = [{ host = "api", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }
[[routes]]
name = "web"
match = { ports = 443, domains = "a.example.com", headers = { x-web = "1" } }
action = { type = "forward", targets = [{ host = "web", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }
[[routes]]
name = "pass"
match = { ports = 443, domains = "b.example.com" }
action = { type = "forward", targets = [{ host = "b", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "other-port"
match = { ports = 444, domains = "a.example.com" }
action = { type = "forward", targets = [{ host = "web", port = 1 }], tls = { mode = "terminate", certificate = { cert = "c", key = "k" } } }
"#,
    );
    assert!(t.http_after_termination(443));
    assert!(!t.http_after_termination(444));
    let hello = MatchInput::new(443, ip(C)).with_domain("a.example.com").with_tls(None);
    // Without the flag, no route matches before the path is known.
    assert_eq!(name(&t, &hello), None);
    // Step 1, from the ClientHello: a terminating route for the name (the most specific).
    assert_eq!(name(&t, &hello.before_termination()), Some("api"));
    assert_eq!(
        name(
            &t,
            &MatchInput::new(443, ip(C))
                .with_domain("b.example.com")
                .with_tls(None)
                .before_termination()
        ),
        Some("pass")
    );
    // Step 2, after termination, with the request.
    let h = [("X-Web", "1")];
    assert_eq!(name(&t, &hello.with_path("/api/v1")), Some("api"));
    assert_eq!(name(&t, &hello.with_path("/index.html").with_headers(&h)), Some("web"));
    assert_eq!(name(&t, &hello.with_path("/index.html")), None);
}

/// Target health: a failed connect marks the target down with the time and kind, the next
/// successful connect marks it up; refusals count per route; both survive a reload under the
/// same name (and the same targets for the health).
#[test]
fn target_health_and_route_refusals_are_live_and_inherited() {
    let src = r#"
[[routes]]
name = "web"
match = { ports = [80] }
action = { type = "forward", targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }] }
"#;
    let t = table(src);
    let r = t.route("web").unwrap();
    assert_eq!(r.target_health(0), TargetHealthSnapshot::default());
    r.target_connect_failed(1, 1_700_000_000_123, ConnectFailure::Refused);
    r.count_refusal();
    let h = r.target_health(1);
    assert!(h.down);
    assert_eq!(h.connect_failures, 1);
    assert_eq!(h.last_failure_unix_ms, Some(1_700_000_000_123));
    assert_eq!(h.last_error, Some(ConnectFailure::Refused));
    // Up: the clock is not read.
    r.target_connected(0, || unreachable!("target 0 was up"));
    r.target_connected(1, || 1_700_000_000_999);
    let h = r.target_health(1);
    assert!(!h.down);
    assert_eq!(h.recovered_unix_ms, Some(1_700_000_000_999));
    assert_eq!(h.connect_failures, 1);

    let mut next = table(src);
    next.inherit(&t);
    let n = next.route("web").unwrap();
    assert_eq!(n.target_health(1).connect_failures, 1);
    assert_eq!(n.refused(), 1);
    let dump = serde_json::to_value(next.dump()).unwrap();
    assert_eq!(dump["routes"][0]["refused"], 1);
    assert_eq!(dump["routes"][0]["targets"][1]["health"]["connect_failures"], 1);
    assert_eq!(dump["routes"][0]["targets"][1]["health"]["last_error"], "refused");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Passive health with a cool-down: a target whose connect failed is skipped by every
/// algorithm until `health.cooldown` has passed, then offered to exactly one connection (a
/// failure there starts another cool-down, a success brings it back into the rotation); when
/// every target is down they are tried anyway; `cooldown = "0s"` never skips.
#[test]
fn a_down_target_is_skipped_for_its_cooldown_then_tried_once() {
    let t = table(
        r#"
[[routes]]
name = "rr"
match = { ports = 80 }
action = { type = "forward", health = { cooldown = "1h" }, targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }, { host = "c", port = 3 }] }
[[routes]]
name = "hash"
match = { ports = 81 }
action = { type = "forward", load_balancing = "ip-hash", targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }] }
[[routes]]
name = "least"
match = { ports = 82 }
action = { type = "forward", load_balancing = "least-connections", targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }] }
[[routes]]
name = "never"
match = { ports = 83 }
action = { type = "forward", health = { cooldown = "0s" }, targets = [{ host = "a", port = 1 }, { host = "b", port = 2 }] }
"#,
    );
    let c = ip(C);
    let picks = |r: &CompiledRoute, n: usize| -> Vec<usize> {
        (0..n).map(|_| r.select_target(c, 80, 0).unwrap().index()).collect()
    };

    let rr = t.route("rr").unwrap();
    rr.target_connect_failed(1, now_ms(), ConnectFailure::Refused);
    let h = rr.target_health(1);
    assert!(h.down);
    assert!(h.retry_at_unix_ms.unwrap() >= h.last_failure_unix_ms.unwrap() + 3_600_000);
    assert!(!picks(rr, 30).contains(&1), "b is skipped while it cools down");
    // Cool-down over (the failure an hour and a second ago): one connection gets it, then
    // it is skipped for another hour unless that connection succeeds.
    rr.target_connect_failed(1, now_ms() - 3_601_000, ConnectFailure::Refused);
    let got = picks(rr, 30);
    assert_eq!(got.iter().filter(|&&i| i == 1).count(), 1, "one try after the cool-down: {got:?}");
    rr.target_connected(1, now_ms);
    let got = picks(rr, 30);
    assert_eq!(got.iter().filter(|&&i| i == 1).count(), 10, "back in the rotation: {got:?}");
    // Every target down: they are tried anyway.
    for i in 0..3 {
        rr.target_connect_failed(i, now_ms(), ConnectFailure::Timeout);
    }
    let got = picks(rr, 30);
    assert_eq!(got.iter().filter(|&&i| i == 0).count(), 10, "all down, plain rotation: {got:?}");

    // ip-hash: the client moves to the next target while its own is down, and back after.
    let hash = t.route("hash").unwrap();
    let mine = hash.select_target(c, 81, 0).unwrap().index();
    hash.target_connect_failed(mine, now_ms(), ConnectFailure::Refused);
    assert_eq!(hash.select_target(c, 81, 0).unwrap().index(), 1 - mine);
    hash.target_connected(mine, now_ms);
    assert_eq!(hash.select_target(c, 81, 0).unwrap().index(), mine);

    // least-connections: the idle but down target is skipped for the loaded one.
    let least = t.route("least").unwrap();
    let busy = least.select_target(c, 82, 0).unwrap();
    let idle = 1 - busy.index();
    least.target_connect_failed(idle, now_ms(), ConnectFailure::Refused);
    assert_eq!(least.select_target(c, 82, 0).unwrap().index(), busy.index());
    // And the retry after a refusal does not go back to the down one either.
    assert_eq!(least.next_target(&busy, 1, 82).unwrap().index(), busy.index());
    drop(busy);

    // The proxy out of fds is not the target's fault.
    let emfile = std::io::Error::from_raw_os_error(24);
    assert_eq!(ConnectFailure::of_io(&emfile), ConnectFailure::Local);
    let hash = t.route("hash").unwrap();
    hash.target_connect_failed(1, now_ms(), ConnectFailure::Local);
    assert!(!hash.target_health(1).down);

    let never = t.route("never").unwrap();
    never.target_connect_failed(0, now_ms(), ConnectFailure::Refused);
    assert_eq!(picks(never, 4), [0, 1, 0, 1], "cooldown 0s: a down target is not skipped");
}

#[test]
fn health_keys_are_validated() {
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let routes = |h: &str| {
        let src = format!(
            "[[routes]]\nname = \"x\"\nmatch = {{ ports = 80 }}\naction = {{ type = \"forward\", {h}, targets = [{{ host = \"a\", port = 1 }}] }}\n"
        );
        toml::from_str::<F>(&src).map(|f| f.routes)
    };
    let e = RouteTable::compile(routes("health = { cooldown = \"2d\" }").unwrap()).unwrap_err();
    assert_eq!(e[0].path, "routes[0].action.health.cooldown");
    assert!(e[0].message.contains("at most 24h"), "{}", e[0].message);
    let e = routes("health = { cooldwn = \"2s\" }").unwrap_err().to_string();
    assert!(e.contains("cooldwn"), "{e}");
    let e = routes("health = { cooldown = 5 }").unwrap_err().to_string();
    assert!(e.contains("unit"), "{e}");
}

/// `client_speaks_first`: true where the port reads the client's first bytes for routing, or
/// every route waits for them (HTTP, a `tls` block); false where a route is decided by port
/// and address alone and may forward a server-first protocol (SMTP's banner), or a handler
/// may answer before the client sends.
#[test]
fn client_speaks_first() {
    let t = table(
        r#"
[[routes]]
name = "l4"
match = { ports = 25 }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
[[routes]]
name = "http"
match = { ports = 80 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], http = {} }
[[routes]]
name = "redirect-on-http-port"
match = { ports = 80, path = "/old" }
action = { type = "socket-handler", handler = "redirect", status = 301, location = "https://example.com/" }
[[routes]]
name = "tls-only"
match = { ports = 443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "sni"
match = { ports = 8443, domains = "a.example" }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "sni-fallback"
match = { ports = 8443 }
action = { type = "forward", targets = [{ host = "h", port = 2 }] }
[[routes]]
name = "tls-or-plain"
match = { ports = 9443 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "plain-too"
match = { ports = 9443, client_ip = ["10.0.0.0/8"] }
action = { type = "forward", targets = [{ host = "h", port = 2 }] }
[[routes]]
name = "echo"
match = { ports = 7 }
action = { type = "socket-handler", handler = "echo" }
[[routes]]
name = "off"
enabled = false
match = { ports = 9999 }
action = { type = "forward", targets = [{ host = "h", port = 1 }], http = {} }
"#,
    );
    assert!(!t.client_speaks_first(25), "port-only L4 route: the backend may speak first");
    assert!(t.client_speaks_first(80), "HTTP port");
    assert!(t.client_speaks_first(443), "every route has a tls block");
    assert!(t.client_speaks_first(8443), "domains are read from the first bytes");
    // A plain route by port and address beside a TLS one: the first bytes decide (peek).
    assert_eq!(t.peek_need(9443), PeekNeed::TlsOrHttp);
    assert!(t.client_speaks_first(9443));
    assert!(!t.client_speaks_first(7), "a handler by port alone");
    assert!(!t.client_speaks_first(9999), "disabled routes listen nowhere");
    assert!(!t.client_speaks_first(12345), "no route");
}

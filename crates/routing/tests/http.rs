//! HTTP routes: the `http` table, the port rule, `is_http_port`, templates.

use smartproxy_routing::*;

fn routes(doc: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    toml::from_str::<F>(doc).unwrap_or_else(|e| panic!("{e}")).routes
}

fn errors(doc: &str) -> Vec<String> {
    match validate(&routes(doc)) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// The example of issue 12, verbatim keys.
const ISSUE: &str = r#"
[[routes]]
name = "api"
match = { ports = [8080], domains = ["api.example.com"], path = "/v1/*", headers = { "x-env" = "prod" } }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], http = { } }

[[routes]]
name = "web"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9001 }], http = { upstream = "auto", forwarded_headers = true, forwarded = true, preserve_host = false, websocket = false, via = "edge-1", response_timeout = "5s" } }

[[routes]]
name = "old"
match = { ports = [8080], path = "/old/*" }
action = { type = "socket-handler", handler = "redirect", location = "https://{domain}/new{path}", status = 308 }

[[routes]]
name = "l4"
match = { ports = [9090] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9002 }] }
"#;

#[test]
fn issue_example_reads_and_compiles() {
    let rs = routes(ISSUE);
    let RouteAction::Forward(api) = &rs[0].action else { panic!("forward") };
    assert_eq!(api.http, Some(HttpOptions::default()));
    let RouteAction::Forward(web) = &rs[1].action else { panic!("forward") };
    let h = web.http.as_ref().unwrap_or_else(|| panic!("http table"));
    assert_eq!(h.upstream, UpstreamProtocol::Auto);
    assert!(h.forwarded && !h.preserve_host && !h.websocket);
    assert_eq!(h.via, Via::On("edge-1".into()));
    let t = RouteTable::compile(rs).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(t.is_http_port(8080));
    assert!(!t.is_http_port(9090));
    assert!(!t.is_http_port(1));
    assert!(t.route("api").and_then(CompiledRoute::http).is_some());
    assert!(t.route("l4").and_then(CompiledRoute::http).is_none());
    // Per-request lookups: Host, path and headers pick the route.
    let ip = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
    let headers = [("X-Env", "prod")];
    let hit = |host: &str, path: &str| {
        t.lookup(
            &MatchInput::new(8080, ip).with_domain(host).with_path(path).with_headers(&headers),
        )
        .map(|m| m.route.name().to_owned())
    };
    assert_eq!(hit("api.example.com", "/v1/x").as_deref(), Some("api"));
    assert_eq!(hit("api.example.com", "/v2/x").as_deref(), Some("web"));
    assert_eq!(hit("other", "/old/a").as_deref(), Some("old"));
    // The dump says which ports are HTTP and shows the table.
    let dump = serde_json::to_value(t.dump()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dump["ports"][0]["http"], true);
    assert!(dump["ports"][1].get("http").is_none());
    assert_eq!(dump["routes"][1]["http"]["via"], "edge-1");
}

#[test]
fn http_errors() {
    insta::assert_debug_snapshot!(errors(
        r#"
[[routes]]
name = "api"
match = { ports = [8080, "9000-9001"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], http = { response_timeout = "0s", via = "two words" } }

[[routes]]
name = "plain"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
name = "echo"
match = { ports = [9001] }
action = { type = "socket-handler", handler = "echo" }

[[routes]]
name = "static-ok"
match = { ports = [8080], path = "/s" }
action = { type = "socket-handler", handler = "static", body = "hi" }

[[routes]]
name = "disabled-ok"
enabled = false
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }

[[routes]]
name = "passthrough-http"
match = { ports = [8443] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" }, http = {} }
"#
    ));
}

#[test]
fn unknown_http_keys_are_errors() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let doc = "[[routes]]\nmatch = { ports = 1 }\naction = { type = \"forward\", targets = [{ host = \"h\", port = 1 }], http = { preservehost = true } }";
    let err = toml::from_str::<F>(doc).unwrap_err().to_string();
    assert!(err.contains("preservehost"), "{err}");
}

#[test]
fn template_with_request_values() {
    let t = Template::parse("https://{domain}:8443{path}?{query}&ip={clientIp}&r={routeName}");
    let headers = [("host", "a.example")];
    let vars = TemplateVars::new("10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}")), 80)
        .with_domain("a.example")
        .with_path("/x")
        .with_query("y=1")
        .with_route_name("old")
        .with_headers(&headers);
    assert_eq!(t.expand_to_string(&vars), "https://a.example:8443/x?y=1&ip=10.1.2.3&r=old");
}

/// The `action` of DESIGN.md §3.1's HTTP route (the `security` keys there belong to other
/// features).
#[test]
fn design_http_action_reads() {
    let rs = routes(
        r#"
[[routes]]
name = "api"
match = { ports = [8080], domains = ["api.example.com"], path = "/v1/*", headers = { "x-env" = "prod" } }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], http = {
  upstream = "http1",
  forwarded_headers = true, forwarded = false, preserve_host = true, websocket = true,
  request_headers  = { set = { "X-Route" = "{routeName} {clientIp}" }, add = { }, remove = ["X-Debug"] },
  response_headers = { set = { "Strict-Transport-Security" = "max-age=63072000" }, remove = ["Server"] },
  rewrite_path = { from = "^/v1/(.*)$", to = "/api/$1" } } }
"#,
    );
    assert_eq!(errors_of(&rs), Vec::<String>::new());
    let RouteAction::Forward(f) = &rs[0].action else { panic!("forward") };
    let h = f.http.as_ref().unwrap_or_else(|| panic!("http"));
    let req = h.request_headers.as_ref().unwrap_or_else(|| panic!("request_headers"));
    assert_eq!(req.set["X-Route"], "{routeName} {clientIp}");
    assert_eq!(req.remove, ["X-Debug"]);
    assert_eq!(
        h.response_headers.as_ref().map(|r| r.remove.clone()),
        Some(vec!["Server".to_owned()])
    );
    assert_eq!(h.rewrite_path.as_ref().map(|r| r.to.as_str()), Some("/api/$1"));
}

fn errors_of(rs: &[RouteConfig]) -> Vec<String> {
    match validate(rs) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn header_action_and_rewrite_errors() {
    insta::assert_debug_snapshot!(errors(
        r#"
[[routes]]
match = { ports = [80] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], http = {
  request_headers = { set = { "bad name" = "v", "Connection" = "close" }, add = { "x-ok" = "a\nb" }, remove = ["", "x-fine"] },
  response_headers = { remove = ["(bad)"] },
  rewrite_path = { from = "^/(unclosed", to = "api" } } }
"#
    ));
}

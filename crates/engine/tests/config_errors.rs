//! Configuration errors name the key path and the line.

use smartproxy_engine::{Config, Format};

fn errors(text: &str, format: Format) -> String {
    Config::from_str(text, format).unwrap_err().to_string()
}

#[test]
fn toml_errors_are_all_reported_with_lines() {
    let text = r#"workers = 0
proxy_ips = ["10.0.0.1/8", "nope"]
proxy_protocol_timeout = "5x"

[defaults]
max_connections_per_ip = 10

[[routes]]
name = "a"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }

[[routes]]
name = "b"
match = { ports = [8081], prots = 1 }
action = { type = "forward", targets = [{ host = "x", port = 9000 }] }

[[routes]]
name = "c"
match = { ports = [8082] }
action = { type = "forward", targets = [
  { host = "127.0.0.1", port = 9000 },
  { host = "", port = 0 },
] }

[[routes]]
name = "d"
match = { ports = [8443], domains = ["a.example.org"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9001 }], tls = { mode = "terminate", certificate = { cert = "a.pem", key = "a.key" } } }

[[routes]]
name = "e"
match = { ports = [8000] }
action = { type = "socket-handler", handler = "nope" }
"#;
    insta::assert_snapshot!("toml_errors", errors(text, Format::Toml));
}

#[test]
fn toml_top_level_and_route_errors_together() {
    let text = "workers = 0\nunknown_key = 1\n\n[[routes]]\nmatch = { ports = [0] }\naction = { type = \"socket-handler\", handler = \"echo\" }\n";
    insta::assert_snapshot!("toml_unknown_key", errors(text, Format::Toml));
}

#[test]
fn toml_syntax_error() {
    insta::assert_snapshot!("toml_syntax", errors("workers = 2\n[defaults\n", Format::Toml));
}

#[test]
fn json_errors_with_lines() {
    let text = r#"{
  "workers": 2,
  "bind": ["127.0.0.1", "localhost"],
  "routes": [
    {
      "name": "a",
      "match": { "ports": [8080] },
      "action": { "type": "forward", "targets": [{ "host": "127.0.0.1", "port": 0 }] }
    },
    {
      "name": "a",
      "match": { "ports": [8081] },
      "action": { "type": "socket-handler", "handler": "redirect", "status": 200, "location": "/x" }
    }
  ]
}"#;
    insta::assert_snapshot!("json_errors", errors(text, Format::Json));
}

#[test]
fn json_syntax_error() {
    insta::assert_snapshot!("json_syntax", errors("{\n  \"workers\": 2,\n}\n", Format::Json));
}

#[test]
fn valid_files_load_with_defaults() {
    let c = Config::from_str(
        "[[routes]]\nmatch = { ports = [8080] }\naction = { type = \"forward\", targets = [{ host = \"127.0.0.1\", port = 9000 }], send_proxy_protocol = \"v1\" }\n",
        Format::Toml,
    )
    .unwrap();
    assert_eq!(c.bind, vec!["0.0.0.0".parse::<std::net::IpAddr>().unwrap(), "::".parse().unwrap()]);
    assert_eq!(c.proxy_protocol_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.defaults.max_connections_per_ip, 100);
    assert_eq!(c.defaults.connection_rate_limit_per_minute, 0, "off unless set");
    assert_eq!(c.defaults.shutdown_grace, std::time::Duration::from_secs(30));
    assert!(c.defaults.splice, "bulk transfers splice unless `splice = false`");
    assert!(c.defaults.half_close);
    assert!(!c.accepts_proxy_protocol());
    let j = Config::from_str(
        r#"{"proxy_ips": ["127.0.0.1"], "routes": [{"match": {"ports": [8080]}, "action": {"type": "socket-handler", "handler": "echo"}}]}"#,
        Format::Json,
    )
    .unwrap();
    assert!(j.accepts_proxy_protocol());
}

#[test]
fn the_design_example_is_valid_apart_from_tls_termination() {
    let text = r#"
workers = 4
proxy_ips = ["127.0.0.1/32", "10.0.0.0/8"]
accept_proxy_protocol = true
proxy_protocol_timeout = "5s"

[defaults]
initial_data_timeout = "60s"
inactivity_timeout = "4h"
max_connection_lifetime = "24h"
max_connections_per_ip = 100
connection_rate_limit_per_minute = 300

[admin]
listen = "127.0.0.1:9900"

[metrics]
enabled = true
sample_interval = "1s"
retention = "1h"
prefix = "smartproxy_"
statsd = { address = "127.0.0.1:8125", interval = "10s" }

[[routes]]
name = "tls-passthrough"
priority = 10
match = { ports = [8443, "9000-9010"], domains = ["example.com", "*.example.com"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9443 }], tls = { mode = "passthrough" }, send_proxy_protocol = "v2" }

[[routes]]
name = "plain"
match = { ports = [8080] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }], send_proxy_protocol = "v1" }
security = { ip_allow_list = ["127.0.0.0/8"], max_connections = 1000 }

[[routes]]
name = "http-to-https"
match = { ports = [8000] }
action = { type = "socket-handler", handler = "redirect", location = "https://{domain}:8444{path}", status = 301 }
"#;
    let c = Config::from_str(text, Format::Toml).unwrap();
    assert_eq!(c.workers, Some(4));
    assert_eq!(c.routes().len(), 3);
    assert_eq!(c.admin.unwrap().listen, "127.0.0.1:9900".parse().unwrap());
}

/// HTTP route policies: a template typo, a policy on a TCP route, bad policy values, and the
/// files of authenticating routes (read when the configuration is parsed): every error with
/// its key path and line, the htpasswd line too.
#[test]
fn policy_errors_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let md5 = dir.path().join("users.htpasswd");
    std::fs::write(
        &md5,
        "# ops\nalice:$2y$05$ZT0Row5ca.2fJS2B5kPUTen1GBRRjSuCSc5nAm5ezjFM0DcDa/AvG\ndave:$apr1$TvdLtLQy$dmqPMD56xb6pPFnTtAAZm0\n",
    )
    .unwrap();
    let short = dir.path().join("hs.key");
    std::fs::write(&short, "too short\n").unwrap();
    let d = dir.path().display().to_string();
    let text = format!(
        r#"[[routes]]
name = "api"
match = {{ ports = [8080], path = "/api/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9000 }}], http = {{
  request_headers = {{ set = {{ "X-Route" = "{{routeName}} {{clientIP}}" }} }} }} }}
security = {{ basic_auth = {{ realm = "ops", htpasswd = "{d}/users.htpasswd" }} }}

[[routes]]
name = "tcp"
match = {{ ports = [9000] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9001 }}] }}
security = {{ rate_limit = {{ requests = 10 }} }}

[[routes]]
name = "jwt"
match = {{ ports = [8080], path = "/jwt/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9000 }}], http = {{ }} }}
security = {{ jwt = {{ algorithms = ["HS256"], secret_file = "{d}/hs.key" }},
             rate_limit = {{ requests = 0, key = "header:X Key" }} }}

[[routes]]
name = "jwks"
match = {{ ports = [8080], path = "/jwks/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9000 }}], http = {{ }} }}
security = {{ jwt = {{ algorithms = ["RS256"], jwks_file = "{d}/missing.json" }} }}
"#
    );
    insta::assert_snapshot!("policy_errors", errors(&text, Format::Toml).replace(&d, "<dir>"));
}

/// A bare number is not a duration: the error names the key and line and shows the forms.
#[test]
fn bare_numbers_are_not_durations() {
    let e = errors(
        "[defaults]\ninactivity_timeout = 30
connect_timeout = \"5\"\n",
        Format::Toml,
    );
    assert!(e.contains("line 2: defaults.inactivity_timeout: invalid duration `30`: a number needs a unit: \"30s\" (seconds) or \"30ms\""), "{e}");
    assert!(e.contains("line 3: defaults.connect_timeout: invalid duration `5`"), "{e}");
}

/// `health` in `[defaults]` and on a route: bad values name the key and the line.
#[test]
fn health_cooldown_errors_with_lines() {
    let e = errors(
        "[defaults]\nhealth = { cooldown = \"25h\" }\n\n[[routes]]\nname = \"r\"\nmatch = { ports = 80 }\naction = { type = \"forward\", targets = [{ host = \"a\", port = 1 }], health = { cooldown = \"2d\" } }\n[[routes]]\nname = \"s\"\nmatch = { ports = 81 }\naction = { type = \"forward\", targets = [{ host = \"a\", port = 1 }], health = { cooldwn = \"1s\" } }\n",
        Format::Toml,
    );
    assert!(e.contains("line 2: defaults.health.cooldown: cooldown must be at most 24h"), "{e}");
    assert!(
        e.contains("line 7: routes[0].action.health.cooldown: cooldown must be at most 24h"),
        "{e}"
    );
    assert!(e.contains("routes[1].action") && e.contains("cooldwn"), "{e}");
    let c = Config::from_str("[defaults]\nhealth = { cooldown = \"3s\" }\n", Format::Toml).unwrap();
    assert_eq!(c.defaults.health.cooldown, std::time::Duration::from_secs(3));
    let c = Config::from_str("", Format::Toml).unwrap();
    assert_eq!(c.defaults.health.cooldown, std::time::Duration::from_secs(10));
}

/// `health.check` (active checks): every bad value names its key and line, in `[defaults]`
/// and on a route; a check on a `"preserve"` target is refused; the defaults fill the rest.
#[test]
fn health_check_errors_with_lines() {
    let e = errors(
        "[defaults]\nhealth = { check = { interval = \"50ms\", rise = 0 } }\n\n[[routes]]\nname = \"r\"\nmatch = { ports = 80 }\naction = { type = \"forward\", targets = [{ host = \"a\", port = 1 }], health = { check = { interval = \"1s\", timeout = \"2s\", fall = 1001 } } }\n[[routes]]\nname = \"s\"\nmatch = { ports = 81 }\naction = { type = \"forward\", targets = [{ host = \"a\", port = \"preserve\" }], health = { check = { timeout = \"0s\" } } }\n[[routes]]\nname = \"t\"\nmatch = { ports = 82 }\naction = { type = \"forward\", targets = [{ host = \"a\", port = 1 }], health = { check = { intervall = \"1s\" } } }\n",
        Format::Toml,
    );
    for want in [
        "line 2: defaults.health.check.interval: interval must be at least 100ms",
        "line 2: defaults.health.check.rise: rise must be between 1 and 1000",
        "line 7: routes[0].action.health.check.timeout: timeout must not be longer than check.interval",
        "line 7: routes[0].action.health.check.fall: fall must be between 1 and 1000",
        "line 11: routes[1].action.health.check.timeout: timeout must be longer than zero",
        "line 11: routes[1].action.health.check: a target with port = \"preserve\" has no port to check",
    ] {
        assert!(e.contains(want), "{want:?} in:\n{e}");
    }
    assert!(e.contains("routes[2].action") && e.contains("intervall"), "{e}");
    let c = Config::from_str("[defaults]\nhealth = { check = {} }\n", Format::Toml).unwrap();
    let check = c.defaults.health.check.expect("check");
    assert_eq!(check, smartproxy_engine::routing::HealthCheck::default());
    assert_eq!(
        (check.interval, check.timeout, check.rise, check.fall),
        (std::time::Duration::from_secs(5), std::time::Duration::from_secs(1), 2, 3)
    );
    assert!(Config::from_str("", Format::Toml).unwrap().defaults.health.check.is_none());
}

//! HTTP route policies through the binary (issue 13): basic_auth with a file written by
//! Apache's `htpasswd`, a JWT signed here, a rate limit hit at its figure, header rules with
//! templates and a path rewrite, CORS, the metrics of refusals, a reload that reads the
//! password file again, a reload refused for a weak hash, and `validate` naming every policy
//! error with its line.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smartproxy_tests::*;

/// A keep-alive HTTP/1.1 backend answering every request with its request line and
/// headers, one per line.
struct Echo {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        thread::spawn(move || serve(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Echo { port, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        let text = format!("{}\n", head.join("\n"));
        let resp = format!(
            "HTTP/1.1 200 OK\r\nServer: echo\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn htpasswd(args: &[&str]) {
    let bin = require("htpasswd", "apache2-utils");
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "htpasswd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn codes(out: &str) -> Vec<&str> {
    out.lines().filter_map(|l| l.strip_prefix('=')).collect()
}

fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), claims, &key)
        .unwrap()
}

fn config(port: u16, admin: u16, backend: u16, dir: &str) -> String {
    format!(
        r#"bind = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:{admin}"

[[routes]]
name = "ops"
match = {{ ports = [{port}], path = "/v1/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], http = {{
  request_headers = {{ set = {{ "X-Route" = "{{routeName}} {{clientIp}}", "X-Uri" = "{{uri}}" }}, add = {{ "X-Trace" = "t-{{port}}" }}, remove = ["X-Debug"] }},
  response_headers = {{ set = {{ "Strict-Transport-Security" = "max-age=63072000" }}, remove = ["Server"] }},
  rewrite_path = {{ from = "^/v1/(.*)$", to = "/api/$1" }} }} }}
security = {{ basic_auth = {{ realm = "ops", htpasswd = "{dir}/users.htpasswd" }},
             rate_limit = {{ requests = 3, window = "1m", key = "ip" }} }}

[[routes]]
name = "api"
match = {{ ports = [{port}], path = "/api/*" }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {backend} }}], http = {{
  request_headers = {{ set = {{ "X-User" = "{{jwt.sub}}" }} }},
  cors = {{ allowed_origins = ["https://app.test"], allowed_headers = ["Authorization"] }} }} }}
security = {{ jwt = {{ algorithms = ["HS256"], secret_file = "{dir}/hs.key", issuer = "https://id.test", audience = "api" }} }}
"#
    )
}

#[test]
fn policies_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let users = format!("{d}/users.htpasswd");
    htpasswd(&["-cbB", &users, "alice", "s3cret"]);
    let secret = b"0123456789abcdef0123456789abcdef-policies";
    std::fs::write(dir.path().join("hs.key"), [&secret[..], b"\n"].concat()).unwrap();
    let echo = Echo::start();
    let (mut p, [port, admin]) =
        Proxy::start_on(|[port, admin]| config(port, admin, echo.port, &d));
    let cfg = config(port, admin, echo.port, &d);
    let u = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let w = "\n=%{http_code}\n";

    // Basic auth, five header rules, a rewrite, the rate limit at 3 a minute.
    let (code, out, err) = curl(&[
        "-w",
        w,
        &u("/v1/x"),
        "--next",
        "-w",
        w,
        "-u",
        "alice:wrong",
        &u("/v1/x"),
        "--next",
        "-D",
        "-",
        "-w",
        w,
        "-u",
        "alice:s3cret",
        "-H",
        "X-Debug: 1",
        &u("/v1/items/7?q=1"),
        "--next",
        "-w",
        w,
        "-u",
        "alice:s3cret",
        &u("/v1/x"),
        "--next",
        "-w",
        w,
        "-u",
        "alice:s3cret",
        &u("/v1/x"),
        "--next",
        "-D",
        "-",
        "-w",
        w,
        "-u",
        "alice:s3cret",
        &u("/v1/x"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(codes(&out), ["401", "401", "200", "200", "200", "429"], "{out}");
    assert!(out.contains("get /api/items/7?q=1 http/1.1"), "rewritten: {out}");
    assert!(out.contains("x-route: ops 127.0.0.1"), "{out}");
    assert!(out.contains("x-uri: /v1/items/7?q=1"), "{out}");
    assert!(out.contains(&format!("x-trace: t-{port}")), "{out}");
    assert!(!out.contains("x-debug"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("strict-transport-security: max-age=63072000"), "{out}");
    assert!(!lower.contains("server: echo"), "{out}");
    // One request every 60 s / 3: the next one in 20 s (19 when a second went by).
    assert!(
        lower.contains("retry-after: 20\r\n") || lower.contains("retry-after: 19\r\n"),
        "{out}"
    );

    // A JWT (HS256, signed here): its subject reaches the backend; CORS on the way.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({ "sub": "alice", "iss": "https://id.test", "aud": "api", "exp": now + 60 });
    let good = format!("Authorization: Bearer {}", hs256(secret, &claims));
    let mut expired = claims.clone();
    expired["exp"] = (now - 600).into();
    let bad = format!("Authorization: Bearer {}", hs256(secret, &expired));
    let (_, out, _) = curl(&[
        "-D",
        "-",
        "-w",
        w,
        "-H",
        &good,
        "-H",
        "Origin: https://app.test",
        &u("/api/me"),
        "--next",
        "-D",
        "-",
        "-w",
        w,
        "-H",
        &bad,
        &u("/api/me"),
        "--next",
        "-D",
        "-",
        "-w",
        w,
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.test",
        "-H",
        "Access-Control-Request-Method: GET",
        &u("/api/me"),
    ]);
    assert_eq!(codes(&out), ["200", "401", "204"], "{out}");
    assert!(out.contains("x-user: alice"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("access-control-allow-origin: https://app.test"), "{out}");
    assert!(lower.contains("error_description=\"the token expired\""), "{out}");

    // Refusals per route and reason, in Prometheus.
    let m = get(admin, "/metrics").body;
    for needle in [
        "smartproxy_http_policy_refusals_total{route=\"ops\",reason=\"auth_missing\"} 1",
        "smartproxy_http_policy_refusals_total{route=\"ops\",reason=\"auth_invalid\"} 1",
        "smartproxy_http_policy_refusals_total{route=\"ops\",reason=\"rate_limited\"} 1",
        "smartproxy_http_policy_refusals_total{route=\"api\",reason=\"auth_invalid\"} 1",
        "smartproxy_http_errors_total{reason=\"unauthorized\"} 3",
        "smartproxy_http_errors_total{reason=\"rate_limited\"} 1",
    ] {
        assert!(m.contains(needle), "{needle} in:\n{m}");
    }

    // A new password, then SIGHUP: the file is read again (the rate limit of the unchanged
    // route keeps its state, so a new route name gives a fresh budget here).
    htpasswd(&["-bB", &users, "alice", "n3w"]);
    p.reload(&cfg.replace("name = \"ops\"", "name = \"ops2\""));
    p.wait_for_log("configuration reloaded");
    let (_, out, _) = curl(&[
        "-w",
        w,
        "-u",
        "alice:s3cret",
        &u("/v1/x"),
        "--next",
        "-w",
        w,
        "-u",
        "alice:n3w",
        &u("/v1/x"),
    ]);
    assert_eq!(codes(&out), ["401", "200"], "{out}");

    // A weak hash in the file: the reload is refused with the file's line, the old
    // configuration keeps serving.
    let mut f = std::fs::OpenOptions::new().append(true).open(&users).unwrap();
    writeln!(f, "dave:$apr1$TvdLtLQy$dmqPMD56xb6pPFnTtAAZm0").unwrap();
    drop(f);
    p.reload(&cfg);
    p.wait_for_log("configuration refused");
    assert!(p.output().contains("users.htpasswd` line 2: MD5"), "{}", p.output());
    let (_, out, _) = curl(&["-w", w, "-u", "alice:n3w", &u("/v1/x")]);
    assert_eq!(codes(&out), ["200"], "{out}");
}

#[test]
fn validate_names_policy_errors_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    std::fs::write(dir.path().join("users.htpasswd"), "alice:secret\n").unwrap();
    let bad = format!(
        r#"[[routes]]
name = "a"
match = {{ ports = [8080] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9000 }}], http = {{
  request_headers = {{ set = {{ "X-Who" = "{{clientip}}" }} }} }} }}
security = {{ basic_auth = {{ htpasswd = "{d}/users.htpasswd" }} }}

[[routes]]
name = "b"
match = {{ ports = [8081] }}
action = {{ type = "socket-handler", handler = "redirect", location = "https://{{domian}}{{path}}" }}
"#
    );
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let out = Command::new(smartproxy_bin())
        .args(["validate", "-c", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let all =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("bad.toml: 3 configuration errors"), "{all}");
    assert!(all.contains("bad.toml:5: routes[0].action.http.request_headers.set.X-Who: unknown template variable `{clientip}`"), "{all}");
    assert!(all.contains("bad.toml:6: routes[0].security.basic_auth.htpasswd: "), "{all}");
    assert!(
        all.contains("users.htpasswd` line 1: crypt(3) or a plain-text password is not accepted"),
        "{all}"
    );
    assert!(
        all.contains(
            "bad.toml:11: routes[1].action.location: unknown template variable `{domian}`"
        ),
        "{all}"
    );
}

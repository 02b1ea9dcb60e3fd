//! Route policies per request (issue 13): basic_auth with files written by Apache's
//! `htpasswd`, JWTs signed here (RS256 with an openssl key, ES256 with an rcgen key, HS256),
//! a rate limit hit exactly at its figure, CORS preflights, `Location` rewriting, CRLF
//! injection attempts, and the fixed order. Clients: curl, raw TCP.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use smartproxy_metrics::HttpPolicyReason;

use crate::common::*;

/// `htpasswd ARGS` (Debian's apache2-utils); fails naming the package when missing.
fn htpasswd(args: &[&str]) {
    let bin = require("htpasswd", "apache2-utils");
    let out = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("htpasswd: {e}"));
    assert!(out.status.success(), "htpasswd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display())).replace('\\', "/")
}

/// curl's `-w` marks: one `=CODE` line per request.
fn codes(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.strip_prefix('=')).map(str::to_owned).collect()
}

/// Response heads in curl `-D -` output, lower-cased.
fn heads(out: &str) -> Vec<String> {
    out.split("HTTP/1.1 ")
        .skip(1)
        .map(|h| h.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase())
        .collect()
}

fn refusals(p: &Proxy, route: &str, reason: HttpPolicyReason) -> u64 {
    p.metrics
        .snapshot()
        .routes
        .iter()
        .find(|r| r.name == route)
        .and_then(|r| r.http.policy_refusals.get(reason.as_str()).copied())
        .unwrap_or(0)
}

fn route(name: &str, port: u16, path: &str, target: u16, http: &str, security: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ ports = [{port}], path = \"{path}\" }}\n\
         action = {{ type = \"forward\", targets = [{{ host = \"127.0.0.1\", port = {target} }}], http = {{ {http} }} }}\n\
         security = {{ {security} }}\n"
    )
}

/// Basic authentication against a file written by `htpasswd` with bcrypt, SHA-256-crypt and
/// SHA-512-crypt users: right passwords pass (the backend sees the request), wrong ones,
/// unknown users, garbage and no credentials get a 401 with the challenge; counted per route
/// and reason; a reload reads the file again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_an_htpasswd_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    let f = path_str(&file);
    htpasswd(&["-cbB", &f, "alice", "s3cret"]);
    htpasswd(&["-b2", &f, "bob", "pw-two"]);
    htpasswd(&["-b5", "-r", "6000", &f, "carol", "pass word 3"]);
    let b = Backend::h1("auth").await;
    let bp = b.port();
    let fc = f.clone();
    let doc = move |p: u16| {
        let f = &fc;
        route(
            "ops",
            p,
            "/*",
            bp,
            "",
            &format!("basic_auth = {{ realm = \"ops\", htpasswd = \"{f}\" }}"),
        )
    };
    let proxy = Proxy::start(doc.clone(), Opts::default()).await;
    let w = "\n=%{http_code}\n";
    let u = proxy.url("/x");
    let out = curl(&[
        "-D",
        "-",
        "-w",
        w,
        &u,
        "--next",
        "-w",
        w,
        "-u",
        "alice:s3cret",
        &u,
        "--next",
        "-w",
        w,
        "-u",
        "alice:S3cret",
        &u,
        "--next",
        "-w",
        w,
        "-u",
        "bob:pw-two",
        &u,
        "--next",
        "-w",
        w,
        "-u",
        "carol:pass word 3",
        &u,
        "--next",
        "-w",
        w,
        "-u",
        "mallory:s3cret",
        &u,
        "--next",
        "-w",
        w,
        "-H",
        "Authorization: Basic !!!notbase64",
        &u,
        "--next",
        "-w",
        w,
        "-u",
        "alice:s3cret",
        &u,
    ])
    .await;
    let text = stdout(&out);
    assert_eq!(codes(&text), ["401", "200", "401", "200", "200", "401", "401", "200"], "{text}");
    let first = &heads(&text)[0];
    assert!(first.contains("www-authenticate: basic realm=\"ops\", charset=\"utf-8\""), "{first}");
    assert_eq!(json_docs(&text).len(), 4, "only authenticated requests reach the backend");
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(refusals(&proxy, "ops", HttpPolicyReason::AuthMissing), 1);
    assert_eq!(refusals(&proxy, "ops", HttpPolicyReason::AuthInvalid), 3);
    let errors = proxy.metrics.snapshot().http.errors;
    assert_eq!(errors["unauthorized"], 4);

    // A new password in the file, then a reload: the file is read again.
    htpasswd(&["-bB", &f, "alice", "n3w"]);
    proxy.reload(&doc(proxy.port()));
    let out =
        curl(&["-w", w, "-u", "alice:s3cret", &u, "--next", "-w", w, "-u", "alice:n3w", &u]).await;
    assert_eq!(codes(&stdout(&out)), ["401", "200"]);
}

/// An MD5 (`htpasswd -m`, its default) line is refused when the file is loaded, with the
/// key path, the file and the line; so is a missing file.
#[test]
fn weak_or_missing_htpasswd_files_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    let f = path_str(&file);
    htpasswd(&["-cbB", &f, "alice", "s3cret"]);
    htpasswd(&["-bm", &f, "dave", "md5"]);
    let doc = route("ops", 8080, "/*", 9, "", &format!("basic_auth = {{ htpasswd = \"{f}\" }}"));
    let e = smartproxy_http::Credentials::load(&route_configs(&doc)).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "routes[0].security.basic_auth.htpasswd");
    assert!(e[0].message.contains(&format!("`{f}` line 2: MD5")), "{}", e[0].message);
    let doc = route("ops", 8080, "/*", 9, "", "basic_auth = { htpasswd = \"/nonexistent/users\" }");
    let e = smartproxy_http::Credentials::load(&route_configs(&doc)).unwrap_err();
    assert!(e[0].message.starts_with("cannot read `/nonexistent/users`"), "{}", e[0].message);
}

struct Keys {
    dir: tempfile::TempDir,
    rsa: EncodingKey,
    ec: EncodingKey,
    /// An EC key that is not in the set.
    stranger: EncodingKey,
    hmac: Vec<u8>,
    /// The RSA public key as the JWKS publishes it (for an algorithm-confusion attempt).
    rsa_n: String,
}

impl Keys {
    /// RSA from openssl, ES256 from rcgen; `jwks.json` with both, `hs.key` with an HMAC
    /// secret.
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let openssl = require("openssl", "openssl");
        let pem = dir.path().join("rsa.pem");
        let der = dir.path().join("rsa.der");
        for args in [
            vec!["genrsa", "-traditional", "-out", pem.to_str().unwrap(), "2048"],
            vec![
                "rsa",
                "-in",
                pem.to_str().unwrap(),
                "-traditional",
                "-outform",
                "DER",
                "-out",
                der.to_str().unwrap(),
            ],
        ] {
            let o = Command::new(&openssl).args(&args).output().unwrap();
            assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let rsa = EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap());
        let ec_pair = rcgen::KeyPair::generate().unwrap();
        let ec = EncodingKey::from_ec_der(&ec_pair.serialize_der());
        let stranger =
            EncodingKey::from_ec_der(&rcgen::KeyPair::generate().unwrap().serialize_der());
        let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
        rsa_jwk.common.key_id = Some("rsa-1".into());
        let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
        ec_jwk.common.key_id = Some("ec-1".into());
        let rsa_n = serde_json::to_value(&rsa_jwk).unwrap()["n"].as_str().unwrap().to_owned();
        let set = JwkSet { keys: vec![rsa_jwk, ec_jwk] };
        std::fs::write(dir.path().join("jwks.json"), serde_json::to_vec(&set).unwrap()).unwrap();
        let hmac: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
        let mut file = hmac.clone();
        file.push(b'\n');
        std::fs::write(dir.path().join("hs.key"), file).unwrap();
        Keys { dir, rsa, ec, stranger, hmac, rsa_n }
    }

    fn path(&self, name: &str) -> String {
        path_str(&self.dir.path().join(name))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(Into::into);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// JWTs: RS256 and ES256 from a JWKS, HS256 from a secret file; `exp`, `nbf`, `iss`, `aud`
/// checked; forged, expired, not-yet-valid, wrongly addressed, `alg: none`, algorithm
/// confusion, a type-confused `nbf` and an unknown signer refused with 401 and RFC 6750
/// challenges; a valid token without the required claim gets 403; `{jwt.sub}` reaches the
/// backend without the CR/LF a subject may carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_tokens() {
    let keys = Keys::new();
    let b = Backend::h1("jwt").await;
    let bp = b.port();
    let (jwks, hs) = (keys.path("jwks.json"), keys.path("hs.key"));
    let proxy = Proxy::start(
        move |p| {
            let jwt = format!(
                "jwt = {{ algorithms = [\"RS256\", \"ES256\"], jwks_file = \"{jwks}\", issuer = \"https://id.test\", audience = \"api\", realm = \"api\" }}"
            );
            let admin = format!(
                "jwt = {{ algorithms = [\"ES256\"], jwks_file = \"{jwks}\", audience = \"api\", required_claims = {{ scope = \"admin\" }} }}"
            );
            let hmac = format!("jwt = {{ algorithms = [\"HS256\"], secret_file = \"{hs}\", audience = \"api\" }}");
            let user = "request_headers = { set = { \"X-User\" = \"{jwt.sub}\" } }";
            format!(
                "{}{}{}",
                route("api", p, "/api/*", bp, user, &jwt),
                route("admin", p, "/admin/*", bp, user, &admin),
                route("hs", p, "/hs/*", bp, user, &hmac),
            )
        },
        Opts::default(),
    )
    .await;
    let t = now();
    let good = json!({ "sub": "alice", "iss": "https://id.test", "aud": "api", "exp": t + 300 });
    let with = |patch: serde_json::Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let rs = |c: &serde_json::Value| sign(Algorithm::RS256, Some("rsa-1"), &keys.rsa, c);
    let es = |c: &serde_json::Value| sign(Algorithm::ES256, Some("ec-1"), &keys.ec, c);
    let none_token =
        format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(good.to_string().as_bytes()));
    // HS256 "signed" with the RSA public modulus as the secret (algorithm confusion).
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(keys.rsa_n.as_bytes()),
        &good,
    );
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("/api/a", rs(&good), "200", ""),
        ("/api/a", es(&good), "200", ""),
        ("/api/a", sign(Algorithm::ES256, None, &keys.ec, &good), "200", ""),
        ("/api/a", rs(&with(json!({ "exp": t - 3600 }))), "401", "the token expired"),
        ("/api/a", rs(&with(json!({ "nbf": t + 3600 }))), "401", "the token is not valid yet"),
        (
            "/api/a",
            rs(&with(json!({ "nbf": (t + 3600).to_string() }))),
            "401",
            "a registered claim is malformed",
        ),
        ("/api/a", rs(&with(json!({ "iss": "https://evil.test" }))), "401", "wrong issuer"),
        ("/api/a", rs(&with(json!({ "aud": "other" }))), "401", "wrong audience"),
        ("/api/a", rs(&with(json!({ "exp": null }))), "401", "a registered claim is missing"),
        ("/api/a", rs(&with(json!({ "iss": null }))), "401", "a registered claim is missing"),
        (
            "/api/a",
            sign(Algorithm::ES256, Some("ec-1"), &keys.stranger, &good),
            "401",
            "bad signature",
        ),
        ("/api/a", none_token, "401", "malformed token"),
        ("/api/a", confused, "401", "algorithm not accepted"),
        ("/api/a", "not.a.jwt".into(), "401", "malformed token"),
        ("/admin/a", es(&good), "403", ""),
        ("/admin/a", es(&with(json!({ "scope": "read admin" }))), "200", ""),
        (
            "/hs/a",
            sign(Algorithm::HS256, None, &EncodingKey::from_secret(&keys.hmac), &good),
            "200",
            "",
        ),
        (
            "/hs/a",
            sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more!!"),
                &good,
            ),
            "401",
            "bad signature",
        ),
        ("/api/a", rs(&with(json!({ "sub": "eve\r\nX-Injected: 1" }))), "200", ""),
    ];
    for (path, token, want, description) in &cases {
        let auth = format!("Authorization: Bearer {token}");
        let text = stdout(
            &curl(&["-D", "-", "-w", "\n=%{http_code}\n", "-H", &auth, &proxy.url(path)]).await,
        );
        assert_eq!(codes(&text), [*want], "{path} {description}: {text}");
        let head = &heads(&text)[0];
        if *want == "401" {
            let needle = format!("error=\"invalid_token\", error_description=\"{description}\"");
            assert!(head.contains(&needle), "{description}: {head}");
        }
        if *want == "403" {
            assert!(head.contains("error=\"insufficient_scope\""), "{head}");
        }
    }
    // No token: the bare challenge.
    let text = stdout(&curl(&["-D", "-", "-w", "\n=%{http_code}\n", &proxy.url("/api/a")]).await);
    assert_eq!(codes(&text), ["401"]);
    assert!(heads(&text)[0].contains("www-authenticate: bearer realm=\"api\"\r\n"), "{text}");
    // The subject reached the backend as a header value, CR/LF dropped, nothing injected.
    let auth =
        format!("Authorization: Bearer {}", rs(&with(json!({ "sub": "eve\r\nX-Injected: 1" }))));
    let text = stdout(&curl(&["-H", &auth, &proxy.url("/api/b")]).await);
    let doc = &json_docs(&text)[0];
    assert_eq!(doc["headers"]["x-user"][0], "eveX-Injected: 1", "{doc}");
    assert!(doc["headers"].get("x-injected").is_none(), "{doc}");
    let auth = format!("Authorization: Bearer {}", rs(&good));
    let doc = &json_docs(&stdout(&curl(&["-H", &auth, &proxy.url("/api/c")]).await))[0];
    assert_eq!(doc["headers"]["x-user"][0], "alice");
    assert_eq!(refusals(&proxy, "api", HttpPolicyReason::AuthInvalid), 11);
    assert_eq!(refusals(&proxy, "api", HttpPolicyReason::AuthMissing), 1);
    assert_eq!(refusals(&proxy, "admin", HttpPolicyReason::AuthForbidden), 1);
    assert_eq!(refusals(&proxy, "hs", HttpPolicyReason::AuthInvalid), 1);
}

/// `requests = 5` per minute: five requests pass, the sixth gets a 429 with `Retry-After`
/// (12 s: one request every 60 s / 5); a limit keyed by a header gives each value its own
/// budget, and requests without it are counted by address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_hit_exactly_at_its_figure() {
    let b = Backend::h1("rl").await;
    let bp = b.port();
    let proxy = Proxy::start(
        move |p| {
            format!(
                "{}{}",
                route(
                    "ip",
                    p,
                    "/ip/*",
                    bp,
                    "",
                    "rate_limit = { requests = 5, window = \"1m\", key = \"ip\" }"
                ),
                route(
                    "key",
                    p,
                    "/key/*",
                    bp,
                    "",
                    "rate_limit = { requests = 2, window = \"1h\", key = \"header:X-Api-Key\" }"
                ),
            )
        },
        Opts::default(),
    )
    .await;
    let w = "\n=%{http_code}\n";
    let u = proxy.url("/ip/x");
    let mut args: Vec<&str> = vec!["-D", "-", "-w", w, &u];
    for _ in 0..5 {
        args.extend(["--next", "-D", "-", "-w", w, &u]);
    }
    let text = stdout(&curl(&args).await);
    assert_eq!(codes(&text), ["200", "200", "200", "200", "200", "429"], "{text}");
    let last = heads(&text).pop().unwrap_or_default();
    let retry: u64 = last
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in {last}"));
    assert!((11..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(refusals(&proxy, "ip", HttpPolicyReason::RateLimited), 1);

    let k = proxy.url("/key/x");
    let text = stdout(
        &curl(&[
            "-w",
            w,
            "-H",
            "X-Api-Key: alpha",
            &k,
            "--next",
            "-w",
            w,
            "-H",
            "X-Api-Key: alpha",
            &k,
            "--next",
            "-w",
            w,
            "-H",
            "X-Api-Key: alpha",
            &k,
            "--next",
            "-w",
            w,
            "-H",
            "X-Api-Key: beta",
            &k,
            "--next",
            "-w",
            w,
            &k,
            "--next",
            "-w",
            w,
            &k,
            "--next",
            "-w",
            w,
            &k,
        ])
        .await,
    );
    assert_eq!(codes(&text), ["200", "200", "429", "200", "200", "200", "429"], "{text}");
    assert_eq!(refusals(&proxy, "key", HttpPolicyReason::RateLimited), 2);
    assert_eq!(proxy.metrics.snapshot().http.errors["rate_limited"], 3);
}

/// CORS: the proxy answers preflights (the backend never sees them), before authentication
/// (preflights carry no credentials); allowed origins get the CORS headers on responses,
/// refusals included; other origins get a 403 preflight and no CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_by_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let f = path_str(&dir.path().join("u"));
    htpasswd(&["-cbB", &f, "alice", "pw"]);
    let b = Backend::h1("cors").await;
    let bp = b.port();
    let proxy = Proxy::start(
        move |p| {
            route(
                "api",
                p,
                "/*",
                bp,
                "cors = { allowed_origins = [\"https://app.test\"], allowed_methods = [\"GET\", \"PUT\"], allowed_headers = [\"Authorization\"], exposed_headers = [\"X-Backend\"], allow_credentials = true, max_age = \"10m\" }",
                &format!("basic_auth = {{ htpasswd = \"{f}\" }}"),
            )
        },
        Opts::default(),
    )
    .await;
    let u = proxy.url("/things");
    let w = "\n=%{http_code}\n";
    let text = stdout(
        &curl(&[
            "-D",
            "-",
            "-w",
            w,
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.test",
            "-H",
            "Access-Control-Request-Method: PUT",
            "-H",
            "Access-Control-Request-Headers: authorization",
            &u,
            "--next",
            "-D",
            "-",
            "-w",
            w,
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://evil.test",
            "-H",
            "Access-Control-Request-Method: GET",
            &u,
            "--next",
            "-D",
            "-",
            "-w",
            w,
            "-H",
            "Origin: https://app.test",
            &u,
            "--next",
            "-D",
            "-",
            "-w",
            w,
            "-u",
            "alice:pw",
            "-H",
            "Origin: https://app.test",
            &u,
            "--next",
            "-D",
            "-",
            "-w",
            w,
            "-u",
            "alice:pw",
            "-H",
            "Origin: https://evil.test",
            &u,
        ])
        .await,
    );
    assert_eq!(codes(&text), ["204", "403", "401", "200", "200"], "{text}");
    let h = heads(&text);
    for needle in [
        "access-control-allow-origin: https://app.test",
        "access-control-allow-methods: get, put",
        "access-control-allow-headers: authorization",
        "access-control-allow-credentials: true",
        "access-control-max-age: 600",
    ] {
        assert!(h[0].contains(needle), "{needle} in {}", h[0]);
    }
    assert!(!h[1].contains("access-control-allow-origin"), "{}", h[1]);
    assert!(
        h[2].contains("access-control-allow-origin: https://app.test"),
        "the 401 is readable: {}",
        h[2]
    );
    assert!(
        h[3].contains("access-control-allow-origin: https://app.test")
            && h[3].contains("access-control-expose-headers: x-backend")
            && h[3].contains("vary: origin"),
        "{}",
        h[3]
    );
    assert!(!h[4].contains("access-control-allow-origin"), "{}", h[4]);
    assert_eq!(
        b.requests.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "preflights stay at the proxy"
    );
    assert_eq!(refusals(&proxy, "api", HttpPolicyReason::CorsRefused), 1);
}

/// `rewrite_path = ^/v1/(.*)$ -> /api/$1`: a redirect from the target to itself comes back
/// with the client's host and the /v1 prefix; relative ones get the prefix back; others
/// stay; `rewrite_location = false` keeps them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_of_redirects_point_back_at_the_proxy() {
    let b = Backend::h1("loc").await;
    let bp = b.port();
    let proxy = Proxy::start(
        move |p| {
            format!(
                "{}{}",
                route("v1", p, "/v1/*", bp, "rewrite_path = { from = \"^/v1/(.*)$\", to = \"/api/$1\" }, preserve_host = false", ""),
                route("raw", p, "/raw/*", bp, "rewrite_location = false", ""),
            )
        },
        Opts::default(),
    )
    .await;
    let loc = |l: String, path: &'static str| {
        let proxy = &proxy;
        async move {
            let text = stdout(
                &curl(&[
                    "-D",
                    "-",
                    "-o",
                    "/dev/null",
                    "-H",
                    "Host: api.test:8080",
                    "-H",
                    &format!("X-Location: {l}"),
                    &proxy.url(path),
                ])
                .await,
            );
            heads(&text)[0]
                .lines()
                .find_map(|l| l.strip_prefix("location: ").map(str::to_owned))
                .unwrap_or_default()
        }
    };
    assert_eq!(
        loc(format!("http://127.0.0.1:{bp}/api/next?x=1"), "/v1/found").await,
        "http://api.test:8080/v1/next?x=1"
    );
    assert_eq!(loc("/api/login".into(), "/v1/found").await, "/v1/login");
    assert_eq!(
        loc("http://api.test:8080/api/z".into(), "/v1/found").await,
        "http://api.test:8080/v1/z"
    );
    assert_eq!(
        loc("https://elsewhere.test/api/x".into(), "/v1/found").await,
        "https://elsewhere.test/api/x"
    );
    assert_eq!(
        loc(format!("http://127.0.0.1:{bp}/api/next"), "/raw/found").await,
        format!("http://127.0.0.1:{bp}/api/next")
    );
}

/// Values a client controls never split a header: percent-encoded CR/LF in the path and
/// query stay encoded in template values, a raw CR in a header value is refused (400), and
/// the backend never sees an injected header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_injection_attempts_go_nowhere() {
    let b = Backend::h1("crlf").await;
    let bp = b.port();
    let proxy = Proxy::start(
        move |p| {
            route(
                "t",
                p,
                "/users/:id",
                bp,
                "request_headers = { set = { \"X-Id\" = \"{pathParams.id}\", \"X-Uri\" = \"{uri}\", \"X-In\" = \"[{headers.x-in}]\" } }, response_headers = { set = { \"X-Echo\" = \"{query}\" } }",
                "",
            )
        },
        Opts::default(),
    )
    .await;
    let text = stdout(
        &curl(&[
            "-D",
            "-",
            "-H",
            "X-In: a%0d%0aX-Evil: 1",
            &proxy.url("/users/a%0d%0aX-Injected:%201?q=%0D%0AX-Evil:%201"),
        ])
        .await,
    );
    let doc = &json_docs(&text)[0];
    let h = &doc["headers"];
    assert_eq!(h["x-id"][0], "a%0d%0aX-Injected:%201");
    assert_eq!(h["x-uri"][0], "/users/a%0d%0aX-Injected:%201?q=%0D%0AX-Evil:%201");
    assert_eq!(h["x-in"][0], "[a%0d%0aX-Evil: 1]");
    assert!(h.get("x-injected").is_none() && h.get("x-evil").is_none(), "{doc}");
    let head = &heads(&text)[0];
    assert!(head.lines().any(|l| l == "x-echo: q=%0d%0ax-evil:%201"), "{head}");
    assert!(
        !head.lines().any(|l| l.starts_with("x-evil") || l.starts_with("x-injected")),
        "{head}"
    );
    // Raw bytes: a bare CR inside a header value, and an obsolete line folding.
    for req in [
        &b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-In: a\rX-Evil: 1\r\nConnection: close\r\n\r\n"[..],
        &b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-In: a\r\n X-Evil: 1\r\nConnection: close\r\n\r\n"
            [..],
    ] {
        let before = b.requests.load(std::sync::atomic::Ordering::SeqCst);
        let answer = raw(proxy.addr, req).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), before);
    }
}

/// The order is fixed: allow/block before authentication (a blocked client gets 403, not a
/// challenge), authentication before the rate limit (unauthenticated requests use no
/// budget), and the request rewrite after them (removing `Authorization` for the backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_run_in_their_documented_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = path_str(&dir.path().join("u"));
    htpasswd(&["-cbB", &f, "alice", "pw"]);
    let b = Backend::h1("order").await;
    let bp = b.port();
    let proxy = Proxy::start(
        move |p| {
            let sec = format!("basic_auth = {{ htpasswd = \"{f}\" }}, rate_limit = {{ requests = 1, window = \"1h\" }}");
            format!(
                "{}{}",
                route("open", p, "/open/*", bp, "request_headers = { remove = [\"Authorization\"] }", &sec),
                route("closed", p, "/closed/*", bp, "", &format!("{sec}, ip_block_list = [\"127.0.0.0/8\"]")),
            )
        },
        Opts::default(),
    )
    .await;
    let w = "\n=%{http_code}\n";
    let (o, c) = (proxy.url("/open/x"), proxy.url("/closed/x"));
    let text = stdout(
        &curl(&[
            "-w", w, &c, "--next", "-w", w, &o, "--next", "-w", w, &o, "--next", "-w", w, "-u",
            "alice:pw", &o, "--next", "-w", w, "-u", "alice:pw", &o,
        ])
        .await,
    );
    assert_eq!(codes(&text), ["403", "401", "401", "200", "429"], "{text}");
    let doc = &json_docs(&text)[0];
    assert!(doc["headers"].get("authorization").is_none(), "removed after the check: {doc}");
    assert_eq!(refusals(&proxy, "closed", HttpPolicyReason::IpBlocked), 1);
    assert_eq!(refusals(&proxy, "open", HttpPolicyReason::AuthMissing), 2);
    assert_eq!(refusals(&proxy, "open", HttpPolicyReason::RateLimited), 1);
}

//! Validation of the per-request policies (`security.basic_auth`, `security.jwt`,
//! `security.rate_limit`, `action.http.cors`) and of every template (header values, redirect
//! locations): an unknown variable is an error with its key path.

use crate::error::ValidationError;
use crate::model::{RouteAction, RouteConfig};
use crate::policy::{Cors, JwtAuth, RateLimitKey};
use crate::template::Template;

/// Request headers a CORS preflight never needs to have allowed (the Fetch standard's
/// CORS-safelisted request headers), lower-case.
pub const CORS_SAFELISTED_HEADERS: &[&str] =
    &["accept", "accept-language", "content-language", "content-type", "range"];

fn token(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name as a key path segment: bare when plain, quoted otherwise.
fn seg(n: &str) -> String {
    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        n.to_owned()
    } else {
        format!("{n:?}")
    }
}

/// A realm goes into a quoted-string: visible ASCII and spaces, no `"` or `\`.
fn check_realm(realm: &str, key: String, out: &mut Vec<ValidationError>) {
    if realm.trim().is_empty()
        || !realm.bytes().all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'"' && b != b'\\')
    {
        out.push(ValidationError::new(
            key,
            format!("realm `{realm}` must be printable ASCII without `\"` or `\\`"),
        ));
    }
}

pub(crate) fn check_policies(routes: &[RouteConfig], out: &mut Vec<ValidationError>) {
    for (i, r) in routes.iter().enumerate() {
        let key = |k: &str| format!("routes[{i}].{k}");
        let http = match &r.action {
            RouteAction::Forward(f) => f.http.as_ref(),
            RouteAction::SocketHandler(_) => None,
        };
        let jwt = r.security.as_ref().and_then(|s| s.jwt.as_deref());
        if let Some(s) = &r.security {
            if http.is_none() {
                for (k, set) in [
                    ("basic_auth", s.basic_auth.is_some()),
                    ("jwt", s.jwt.is_some()),
                    ("rate_limit", s.rate_limit.is_some()),
                ] {
                    if set {
                        let hint = if k == "rate_limit" {
                            "; for new connections per minute use rate_limit_per_minute"
                        } else {
                            ""
                        };
                        out.push(ValidationError::new(
                            key(&format!("security.{k}")),
                            format!(
                                "`{k}` applies to each HTTP request: only a forward route with an \
                                 `http` table has requests{hint}"
                            ),
                        ));
                    }
                }
            }
            if let Some(b) = &s.basic_auth {
                if b.htpasswd.as_os_str().is_empty() {
                    out.push(ValidationError::new(
                        key("security.basic_auth.htpasswd"),
                        "htpasswd path is empty",
                    ));
                }
                check_realm(&b.realm, key("security.basic_auth.realm"), out);
            }
            if let Some(j) = &s.jwt {
                if s.basic_auth.is_some() {
                    out.push(ValidationError::new(
                        key("security.jwt"),
                        "basic_auth and jwt both read the Authorization header: a route takes \
                         one of them",
                    ));
                }
                check_jwt(j, &|k| key(&format!("security.jwt.{k}")), out);
            }
            if let Some(rl) = &s.rate_limit {
                if rl.requests == 0 {
                    out.push(ValidationError::new(
                        key("security.rate_limit.requests"),
                        "requests = 0 would refuse every request; leave rate_limit out for no limit",
                    ));
                }
                if rl.window.is_zero() {
                    out.push(ValidationError::new(
                        key("security.rate_limit.window"),
                        "window must be longer than zero",
                    ));
                }
                if let RateLimitKey::Header(h) = &rl.key
                    && !token(h)
                {
                    out.push(ValidationError::new(
                        key("security.rate_limit.key"),
                        format!("`header:{h}`: `{h}` is not a valid HTTP header name"),
                    ));
                }
            }
        }
        if let Some(h) = http {
            if let Some(c) = &h.cors {
                check_cors(c, &|k| key(&format!("action.http.cors.{k}")), out);
            }
            for (table, actions) in
                [("request_headers", &h.request_headers), ("response_headers", &h.response_headers)]
            {
                let Some(a) = actions else { continue };
                for (op, map) in [("set", &a.set), ("add", &a.add)] {
                    for (name, value) in map {
                        let k = key(&format!("action.http.{table}.{op}.{}", seg(name)));
                        check_template(value, jwt.is_some(), k, out);
                    }
                }
            }
        }
        if let RouteAction::SocketHandler(hd) = &r.action
            && hd.handler == "redirect"
            && let Some(loc) = &hd.location
        {
            check_template(loc, false, key("action.location"), out);
        }
    }
}

fn check_template(value: &str, has_jwt: bool, key: String, out: &mut Vec<ValidationError>) {
    match Template::compile(value) {
        Err(e) => out.push(ValidationError::new(key, e.to_string())),
        Ok(t) if t.uses_jwt() && !has_jwt => out.push(ValidationError::new(
            key,
            "`{jwt.sub}` needs `security.jwt` on the route (the subject of a verified token)",
        )),
        Ok(_) => {}
    }
}

fn check_jwt(j: &JwtAuth, key: &dyn Fn(&str) -> String, out: &mut Vec<ValidationError>) {
    if j.algorithms.is_empty() {
        out.push(ValidationError::new(
            key("algorithms"),
            "no algorithm: list those the issuer signs with, e.g. [\"RS256\"]",
        ));
    }
    let hmac = j.algorithms.iter().any(|a| a.is_hmac());
    let public = j.algorithms.iter().any(|a| !a.is_hmac());
    if hmac && public {
        out.push(ValidationError::new(
            key("algorithms"),
            "HMAC (HS*) and public-key algorithms mixed: a public key must never double as an \
             HMAC secret; use one kind per route",
        ));
    }
    for (k, p) in [("jwks_file", &j.jwks_file), ("secret_file", &j.secret_file)] {
        if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            out.push(ValidationError::new(key(k), "path is empty"));
        }
    }
    match (&j.jwks_file, &j.secret_file) {
        (None, None) => out.push(ValidationError::new(
            key("jwks_file"),
            "no key: give jwks_file (a JSON Web Key Set) or, for HS*, secret_file",
        )),
        (Some(_), Some(_)) => out.push(ValidationError::new(
            key("secret_file"),
            "jwks_file and secret_file both given: keep one",
        )),
        (None, Some(_)) if public => out.push(ValidationError::new(
            key("secret_file"),
            "secret_file holds an HMAC secret: RS*, PS*, ES* and EdDSA keys come from jwks_file",
        )),
        _ => {}
    }
    if j.leeway.is_some_and(|l| l > std::time::Duration::from_secs(600)) {
        out.push(ValidationError::new(key("leeway"), "leeway over 10m accepts expired tokens"));
    }
    for (name, v) in &j.required_claims {
        if name.is_empty() || v.is_empty() {
            out.push(ValidationError::new(
                key(&format!("required_claims.{}", seg(name))),
                "a required claim needs a name and a value",
            ));
        }
    }
    for (k, v) in [("issuer", &j.issuer), ("audience", &j.audience)] {
        if v.iter().any(|s| s.is_empty()) {
            out.push(ValidationError::new(key(k), format!("an empty {k} value")));
        }
    }
    check_realm(&j.realm, key("realm"), out);
}

/// `https://app.example`, `http://localhost:3000`, `https://*.example.org` or `*`.
fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    if scheme.is_empty()
        || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        || rest.is_empty()
    {
        return false;
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (host, None),
    };
    !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn check_cors(c: &Cors, key: &dyn Fn(&str) -> String, out: &mut Vec<ValidationError>) {
    if c.allowed_origins.is_empty() {
        out.push(ValidationError::new(
            key("allowed_origins"),
            "no origin: list the pages' origins (\"https://app.example\"), or \"*\"",
        ));
    }
    for (j, o) in c.allowed_origins.iter().enumerate() {
        if !valid_origin(o) {
            out.push(ValidationError::new(
                key(&format!("allowed_origins[{j}]")),
                format!(
                    "`{o}` is not an origin: scheme://host[:port] without a path \
                     (\"https://app.example\", \"https://*.example.org\") or \"*\""
                ),
            ));
        } else if o == "*" && c.allow_credentials {
            out.push(ValidationError::new(
                key("allow_credentials"),
                "browsers refuse credentials with `*`: list the origins instead",
            ));
        }
    }
    for (j, m) in c.allowed_methods.iter().enumerate() {
        if !token(m) {
            out.push(ValidationError::new(
                key(&format!("allowed_methods[{j}]")),
                format!("`{m}` is not an HTTP method"),
            ));
        }
    }
    for (k, list) in
        [("allowed_headers", &c.allowed_headers), ("exposed_headers", &c.exposed_headers)]
    {
        for (j, h) in list.iter().enumerate() {
            if !(token(h) || (h == "*" && k == "allowed_headers")) {
                out.push(ValidationError::new(
                    key(&format!("{k}[{j}]")),
                    format!("`{h}` is not an HTTP header name"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{RouteConfig, validate};

    fn errors(doc: &str) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct F {
            routes: Vec<RouteConfig>,
        }
        let f: F = toml::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        match validate(&f.routes) {
            Ok(()) => Vec::new(),
            Err(v) => v.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    const HTTP: &str =
        r#"action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9 }], http = {} }"#;

    #[test]
    fn a_good_policy_route_passes() {
        let doc = r#"
[[routes]]
name = "api"
match = { ports = [8080], path = "/users/:id" }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9 }], http = {
  request_headers = { set = { "X-User" = "{jwt.sub}", "X-Id" = "{pathParams.id}", "X-Uri" = "{uri}" } },
  cors = { allowed_origins = ["https://app.example", "https://*.example.org", "http://localhost:3000"], allowed_headers = ["Authorization", "*"], allow_credentials = true, max_age = "10m" } } }
security = { jwt = { algorithms = ["RS256", "ES256"], jwks_file = "jwks.json", issuer = "https://id.example", audience = "api" },
             rate_limit = { requests = 100, window = "1m", key = "header:X-Api-Key" } }

[[routes]]
name = "ops"
match = { ports = [8080], path = "/ops/*" }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9 }], http = {} }
security = { basic_auth = { realm = "ops area", htpasswd = "users.htpasswd" } }
"#;
        assert_eq!(errors(doc), Vec::<String>::new());
    }

    #[test]
    fn every_policy_error_has_its_key() {
        let doc = format!(
            r#"
[[routes]]
name = "tcp"
match = {{ ports = [9000] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9 }}] }}
security = {{ basic_auth = {{ htpasswd = "u" }}, rate_limit = {{ requests = 1 }} }}

[[routes]]
name = "bad"
match = {{ ports = [8080] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = 9 }}], http = {{
  request_headers = {{ set = {{ "X-Route" = "{{routname}}", "X-Sub" = "{{jwt.sub}}" }} }},
  cors = {{ allowed_origins = ["*", "app.example", "https://a.example/path"], allow_credentials = true, allowed_methods = ["GET POST"] }} }} }}
security = {{ basic_auth = {{ realm = "a\"b", htpasswd = "" }}, rate_limit = {{ requests = 0, window = "0s", key = "header:X Key" }} }}

[[routes]]
name = "jwt"
match = {{ ports = [8081] }}
{HTTP}
security = {{ jwt = {{ algorithms = ["HS256", "RS256"], secret_file = "s", leeway = "1h" }} }}

[[routes]]
name = "redirect"
match = {{ ports = [8082] }}
action = {{ type = "socket-handler", handler = "redirect", location = "https://{{domian}}{{path}}" }}
"#
        );
        let e = errors(&doc);
        let want = [
            "routes[0].security.basic_auth: `basic_auth` applies to each HTTP request",
            "routes[0].security.rate_limit: `rate_limit` applies to each HTTP request: only a forward route with an `http` table has requests; for new connections per minute use rate_limit_per_minute",
            "routes[1].security.basic_auth.htpasswd: htpasswd path is empty",
            "routes[1].security.basic_auth.realm: realm `a\"b`",
            "routes[1].security.rate_limit.requests: requests = 0",
            "routes[1].security.rate_limit.window: window must be longer than zero",
            "routes[1].security.rate_limit.key: `header:X Key`",
            "routes[1].action.http.cors.allowed_origins[1]: `app.example` is not an origin",
            "routes[1].action.http.cors.allowed_origins[2]: `https://a.example/path` is not an origin",
            "routes[1].action.http.cors.allow_credentials: browsers refuse credentials with `*`",
            "routes[1].action.http.cors.allowed_methods[0]: `GET POST` is not an HTTP method",
            "routes[1].action.http.request_headers.set.X-Route: unknown template variable `{routname}`",
            "routes[1].action.http.request_headers.set.X-Sub: `{jwt.sub}` needs `security.jwt`",
            "routes[2].security.jwt.algorithms: HMAC (HS*) and public-key algorithms mixed",
            "routes[2].security.jwt.secret_file: secret_file holds an HMAC secret",
            "routes[2].security.jwt.leeway: leeway over 10m",
            "routes[3].action.location: unknown template variable `{domian}`",
        ];
        for w in want {
            assert!(e.iter().any(|got| got.starts_with(w)), "missing `{w}` in:\n{}", e.join("\n"));
        }
        assert_eq!(e.len(), want.len(), "{}", e.join("\n"));
    }

    #[test]
    fn jwt_needs_a_key_and_one_auth_per_route() {
        let doc = format!(
            r#"
[[routes]]
name = "a"
match = {{ ports = [8080] }}
{HTTP}
security = {{ basic_auth = {{ htpasswd = "u" }}, jwt = {{ algorithms = [], realm = "" }} }}
"#
        );
        let e = errors(&doc);
        for w in [
            "routes[0].security.jwt: basic_auth and jwt both read the Authorization header",
            "routes[0].security.jwt.algorithms: no algorithm",
            "routes[0].security.jwt.jwks_file: no key",
            "routes[0].security.jwt.realm: realm ``",
        ] {
            assert!(e.iter().any(|got| got.starts_with(w)), "missing `{w}` in:\n{}", e.join("\n"));
        }
    }
}

//! `action.http.cors`: preflights answered by the proxy, CORS headers on other responses.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use smartproxy_routing::{CORS_SAFELISTED_HEADERS, Cors};

static ACRM: HeaderName = HeaderName::from_static("access-control-request-method");
static ACRH: HeaderName = HeaderName::from_static("access-control-request-headers");
const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// A compiled `cors` table.
#[derive(Debug)]
pub(crate) struct CorsPolicy {
    any_origin: bool,
    /// Lower-case exact origins.
    exact: Box<[Box<str>]>,
    /// `https://*.example.org[:port]` as (`https://`, `.example.org[:port]`), lower-case.
    wildcard: Box<[(Box<str>, Box<str>)]>,
    methods: Box<[Box<str>]>,
    methods_value: Option<HeaderValue>,
    any_header: bool,
    /// Lower-case.
    headers: Box<[Box<str>]>,
    headers_value: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// What CORS decides for one request.
#[derive(Debug)]
pub(crate) enum CorsStep {
    /// Not a CORS request, or from an origin that is not allowed: nothing to add.
    None,
    /// A request from an allowed origin: the `Access-Control-Allow-Origin` value.
    Allowed(HeaderValue),
    /// A preflight, answered here: 204 with these headers.
    Preflight(HeaderMap),
    /// A preflight that the policy refuses (403), and why.
    Refused(&'static str),
}

fn joined(items: &[String]) -> Option<HeaderValue> {
    (!items.is_empty()).then(|| HeaderValue::from_str(&items.join(", ")).ok()).flatten()
}

impl CorsPolicy {
    pub(crate) fn compile(c: &Cors) -> Self {
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        let mut any_origin = false;
        for o in &c.allowed_origins {
            let o = o.to_ascii_lowercase();
            if o == "*" {
                any_origin = true;
            } else if let Some((scheme, rest)) = o.split_once("://")
                && let Some(suffix) = rest.strip_prefix('*')
            {
                wildcard.push((format!("{scheme}://").into(), suffix.into()));
            } else {
                exact.push(o.into());
            }
        }
        let any_header = c.allowed_headers.iter().any(|h| h == "*");
        let headers: Vec<String> =
            c.allowed_headers.iter().filter(|h| *h != "*").cloned().collect();
        Self {
            any_origin,
            exact: exact.into(),
            wildcard: wildcard.into(),
            methods: c.allowed_methods.iter().map(|m| m.as_str().into()).collect(),
            methods_value: joined(&c.allowed_methods),
            any_header,
            headers: headers.iter().map(|h| h.to_ascii_lowercase().into()).collect(),
            headers_value: joined(&headers),
            exposed: joined(&c.exposed_headers),
            credentials: c.allow_credentials,
            max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        if self.exact.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return true;
        }
        let lower = origin.to_ascii_lowercase();
        self.wildcard.iter().any(|(scheme, suffix)| {
            lower.strip_prefix(&**scheme).is_some_and(|host| {
                // At least one label before the suffix (`*.example.org` is not `example.org`).
                host.len() > suffix.len() && host.ends_with(&**suffix)
            })
        })
    }

    /// The `Access-Control-Allow-Origin` value for an allowed `origin`.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials { STAR } else { origin.clone() }
    }

    pub(crate) fn step<B>(&self, req: &Request<B>) -> CorsStep {
        let h = req.headers();
        let Some(origin) = h.get(header::ORIGIN) else { return CorsStep::None };
        let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let preflight = req.method() == Method::OPTIONS && h.contains_key(&ACRM);
        if !preflight {
            return if allowed {
                CorsStep::Allowed(self.allow_origin(origin))
            } else {
                CorsStep::None
            };
        }
        if !allowed {
            return CorsStep::Refused("origin not allowed");
        }
        let method = h.get(&ACRM).and_then(|v| v.to_str().ok()).unwrap_or("");
        let safelisted = matches!(method, "GET" | "HEAD" | "POST");
        if !safelisted && !self.methods.iter().any(|m| **m == *method) {
            return CorsStep::Refused("method not allowed");
        }
        let asked = h.get(&ACRH).and_then(|v| v.to_str().ok());
        if !self.any_header
            && let Some(list) = asked
        {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let ok = CORS_SAFELISTED_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(name))
                    || self.headers.iter().any(|a| a.eq_ignore_ascii_case(name));
                if !ok {
                    return CorsStep::Refused("header not allowed");
                }
            }
        }
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if let Some(m) = &self.methods_value {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        let allow_headers =
            if self.any_header { h.get(&ACRH).cloned() } else { self.headers_value.clone() };
        if let Some(v) = allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(a) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, a.clone());
        }
        out.insert(header::VARY, VARY_PREFLIGHT);
        CorsStep::Preflight(out)
    }

    /// Adds the headers of an allowed request's response (the origin value from
    /// [`CorsStep::Allowed`]); the target's own CORS headers are replaced.
    pub(crate) fn apply(&self, h: &mut HeaderMap, allow_origin: &HeaderValue) {
        let star = allow_origin == STAR;
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone());
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        } else {
            h.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        match &self.exposed {
            Some(e) => {
                h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
            None => {
                h.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
            }
        }
        let varies = h.get_all(header::VARY).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
            })
        });
        if !star && !varies {
            h.append(header::VARY, VARY_ORIGIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(doc: &str) -> CorsPolicy {
        CorsPolicy::compile(&toml::from_str::<Cors>(doc).unwrap_or_else(|e| panic!("{e}")))
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn origins() {
        let p = policy(
            r#"allowed_origins = ["https://app.example", "https://*.example.org", "http://localhost:3000"]"#,
        );
        for ok in [
            "https://app.example",
            "HTTPS://APP.example",
            "https://a.example.org",
            "https://x.y.example.org",
            "http://localhost:3000",
        ] {
            assert!(p.origin_allowed(ok), "{ok}");
        }
        for no in [
            "http://app.example",
            "https://example.org",
            "https://evil-example.org",
            "https://app.example.evil",
            "null",
            "http://localhost:3001",
        ] {
            assert!(!p.origin_allowed(no), "{no}");
        }
    }

    #[test]
    fn preflight_and_simple_requests() {
        let p = policy(
            r#"allowed_origins = ["https://app.example"]
allowed_methods = ["GET", "PUT"]
allowed_headers = ["Authorization"]
exposed_headers = ["X-Total"]
allow_credentials = true
max_age = "10m""#,
        );
        let o = ("origin", "https://app.example");
        let CorsStep::Preflight(h) = p.step(&req(
            "OPTIONS",
            &[
                o,
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "authorization, content-type"),
            ],
        )) else {
            panic!("a preflight")
        };
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "Authorization");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "600");
        for (asked, why) in [
            (vec![("access-control-request-method", "DELETE")], "method not allowed"),
            (
                vec![
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-secret"),
                ],
                "header not allowed",
            ),
        ] {
            let mut hs = vec![o];
            hs.extend(asked);
            assert!(matches!(p.step(&req("OPTIONS", &hs)), CorsStep::Refused(w) if w == why));
        }
        assert!(matches!(
            p.step(&req(
                "OPTIONS",
                &[("origin", "https://evil.example"), ("access-control-request-method", "GET")]
            )),
            CorsStep::Refused("origin not allowed")
        ));
        // A plain OPTIONS (no request method) is not a preflight.
        assert!(matches!(p.step(&req("OPTIONS", &[o])), CorsStep::Allowed(_)));
        assert!(matches!(p.step(&req("GET", &[])), CorsStep::None));
        assert!(matches!(
            p.step(&req("GET", &[("origin", "https://evil.example")])),
            CorsStep::None
        ));
        let CorsStep::Allowed(v) = p.step(&req("GET", &[o])) else { panic!("allowed") };
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        p.apply(&mut h, &v);
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-expose-headers"], "X-Total");
        assert_eq!(h["vary"], "Origin");
    }

    #[test]
    fn any_origin_without_credentials_is_a_star() {
        let p = policy(
            r#"allowed_origins = ["*"]
allowed_headers = ["*"]"#,
        );
        let CorsStep::Preflight(h) = p.step(&req(
            "OPTIONS",
            &[
                ("origin", "https://x.test"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-anything"),
            ],
        )) else {
            panic!("a preflight")
        };
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-allow-headers"], "x-anything");
        let CorsStep::Allowed(v) = p.step(&req("GET", &[("origin", "https://x.test")])) else {
            panic!("allowed")
        };
        let mut out = HeaderMap::new();
        p.apply(&mut out, &v);
        assert!(out.get("vary").is_none());
    }
}

//! Templates with request variables (header values, redirect locations), parsed once at load.
//!
//! Variables, as in SmartProxy: `{domain}` `{path}` `{query}` `{uri}` `{clientIp}` `{port}`
//! `{routeName}` `{headers.NAME}` `{pathParams.NAME}`, and `{jwt.sub}` (the verified subject of
//! a route with `security.jwt`). [`Template::compile`] refuses an unknown variable name (a
//! typo is a configuration error); [`Template::parse`] keeps it as written. Braces around
//! anything that is not a name (`{"a": 1}`, `{ }`) are literal text either way, so a literal
//! `{` needs no escaping. Expanded values never carry control characters (CR, LF, NUL, ...):
//! they are dropped, so a value from a request cannot split a header.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::matchers::HeaderSource;
use crate::path::PathParams;

/// Every template variable, as written in a template (`headers.NAME` and `pathParams.NAME`
/// take a name after the dot).
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "{domain}",
    "{path}",
    "{query}",
    "{uri}",
    "{clientIp}",
    "{port}",
    "{routeName}",
    "{headers.NAME}",
    "{pathParams.NAME}",
    "{jwt.sub}",
];

/// An unknown variable in a template ([`Template::compile`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown template variable `{{{name}}}`; variables: {}", TEMPLATE_VARIABLES.join(" "))]
#[non_exhaustive]
pub struct TemplateError {
    /// The name between the braces.
    pub name: String,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Domain,
    Path,
    Query,
    ClientIp,
    Port,
    RouteName,
    /// Path and `?query` when there is one.
    Uri,
    /// The verified JWT subject.
    JwtSub,
    /// Lower-case header name.
    Header(Box<str>),
    PathParam(Box<str>),
}

/// A template parsed into literal text and variables. Cheap to expand: one pass, appending
/// to a `String` the caller owns.
///
/// ```
/// use smartproxy_routing::{Template, TemplateVars};
///
/// let t = Template::parse("https://{domain}:8443{path}?{query}");
/// let vars = TemplateVars::new("192.0.2.7".parse().unwrap(), 80)
///     .with_domain("example.com")
///     .with_path("/a")
///     .with_query("x=1");
/// assert_eq!(t.expand_to_string(&vars), "https://example.com:8443/a?x=1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Box<[Part]>,
    source: Box<str>,
}

impl Template {
    /// Parses `s`. Never fails: unknown `{…}` stay literal.
    pub fn parse(s: &str) -> Self {
        Self::build(s, &mut |_| {})
    }

    /// Parses `s`, refusing a variable name that is not one of [`TEMPLATE_VARIABLES`]
    /// (`{domian}`, `{headers.}`). Braces around anything that is not a name stay literal.
    ///
    /// ```
    /// use smartproxy_routing::Template;
    ///
    /// assert!(Template::compile("{routeName} {clientIp} {uri}").is_ok());
    /// assert!(Template::compile(r#"{"json": true}"#).is_ok_and(|t| t.is_literal()));
    /// let err = Template::compile("https://{domian}{path}").unwrap_err();
    /// assert_eq!(err.name, "domian");
    /// ```
    pub fn compile(s: &str) -> Result<Self, TemplateError> {
        let mut bad = None;
        let t = Self::build(s, &mut |name| {
            if bad.is_none() {
                bad = Some(name.to_owned());
            }
        });
        match bad {
            Some(name) => Err(TemplateError { name }),
            None => Ok(t),
        }
    }

    fn build(s: &str, unknown: &mut dyn FnMut(&str)) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                rest = &rest[open..];
                break;
            };
            let name = &after[..close];
            let var = match name {
                "domain" => Some(Part::Domain),
                "path" => Some(Part::Path),
                "query" => Some(Part::Query),
                "uri" => Some(Part::Uri),
                "clientIp" => Some(Part::ClientIp),
                "port" => Some(Part::Port),
                "routeName" => Some(Part::RouteName),
                "jwt.sub" => Some(Part::JwtSub),
                _ => {
                    if let Some(h) = name.strip_prefix("headers.").filter(|h| valid_header(h)) {
                        Some(Part::Header(h.to_ascii_lowercase().into()))
                    } else {
                        name.strip_prefix("pathParams.")
                            .filter(|p| is_name(p))
                            .map(|p| Part::PathParam(p.into()))
                    }
                }
            };
            match var {
                Some(v) => {
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit).into()));
                    }
                    parts.push(v);
                }
                None => {
                    if looks_like_variable(name) {
                        unknown(name);
                    }
                    lit.push('{');
                    lit.push_str(name);
                    lit.push('}');
                }
            }
            rest = &after[close + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit.into()));
        }
        Self { parts: parts.into(), source: s.into() }
    }

    /// Whether the template uses `{jwt.sub}`.
    pub fn uses_jwt(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::JwtSub))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template has no variable (expanding it gives [`Template::as_str`]).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Appends the expansion to `out`. A variable with no value expands to nothing, except
    /// `{domain}`, which falls back to [`TemplateVars::fallback_domain`]. Control characters
    /// in values (CR, LF, NUL, DEL, ...; tab included) are dropped.
    pub fn expand(&self, vars: &TemplateVars<'_>, out: &mut String) {
        for p in self.parts.iter() {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Domain => push_clean(out, vars.domain.unwrap_or(vars.fallback_domain)),
                Part::Path => push_clean(out, vars.path),
                Part::Query => push_clean(out, vars.query.unwrap_or("")),
                Part::Uri => {
                    push_clean(out, vars.path);
                    if let Some(q) = vars.query.filter(|q| !q.is_empty()) {
                        out.push('?');
                        push_clean(out, q);
                    }
                }
                Part::ClientIp => match vars.client_ip_text {
                    Some(t) => out.push_str(t),
                    None => {
                        let _ = write!(out, "{}", vars.client_ip);
                    }
                },
                Part::Port => push_u16(out, vars.port),
                Part::RouteName => push_clean(out, vars.route_name),
                Part::JwtSub => push_clean(out, vars.jwt_sub.unwrap_or("")),
                Part::Header(name) => {
                    if let Some(v) = vars.headers.and_then(|h| h.get(name)) {
                        push_clean(out, v);
                    }
                }
                Part::PathParam(name) => {
                    if let Some(v) = vars.params.and_then(|p| p.get(name)) {
                        push_clean(out, v);
                    }
                }
            }
        }
    }

    /// The expansion as a new `String`.
    pub fn expand_to_string(&self, vars: &TemplateVars<'_>) -> String {
        let mut s = String::with_capacity(self.source.len() + 32);
        self.expand(vars, &mut s);
        s
    }
}

/// Appends the decimal digits of `n` (without the formatting machinery).
fn push_u16(out: &mut String, mut n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits.
    out.extend(digits[i..].iter().map(|d| char::from(*d)));
}

/// Appends `v` without its control characters (the fast path, no control character, is one
/// scan and a copy).
fn push_clean(out: &mut String, v: &str) {
    if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
        out.extend(v.chars().filter(|c| !c.is_control()));
    } else {
        out.push_str(v);
    }
}

/// A name as variables are written: ASCII letters, digits, `_`, `-`, `.`.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// An HTTP header name (RFC 9110 token).
fn valid_header(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Braces around a name, or around a known prefix (`headers.` with nothing after it): meant
/// as a variable.
fn looks_like_variable(name: &str) -> bool {
    is_name(name) || name.starts_with("headers.") || name.starts_with("pathParams.")
}

/// The values a [`Template`] is expanded with.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct TemplateVars<'a> {
    /// Host without port (or SNI).
    pub domain: Option<&'a str>,
    /// Used for `{domain}` when `domain` is `None` (e.g. the local address). Default empty.
    pub fallback_domain: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// Real client address.
    pub client_ip: IpAddr,
    /// `client_ip` already written out (the HTTP layer keeps it per connection): `{clientIp}`
    /// then copies it instead of formatting the address for every request.
    pub client_ip_text: Option<&'a str>,
    /// Listening port.
    pub port: u16,
    /// Name of the route.
    pub route_name: &'a str,
    /// Request headers (`{headers.NAME}`).
    pub headers: Option<&'a (dyn HeaderSource + Sync)>,
    /// Path parameters of the route's path pattern (`{pathParams.NAME}`).
    pub params: Option<&'a PathParams<'a>>,
    /// The verified JWT subject (`{jwt.sub}`).
    pub jwt_sub: Option<&'a str>,
}

impl<'a> TemplateVars<'a> {
    /// Variables with only the client address and port set (path `/`).
    pub fn new(client_ip: IpAddr, port: u16) -> Self {
        Self {
            domain: None,
            fallback_domain: "",
            path: "/",
            query: None,
            client_ip,
            client_ip_text: None,
            port,
            route_name: "",
            headers: None,
            params: None,
            jwt_sub: None,
        }
    }

    /// Sets the text of the client address (it must be `client_ip` written out).
    pub fn with_client_ip_text(mut self, ip: &'a str) -> Self {
        self.client_ip_text = Some(ip);
        self
    }

    /// Sets the domain.
    pub fn with_domain(mut self, d: &'a str) -> Self {
        self.domain = Some(d);
        self
    }

    /// Sets the fallback for `{domain}`.
    pub fn with_fallback_domain(mut self, d: &'a str) -> Self {
        self.fallback_domain = d;
        self
    }

    /// Sets the path.
    pub fn with_path(mut self, p: &'a str) -> Self {
        self.path = p;
        self
    }

    /// Sets the query.
    pub fn with_query(mut self, q: &'a str) -> Self {
        self.query = Some(q);
        self
    }

    /// Sets the route name.
    pub fn with_route_name(mut self, n: &'a str) -> Self {
        self.route_name = n;
        self
    }

    /// Sets the headers.
    pub fn with_headers(mut self, h: &'a (dyn HeaderSource + Sync)) -> Self {
        self.headers = Some(h);
        self
    }

    /// Sets the path parameters.
    pub fn with_params(mut self, p: &'a PathParams<'a>) -> Self {
        self.params = Some(p);
        self
    }

    /// Sets the verified JWT subject.
    pub fn with_jwt_sub(mut self, sub: &'a str) -> Self {
        self.jwt_sub = Some(sub);
        self
    }
}

impl std::fmt::Debug for TemplateVars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateVars")
            .field("domain", &self.domain)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("client_ip", &self.client_ip)
            .field("port", &self.port)
            .field("route_name", &self.route_name)
            .field("jwt_sub", &self.jwt_sub)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PathPattern;

    #[test]
    fn every_variable() {
        let pat = PathPattern::parse("/users/:id").unwrap();
        let params = pat.matches("/users/42").unwrap();
        let headers = [("X-Env", "prod")];
        let vars = TemplateVars::new("2001:db8::1".parse().unwrap(), 8080)
            .with_domain("a.example")
            .with_path("/users/42")
            .with_query("q=1")
            .with_route_name("api")
            .with_headers(&headers)
            .with_params(&params);
        let t = Template::parse(
            "{domain}|{path}|{query}|{clientIp}|{port}|{routeName}|{headers.x-env}|{pathParams.id}|{headers.none}|{other}|{",
        );
        assert_eq!(
            t.expand_to_string(&vars),
            "a.example|/users/42|q=1|2001:db8::1|8080|api|prod|42||{other}|{"
        );
        assert!(!t.is_literal());
        assert!(Template::parse("https://x/{nope}").is_literal());
    }

    /// `{port}` without the formatter, and `{clientIp}` from the text the caller keeps.
    #[test]
    fn port_digits_and_client_ip_text() {
        let t = Template::parse("{port}");
        for p in [0u16, 7, 10, 99, 443, 8080, 10000, 65535] {
            let vars = TemplateVars::new("192.0.2.1".parse().unwrap(), p);
            assert_eq!(t.expand_to_string(&vars), p.to_string());
        }
        let vars =
            TemplateVars::new("192.0.2.1".parse().unwrap(), 80).with_client_ip_text("192.0.2.1");
        assert_eq!(Template::parse("{clientIp}").expand_to_string(&vars), "192.0.2.1");
    }

    #[test]
    fn uri_and_jwt() {
        let vars = TemplateVars::new("192.0.2.1".parse().unwrap(), 80)
            .with_path("/a/b")
            .with_query("x=1&y=2")
            .with_jwt_sub("alice");
        let t = Template::compile("{uri} {jwt.sub}").unwrap();
        assert!(t.uses_jwt());
        assert_eq!(t.expand_to_string(&vars), "/a/b?x=1&y=2 alice");
        let no_query = TemplateVars::new("192.0.2.1".parse().unwrap(), 80).with_path("/a");
        assert_eq!(Template::parse("{uri}|{jwt.sub}").expand_to_string(&no_query), "/a|");
    }

    #[test]
    fn compile_refuses_unknown_names_only() {
        for bad in
            ["{domian}", "x {routename}", "{headers.}", "{pathParams.}", "{jwt.email}", "{Path}"]
        {
            assert!(Template::compile(bad).is_err(), "{bad}");
        }
        let e = Template::compile("a {clientIP} b").unwrap_err();
        assert_eq!(e.name, "clientIP");
        assert!(e.to_string().contains("{clientIp}"), "{e}");
        for ok in ["", "plain", "{", "}{", "{ }", r#"{"a":1}"#, "{a b}", "{headers.x-env}"] {
            assert!(Template::compile(ok).is_ok(), "{ok}");
        }
        // parse keeps unknown names as text.
        assert_eq!(Template::parse("{domian}").as_str(), "{domian}");
        assert!(Template::parse("{domian}").is_literal());
    }

    #[test]
    fn control_characters_never_reach_the_output() {
        let headers = [("x-in", "a\r\nX-Injected: 1\u{0}\u{7f}\tb")];
        let sub = "bob\r\nSet-Cookie: x=1";
        let vars = TemplateVars::new("192.0.2.1".parse().unwrap(), 80)
            .with_domain("ex\nample")
            .with_headers(&headers)
            .with_jwt_sub(sub);
        let out = Template::parse("{headers.x-in}|{jwt.sub}|{domain}").expand_to_string(&vars);
        assert_eq!(out, "aX-Injected: 1b|bobSet-Cookie: x=1|example");
        assert!(!out.bytes().any(|b| b < 0x20 || b == 0x7f));
    }

    #[test]
    fn domain_falls_back() {
        let vars =
            TemplateVars::new("192.0.2.1".parse().unwrap(), 80).with_fallback_domain("10.0.0.1");
        assert_eq!(
            Template::parse("https://{domain}{path}").expand_to_string(&vars),
            "https://10.0.0.1/"
        );
    }
}

//! Templates with request variables (redirect locations), parsed once at load.
//!
//! Variables, as in SmartProxy: `{domain}` `{path}` `{query}` `{clientIp}` `{port}`
//! `{routeName}` `{headers.NAME}` `{pathParams.NAME}`. Anything else in braces is kept as
//! written, so a literal `{` needs no escaping.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::matchers::HeaderSource;
use crate::path::PathParams;

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
                "clientIp" => Some(Part::ClientIp),
                "port" => Some(Part::Port),
                "routeName" => Some(Part::RouteName),
                _ => {
                    if let Some(h) = name.strip_prefix("headers.").filter(|h| !h.is_empty()) {
                        Some(Part::Header(h.to_ascii_lowercase().into()))
                    } else {
                        name.strip_prefix("pathParams.")
                            .filter(|p| !p.is_empty())
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

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template has no variable (expanding it gives [`Template::as_str`]).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Appends the expansion to `out`. A variable with no value expands to nothing, except
    /// `{domain}`, which falls back to [`TemplateVars::fallback_domain`].
    pub fn expand(&self, vars: &TemplateVars<'_>, out: &mut String) {
        for p in self.parts.iter() {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Domain => out.push_str(vars.domain.unwrap_or(vars.fallback_domain)),
                Part::Path => out.push_str(vars.path),
                Part::Query => out.push_str(vars.query.unwrap_or("")),
                Part::ClientIp => {
                    let _ = write!(out, "{}", vars.client_ip);
                }
                Part::Port => {
                    let _ = write!(out, "{}", vars.port);
                }
                Part::RouteName => out.push_str(vars.route_name),
                Part::Header(name) => {
                    if let Some(v) = vars.headers.and_then(|h| h.get(name)) {
                        out.push_str(v);
                    }
                }
                Part::PathParam(name) => {
                    if let Some(v) = vars.params.and_then(|p| p.get(name)) {
                        out.push_str(v);
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
    /// Listening port.
    pub port: u16,
    /// Name of the route.
    pub route_name: &'a str,
    /// Request headers (`{headers.NAME}`).
    pub headers: Option<&'a (dyn HeaderSource + Sync)>,
    /// Path parameters of the route's path pattern (`{pathParams.NAME}`).
    pub params: Option<&'a PathParams<'a>>,
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
            port,
            route_name: "",
            headers: None,
            params: None,
        }
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

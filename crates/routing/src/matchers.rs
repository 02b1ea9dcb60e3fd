//! Compiled match criteria of one route, and the input they are checked against.

use std::fmt;
use std::net::IpAddr;

use crate::domain::{DomainKind, DomainPattern};
use crate::ip::IpList;
use crate::model::TlsVersion;
use crate::path::{PathParams, PathPattern};

/// Where HTTP request headers come from during a lookup.
///
/// `name` is passed lower-case; implementations should compare names case-insensitively
/// (HTTP header names are) and return the first value.
pub trait HeaderSource {
    /// The value of header `name`, if present.
    fn get(&self, name: &str) -> Option<&str>;
}

impl<S: std::hash::BuildHasher> HeaderSource for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::HashMap::get(self, name).map(String::as_str).or_else(|| {
            self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        })
    }
}

impl HeaderSource for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderSource for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<&str> {
        HeaderSource::get(self.as_slice(), name)
    }
}

/// What is known about a connection when a route is looked up.
///
/// Leave a field `None` when it is not known (yet): a route with a criterion on that field
/// does not match. `Send + Sync`, so it may be held across an `.await`.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct MatchInput<'a> {
    /// The local port the connection was accepted on.
    pub port: u16,
    /// The real client address (after a PROXY header).
    pub client_ip: IpAddr,
    /// SNI (TLS) or Host (HTTP; a `:port` suffix is ignored). Any case; a trailing dot is
    /// ignored.
    pub domain: Option<&'a str>,
    /// HTTP request path (a query string is ignored).
    pub path: Option<&'a str>,
    /// The highest TLS version the client offers.
    pub tls_version: Option<TlsVersion>,
    /// HTTP request headers.
    pub headers: Option<&'a (dyn HeaderSource + Sync)>,
    /// Whether the client opened with a TLS ClientHello.
    pub is_tls: bool,
    /// Set for the lookup made from the ClientHello before TLS is terminated: routes that
    /// terminate TLS then match without their `path` and `headers` criteria (those are only
    /// known after termination; look up again with them). See
    /// [`crate::RouteTable::http_after_termination`].
    pub before_termination: bool,
}

impl<'a> MatchInput<'a> {
    /// Input with only the port and the client address known.
    pub fn new(port: u16, client_ip: IpAddr) -> Self {
        Self {
            port,
            client_ip,
            domain: None,
            path: None,
            tls_version: None,
            headers: None,
            is_tls: false,
            before_termination: false,
        }
    }

    /// Sets the domain (SNI or Host).
    pub fn with_domain(mut self, domain: &'a str) -> Self {
        self.domain = Some(domain);
        self
    }

    /// Sets the HTTP path.
    pub fn with_path(mut self, path: &'a str) -> Self {
        self.path = Some(path);
        self
    }

    /// Sets the TLS version and marks the connection as TLS.
    pub fn with_tls(mut self, version: Option<TlsVersion>) -> Self {
        self.tls_version = version;
        self.is_tls = true;
        self
    }

    /// Marks the lookup as made before TLS termination (see
    /// [`MatchInput::before_termination`]).
    pub fn before_termination(mut self) -> Self {
        self.before_termination = true;
        self
    }

    /// Sets the HTTP headers.
    pub fn with_headers(mut self, headers: &'a (dyn HeaderSource + Sync)) -> Self {
        self.headers = Some(headers);
        self
    }
}

impl fmt::Debug for MatchInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatchInput")
            .field("port", &self.port)
            .field("client_ip", &self.client_ip)
            .field("domain", &self.domain)
            .field("path", &self.path)
            .field("tls_version", &self.tls_version)
            .field("headers", &self.headers.map(|_| ".."))
            .field("is_tls", &self.is_tls)
            .field("before_termination", &self.before_termination)
            .finish()
    }
}

/// A header criterion: exact value, or a regular expression written `/re/`.
#[derive(Debug, Clone)]
pub(crate) enum HeaderMatcher {
    Exact(Box<str>),
    Regex(regex::Regex),
}

impl HeaderMatcher {
    pub(crate) fn parse(v: &str) -> Result<Self, String> {
        if v.len() >= 2 && v.starts_with('/') && v.ends_with('/') {
            let re = &v[1..v.len() - 1];
            regex::RegexBuilder::new(re).size_limit(1 << 20).build().map(Self::Regex).map_err(|e| {
                format!("bad regular expression `{re}`: {}", first_line(&e.to_string()))
            })
        } else {
            Ok(Self::Exact(v.into()))
        }
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(x) => **x == *value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

fn first_line(s: &str) -> String {
    // regex errors are multi-line with a caret diagram; keep the last (explanatory) line.
    let line = s.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or(s);
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The compiled criteria of one route.
#[derive(Debug, Clone)]
pub(crate) struct Matchers {
    pub(crate) domains: Box<[DomainPattern]>,
    pub(crate) path: Option<PathPattern>,
    pub(crate) client_ip: IpList,
    pub(crate) tls_versions: Box<[TlsVersion]>,
    pub(crate) headers: Box<[(Box<str>, HeaderMatcher)]>,
    pub(crate) allow: IpList,
    pub(crate) block: IpList,
}

// Specificity key layout (higher is more specific), compared as one u64.
const DOMAIN_CLASS_SHIFT: u32 = 60; // 3 bits
const DOMAIN_LEN_SHIFT: u32 = 52; // 8 bits
const PATH_CLASS_SHIFT: u32 = 50; // 2 bits
const PATH_LEN_SHIFT: u32 = 38; // 12 bits
const HEADERS_SHIFT: u32 = 32; // 6 bits
const IP_SHIFT: u32 = 31; // 1 bit
const TLS_SHIFT: u32 = 30; // 1 bit

impl Matchers {
    /// The part of the specificity that does not depend on which domain pattern matched.
    pub(crate) fn base_specificity(&self) -> u64 {
        let mut s = 0u64;
        if let Some(p) = &self.path {
            let (class, lit) = p.specificity();
            s |= u64::from(class) << PATH_CLASS_SHIFT;
            s |= (lit.min(4095) as u64) << PATH_LEN_SHIFT;
        }
        s |= (self.headers.len().min(63) as u64) << HEADERS_SHIFT;
        s |= u64::from(!self.client_ip.is_empty()) << IP_SHIFT;
        s |= u64::from(!self.tls_versions.is_empty()) << TLS_SHIFT;
        s
    }

    /// Checks every criterion; `domain` must be normalised (trimmed, no trailing dot, any case).
    /// Returns the specificity key and the path parameters.
    #[inline]
    pub(crate) fn eval<'a>(
        &'a self,
        base: u64,
        input: &MatchInput<'a>,
        domain: Option<&[u8]>,
        skip_http: bool,
    ) -> Option<(u64, PathParams<'a>)> {
        if !self.tls_versions.is_empty() {
            let v = input.tls_version?;
            if !self.tls_versions.contains(&v) {
                return None;
            }
        }
        let mut spec = base;
        if !self.domains.is_empty() {
            let d = domain?;
            let mut best: Option<u64> = None;
            for p in self.domains.iter() {
                if p.matches_normalized(d) {
                    let class: u64 = match p.kind() {
                        DomainKind::CatchAll => 1,
                        DomainKind::Glob => 2,
                        DomainKind::Suffix => 3,
                        DomainKind::Exact => 4,
                    };
                    let k = (class << DOMAIN_CLASS_SHIFT)
                        | ((p.literal_len().min(255) as u64) << DOMAIN_LEN_SHIFT);
                    best = Some(best.map_or(k, |b| b.max(k)));
                }
            }
            spec |= best?;
        }
        if !self.client_ip.is_empty() && !self.client_ip.contains(input.client_ip) {
            return None;
        }
        if skip_http {
            return Some((spec, PathParams::default()));
        }
        let params = match &self.path {
            None => PathParams::default(),
            Some(p) => p.matches(input.path?)?,
        };
        if !self.headers.is_empty() {
            let src = input.headers?;
            for (name, m) in self.headers.iter() {
                if !m.matches(src.get(name)?) {
                    return None;
                }
            }
        }
        Some((spec, params))
    }
}

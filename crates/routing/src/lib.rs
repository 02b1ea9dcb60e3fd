//! Route model, validation and matching for smartproxy. No I/O.
//!
//! A route is a *match* (ports, domains, path, client IP, TLS version, headers) and an *action*
//! (forward to targets with a TLS mode, or a socket handler). This crate reads routes with
//! serde ([`RouteConfig`]), checks them ([`validate`]: every error with its key path), compiles
//! them into an immutable [`RouteTable`], and answers lookups without allocating.
//!
//! ```
//! use smartproxy_routing::{MatchInput, RouteTable, helpers};
//! use smartproxy_routing::Target;
//!
//! let table = RouteTable::compile(vec![
//!     helpers::https_passthrough(["example.com", "*.example.com"], Target::new("10.0.0.5", 443)),
//!     helpers::forward_route(8080, Target::new("127.0.0.1", 9000)),
//! ])
//! .expect("valid routes");
//! assert_eq!(table.ports(), vec![443, 8080]);
//!
//! let client = "192.0.2.7".parse().unwrap();
//! let hit = table
//!     .lookup(&MatchInput::new(443, client).with_domain("www.example.com").with_tls(None))
//!     .expect("a route");
//! let target = hit.route.select_target(client, 443, 0).expect("a target");
//! assert_eq!((target.host(), target.port()), ("10.0.0.5", 443));
//! ```
//!
//! # Selection order
//!
//! Highest `priority` first; then the most specific match (domain, then path, then number of
//! header criteria, then `client_ip`, then `tls_version`; see [`RouteTable`]); then
//! configuration order. Disabled routes (`enabled = false`) never match.
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

mod domain;
mod dump;
pub mod duration;
mod error;
pub mod helpers;
mod http;
mod ip;
mod limits;
mod matchers;
mod model;
mod path;
mod policy;
mod table;
mod target;
mod template;
mod timeouts;
mod validate;
mod validate_http;
mod validate_policy;

pub use self::domain::{DomainPattern, DomainPatternError};
pub use self::dump::{PortGroupDump, RouteDump, TableDump, TargetDump};
pub use self::error::{ValidationError, ValidationErrors};
pub use self::http::{
    HeaderActions, HttpOptions, HttpSettings, RewritePath, UpstreamProtocol, Via,
};
pub use self::ip::{IpList, IpPattern, IpPatternError, canonical_ip};
pub use self::limits::{
    DEFAULT_MAX_TRACKED_IPS, LimitExceeded, LimitGuard, RequestLimiter, RouteLimits,
};
pub use self::matchers::{HeaderSource, MatchInput};
pub use self::model::{
    CertificateConfig, ForwardAction, ForwardingEngine, HandlerAction, HealthCheck, HealthOptions,
    LoadBalancing, MAX_HEALTH_CHECK_STREAK, MAX_HEALTH_COOLDOWN, MIN_HEALTH_CHECK_INTERVAL,
    NftablesOptions, NftablesProtocol, PortRange, PortSpec, RouteAction, RouteConfig, RouteMatch,
    RouteSecurity, SendProxyProtocol, Target, TargetPort, TlsConfig, TlsMode, TlsVersion,
};
pub use self::path::{MAX_PARAMS, PathParams, PathPattern, PathPatternError};
pub use self::policy::{BasicAuth, Cors, JwtAlgorithm, JwtAuth, RateLimitKey, RequestRateLimit};
pub use self::table::{CompiledRoute, Matched, PeekNeed, RouteTable};
pub use self::target::{
    CheckSnapshot, ConnectFailure, ConnectionGuard, SelectedTarget, TargetHealthSnapshot,
};
pub use self::template::{TEMPLATE_VARIABLES, Template, TemplateError, TemplateVars};
pub use self::timeouts::{
    KeepaliveTreatment, MAX_INACTIVITY_MULTIPLIER, MAX_KEEPALIVE_COUNT, MAX_KEEPALIVE_SECS,
    RouteTimeouts, TcpKeepalive, multiplier_problem,
};
pub use self::validate::{
    BUILTIN_HANDLERS, REDIRECT_STATUSES, UPSTREAM_SNI, ValidationOptions, validate, validate_with,
};
pub use self::validate_http::HTTP_HANDLERS;
pub use self::validate_policy::CORS_SAFELISTED_HEADERS;
pub use smartproxy_limits::{Rate, RateLimited};

//! Route model, validation and matching for smartproxy.
//!
//! A route is a *match* (ports, domains, path, client IP, TLS version, headers) and an *action*
//! (forward to targets with a TLS mode, or a socket handler). This crate holds the model
//! ([`RouteConfig`]), reads it with serde, and does no I/O.
#![forbid(unsafe_code)]

pub mod duration;
mod model;

pub use self::model::{
    CertificateConfig, ForwardAction, HandlerAction, LoadBalancing, PortRange, PortSpec,
    RouteAction, RouteConfig, RouteMatch, RouteSecurity, SendProxyProtocol, Target, TargetPort,
    TlsConfig, TlsMode, TlsVersion,
};

//! Route constructors for library users, after SmartProxy's route helpers
//! (`createHttpsPassthroughRoute`, `createHttpsTerminateRoute`, `createHttpToHttpsRedirect`,
//! `createLoadBalancerRoute`, `createHttpRoute`, …).
//!
//! Each returns a plain [`RouteConfig`]; adjust it with its `with_*` methods or fields.
//!
//! ```
//! use smartproxy_routing::{RouteTable, Target, helpers};
//!
//! let routes = helpers::complete_https_server(
//!     ["example.com"],
//!     Target::new("127.0.0.1", 8080),
//!     "certs/example.pem",
//!     "certs/example.key",
//! );
//! let table = RouteTable::compile(routes.to_vec()).unwrap();
//! assert_eq!(table.ports(), vec![80, 443]);
//! ```

use std::path::PathBuf;

use crate::model::{
    ForwardAction, HandlerAction, LoadBalancing, PortSpec, RouteAction, RouteConfig, RouteMatch,
    RouteSecurity, Target, TlsConfig, TlsMode,
};

fn domain_list<I: IntoIterator<Item = S>, S: Into<String>>(domains: I) -> Vec<String> {
    domains.into_iter().map(Into::into).collect()
}

fn label(domains: &[String]) -> String {
    if domains.is_empty() { "*".to_owned() } else { domains.join(", ") }
}

fn forward(
    ports: PortSpec,
    domains: Vec<String>,
    action: ForwardAction,
    name: String,
) -> RouteConfig {
    RouteConfig::new(RouteMatch::ports(ports).with_domains(domains), RouteAction::Forward(action))
        .with_name(name)
}

/// Port 443, TLS passthrough by SNI to `target` (the backend terminates TLS).
/// Name: `HTTPS passthrough: <domains>`.
pub fn https_passthrough<I: IntoIterator<Item = S>, S: Into<String>>(
    domains: I,
    target: Target,
) -> RouteConfig {
    let domains = domain_list(domains);
    let name = format!("HTTPS passthrough: {}", label(&domains));
    forward(
        443.into(),
        domains,
        ForwardAction::to(vec![target]).with_tls(TlsConfig::new(TlsMode::Passthrough)),
        name,
    )
}

/// Port 443, TLS terminated here with the PEM `cert` and `key`; plain to `target`, or
/// TLS again when `reencrypt` is true. Name: `HTTPS terminate: <domains>`.
pub fn https_terminate<I: IntoIterator<Item = S>, S: Into<String>>(
    domains: I,
    target: Target,
    cert: impl Into<PathBuf>,
    key: impl Into<PathBuf>,
    reencrypt: bool,
) -> RouteConfig {
    let domains = domain_list(domains);
    let name = format!("HTTPS terminate: {}", label(&domains));
    let mode = if reencrypt { TlsMode::TerminateAndReencrypt } else { TlsMode::Terminate };
    forward(
        443.into(),
        domains,
        ForwardAction::to(vec![target]).with_tls(TlsConfig::new(mode).with_certificate(cert, key)),
        name,
    )
}

/// Port 80, a `redirect` handler to `https://{domain}{path}` (with `:https_port` when it is
/// not 443), status 301. Name: `HTTP to HTTPS redirect: <domains>`.
pub fn http_to_https_redirect<I: IntoIterator<Item = S>, S: Into<String>>(
    domains: I,
    https_port: u16,
) -> RouteConfig {
    let domains = domain_list(domains);
    let name = format!("HTTP to HTTPS redirect: {}", label(&domains));
    let mut h = HandlerAction::new("redirect");
    h.location = Some(if https_port == 443 {
        "https://{domain}{path}".to_owned()
    } else {
        format!("https://{{domain}}:{https_port}{{path}}")
    });
    h.status = Some(301);
    RouteConfig::new(RouteMatch::ports(80).with_domains(domains), RouteAction::SocketHandler(h))
        .with_name(name)
}

/// The HTTPS terminate route and the HTTP→HTTPS redirect for the same domains.
pub fn complete_https_server<I: IntoIterator<Item = S>, S: Into<String>>(
    domains: I,
    target: Target,
    cert: impl Into<PathBuf>,
    key: impl Into<PathBuf>,
) -> [RouteConfig; 2] {
    let domains = domain_list(domains);
    [
        https_terminate(domains.clone(), target, cert, key, false),
        http_to_https_redirect(domains, 443),
    ]
}

/// Forwards connections on `ports` for `domains` to `hosts` (each on `target_port`), picked
/// by `algorithm`. TLS, if any, passes through. Name: `Load balancer: <domains>`.
pub fn load_balancer<I, S, H, T>(
    ports: impl Into<PortSpec>,
    domains: I,
    hosts: H,
    target_port: u16,
    algorithm: LoadBalancing,
) -> RouteConfig
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
    H: IntoIterator<Item = T>,
    T: Into<String>,
{
    let domains = domain_list(domains);
    let name = format!("Load balancer: {}", label(&domains));
    let targets = hosts.into_iter().map(|h| Target::new(h, target_port)).collect();
    forward(ports.into(), domains, ForwardAction::to(targets).with_load_balancing(algorithm), name)
}

/// Port 80, plain HTTP forwarded to `target`, chosen by Host. Name: `HTTP: <domains>`.
pub fn http_route<I: IntoIterator<Item = S>, S: Into<String>>(
    domains: I,
    target: Target,
) -> RouteConfig {
    let domains = domain_list(domains);
    let name = format!("HTTP: {}", label(&domains));
    forward(80.into(), domains, ForwardAction::to(vec![target]), name)
}

/// Every connection on `ports` forwarded to `target` as bytes (any protocol, no peek).
/// Name: `Forward: <ports>`.
pub fn forward_route(ports: impl Into<PortSpec>, target: Target) -> RouteConfig {
    let ports: PortSpec = ports.into();
    let name = format!("Forward: {}", port_label(&ports));
    forward(ports, Vec::new(), ForwardAction::to(vec![target]), name)
}

/// Connections on `ports` answered by the `block` handler (closed, or an HTTP 403 for HTTP).
/// Name: `Block: <ports>`.
pub fn block_route(ports: impl Into<PortSpec>) -> RouteConfig {
    let ports: PortSpec = ports.into();
    let name = format!("Block: {}", port_label(&ports));
    RouteConfig::new(
        RouteMatch::ports(ports),
        RouteAction::SocketHandler(HandlerAction::new("block")),
    )
    .with_name(name)
}

/// Adds `security` limits and lists to a route (SmartProxy's `addRateLimiting` and
/// `createSecurityConfig` in one).
pub fn with_security(route: RouteConfig, security: RouteSecurity) -> RouteConfig {
    route.with_security(security)
}

fn port_label(p: &PortSpec) -> String {
    p.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;

    #[test]
    fn helpers_validate() {
        let routes = vec![
            https_passthrough(["a.example.com"], Target::new("10.0.0.1", 443)),
            https_terminate(
                ["b.example.com"],
                Target::new("10.0.0.2", 8080),
                "c.pem",
                "k.pem",
                false,
            ),
            http_to_https_redirect(["b.example.com"], 8443),
            load_balancer(
                8000,
                ["lb.example.com"],
                ["10.0.0.3", "10.0.0.4"],
                80,
                LoadBalancing::IpHash,
            ),
            http_route(["c.example.com"], Target::new("10.0.0.5", 80)),
            forward_route(
                PortSpec(vec![crate::PortRange { start: 9000, end: 9010 }]),
                Target::new("h", 1),
            ),
            block_route(23),
        ];
        validate(&routes).unwrap();
        assert_eq!(routes[5].name.as_deref(), Some("Forward: 9000-9010"));
        let RouteAction::SocketHandler(h) = &routes[2].action else { panic!() };
        assert_eq!(h.location.as_deref(), Some("https://{domain}:8443{path}"));
    }
}

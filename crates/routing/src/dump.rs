//! A serde view of the compiled table, for admin endpoints and config dumps.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{ForwardingEngine, LoadBalancing, RouteAction, SendProxyProtocol, TlsMode};
use crate::table::{PeekNeed, RouteTable};

/// The compiled table as data: port groups in port order, then every route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TableDump {
    /// Listening ports, grouped by the routes that serve them.
    pub ports: Vec<PortGroupDump>,
    /// Every route in configuration order.
    pub routes: Vec<RouteDump>,
}

/// A run of ports served by the same routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PortGroupDump {
    /// `"443"` or `"9000-9010"`.
    pub ports: String,
    /// What the engine reads before routing.
    pub peek: PeekNeed,
    /// Route names in the order they are tried (priority, then configuration order).
    pub routes: Vec<String>,
    /// Whether the ports are served by the HTTP layer (request by request).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
}

/// One compiled route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RouteDump {
    /// Position in the configuration.
    pub index: usize,
    /// Name (`route-<index>` when unnamed).
    pub name: String,
    /// Whether it can match.
    pub enabled: bool,
    /// Priority.
    pub priority: i32,
    /// Ports as configured.
    pub ports: Vec<String>,
    /// Domain patterns, normalised (lower case, no trailing dot).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Path pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Client address patterns, normalised (`10.0.0.0/8`, ranges, IPv4-mapped as IPv4).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_ip: Vec<String>,
    /// TLS versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_version: Vec<String>,
    /// Header criteria (lower-case names).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `forward` or `socket-handler`.
    pub action: String,
    /// TLS mode of a forward route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// Handler name of a socket-handler route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Load balancing of a forward route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// PROXY header towards the targets.
    #[serde(skip_serializing_if = "SendProxyProtocol::is_off")]
    pub send_proxy_protocol: SendProxyProtocol,
    /// `"nftables"` for a route the kernel forwards (absent for the proxy).
    #[serde(skip_serializing_if = "ForwardingEngine::is_proxy")]
    pub forwarding_engine: ForwardingEngine,
    /// Targets with their open connections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetDump>,
    /// The `http` table of a route served by the HTTP layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::http::HttpOptions>,
    /// Allow list, normalised.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_allow_list: Vec<String>,
    /// Block list, normalised.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_block_list: Vec<String>,
    /// `security.max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `security.max_connections_per_ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    /// `security.rate_limit_per_minute`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Connections holding a route limit guard now.
    pub open_connections: u32,
    /// The route's `timeouts` table as written (the engine's `[defaults]` fill the rest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<crate::timeouts::RouteTimeouts>,
}

/// A target and its load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TargetDump {
    /// Host.
    pub host: String,
    /// Port, or `"preserve"`.
    pub port: crate::model::TargetPort,
    /// Open connections counted by target guards.
    pub active: usize,
}

impl RouteTable {
    /// The table as serialisable data.
    pub fn dump(&self) -> TableDump {
        let names = |order: &[u32]| {
            order.iter().map(|&i| self.routes()[i as usize].name().to_owned()).collect()
        };
        let ports = self
            .segments()
            .iter()
            .map(|(range, g)| {
                let group = &self.groups[*g as usize];
                PortGroupDump {
                    ports: range.to_string(),
                    peek: group.peek,
                    routes: names(&group.order),
                    http: group.http,
                }
            })
            .collect();
        let routes = self
            .routes()
            .iter()
            .map(|r| {
                let c = r.config();
                let m = &r.m;
                let (action, tls, handler, lb, spp) = match &c.action {
                    RouteAction::Forward(f) => (
                        "forward",
                        f.tls.as_ref().map(|t| t.mode),
                        None,
                        Some(f.load_balancing),
                        f.send_proxy_protocol,
                    ),
                    RouteAction::SocketHandler(h) => (
                        "socket-handler",
                        None,
                        Some(h.handler.clone()),
                        None,
                        SendProxyProtocol::Off,
                    ),
                };
                let sec = c.security.clone().unwrap_or_default();
                RouteDump {
                    index: r.index(),
                    name: r.name().to_owned(),
                    enabled: c.enabled,
                    priority: c.priority,
                    ports: c.matcher.ports.0.iter().map(ToString::to_string).collect(),
                    domains: m.domains.iter().map(ToString::to_string).collect(),
                    path: m.path.as_ref().map(ToString::to_string),
                    client_ip: m.client_ip.patterns().iter().map(ToString::to_string).collect(),
                    tls_version: m.tls_versions.iter().map(|v| v.as_str().to_owned()).collect(),
                    headers: c
                        .matcher
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect(),
                    action: action.to_owned(),
                    tls,
                    handler,
                    load_balancing: lb,
                    send_proxy_protocol: spp,
                    forwarding_engine: match &c.action {
                        RouteAction::Forward(f) => f.forwarding_engine,
                        RouteAction::SocketHandler(_) => ForwardingEngine::Proxy,
                    },
                    targets: r
                        .targets
                        .list
                        .iter()
                        .enumerate()
                        .map(|(i, t)| TargetDump {
                            host: t.host.clone(),
                            port: t.port,
                            active: r.target_active(i),
                        })
                        .collect(),
                    http: r.http().cloned(),
                    ip_allow_list: m.allow.patterns().iter().map(ToString::to_string).collect(),
                    ip_block_list: m.block.patterns().iter().map(ToString::to_string).collect(),
                    max_connections: sec.max_connections,
                    max_connections_per_ip: sec.max_connections_per_ip,
                    rate_limit_per_minute: sec.rate_limit_per_minute,
                    open_connections: r.limits().open_connections(),
                    timeouts: c.timeouts.clone(),
                }
            })
            .collect();
        TableDump { ports, routes }
    }
}

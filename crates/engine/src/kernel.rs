//! Kernel forwarding: the routes with `forwarding_engine = "nftables"` are forwarded by NAT
//! rules in the table `inet smartproxy` ([`smartproxy_nftables`]) instead of by this process.
//!
//! - [`check`] (configuration parsing, so `validate` too): each such route converted to an
//!   [`NftRoute`] and checked by the nftables crate; its problems get the route's key paths.
//! - [`Kernel`] (the control block owns one): writes the rules at start and on reload (one
//!   transaction; a table left by a killed process is removed first), reads the counters on
//!   each metrics tick into the routes' series, answers `GET /api/nftables`, and removes the
//!   table at shutdown. Every `nft` run happens on the blocking pool. Without `nft` or
//!   `CAP_NET_ADMIN` the error is logged naming the routes that are not forwarded, shown in
//!   the status, and every other route runs as usual.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value, json};
use smartproxy_metrics::Metrics;
use smartproxy_nftables::{
    Balance, CounterDeltas, IpRange, Manager, Nft, NftRoute, PortRange, Problem, ProblemKind,
    Protocol, Ruleset, Target,
};
use smartproxy_routing::{
    IpList, LoadBalancing, NftablesProtocol, RouteAction, RouteConfig, RouteTable,
};

use crate::config::ConfigError;

/// The kernel's view of route `index` (a kernel-forwarded forward route). `bind` becomes the
/// local addresses. Address patterns that do not parse are left out (validation reports
/// them); `Err` names a pattern that the kernel rules cannot express.
fn convert(c: &RouteConfig, index: usize, bind: &[IpAddr]) -> Result<NftRoute, Vec<ConfigError>> {
    let key = |k: &str| format!("routes[{index}].{k}");
    let RouteAction::Forward(f) = &c.action else {
        return Err(vec![ConfigError::new(
            key("action"),
            "only a forward route can be kernel-forwarded",
        )]);
    };
    let opts = f.nftables.unwrap_or_default();
    let ports = c.matcher.ports.0.iter().map(|p| PortRange::new(p.start, p.end));
    let targets = f.targets.iter().map(|t| match t.port {
        smartproxy_routing::TargetPort::Port(p) => Target::new(t.host.trim(), p),
        smartproxy_routing::TargetPort::Preserve => Target::preserve(t.host.trim()),
    });
    let name = c.name.clone().unwrap_or_else(|| format!("route-{index}"));
    let mut route = NftRoute::new(name, ports, targets);
    route.local_addresses = bind.to_vec();
    route.protocol = match opts.protocol {
        NftablesProtocol::Udp => Protocol::Udp,
        NftablesProtocol::All => Protocol::All,
        _ => Protocol::Tcp,
    };
    route.balance = match f.load_balancing {
        LoadBalancing::IpHash => Balance::SourceHash,
        // least-connections is refused by validation.
        _ => Balance::RoundRobin,
    };
    route.preserve_source_ip = opts.preserve_source_ip;
    let security = c.security.clone().unwrap_or_default();
    route.max_connections = security.max_connections;
    let mut errors = Vec::new();
    for (list, name, out) in [
        (&security.ip_allow_list, "security.ip_allow_list", &mut route.ip_allow_list),
        (&security.ip_block_list, "security.ip_block_list", &mut route.ip_block_list),
    ] {
        let Ok(list) = IpList::parse(list) else { continue };
        for (j, p) in list.patterns().iter().enumerate() {
            match p.to_string().parse::<IpRange>() {
                Ok(range) => out.push(range),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{}[{j}]", key(name)), e.to_string()))
                }
            }
        }
    }
    if errors.is_empty() { Ok(route) } else { Err(errors) }
}

/// The enabled kernel-forwarded routes of `routes`, with their positions.
fn kernel_routes(routes: &[RouteConfig]) -> impl Iterator<Item = (usize, &RouteConfig)> {
    routes.iter().enumerate().filter(|(_, r)| r.enabled && r.is_kernel_forwarded())
}

/// The kernel-forwarded routes of `table` as the nftables crate takes them.
pub(crate) fn nft_routes(
    table: &RouteTable,
    bind: &[IpAddr],
) -> Result<Vec<NftRoute>, Vec<ConfigError>> {
    let mut routes = Vec::new();
    let mut errors = Vec::new();
    for r in table.kernel_routes() {
        match convert(r.config(), r.index(), bind) {
            Ok(n) => routes.push(n),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() { Ok(routes) } else { Err(errors) }
}

/// What nftables cannot honour in the kernel-forwarded `routes`, without touching the
/// network (names are resolved when the rules are written): ports and protocols that two of
/// them forward, target addresses NAT cannot reach or that mix families, `bind` without an
/// address of the targets' family. Names, ports and targets that are wrong for any route are
/// left to the routing validation (it runs too, so every error is reported at once). Key
/// paths are `routes[i]...` (and `bind`).
pub(crate) fn check(routes: &[RouteConfig], bind: &[IpAddr]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut converted = Vec::new();
    let mut index = HashMap::new();
    for (i, r) in kernel_routes(routes) {
        match convert(r, i, bind) {
            Ok(n) => {
                index.insert(n.name.clone(), i);
                converted.push(n);
            }
            Err(e) => errors.extend(e),
        }
    }
    for p in smartproxy_nftables::check(&converted) {
        if matches!(
            p.kind,
            ProblemKind::Overlap | ProblemKind::Address | ProblemKind::MixedFamilies
        ) {
            errors.push(config_error(&p, index.get(&p.route).copied()));
        }
    }
    errors
}

/// A problem of the nftables crate with the key path of the configuration.
fn config_error(p: &Problem, index: Option<usize>) -> ConfigError {
    let Some(i) = index else {
        return ConfigError::new(
            "routes",
            format!("route `{}`: {}: {}", p.route, p.field, p.reason),
        );
    };
    let field = p.field.as_str();
    let path = if field == "name" {
        format!("routes[{i}].name")
    } else if let Some(rest) = field.strip_prefix("ports") {
        format!("routes[{i}].match.ports{rest}")
    } else if let Some(rest) = field.strip_prefix("targets") {
        format!("routes[{i}].action.targets{rest}")
    } else if field == "local_addresses" {
        return ConfigError::new(
            "bind",
            format!(
                "route `{}` (routes[{i}]) is kernel-forwarded on these addresses: {}",
                p.route, p.reason
            ),
        );
    } else {
        format!("routes[{i}]")
    };
    ConfigError::new(path, format!("kernel forwarding: {}", p.reason))
}

/// What the engine knows about its table besides the kernel's own listing.
#[derive(Debug, Default)]
struct Status {
    /// The kernel-forwarded routes of the configuration in force.
    configured: Vec<String>,
    /// This process wrote the table (a stale one was cleaned up first) and has not removed it.
    owned: bool,
    /// Why the last attempt to write the rules failed.
    error: Option<String>,
    /// Routes left out of the rules that are in force, with the reason (a target name that
    /// did not resolve).
    left_out: Vec<String>,
    /// Why the last counter read failed (logged once per different error).
    counters_error: Option<String>,
}

/// The engine's table of kernel-forwarded routes.
#[derive(Debug)]
pub(crate) struct Kernel {
    manager: Arc<Manager>,
    status: Arc<Mutex<Status>>,
    deltas: Arc<Mutex<CounterDeltas>>,
    /// Held while the rules are written or removed, so that a reload racing with shutdown
    /// cannot write them again after they were removed: `true` once shut down.
    writes: tokio::sync::Mutex<bool>,
}

/// Runs `f` on the blocking pool (every `nft` run waits for a process).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("the nft task failed: {e}"))
}

impl Kernel {
    /// The table `inet smartproxy`, written with `nft` from `PATH`. Nothing runs until
    /// [`Kernel::apply`] is given routes.
    pub(crate) fn new() -> Self {
        Self {
            manager: Arc::new(Manager::new(Nft::new())),
            status: Arc::new(Mutex::new(Status::default())),
            deltas: Arc::new(Mutex::new(CounterDeltas::new())),
            writes: tokio::sync::Mutex::new(false),
        }
    }

    /// Writes the rules of `routes` in one transaction (none: removes the table this process
    /// wrote). The first time, a table left by an earlier process is removed first, so that
    /// counters start from zero. `Err` says why the routes are not forwarded (logged here);
    /// the rules in force before, if any, stay.
    pub(crate) async fn apply(&self, routes: Vec<NftRoute>) -> Result<(), String> {
        let shut_down = self.writes.lock().await;
        if *shut_down {
            return Err("the engine has shut down".to_owned());
        }
        let names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
        let owned = {
            let mut st = self.status.lock();
            st.configured.clone_from(&names);
            st.owned
        };
        if routes.is_empty() {
            if owned {
                self.remove_table().await;
            }
            let mut st = self.status.lock();
            st.error = None;
            st.left_out.clear();
            return Ok(());
        }
        let manager = Arc::clone(&self.manager);
        let result = blocking(move || {
            manager.probe()?;
            let stale = if owned { false } else { manager.cleanup_stale()? };
            let (ruleset, problems) =
                Ruleset::build_partial(&routes, &smartproxy_nftables::system_resolver);
            manager.apply(&ruleset)?;
            Ok::<_, smartproxy_nftables::Error>((stale, ruleset, problems))
        })
        .await;
        let mut st = self.status.lock();
        match result {
            Ok(Ok((stale, ruleset, problems))) => {
                if stale {
                    tracing::info!(
                        table = self.manager.table(),
                        "removed the nftables table left by an earlier process"
                    );
                }
                st.owned = true;
                st.error = None;
                st.left_out = problems.iter().map(ToString::to_string).collect();
                for p in &problems {
                    tracing::error!(route = %p.route, problem = %p, "kernel forwarding: route left out");
                }
                let forwarded: Vec<&str> =
                    ruleset.routes().iter().map(|r| r.name.as_str()).collect();
                tracing::info!(table = self.manager.table(), routes = ?forwarded, "kernel forwarding rules applied");
                Ok(())
            }
            Ok(Err(e)) => Err(self.failed(&mut st, &names, &e.to_string())),
            Err(e) => Err(self.failed(&mut st, &names, &e)),
        }
    }

    fn failed(&self, st: &mut Status, names: &[String], error: &str) -> String {
        let what = if st.owned {
            "the rules in force before stay"
        } else {
            "these routes are not forwarded; the other routes run"
        };
        tracing::error!(routes = ?names, error, "kernel forwarding failed: {what}");
        st.error = Some(error.to_owned());
        format!("kernel forwarding of {} failed ({what}): {error}", names.join(", "))
    }

    /// Reads the counters and adds their increase since the last read to the routes' series
    /// (called by the sampler, before each tick).
    pub(crate) async fn sample(&self, metrics: &Metrics) {
        if !self.status.lock().owned {
            return;
        }
        let manager = Arc::clone(&self.manager);
        let read = blocking(move || manager.counters().map_err(|e| e.to_string())).await;
        let counters = match read.and_then(|r| r) {
            Ok(c) => c,
            Err(e) => {
                let mut st = self.status.lock();
                if st.counters_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "cannot read the kernel forwarding counters");
                    st.counters_error = Some(e);
                }
                return;
            }
        };
        let configured = {
            let mut st = self.status.lock();
            st.counters_error = None;
            st.configured.clone()
        };
        let increases = self.deltas.lock().update(&counters);
        for c in increases {
            // A route that a reload removed meanwhile is not brought back into the metrics.
            let idle = c.bytes_in == 0 && c.bytes_out == 0 && c.connections == 0;
            if idle || !configured.contains(&c.route) {
                continue;
            }
            let route = metrics.route(&c.route);
            metrics.add_route_traffic(&route, c.bytes_in, c.bytes_out, c.connections);
        }
    }

    /// Deletes the table this process wrote, for good (shutdown: a later [`Kernel::apply`]
    /// writes nothing). Established flows keep their NAT binding until conntrack forgets them.
    pub(crate) async fn remove(&self) {
        let mut shut_down = self.writes.lock().await;
        *shut_down = true;
        self.remove_table().await;
    }

    /// Deletes the table this process wrote (the caller holds `writes`).
    async fn remove_table(&self) {
        if !self.status.lock().owned {
            return;
        }
        let manager = Arc::clone(&self.manager);
        match blocking(move || manager.remove().map_err(|e| e.to_string())).await.and_then(|r| r) {
            Ok(_) => {
                self.status.lock().owned = false;
                tracing::info!(table = self.manager.table(), "kernel forwarding rules removed");
            }
            Err(e) => {
                tracing::error!(table = self.manager.table(), error = %e, "cannot remove the kernel forwarding rules");
            }
        }
    }

    /// `GET /api/nftables`: the kernel's listing of the table and the routes as applied with
    /// their counters ([`Manager::status_json`]), plus `configured` (the kernel-forwarded
    /// routes of the configuration in force), `error` (why the rules could not be written),
    /// `left_out` (routes not in the rules, with the reason) and `counters_error`.
    pub(crate) async fn status_json(&self) -> Value {
        let (configured, owned) = {
            let st = self.status.lock();
            (st.configured.clone(), st.owned)
        };
        let manager = Arc::clone(&self.manager);
        // Without kernel routes nothing is asked of nft (it may not even be installed).
        let listing = if configured.is_empty() && !owned {
            Ok(None)
        } else {
            blocking(move || manager.status_json().map(Some).map_err(|e| e.to_string()))
                .await
                .and_then(|r| r)
        };
        let st = self.status.lock();
        let (mut v, listing_error) = match listing {
            Ok(Some(v)) => (v, None),
            Ok(None) => (self.empty_listing(), None),
            Err(e) => (self.empty_listing(), Some(e)),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("configured".into(), json!(configured));
            o.insert("owned".into(), json!(st.owned));
            o.insert("error".into(), json!(st.error.clone().or(listing_error)));
            o.insert("left_out".into(), json!(st.left_out));
            o.insert("counters_error".into(), json!(st.counters_error));
        }
        v
    }

    /// The shape of [`Manager::status_json`] when the kernel could not be asked.
    fn empty_listing(&self) -> Value {
        json!({
            "table": self.manager.table(),
            "family": smartproxy_nftables::FAMILY,
            "present": Value::Null,
            "routes": [],
            "nftables": [],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Format};

    fn config(text: &str) -> Result<Config, Vec<String>> {
        Config::from_str(text, Format::Toml)
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn routes_become_what_the_kernel_rules_take() {
        let c = config(
            r#"
bind = ["10.0.0.1", "::"]
[[routes]]
name = "db"
match = { ports = [5432, "6000-6010"] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = "preserve" }, { host = "db2.internal", port = 5433 }],
           forwarding_engine = "nftables", load_balancing = "ip-hash",
           nftables = { preserve_source_ip = true, protocol = "all" } }
security = { ip_allow_list = ["10.0.0.0/8", "::ffff:192.0.2.1"], ip_block_list = ["10.1.*"], max_connections = 50 }

[[routes]]
match = { ports = 53 }
action = { type = "forward", targets = [{ host = "10.0.0.53", port = 53 }], forwarding_engine = "nftables", nftables = { protocol = "udp" } }

[[routes]]
name = "off"
enabled = false
match = { ports = 54 }
action = { type = "forward", targets = [{ host = "10.0.0.54", port = 53 }], forwarding_engine = "nftables" }

[[routes]]
name = "web"
match = { ports = 8080 }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }
"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.table().ports(), [8080], "the proxy binds only the proxied route's port");
        let routes = nft_routes(c.table(), &c.bind).expect("converts");
        let json = serde_json::to_value(&routes).expect("serialises");
        assert_eq!(
            json,
            json!([
                {"name": "db", "ports": [5432, "6000-6010"], "local_addresses": ["10.0.0.1", "::"],
                 "protocol": "all",
                 "targets": [{"host": "10.0.0.5", "port": "preserve"}, {"host": "db2.internal", "port": 5433}],
                 "balance": "source-hash", "preserve_source_ip": true,
                 "ip_allow_list": ["10.0.0.0/8", "192.0.2.1"], "ip_block_list": ["10.1.0.0/16"],
                 "max_connections": 50},
                {"name": "route-1", "ports": [53], "local_addresses": ["10.0.0.1", "::"],
                 "protocol": "udp", "targets": [{"host": "10.0.0.53", "port": 53}],
                 "balance": "round-robin", "preserve_source_ip": false}
            ])
        );
    }

    #[test]
    fn what_nftables_refuses_gets_the_key_path() {
        let e = config(
            r#"
bind = ["2001:db8::1"]
[[routes]]
name = "v4"
match = { ports = 5432 }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 1 }, { host = "2001:db8::5", port = 1 }], forwarding_engine = "nftables" }

[[routes]]
name = "dup"
match = { ports = ["5000-5500"] }
action = { type = "forward", targets = [{ host = "224.0.0.1", port = 0 }], forwarding_engine = "nftables" }
"#,
        )
        .expect_err("refused");
        assert_eq!(
            e,
            [
                "line 2: bind: route `v4` (routes[0]) is kernel-forwarded on these addresses: no IPv4 address, but the targets are IPv4: NAT does not translate between families, so the route would forward nothing",
                "line 2: bind: route `dup` (routes[1]) is kernel-forwarded on these addresses: no IPv4 address, but the targets are IPv4: NAT does not translate between families, so the route would forward nothing",
                "line 6: routes[0].action.targets[1].host: kernel forwarding: `2001:db8::5` and targets[0] `10.0.0.5` are of different address families; NAT does not translate between IPv4 and IPv6, use one route per family",
                "line 10: routes[1].match.ports[0]: kernel forwarding: tcp port 5432 is already forwarded by route `v4`",
                "line 11: routes[1].action.targets[0].port: port 0 is not a valid target port",
                "line 11: routes[1].action.targets[0].host: kernel forwarding: `224.0.0.1` is a multicast or broadcast address, which NAT cannot target",
            ]
        );
        let e = config(
            r#"
bind = ["2001:db8::1"]
[[routes]]
name = "v4"
match = { ports = 5432 }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 1 }], forwarding_engine = "nftables" }
"#,
        )
        .expect_err("refused");
        assert_eq!(
            e,
            [
                "line 2: bind: route `v4` (routes[0]) is kernel-forwarded on these addresses: no IPv4 address, but the targets are IPv4: NAT does not translate between families, so the route would forward nothing"
            ]
        );
    }
}

//! One configuration ready to serve: what a connection reads once, when it is accepted, and
//! keeps for its whole life (a reload builds a new one; established connections keep theirs).

use std::fmt;
use std::sync::Arc;

use smartproxy_metrics::{Metrics, RouteHandle};
use smartproxy_routing::RouteTable;

use smartproxy_acme::CertManager;

use crate::certs;
use crate::config::{Config, ConfigErrors};
use crate::timeouts::EffectiveTimeouts;
use crate::tls_setup::TlsState;

/// A parsed configuration with what serving needs on top: the route table (with the live
/// counters of the previous state), the rustls configurations and the metrics handles.
pub(crate) struct State {
    pub(crate) config: Arc<Config>,
    pub(crate) table: Arc<RouteTable>,
    /// The collector's handle of each route, by route index (empty with metrics off).
    pub(crate) route_metrics: Vec<RouteHandle>,
    /// Rustls acceptors and connectors of the terminating routes.
    pub(crate) tls: Arc<TlsState>,
    /// The certificates: ACME handles of `certificate = "auto"` routes, the challenge answers
    /// the classify stage looks up, the status the admin API shows.
    pub(crate) certs: CertManager,
    /// The timeouts of each route's connections, by route index (the route's `timeouts`
    /// over `[defaults]`, resolved once here).
    pub(crate) timeouts: Box<[EffectiveTimeouts]>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").field("routes", &self.config.routes.len()).finish_non_exhaustive()
    }
}

impl State {
    /// Builds the state of `config`, taking over the live counters and TLS session state of
    /// `old` (the state being replaced, on reload). Nothing here validates or reads a file:
    /// the configuration did that when it was parsed.
    pub(crate) fn build(
        mut config: Config,
        old: Option<&State>,
        handlers: &[&str],
        metrics: Option<&Metrics>,
    ) -> Result<Self, ConfigErrors> {
        let table = config.take_table(old.map(|o| &*o.table), handlers);
        let (certs, fresh) = certs::manager(&config, old.map(|o| &o.certs))
            .map_err(|errors| ConfigErrors { file: None, errors })?;
        let tls = match TlsState::build(&config, old.map(|o| &*o.tls), &certs) {
            Ok(t) => Arc::new(t),
            Err(errors) => {
                if let Some(o) = old.filter(|_| !fresh) {
                    o.restore_certs();
                }
                return Err(ConfigErrors { file: None, errors });
            }
        };
        let route_metrics = match metrics {
            Some(m) => table.routes().iter().map(|r| m.route(r.name())).collect(),
            None => Vec::new(),
        };
        let timeouts = table
            .routes()
            .iter()
            .map(|r| EffectiveTimeouts::resolve(&config.defaults, r.config()))
            .collect();
        Ok(Self { config: Arc::new(config), table, route_metrics, tls, certs, timeouts })
    }

    /// Puts this state's routes back into its certificate manager, after a new state that
    /// shares the manager was built but not installed (a reload refused late).
    pub(crate) fn restore_certs(&self) {
        if let Err(errors) = certs::sync(&self.certs, &self.config) {
            for e in errors {
                tracing::warn!(error = %e, "cannot restore the certificate routes");
            }
        }
    }

    /// The HTTP layer's configuration of this state: the same table, the `[defaults]` HTTP
    /// settings and timeouts, TLS towards re-encrypting targets.
    pub(crate) fn http_config(&self) -> smartproxy_http::HttpConfig {
        let d = &self.config.defaults;
        smartproxy_http::HttpConfig::new(Arc::clone(&self.table))
            .with_settings(d.http_settings())
            .with_connect_timeout(d.connect_timeout)
            .with_tunnel_inactivity_timeout(d.inactivity_timeout)
            // Per route: its WebSocket tunnels' inactivity (the keep-alive treatment applied),
            // connect timeout and TCP keepalive towards its targets.
            .with_route_settings(
                self.timeouts
                    .iter()
                    .map(|t| {
                        smartproxy_http::RouteConnSettings::new(
                            t.inactivity.unwrap_or(std::time::Duration::MAX),
                            t.connect,
                            t.tcp_keepalive,
                        )
                    })
                    .collect(),
            )
            .with_upstream_tls(Arc::new(crate::tls_setup::UpstreamConnector(Arc::clone(&self.tls))))
            .with_credentials(Arc::clone(&self.config.compiled().credentials))
    }

    /// The collector's handle of the route at `index` of the table.
    pub(crate) fn route_metric(&self, index: usize) -> Option<&RouteHandle> {
        self.route_metrics.get(index)
    }
}

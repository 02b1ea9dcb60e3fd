//! One configuration ready to serve: what a connection reads once, when it is accepted, and
//! keeps for its whole life (a reload builds a new one; established connections keep theirs).

use std::fmt;
use std::sync::Arc;

use smartproxy_metrics::{Metrics, RouteHandle};
use smartproxy_routing::RouteTable;

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
    pub(crate) tls: TlsState,
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
        let tls = TlsState::build(&config, old.map(|o| &o.tls))
            .map_err(|errors| ConfigErrors { file: None, errors })?;
        let route_metrics = match metrics {
            Some(m) => table.routes().iter().map(|r| m.route(r.name())).collect(),
            None => Vec::new(),
        };
        let timeouts = table
            .routes()
            .iter()
            .map(|r| EffectiveTimeouts::resolve(&config.defaults, r.config()))
            .collect();
        Ok(Self { config: Arc::new(config), table, route_metrics, tls, timeouts })
    }

    /// The collector's handle of the route at `index` of the table.
    pub(crate) fn route_metric(&self, index: usize) -> Option<&RouteHandle> {
        self.route_metrics.get(index)
    }
}

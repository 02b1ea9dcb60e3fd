//! What the binary runs beside the engine: the admin API (certificates included) and the
//! StatsD pusher, and the one reload path that SIGHUP and `POST /reload` share.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use smartproxy_admin::{AdminHooks, AdminState, RenewError};
use smartproxy_engine::{Config, Engine, Metrics, acme};
use smartproxy_metrics_export::{ExportOptions, PerIp, StatsdPusher, StatsdStyle};
use tokio::sync::watch;

/// The engine and the file it was started from.
#[derive(Clone)]
pub(crate) struct Control {
    pub(crate) engine: Engine,
    pub(crate) file: Option<PathBuf>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("file", &self.file).finish_non_exhaustive()
    }
}

impl Control {
    /// Re-reads the configuration file and applies it. `Ok` says what changed; `Err` why the
    /// file was refused (the old configuration stays). Every outcome is logged and counted.
    pub(crate) async fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.file else {
            return Err("the demo configuration has no file to reload".to_owned());
        };
        tracing::info!(file = %path.display(), "reloading");
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.engine.reload_refused(&e);
                return Err(e.to_string());
            }
        };
        match self.engine.reload(config).await {
            Ok(s) => {
                let mut msg = format!(
                    "reloaded: {} routes, ports added {:?}, removed {:?}",
                    s.routes, s.added_ports, s.removed_ports
                );
                if !s.restart_required.is_empty() {
                    msg.push_str("; restart required for: ");
                    msg.push_str(&s.restart_required.join(", "));
                }
                if let Some(e) = &s.kernel_error {
                    msg.push_str("; ");
                    msg.push_str(e);
                }
                Ok(msg)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl AdminHooks for Control {
    fn ready(&self) -> bool {
        !self.engine.is_draining()
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        let this = self.clone();
        Box::pin(async move { this.reload().await })
    }

    fn nftables(&self) -> Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send>> {
        let engine = self.engine.clone();
        Box::pin(async move { Some(engine.nftables_status().await) })
    }

    fn certificates(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.certificates().status())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    fn renew_certificate(
        &self,
        route: String,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, RenewError>> + Send>> {
        let certs = self.engine.certificates();
        Box::pin(async move {
            let status = certs.renew_now(&route).await.map_err(renew_error)?;
            serde_json::to_value(status).map_err(|e| RenewError::Internal(e.to_string()))
        })
    }
}

/// The admin API's answer to a failed renewal (the acme crate's error kinds).
fn renew_error(e: acme::Error) -> RenewError {
    let message = e.to_string();
    match e {
        acme::Error::UnknownRoute(_) => RenewError::UnknownRoute(message),
        acme::Error::NotAcme(_) => RenewError::NotRenewable(message),
        acme::Error::RateLimited { until } => {
            let now = acme::Timestamp::now().unix_seconds();
            let retry_after_secs = u64::try_from(until.unix_seconds() - now).unwrap_or(0).max(1);
            RenewError::RateLimited { retry_after_secs, message }
        }
        acme::Error::Acme { .. } | acme::Error::Timeout(_) => RenewError::Upstream(message),
        _ => RenewError::Internal(message),
    }
}

/// Export options from `[metrics]`.
pub(crate) fn export_options(config: &Config) -> ExportOptions {
    let mut o = ExportOptions::default();
    o.prefix.clone_from(&config.metrics.prefix);
    o.per_ip = match config.metrics.per_ip.top_n() {
        Some(n) => PerIp::TopN(n),
        None => PerIp::Off,
    };
    o
}

/// Starts the admin API on `[admin] listen` (when set); it stops when `stop` turns true.
pub(crate) async fn start_admin(
    control: &Control,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<SocketAddr>> {
    let config = control.engine.config();
    let Some(admin) = &config.admin else { return Ok(None) };
    let addr = admin.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ([admin] listen): {e}"))?;
    let local = listener.local_addr()?;
    // With metrics off the admin API still serves health, readiness and reload; /metrics then
    // reports an empty collector.
    let metrics = control
        .engine
        .metrics()
        .unwrap_or_else(|| Metrics::new(smartproxy_metrics::MetricsConfig::default(), 0));
    let state = AdminState::new(metrics, export_options(&config), Arc::new(control.clone()));
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = smartproxy_admin::serve(listener, state, shutdown).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(Some(local))
}

/// Starts pushing to `[metrics.statsd]` (when set) every interval, and once more at `stop`.
pub(crate) fn start_statsd(engine: &Engine, stop: &watch::Receiver<bool>) -> anyhow::Result<()> {
    let config = engine.config();
    let (Some(statsd), Some(metrics)) = (&config.metrics.statsd, engine.metrics()) else {
        return Ok(());
    };
    let style = match statsd.style {
        smartproxy_engine::StatsdStyle::Datadog => StatsdStyle::DogStatsd,
        _ => StatsdStyle::Plain,
    };
    let mut pusher = StatsdPusher::new(statsd.address.as_str(), style, export_options(&config))
        .map_err(|e| anyhow::anyhow!("[metrics.statsd] address {}: {e}", statsd.address))?;
    let every = statsd.interval;
    tracing::info!(address = %statsd.address, ?every, "pushing metrics to StatsD");
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|v| *v) => true,
            };
            if let Err(e) = pusher.push(&metrics.snapshot()) {
                tracing::warn!(error = %e, "StatsD push failed");
            }
            if last {
                return;
            }
        }
    });
    Ok(())
}

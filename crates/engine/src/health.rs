//! Active health checks (`health.check` on a forward route, or `[defaults] health`): one task
//! per engine, off the data path, connects to every checked target once per interval and
//! records the outcome in the route's target health (the routing crate counts the passes and
//! failures in a row and marks the target down after `fall`, up after `rise`).
//!
//! The task reads the route table in force at each round, so a reload needs nothing: a route
//! added with checks is checked within half a second, a removed route is no longer looked at,
//! and a route whose targets did not change keeps their state (the table carries it over). The
//! probes of a round run concurrently in a `JoinSet` owned by the task: aborting the task (when
//! the engine is dropped) aborts them too.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use smartproxy_metrics::TargetUp;
use smartproxy_routing::{ConnectFailure, RouteAction, TargetPort};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use crate::shared::Shared;
use crate::state::State;

/// The longest sleep between two rounds: how soon a reload's new checks start.
const LONGEST_SLEEP: Duration = Duration::from_millis(500);

/// Starts the checker of the engine whose shared part is `shared`; it ends when the engine
/// is gone (or when its handle is aborted).
pub(crate) fn spawn_checker(shared: Weak<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut probes = JoinSet::new();
        loop {
            let Some((state, metrics)) =
                shared.upgrade().map(|s| (s.state.load_full(), s.obs.metrics().cloned()))
            else {
                return;
            };
            if let Some(m) = metrics {
                m.set_target_health(targets_up(&state));
            }
            let now = unix_ms();
            let mut next = now.saturating_add(millis(LONGEST_SLEEP));
            for (ri, route) in state.table.routes().iter().enumerate() {
                let Some(check) = route.health_check() else { continue };
                if route.is_kernel_forwarded() {
                    continue;
                }
                for (ti, host, ip, port) in route.claim_due_checks(now) {
                    let (state, host) = (Arc::clone(&state), host.to_owned());
                    probes.spawn(async move {
                        let result = probe(&host, ip, port, check.timeout).await;
                        record(&state, ri, ti, &host, port, result);
                    });
                }
                if let Some(due) = route.next_check_unix_ms() {
                    next = next.min(due);
                }
            }
            drop(state);
            let sleep = Duration::from_millis(next.saturating_sub(now)).min(LONGEST_SLEEP);
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                Some(_) = probes.join_next(), if !probes.is_empty() => {}
            }
            while probes.try_join_next().is_some() {}
        }
    })
}

/// Up or down, for `/metrics`, of every target of the routes with active checks.
fn targets_up(state: &State) -> Vec<TargetUp> {
    let mut out = Vec::new();
    for route in state.table.routes() {
        let RouteAction::Forward(f) = &route.config().action else { continue };
        if route.health_check().is_none() || route.is_kernel_forwarded() {
            continue;
        }
        for (i, t) in f.targets.iter().enumerate() {
            let target = match t.port {
                TargetPort::Port(p) if t.host.contains(':') && !t.host.starts_with('[') => {
                    format!("[{}]:{p}", t.host)
                }
                TargetPort::Port(p) => format!("{}:{p}", t.host),
                TargetPort::Preserve => continue,
            };
            out.push(TargetUp::new(route.name(), target, !route.target_health(i).down));
        }
    }
    out
}

/// One check: a TCP connect within `timeout`, closed at once (`ip`: the host as an IP address
/// when it is one, parsed with the route). `None` when the proxy itself is out of resources
/// (EMFILE, ...): that says nothing about the target.
async fn probe(
    host: &str,
    ip: Option<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Option<Result<(), ConnectFailure>> {
    let connect = async {
        match ip {
            Some(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
            None => TcpStream::connect((host, port)).await,
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_)) => Some(Ok(())),
        Ok(Err(e)) => match ConnectFailure::of_io(&e) {
            ConnectFailure::Local => None,
            why => Some(Err(why)),
        },
        Err(_) => Some(Err(ConnectFailure::Timeout)),
    }
}

/// Records a check's outcome on target `ti` of route `ri` of `state`, and logs a change.
fn record(
    state: &State,
    ri: usize,
    ti: usize,
    host: &str,
    port: u16,
    result: Option<Result<(), ConnectFailure>>,
) {
    let (Some(route), Some(result)) = (state.table.routes().get(ri), result) else { return };
    match route.target_checked(ti, unix_ms(), result) {
        Some(true) => {
            tracing::info!(route = route.name(), target = %format_args!("{host}:{port}"), "health check: target up");
        }
        Some(false) => {
            tracing::warn!(
                route = route.name(),
                target = %format_args!("{host}:{port}"),
                error = ?result.err(),
                "health check: target down"
            );
        }
        None => {}
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

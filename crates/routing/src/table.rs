//! The compiled route table and lookup.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::{DomainKind, MAX_NAME, normalize};
use crate::error::ValidationError;
use crate::ip::IpList;
use crate::limits::RouteLimits;
use crate::matchers::{MatchInput, Matchers};
use crate::model::{HealthCheck, HealthOptions, PortRange, RouteAction, RouteConfig, TlsMode};
use crate::path::{PathParams, PathPattern, first_segment};
use crate::target::{ConnectFailure, SelectedTarget, TargetHealthSnapshot, TargetSet};
use crate::validate::{ValidationOptions, check, route_name};

/// What the engine must read from a new connection before it can pick a route on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PeekNeed {
    /// Nothing: the route is decided by port and client address alone. Route at once
    /// (`is_tls`, domain, path and headers are not looked at on such a port).
    None,
    /// A TLS ClientHello (SNI, TLS version): every route on the port has a `tls` block.
    Tls,
    /// An HTTP request head (Host, path, headers): no route on the port has a `tls` block
    /// and some route needs a path or headers.
    Http,
    /// The first bytes decide: a ClientHello or an HTTP request head.
    TlsOrHttp,
}

/// A route after validation: its configuration, name, compiled criteria, target selector and
/// limits.
pub struct CompiledRoute {
    config: RouteConfig,
    name: Arc<str>,
    index: usize,
    pub(crate) m: Matchers,
    base_spec: u64,
    has_tls_block: bool,
    terminates: bool,
    pub(crate) targets: TargetSet,
    limits: Arc<RouteLimits>,
    /// Connections refused after this route was chosen (its lists, its limits, no target):
    /// kept across reloads under the same name.
    refused: Arc<AtomicU64>,
}

impl fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("name", &self.name)
            .field("index", &self.index)
            .field("priority", &self.config.priority)
            .field("enabled", &self.config.enabled)
            .finish_non_exhaustive()
    }
}

impl CompiledRoute {
    /// The route name (`route-<index>` when the configuration has none).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route name as a shared string, cheap to clone into metrics labels.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Position of the route in the configuration.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The route as configured.
    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// Whether the route may be used by `ip` per `security.ip_allow_list` and
    /// `security.ip_block_list`: the block list wins; an empty allow list allows everyone.
    /// `::ffff:a.b.c.d` is checked as `a.b.c.d`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        !self.m.block.contains(ip) && (self.m.allow.is_empty() || self.m.allow.contains(ip))
    }

    /// Picks a target of a forward route (`None` for socket handlers).
    ///
    /// `attempt` 0 is the first choice. After a refused connect, call again with `attempt`
    /// 1, 2, … for the next candidates; `None` once all `targets.len()` have been offered.
    /// Round-robin advances a shared atomic cursor on `attempt == 0` only; ip-hash starts
    /// at a stable hash of the client address; least-connections takes the target with the
    /// fewest open [`crate::ConnectionGuard`]s (ties in turn), then the next least loaded.
    /// [`CompiledRoute::next_target`] is the exact form of "the next one after this".
    pub fn select_target(
        &self,
        client_ip: IpAddr,
        listen_port: u16,
        attempt: usize,
    ) -> Option<SelectedTarget<'_>> {
        self.targets.select(client_ip, listen_port, attempt)
    }

    /// The candidate after `prev` when connecting to `prev` was refused; `attempts` counts
    /// the targets tried so far (1 after the first refusal). `None` when all were tried.
    pub fn next_target(
        &self,
        prev: &SelectedTarget<'_>,
        attempts: usize,
        listen_port: u16,
    ) -> Option<SelectedTarget<'_>> {
        self.targets.next_after(prev.index(), attempts, listen_port)
    }

    /// Open connections counted on target `index` (live guards).
    pub fn target_active(&self, index: usize) -> usize {
        self.targets.active(index)
    }

    /// A connect to target `index` failed at `now_unix_ms` (UNIX milliseconds): the target
    /// is shown down until a connect succeeds ([`CompiledRoute::target_health`]).
    pub fn target_connect_failed(&self, index: usize, now_unix_ms: u64, why: ConnectFailure) {
        self.targets.connect_failed(index, now_unix_ms, why);
    }

    /// A connect to target `index` succeeded. One relaxed load while the target is up;
    /// `now_unix_ms` is only called when it was down.
    #[inline]
    pub fn target_connected(&self, index: usize, now_unix_ms: impl FnOnce() -> u64) {
        self.targets.connected(index, now_unix_ms);
    }

    /// What the connects to target `index` showed last (up/down, failures, last failure),
    /// and its active checks when the route has them.
    pub fn target_health(&self, index: usize) -> TargetHealthSnapshot {
        self.targets.health(index)
    }

    /// The route's active checks (`health.check`, or the `[defaults] health` it inherits).
    pub fn health_check(&self) -> Option<HealthCheck> {
        self.targets.check()
    }

    /// The targets whose active check is due at `now_unix_ms` (UNIX milliseconds): each is
    /// claimed (the next one is due an interval later), so that one checker runs it. Index,
    /// host, the host as an IP address when it is one ([`crate::Target::ip`]) and port of
    /// each. Empty without `health.check`.
    pub fn claim_due_checks(&self, now_unix_ms: u64) -> Vec<(usize, &str, Option<IpAddr>, u16)> {
        self.targets.claim_due_checks(now_unix_ms)
    }

    /// The earliest UNIX millisecond at which a check of this route's targets is due
    /// (`None` without `health.check`).
    pub fn next_check_unix_ms(&self) -> Option<u64> {
        self.targets.next_check_ms()
    }

    /// Records the outcome of an active check of target `index` (`Ok`: the connect
    /// succeeded within the timeout). `Some(true)` when it brought the target up (`rise`
    /// passes in a row), `Some(false)` when it took it down (`fall` failures in a row).
    pub fn target_checked(
        &self,
        index: usize,
        now_unix_ms: u64,
        result: Result<(), ConnectFailure>,
    ) -> Option<bool> {
        self.targets.checked(index, now_unix_ms, result)
    }

    /// Counts a connection refused after this route was chosen (allow/block lists, route
    /// limits, no reachable target).
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused after this route was chosen, since it first appeared under its
    /// name (kept across reloads).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The connection limits and rate limiter of this route (`security`).
    pub fn limits(&self) -> &Arc<RouteLimits> {
        &self.limits
    }

    /// Whether the route is enabled.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The configured priority.
    pub fn priority(&self) -> i32 {
        self.config.priority
    }

    /// The parameters of the route's path pattern on `path` (`/users/:id` on `/users/7`:
    /// `id = 7`), as a lookup that chose this route returned them; empty when the route has
    /// no path pattern or `path` does not match it.
    pub fn path_params<'a>(&'a self, path: &'a str) -> PathParams<'a> {
        self.m.path.as_ref().and_then(|p| p.matches(path)).unwrap_or_default()
    }

    /// The `http` table of a forward route served by the HTTP layer.
    pub fn http(&self) -> Option<&crate::http::HttpOptions> {
        match &self.config.action {
            RouteAction::Forward(f) => f.http.as_ref(),
            RouteAction::SocketHandler(_) => None,
        }
    }

    /// Whether the kernel forwards this route (`forwarding_engine = "nftables"`): it is in
    /// [`RouteTable::routes`] but never in a lookup, and its ports are not in
    /// [`RouteTable::ports`].
    pub fn is_kernel_forwarded(&self) -> bool {
        self.config.is_kernel_forwarded()
    }

    /// `security.ip_allow_list`, parsed and normalised.
    pub fn ip_allow_list(&self) -> &IpList {
        &self.m.allow
    }

    /// `security.ip_block_list`, parsed and normalised.
    pub fn ip_block_list(&self) -> &IpList {
        &self.m.block
    }
}

/// A lookup result: the route, its position, and the path parameters.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Matched<'a> {
    /// The winning route.
    pub route: &'a CompiledRoute,
    /// Its position in the configuration (and in [`RouteTable::routes`]).
    pub index: usize,
    /// Parameters of the path pattern (`/users/:id`), inline.
    pub params: PathParams<'a>,
}

#[derive(Debug)]
pub(crate) struct PortGroup {
    /// Enabled routes on these ports, by priority (highest first), then configuration order.
    pub(crate) order: Box<[u32]>,
    /// Lower-case exact domain -> routes (indices into the table, in `order` order).
    exact: HashMap<Box<str>, Box<[u32]>>,
    /// `example.com` -> routes that have `*.example.com`.
    suffix: HashMap<Box<str>, Box<[u32]>>,
    /// Routes that must always be checked: no domain criterion, or a glob / catch-all
    /// (those whose path starts with a literal segment are in `scan_path` instead).
    scan: Box<[u32]>,
    /// First literal path segment -> routes of the scan set with that path prefix.
    scan_path: HashMap<Box<str>, Box<[u32]>>,
    pub(crate) peek: PeekNeed,
    /// Some enabled route on these ports has a domain criterion: without one, a lookup does
    /// not look at the domain (no lower-cased copy of it per request).
    domains: bool,
    /// Some enabled route on these ports has an `http` table.
    pub(crate) http: bool,
    /// Some enabled route on these ports has a `tls` block.
    pub(crate) tls: bool,
    /// Every connection on these ports must send first (see
    /// [`RouteTable::client_speaks_first`]).
    pub(crate) client_first: bool,
}

type DomainIndex = HashMap<Box<str>, Vec<u32>>;

/// The immutable, compiled route table: validated routes indexed by port, then by domain.
///
/// `Send + Sync`; share it as `Arc<RouteTable>` and swap the whole table on reload.
///
/// # Selection
///
/// Among the enabled routes whose every criterion matches, the winner is:
/// 1. the highest `priority`;
/// 2. then the most specific, compared criterion by criterion in this order: domain
///    (exact > `*.suffix` > other wildcards > `*` > no domain criterion; between two of the
///    same kind, more literal characters), path (exact > with parameters or `*` segments >
///    with a trailing `*`; then more literal characters), number of header criteria, a
///    `client_ip` criterion, a `tls_version` criterion;
/// 3. then the first in configuration order.
///
/// A criterion on a field the input does not carry (no SNI/Host for `domains`, no path,
/// no headers, no TLS version) does not match. On a port whose [`PeekNeed`] is not `None`,
/// routes with a `tls` block match only connections with `is_tls` set.
#[derive(Debug)]
pub struct RouteTable {
    routes: Box<[CompiledRoute]>,
    /// Sorted, disjoint port segments and the group serving each.
    segments: Box<[(PortRange, u32)]>,
    pub(crate) groups: Box<[PortGroup]>,
    ports: Box<[u16]>,
    by_name: HashMap<Arc<str>, u32>,
}

impl RouteTable {
    /// Validates and compiles `routes` (built-in handlers only).
    pub fn compile(routes: Vec<RouteConfig>) -> Result<Self, Vec<ValidationError>> {
        Self::compile_with(routes, &ValidationOptions::default())
    }

    /// Validates and compiles `routes`, accepting `opts.custom_handlers`.
    pub fn compile_with(
        routes: Vec<RouteConfig>,
        opts: &ValidationOptions,
    ) -> Result<Self, Vec<ValidationError>> {
        Self::build(routes, opts, None)
    }

    /// Like [`RouteTable::compile_with`], for a reload: a route of `previous` with the same
    /// name and the same `security` keeps its limit counters and rate-limiter state, and with
    /// the same targets keeps its open-connection counts and round-robin position.
    pub fn compile_reusing(
        routes: Vec<RouteConfig>,
        opts: &ValidationOptions,
        previous: &RouteTable,
    ) -> Result<Self, Vec<ValidationError>> {
        Self::build(routes, opts, Some(previous))
    }

    /// Takes over the live state of `previous` (a reload): a route of the same name and the
    /// same `security` keeps its limit counters and rate-limiter state, and with the same
    /// targets its open-connection counts and round-robin position. The same as
    /// [`RouteTable::compile_reusing`] for a table that is compiled already.
    pub fn inherit(&mut self, previous: &RouteTable) {
        for r in self.routes.iter_mut() {
            let Some(prev) = previous.route_by_name(&r.name) else { continue };
            r.targets.inherit(&prev.targets);
            r.refused = Arc::clone(&prev.refused);
            if prev.config.security.clone().unwrap_or_default()
                == r.config.security.clone().unwrap_or_default()
            {
                r.limits = Arc::clone(&prev.limits);
            }
        }
    }

    fn build(
        routes: Vec<RouteConfig>,
        opts: &ValidationOptions,
        previous: Option<&RouteTable>,
    ) -> Result<Self, Vec<ValidationError>> {
        let (matchers, errs) = check(&routes, opts);
        if !errs.is_empty() {
            return Err(errs);
        }
        let mut compiled = Vec::with_capacity(routes.len());
        for (index, (config, m)) in routes.into_iter().zip(matchers).enumerate() {
            // `check` returned no error, so every route compiled.
            let Some(m) = m else { continue };
            let name: Arc<str> = route_name(&config, index).into();
            let (mut targets, has_tls_block, terminates) = match &config.action {
                RouteAction::Forward(f) => (
                    TargetSet::new(
                        f.targets.clone(),
                        f.load_balancing,
                        f.health.unwrap_or(opts.default_health),
                    ),
                    f.tls.is_some(),
                    f.tls.as_ref().is_some_and(|t| t.mode != TlsMode::Passthrough),
                ),
                RouteAction::SocketHandler(_) => (
                    TargetSet::new(
                        Vec::new(),
                        Default::default(),
                        HealthOptions::with_cooldown(Duration::ZERO),
                    ),
                    false,
                    false,
                ),
            };
            let security = config.security.clone().unwrap_or_default();
            let mut limits = None;
            let mut refused = Arc::new(AtomicU64::new(0));
            if let Some(prev) = previous.and_then(|p| p.route_by_name(&name)) {
                targets.inherit(&prev.targets);
                refused = Arc::clone(&prev.refused);
                if prev.config.security.clone().unwrap_or_default() == security {
                    limits = Some(Arc::clone(&prev.limits));
                }
            }
            let limits = limits.unwrap_or_else(|| Arc::new(RouteLimits::new(&security)));
            compiled.push(CompiledRoute {
                base_spec: m.base_specificity(),
                m,
                has_tls_block,
                terminates,
                name,
                index,
                targets,
                limits,
                refused,
                config,
            });
        }
        Ok(Self::index(compiled))
    }

    fn index(routes: Vec<CompiledRoute>) -> Self {
        // Port segments: sweep over range boundaries.
        let mut bounds: Vec<u32> = Vec::new();
        // Kernel-forwarded routes own their ports outside the proxy: not in the index.
        let served = |r: &CompiledRoute| r.config.enabled && !r.config.is_kernel_forwarded();
        for r in routes.iter().filter(|r| served(r)) {
            for pr in &r.config.matcher.ports.0 {
                bounds.push(u32::from(pr.start));
                bounds.push(u32::from(pr.end) + 1);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut segments: Vec<(PortRange, u32)> = Vec::new();
        let mut groups: Vec<PortGroup> = Vec::new();
        let mut group_of: HashMap<Vec<u32>, u32> = HashMap::new();
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
            let mut members: Vec<u32> = routes
                .iter()
                .filter(|r| served(r) && r.config.matcher.ports.contains(lo))
                .map(|r| r.index as u32)
                .collect();
            if members.is_empty() {
                continue;
            }
            members.sort_by_key(|&i| (std::cmp::Reverse(routes[i as usize].config.priority), i));
            let g = match group_of.get(&members) {
                Some(&g) => g,
                None => {
                    let g = groups.len() as u32;
                    groups.push(Self::group(&routes, &members));
                    group_of.insert(members, g);
                    g
                }
            };
            match segments.last_mut() {
                Some((last, lg)) if *lg == g && u32::from(last.end) + 1 == u32::from(lo) => {
                    last.end = hi;
                }
                _ => segments.push((PortRange { start: lo, end: hi }, g)),
            }
        }
        let ports: Vec<u16> = segments.iter().flat_map(|(r, _)| r.iter()).collect();
        let by_name = routes.iter().map(|r| (Arc::clone(&r.name), r.index as u32)).collect();
        Self {
            by_name,
            routes: routes.into_boxed_slice(),
            segments: segments.into_boxed_slice(),
            groups: groups.into_boxed_slice(),
            ports: ports.into_boxed_slice(),
        }
    }

    fn group(routes: &[CompiledRoute], order: &[u32]) -> PortGroup {
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut suffix: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut scan = Vec::new();
        let mut scan_path: DomainIndex = HashMap::new();
        let mut push_scan = |i: u32, r: &CompiledRoute| match r
            .m
            .path
            .as_ref()
            .and_then(PathPattern::first_literal)
        {
            Some(seg) => scan_path.entry(seg.into()).or_default().push(i),
            None => scan.push(i),
        };
        for &i in order {
            let r = &routes[i as usize];
            if r.m.domains.is_empty() {
                push_scan(i, r);
                continue;
            }
            let mut scanned = false;
            for d in r.m.domains.iter() {
                let key: Option<(&mut DomainIndex, &str)> = match d.kind() {
                    DomainKind::Exact => Some((&mut exact, d.as_str())),
                    DomainKind::Suffix => d.suffix().map(|s| (&mut suffix, s)),
                    DomainKind::Glob | DomainKind::CatchAll => None,
                };
                match key {
                    Some((map, k)) => {
                        let v = map.entry(k.into()).or_default();
                        if v.last() != Some(&i) {
                            v.push(i);
                        }
                    }
                    None if !scanned => {
                        push_scan(i, r);
                        scanned = true;
                    }
                    None => {}
                }
            }
        }
        let peek = Self::peek_for(routes, order);
        let http = order.iter().any(|&i| routes[i as usize].http().is_some());
        // Nothing happens before the client's first bytes: the port reads them for routing, or
        // every route waits for them anyway (an HTTP route reads a request, a `tls` route a
        // ClientHello; validation keeps an HTTP port to HTTP routes and per-request handlers).
        let client_first = !order.is_empty()
            && (peek != PeekNeed::None
                || http
                || order.iter().all(|&i| routes[i as usize].has_tls_block));
        let freeze = |m: HashMap<Box<str>, Vec<u32>>| {
            m.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect()
        };
        PortGroup {
            order: order.into(),
            exact: freeze(exact),
            suffix: freeze(suffix),
            scan: scan.into_boxed_slice(),
            scan_path: freeze(scan_path),
            peek,
            domains: order.iter().any(|&i| !routes[i as usize].m.domains.is_empty()),
            http,
            tls: order.iter().any(|&i| routes[i as usize].has_tls_block),
            client_first,
        }
    }

    fn peek_for(routes: &[CompiledRoute], order: &[u32]) -> PeekNeed {
        let rs = || order.iter().map(|&i| &routes[i as usize]);
        let with_tls = rs().any(|r| r.has_tls_block);
        let without_tls = rs().any(|r| !r.has_tls_block);
        let criteria = rs().any(|r| {
            !r.m.domains.is_empty()
                || !r.m.tls_versions.is_empty()
                || r.m.path.is_some()
                || !r.m.headers.is_empty()
        });
        if !(criteria || (with_tls && without_tls)) {
            return PeekNeed::None;
        }
        if !without_tls {
            return PeekNeed::Tls;
        }
        // No `tls` block anywhere: HTTP only if nothing could be routed by SNI.
        let sni_possible = rs().any(|r| {
            !r.m.tls_versions.is_empty()
                || (!r.m.domains.is_empty() && matches!(r.config.action, RouteAction::Forward(_)))
        });
        if !with_tls && !sni_possible { PeekNeed::Http } else { PeekNeed::TlsOrHttp }
    }

    fn group_for(&self, port: u16) -> Option<&PortGroup> {
        let i = self
            .segments
            .binary_search_by(|(r, _)| {
                if r.end < port {
                    std::cmp::Ordering::Less
                } else if r.start > port {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .ok()?;
        self.groups.get(self.segments[i].1 as usize)
    }

    pub(crate) fn segments(&self) -> &[(PortRange, u32)] {
        &self.segments
    }

    fn route_by_name(&self, name: &str) -> Option<&CompiledRoute> {
        self.by_name.get(name).and_then(|&i| self.routes.get(i as usize))
    }

    /// The enabled routes that the kernel forwards (`forwarding_engine = "nftables"`), in
    /// configuration order.
    pub fn kernel_routes(&self) -> impl Iterator<Item = &CompiledRoute> + '_ {
        self.routes.iter().filter(|r| r.config.enabled && r.is_kernel_forwarded())
    }

    /// Every listening port of the enabled routes that the proxy serves (kernel-forwarded
    /// routes excluded), sorted, without repeats.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.to_vec()
    }

    /// What must be read before routing a connection on `port` ([`PeekNeed::None`] also for
    /// a port no route listens on).
    pub fn peek_need(&self, port: u16) -> PeekNeed {
        self.group_for(port).map_or(PeekNeed::None, |g| g.peek)
    }

    /// Whether `port` is served by the HTTP layer: some enabled route on it has an `http`
    /// table (validation then guarantees that every route on it is an HTTP route or a
    /// per-request handler, see [`crate::HTTP_HANDLERS`]).
    pub fn is_http_port(&self, port: u16) -> bool {
        self.group_for(port).is_some_and(|g| g.http)
    }

    /// Whether every connection on `port` must send before anything happens: its first bytes
    /// are read for routing, or every route on the port waits for them (an HTTP route, a
    /// `tls` block). Then the kernel may hold a connection until its first data arrives
    /// (`TCP_DEFER_ACCEPT`) without changing what the client sees. False for a port no
    /// enabled route listens on.
    pub fn client_speaks_first(&self, port: u16) -> bool {
        self.group_for(port).is_some_and(|g| g.client_first)
    }

    /// Whether some enabled route on `port` has a `tls` block (passthrough or terminating):
    /// connections there may start with a ClientHello.
    pub fn has_tls_routes(&self, port: u16) -> bool {
        self.group_for(port).is_some_and(|g| g.tls)
    }

    /// Whether some enabled route on `port` terminates TLS and has `path` or `headers`
    /// criteria. Then route in two steps: look up from the ClientHello with
    /// [`MatchInput::before_termination`] (to pick the certificate and termination), and
    /// after termination look up again with the request's path and headers (and `is_tls`).
    pub fn http_after_termination(&self, port: u16) -> bool {
        self.group_for(port).is_some_and(|g| {
            g.order.iter().any(|&i| {
                let r = &self.routes[i as usize];
                r.terminates && (r.m.path.is_some() || !r.m.headers.is_empty())
            })
        })
    }

    /// Every route, in configuration order (disabled ones included).
    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&CompiledRoute> {
        self.route_by_name(name)
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The winning route for `input` (see the type docs for the order). Does not allocate.
    pub fn lookup<'a>(&'a self, input: &MatchInput<'a>) -> Option<Matched<'a>> {
        let group = self.group_for(input.port)?;
        let check_tls = group.peek != PeekNeed::None;

        // Lower-cased copy of the name on the stack (initialised only when there is a name).
        let mut buf: [u8; MAX_NAME];
        // Read only by domain criteria: none on these ports, no copy.
        let name = if group.domains { input.domain } else { None };
        let domain: Option<&[u8]> = match name.and_then(normalize) {
            Some(d) => {
                buf = [0u8; MAX_NAME];
                let b = &mut buf[..d.len()];
                b.copy_from_slice(d.as_bytes());
                b.make_ascii_lowercase();
                Some(&*b)
            }
            None => None,
        };

        type Best<'a> = Option<(i32, u64, u32, PathParams<'a>)>;
        let mut best: Best<'a> = None;
        let consider = |i: u32, best: &mut Best<'a>| {
            let r = &self.routes[i as usize];
            let prio = r.config.priority;
            if best.as_ref().is_some_and(|b| prio < b.0) {
                return;
            }
            if check_tls && r.has_tls_block && !input.is_tls {
                return;
            }
            let skip_http = input.before_termination && r.terminates;
            if let Some((spec, params)) = r.m.eval(r.base_spec, input, domain, skip_http) {
                let better = best.as_ref().is_none_or(|b| {
                    (prio, spec, std::cmp::Reverse(i)) > (b.0, b.1, std::cmp::Reverse(b.2))
                });
                if better {
                    *best = Some((prio, spec, i, params));
                }
            }
        };

        if let Some(d) = domain {
            // Lower-case ASCII of a `str` is still valid UTF-8.
            if let Ok(ds) = std::str::from_utf8(d) {
                if let Some(list) = group.exact.get(ds) {
                    for &i in list.iter() {
                        consider(i, &mut best);
                    }
                }
                if !group.suffix.is_empty() {
                    let mut rest = ds;
                    while let Some(dot) = rest.find('.') {
                        rest = &rest[dot + 1..];
                        if let Some(list) = group.suffix.get(rest) {
                            for &i in list.iter() {
                                consider(i, &mut best);
                            }
                        }
                    }
                }
            }
        }
        let path_list = match (input.path.and_then(first_segment), group.scan_path.is_empty()) {
            (Some(seg), false) => group.scan_path.get(seg).map(|l| &l[..]),
            _ => None,
        };
        for list in [path_list.unwrap_or(&[]), &group.scan[..]] {
            for &i in list {
                if let Some((bp, ..)) = &best
                    && self.routes[i as usize].config.priority < *bp
                {
                    break; // each list is sorted by priority
                }
                consider(i, &mut best);
            }
        }

        best.map(|(_, _, i, params)| Matched {
            route: &self.routes[i as usize],
            index: i as usize,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardAction, RouteMatch, Target, TlsConfig, TlsMode, TlsVersion};
    use proptest::prelude::*;

    /// Every enabled route checked in turn: the definition the index must agree with.
    fn brute_force<'a>(t: &'a RouteTable, input: &MatchInput<'a>) -> Option<usize> {
        let check_tls = t.peek_need(input.port) != PeekNeed::None;
        let lower = input.domain.and_then(normalize).map(str::to_ascii_lowercase);
        let mut best: Option<(i32, u64, std::cmp::Reverse<usize>)> = None;
        for r in t.routes() {
            if !r.config.enabled || !r.config.matcher.ports.contains(input.port) {
                continue;
            }
            if check_tls && r.has_tls_block && !input.is_tls {
                continue;
            }
            if let Some((spec, _)) =
                r.m.eval(r.base_spec, input, lower.as_deref().map(str::as_bytes), false)
            {
                let k = (r.config.priority, spec, std::cmp::Reverse(r.index));
                if best.is_none_or(|b| k > b) {
                    best = Some(k);
                }
            }
        }
        best.map(|b| b.2.0)
    }

    const DOMAINS: &[&str] = &[
        "a.example.com",
        "*.example.com",
        "example.*",
        "*",
        "*.b.example.com",
        "b.example.com",
        "*ex*",
    ];
    const NAMES: &[&str] = &[
        "a.example.com",
        "x.b.example.com",
        "b.example.com",
        "example.org",
        "A.EXAMPLE.COM.",
        "zzz",
        "example.com",
    ];
    const PATHS: &[&str] = &["/", "/api/*", "/api/:id", "/api/x"];
    const REQ_PATHS: &[&str] = &["/", "/api", "/api/x", "/api/y", "/other"];

    fn route_strategy() -> impl Strategy<Value = RouteConfig> {
        (
            0u16..2,
            0u16..2,
            proptest::collection::vec(0..DOMAINS.len(), 0..3),
            proptest::option::of(0..PATHS.len()),
            -1i32..2,
            any::<bool>(),
            prop_oneof![Just(None), Just(Some("10.0.0.0/8")), Just(Some("192.0.2.1"))],
            prop_oneof![Just(None), Just(Some("1.3"))],
            (0u8..10).prop_map(|x| x != 0),
        )
            .prop_map(|(p0, span, doms, path, prio, tls, ip, ver, enabled)| {
                let mut m = RouteMatch::ports(crate::model::PortRange {
                    start: 100 + p0,
                    end: 100 + p0 + span,
                })
                .with_domains(doms.iter().map(|&d| DOMAINS[d]));
                m.path = path.map(|p| PATHS[p].to_owned());
                m.client_ip = ip.into_iter().map(str::to_owned).collect();
                m.tls_version = ver.into_iter().map(str::to_owned).collect();
                let mut f = ForwardAction::to(vec![Target::new("h", 1)]);
                if tls {
                    f = f.with_tls(TlsConfig::new(TlsMode::Passthrough));
                }
                let mut r = RouteConfig::new(m, RouteAction::Forward(f)).with_priority(prio);
                r.enabled = enabled;
                r
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn index_agrees_with_brute_force(
            routes in proptest::collection::vec(route_strategy(), 1..12),
            port in 99u16..104,
            name in proptest::option::of(0..NAMES.len()),
            path in proptest::option::of(0..REQ_PATHS.len()),
            is_tls in any::<bool>(),
            v13 in any::<bool>(),
            client in prop_oneof![Just("10.1.1.1"), Just("192.0.2.1"), Just("::ffff:10.0.0.1"), Just("::1")],
        ) {
            let t = match RouteTable::compile(routes) {
                Ok(t) => t,
                // Random passthrough/none combinations never conflict; a failure is a bug.
                Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
            };
            let mut input = MatchInput::new(port, client.parse().unwrap());
            input.domain = name.map(|n| NAMES[n]);
            input.path = path.map(|p| REQ_PATHS[p]);
            input.is_tls = is_tls;
            input.tls_version = is_tls.then_some(if v13 { TlsVersion::Tls13 } else { TlsVersion::Tls12 });
            prop_assert_eq!(t.lookup(&input).map(|m| m.index), brute_force(&t, &input));
        }
    }
}

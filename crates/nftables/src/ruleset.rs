//! A checked, resolved set of routes ([`Ruleset`]) and its nft JSON.
//!
//! The table (family `inet`, so one table holds IPv4 and IPv6 rules; NAT in `inet` tables
//! needs Linux 5.2 or later):
//!
//! ```text
//! chain prerouting  (nat, prerouting, -100)  per route and protocol:
//!     meta nfproto F meta l4proto P P dport {ports} fib daddr type local jump route-S
//! chain output      (nat, output, -100)      the same, except to loopback addresses
//! chain route-S     drops for the allow/block lists and `ct count over N` (counter S-drop),
//!                   counter S-conn, then dnat (one target) or a numgen/jhash vmap to target-S-i
//! chain target-S-i  dnat F to addr[:port]
//! chain postrouting (nat, postrouting, 100)
//!     ct status dnat meta l4proto P ct original proto-dst vmap {ports : jump masquerade}
//! chain masquerade  masquerade
//! chain count_out   (filter, postrouting, 300) }  ct status dnat meta l4proto P
//! chain count_in    (filter, input, 300)       }      ct original proto-dst vmap {ports : jump count-S}
//! chain count-S     ct direction original counter S-in return; counter S-out
//! ```
//!
//! NAT chains see only the first packet of a flow, so the route chains cost nothing per
//! packet. The two counting chains see every packet; a flow that is not DNATed leaves them
//! after one `ct status` test, one of ours after one map lookup.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Value, json};

use crate::check::{self, Family, Problem};
use crate::error::Error;
use crate::ip::{IpRange, prefix_len};
use crate::model::{Balance, NftRoute, PortRange, Protocol, TargetPort};

/// The table family: `inet` (IPv4 and IPv6 in one table).
pub const FAMILY: &str = "inet";

/// Priority of the counting chains: after source NAT (100) on postrouting, and after the
/// usual filter chains (0) on input, so that only packets that pass are counted.
const COUNT_PRIORITY: i32 = 300;

/// Routes checked, with target names resolved to addresses: what [`crate::Manager::apply`]
/// writes. Build one with [`Ruleset::build`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    routes: Vec<RouteRules>,
}

/// One route of a [`Ruleset`]: its resolved targets and the names of its kernel objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RouteRules {
    /// The route's name.
    pub name: String,
    /// The family of its targets; clients of the other family are not forwarded.
    pub family: Family,
    /// Listening ports, sorted and merged.
    pub ports: Vec<PortRange>,
    /// The local addresses of the route's family that listen (`None`: all of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_addresses: Option<Vec<IpAddr>>,
    /// Forwarded protocols.
    pub protocol: Protocol,
    /// Targets with their addresses.
    pub targets: Vec<ResolvedTarget>,
    /// Balancing between several targets.
    pub balance: Balance,
    /// Whether the client address is kept (no masquerade).
    pub preserve_source_ip: bool,
    /// The allow list as written (`None`: everyone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_allow_list: Option<Vec<IpRange>>,
    /// The block list as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_block_list: Vec<IpRange>,
    /// `ct count` limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// The name part of the route's chains and counters (the route name with characters
    /// other than `A-Za-z0-9_-` replaced, and a hash added when anything was changed).
    pub slug: String,
}

/// A target with the address it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ResolvedTarget {
    /// The host as written.
    pub host: String,
    /// Its address.
    pub address: IpAddr,
    /// The port.
    pub port: TargetPort,
}

/// Names of the four counters of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterNames {
    /// Client to target.
    pub bytes_in: String,
    /// Target to client.
    pub bytes_out: String,
    /// New flows forwarded.
    pub connections: String,
    /// New flows dropped by the allow/block lists or the connection limit.
    pub dropped: String,
}

impl RouteRules {
    /// The names of its counter objects.
    pub fn counter_names(&self) -> CounterNames {
        CounterNames {
            bytes_in: format!("{}-in", self.slug),
            bytes_out: format!("{}-out", self.slug),
            connections: format!("{}-conn", self.slug),
            dropped: format!("{}-drop", self.slug),
        }
    }

    /// The chains that belong to this route alone.
    fn own_chains(&self) -> Vec<String> {
        let mut v = vec![self.route_chain(), self.count_chain()];
        if self.targets.len() > 1 {
            v.extend((0..self.targets.len()).map(|i| self.target_chain(i)));
        }
        v
    }

    fn route_chain(&self) -> String {
        format!("route-{}", self.slug)
    }

    fn count_chain(&self) -> String {
        format!("count-{}", self.slug)
    }

    fn target_chain(&self, i: usize) -> String {
        format!("target-{}-{i}", self.slug)
    }
}

impl Ruleset {
    /// A ruleset without routes (applying it leaves an empty table).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Checks `routes` ([`crate::check`]) and resolves target names with the system
    /// resolver. Every problem is reported, in [`Error::Invalid`].
    pub fn build(routes: &[NftRoute]) -> Result<Self, Error> {
        Self::build_with(routes, &check::system_resolver)
    }

    /// [`Self::build`] with a resolver of your own.
    pub fn build_with(
        routes: &[NftRoute],
        resolve: &dyn Fn(&str) -> Result<Vec<IpAddr>, String>,
    ) -> Result<Self, Error> {
        let (ruleset, problems) = Self::build_partial(routes, resolve);
        if problems.is_empty() { Ok(ruleset) } else { Err(Error::Invalid { problems }) }
    }

    /// The routes without problems, and the problems of the others (they are left out).
    /// Of two routes on the same port and protocol, the later one is left out.
    pub fn build_partial(
        routes: &[NftRoute],
        resolve: &dyn Fn(&str) -> Result<Vec<IpAddr>, String>,
    ) -> (Self, Vec<Problem>) {
        let mut problems = check::check(routes);
        let bad: BTreeSet<String> = problems.iter().map(|p| p.route.clone()).collect();
        let mut out = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            if bad.contains(&check::route_label(routes, i)) {
                continue;
            }
            let before = problems.len();
            let addrs = check::resolve_targets(routes, i, resolve, &mut problems);
            if problems.len() != before {
                continue;
            }
            let family = addrs.first().map_or(Family::Ipv4, |a| Family::of(*a));
            let targets = route
                .targets
                .iter()
                .zip(addrs)
                .map(|(t, address)| ResolvedTarget { host: t.host.clone(), address, port: t.port })
                .collect();
            out.push(RouteRules {
                name: route.name.clone(),
                family,
                ports: merge_ports(&route.ports),
                local_addresses: local_addresses(&route.local_addresses, family),
                protocol: route.protocol,
                targets,
                balance: route.balance,
                preserve_source_ip: route.preserve_source_ip,
                ip_allow_list: (!route.ip_allow_list.is_empty())
                    .then(|| route.ip_allow_list.clone()),
                ip_block_list: route.ip_block_list.clone(),
                max_connections: route.max_connections,
                slug: String::new(),
            });
        }
        assign_slugs(&mut out);
        (Self { routes: out }, problems)
    }

    /// The routes, in configuration order.
    pub fn routes(&self) -> &[RouteRules] {
        &self.routes
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The whole table as one nft JSON batch that creates it from scratch, replacing any
    /// table of that name (`add table; delete table; add table; ...`). For reading and for
    /// `nft -j -f -` by hand; [`crate::Manager::apply`] writes a batch that keeps the
    /// counters of routes that stay.
    pub fn to_nft_json(&self, table: &str) -> Value {
        let t = json!({"family": FAMILY, "name": table});
        let mut cmds = vec![
            json!({"add": {"table": t}}),
            json!({"delete": {"table": t}}),
            json!({"add": {"table": t}}),
        ];
        cmds.extend(self.objects(table).into_iter().map(|o| json!({"add": o})));
        json!({"nftables": cmds})
    }

    /// The batch that turns the table as it is (`existing`, from `nft -j list table`, or
    /// `None` when there is none) into this ruleset in one transaction.
    ///
    /// Chains and objects that are not in the new ruleset (or differ) are deleted, the others
    /// flushed and filled again; counters of routes that stay keep their values. The chains
    /// of a route equal to its `previous` version are left untouched, with the state of their
    /// rules (the flows that `ct count` tracks, the round-robin position).
    pub(crate) fn replace_batch(
        &self,
        table: &str,
        existing: Option<&Value>,
        previous: Option<&Ruleset>,
    ) -> Value {
        let t = json!({"family": FAMILY, "name": table});
        let items: &[Value] = existing
            .and_then(|v| v.get("nftables"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let existing_chains: BTreeSet<&str> =
            items.iter().filter_map(|i| i.get("chain")?.get("name")?.as_str()).collect();
        let untouched: BTreeSet<String> = self
            .routes
            .iter()
            .filter(|r| previous.is_some_and(|p| p.routes.contains(r)))
            .map(RouteRules::own_chains)
            .filter(|chains| chains.iter().all(|c| existing_chains.contains(c.as_str())))
            .flatten()
            .collect();
        let keep: BTreeSet<String> = self
            .routes
            .iter()
            .flat_map(|r| {
                let c = r.counter_names();
                [c.bytes_in, c.bytes_out, c.connections, c.dropped]
            })
            .collect();
        let objects = self.objects(table);
        let mut cmds = vec![json!({"add": {"table": t}})];
        for chain in existing_chains.iter().filter(|c| !untouched.contains(**c)) {
            cmds.push(
                json!({"flush": {"chain": {"family": FAMILY, "table": table, "name": chain}}}),
            );
        }
        // Chains that stay as they are (flushed above, added again below as a no-op), so that
        // base chains are not unhooked and hooked again on every reload.
        let same_chain = |old: &Value| {
            objects.iter().filter_map(|o| o.get("chain")).any(|new| {
                ["name", "type", "hook", "prio", "policy"].iter().all(|k| old.get(k) == new.get(k))
            })
        };
        // Chains first (they hold the references), then the objects they referred to.
        for kind in ["chain", "set", "map", "flowtable", "counter", "quota", "limit"] {
            for item in items {
                let Some(obj) = item.get(kind) else { continue };
                let Some(name) = obj.get("name").and_then(Value::as_str) else { continue };
                if (kind == "counter" && keep.contains(name))
                    || (kind == "chain" && same_chain(obj))
                {
                    continue;
                }
                cmds.push(
                    json!({"delete": {kind: {"family": FAMILY, "table": table, "name": name}}}),
                );
            }
        }
        for o in objects {
            let chain = o.get("rule").and_then(|r| r.get("chain")).and_then(Value::as_str);
            if chain.is_some_and(|c| untouched.contains(c)) {
                continue;
            }
            cmds.push(json!({"add": o}));
        }
        json!({"nftables": cmds})
    }

    /// Counters, chains and rules, in an order nft accepts.
    fn objects(&self, table: &str) -> Vec<Value> {
        if self.routes.is_empty() {
            return Vec::new();
        }
        let mut b = Builder { table, out: Vec::new() };
        for r in &self.routes {
            let c = r.counter_names();
            for name in [c.bytes_in, c.bytes_out, c.connections, c.dropped] {
                b.out.push(json!({"counter": {"family": FAMILY, "table": table, "name": name}}));
            }
        }
        b.base_chain("prerouting", "nat", "prerouting", -100);
        b.base_chain("output", "nat", "output", -100);
        b.base_chain("postrouting", "nat", "postrouting", 100);
        b.base_chain("count_out", "filter", "postrouting", COUNT_PRIORITY);
        b.base_chain("count_in", "filter", "input", COUNT_PRIORITY);
        b.chain("masquerade");
        b.rule("masquerade", vec![json!({"masquerade": null})]);
        for r in &self.routes {
            b.route(r);
        }
        for (proto, on) in [("tcp", Protocol::tcp as fn(Protocol) -> bool), ("udp", Protocol::udp)]
        {
            let masq: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| on(r.protocol) && !r.preserve_source_ip)
                .flat_map(|r| r.ports.iter().map(|p| json!([port_value(*p), jump("masquerade")])))
                .collect();
            if !masq.is_empty() {
                b.rule("postrouting", dnat_flow_vmap(proto, masq));
            }
            let count: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| on(r.protocol))
                .flat_map(|r| {
                    r.ports.iter().map(|p| json!([port_value(*p), jump(&r.count_chain())]))
                })
                .collect();
            if !count.is_empty() {
                b.rule("count_out", dnat_flow_vmap(proto, count.clone()));
                b.rule("count_in", dnat_flow_vmap(proto, count));
            }
        }
        b.out
    }
}

struct Builder<'a> {
    table: &'a str,
    out: Vec<Value>,
}

impl Builder<'_> {
    fn base_chain(&mut self, name: &str, kind: &str, hook: &str, prio: i32) {
        self.out.push(json!({"chain": {
            "family": FAMILY, "table": self.table, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"
        }}));
    }

    fn chain(&mut self, name: &str) {
        self.out.push(json!({"chain": {"family": FAMILY, "table": self.table, "name": name}}));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.out.push(json!({"rule": {
            "family": FAMILY, "table": self.table, "chain": chain, "expr": expr
        }}));
    }

    fn route(&mut self, r: &RouteRules) {
        let fam = family_name(r.family);
        let c = r.counter_names();
        let route_chain = r.route_chain();
        self.chain(&route_chain);
        for proto in protocols(r.protocol) {
            let mut head = vec![
                matches(
                    "==",
                    meta("nfproto"),
                    json!(if r.family == Family::Ipv4 { "ipv4" } else { "ipv6" }),
                ),
                matches("==", meta("l4proto"), json!(proto)),
                matches(
                    "==",
                    json!({"payload": {"protocol": proto, "field": "dport"}}),
                    ports_value(&r.ports),
                ),
                matches(
                    "==",
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                ),
            ];
            if let Some(local) = &r.local_addresses {
                let set: Vec<String> = local.iter().map(ToString::to_string).collect();
                head.push(matches("==", payload(fam, "daddr"), json!({"set": set})));
            }
            let mut pre = head.clone();
            pre.push(jump(&route_chain));
            self.rule("prerouting", pre);
            // Locally originated flows, except to loopback: a loopback-sourced packet cannot
            // leave the host after DNAT.
            let mut out = head;
            let loopback = match r.family {
                Family::Ipv4 => json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                Family::Ipv6 => json!("::1"),
            };
            out.push(matches("!=", payload(fam, "daddr"), loopback));
            out.push(jump(&route_chain));
            self.rule("output", out);
        }
        // Admission: allow list, block list, connection limit.
        let drop = || vec![json!({"counter": c.dropped}), json!({"drop": null})];
        if let Some(allow) = &r.ip_allow_list {
            if !allow.contains(&IpRange::Any) {
                let set = address_set(allow, r.family);
                let mut e = Vec::new();
                if !set.is_empty() {
                    e.push(matches("!=", payload(fam, "saddr"), json!({"set": set})));
                }
                e.extend(drop());
                self.rule(&route_chain, e);
            }
        }
        if r.ip_block_list.contains(&IpRange::Any) {
            self.rule(&route_chain, drop());
        } else {
            let set = address_set(&r.ip_block_list, r.family);
            if !set.is_empty() {
                let mut e = vec![matches("==", payload(fam, "saddr"), json!({"set": set}))];
                e.extend(drop());
                self.rule(&route_chain, e);
            }
        }
        if let Some(n) = r.max_connections {
            let mut e = vec![json!({"ct count": {"val": n, "inv": true}})];
            e.extend(drop());
            self.rule(&route_chain, e);
        }
        self.rule(&route_chain, vec![json!({"counter": c.connections})]);
        // Translation.
        let l4 = matches("==", meta("l4proto"), protocol_value(r.protocol));
        if let [t] = r.targets.as_slice() {
            self.rule(&route_chain, vec![l4, dnat(fam, t)]);
        } else {
            let n = r.targets.len();
            let key = match r.balance {
                Balance::Random => json!({"numgen": {"mode": "random", "mod": n, "offset": 0}}),
                Balance::SourceHash => {
                    json!({"jhash": {"mod": n, "seed": 0, "offset": 0, "expr": payload(fam, "saddr")}})
                }
                // Round-robin and anything added later.
                _ => json!({"numgen": {"mode": "inc", "mod": n, "offset": 0}}),
            };
            let arms: Vec<Value> = (0..n).map(|i| json!([i, jump(&r.target_chain(i))])).collect();
            for (i, t) in r.targets.iter().enumerate() {
                let chain = r.target_chain(i);
                self.chain(&chain);
                self.rule(&chain, vec![l4.clone(), dnat(fam, t)]);
            }
            self.rule(&route_chain, vec![json!({"vmap": {"key": key, "data": {"set": arms}}})]);
        }
        // Counting (jumped to from count_in / count_out).
        let count_chain = r.count_chain();
        self.chain(&count_chain);
        self.rule(
            &count_chain,
            vec![
                matches("==", json!({"ct": {"key": "direction"}}), json!("original")),
                json!({"counter": c.bytes_in}),
                json!({"return": null}),
            ],
        );
        self.rule(&count_chain, vec![json!({"counter": c.bytes_out})]);
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

fn protocols(p: Protocol) -> impl Iterator<Item = &'static str> {
    [("tcp", p.tcp()), ("udp", p.udp())].into_iter().filter(|(_, on)| *on).map(|(n, _)| n)
}

fn protocol_value(p: Protocol) -> Value {
    let list: Vec<&str> = protocols(p).collect();
    match list.as_slice() {
        [one] => json!(one),
        _ => json!({"set": list}),
    }
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn jump(chain: &str) -> Value {
    json!({"jump": {"target": chain}})
}

fn dnat(fam: &str, t: &ResolvedTarget) -> Value {
    match t.port {
        TargetPort::Port(p) => {
            json!({"dnat": {"family": fam, "addr": t.address.to_string(), "port": p}})
        }
        // Preserve and anything added later: the address only, the port is kept.
        _ => json!({"dnat": {"family": fam, "addr": t.address.to_string()}}),
    }
}

/// `ct status dnat meta l4proto P ct original proto-dst vmap { ... }`.
fn dnat_flow_vmap(proto: &str, arms: Vec<Value>) -> Vec<Value> {
    vec![
        matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
        matches("==", meta("l4proto"), json!(proto)),
        json!({"vmap": {
            "key": {"ct": {"key": "proto-dst", "dir": "original"}},
            "data": {"set": arms}
        }}),
    ]
}

fn port_value(p: PortRange) -> Value {
    if p.start == p.end { json!(p.start) } else { json!({"range": [p.start, p.end]}) }
}

fn ports_value(ports: &[PortRange]) -> Value {
    match ports {
        [one] => port_value(*one),
        _ => json!({"set": ports.iter().map(|p| port_value(*p)).collect::<Vec<_>>()}),
    }
}

/// The addresses of `family`, or `None` for all local addresses (none given, or an
/// unspecified one).
fn local_addresses(list: &[IpAddr], family: Family) -> Option<Vec<IpAddr>> {
    let mut v: Vec<IpAddr> = list.iter().copied().filter(|a| Family::of(*a) == family).collect();
    if v.is_empty() || v.iter().any(IpAddr::is_unspecified) {
        return None;
    }
    v.sort_unstable();
    v.dedup();
    Some(v)
}

/// Sorted, overlapping and adjacent ranges merged (nft refuses overlapping set intervals).
fn merge_ports(ports: &[PortRange]) -> Vec<PortRange> {
    let mut v: Vec<PortRange> = ports.to_vec();
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for p in v {
        match out.last_mut() {
            Some(last) if u32::from(p.start) <= u32::from(last.end) + 1 => {
                last.end = last.end.max(p.end);
            }
            _ => out.push(p),
        }
    }
    out
}

/// The set elements for the ranges of `family`, merged.
fn address_set(ranges: &[IpRange], family: Family) -> Vec<Value> {
    let mut v: Vec<(u128, u128)> = ranges
        .iter()
        .filter_map(|r| match (r, family) {
            (IpRange::V4 { start, end }, Family::Ipv4) => {
                Some((u128::from(u32::from(*start)), u128::from(u32::from(*end))))
            }
            (IpRange::V6 { start, end }, Family::Ipv6) => {
                Some((u128::from(*start), u128::from(*end)))
            }
            _ => None,
        })
        .collect();
    v.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let bits = if family == Family::Ipv4 { 32 } else { 128 };
    let addr = |n: u128| -> String {
        match family {
            Family::Ipv4 => {
                std::net::Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)).to_string()
            }
            Family::Ipv6 => std::net::Ipv6Addr::from(n).to_string(),
        }
    };
    merged
        .into_iter()
        .map(|(s, e)| {
            if s == e {
                json!(addr(s))
            } else if let Some(len) = prefix_len(s, e, bits) {
                json!({"prefix": {"addr": addr(s), "len": len}})
            } else {
                json!({"range": [addr(s), addr(e)]})
            }
        })
        .collect()
}

/// Gives every route a distinct slug made of `A-Za-z0-9_-`, at most 40 characters.
fn assign_slugs(routes: &mut [RouteRules]) {
    let mut used = BTreeSet::new();
    for r in routes.iter_mut() {
        let clean: String = r
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .take(32)
            .collect();
        let mut slug = if clean == r.name {
            clean
        } else {
            format!("{clean}-{:06x}", fnv(r.name.as_bytes()) & 0xff_ffff)
        };
        let base = slug.clone();
        let mut n = 2;
        while !used.insert(slug.clone()) {
            slug = format!("{base}-{n}");
            n += 1;
        }
        r.slug = slug;
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests;

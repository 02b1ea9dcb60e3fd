//! What nftables cannot honour: [`check`] (no name resolution, for `validate`) and the
//! resolution of target host names when a [`crate::Ruleset`] is built.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};

use crate::model::{NftRoute, PortRange, Protocol, TargetPort};

/// One reason why a route cannot be forwarded by nftables.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The route's name (its position, `#3`, when the name is empty).
    pub route: String,
    /// The field of [`NftRoute`] at fault, with an index where it has one: `targets[1].host`.
    pub field: String,
    /// What is wrong, for the operator.
    pub reason: String,
    /// What is wrong, for code.
    pub kind: ProblemKind,
}

/// The kind of a [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The name is empty or used by another route.
    Name,
    /// No ports, port 0, or a range written backwards.
    Ports,
    /// A port and protocol that an earlier route already forwards.
    Overlap,
    /// No targets, or a target without host or with port 0.
    Target,
    /// A target host name that does not resolve to an IP address.
    Resolve,
    /// A target address that DNAT cannot reach (loopback, unspecified, multicast).
    Address,
    /// Targets of both IPv4 and IPv6: NAT does not translate between families.
    MixedFamilies,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route `{}`: {}: {}", self.route, self.field, self.reason)
    }
}

/// An address family; every rule of a route is for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Family {
    /// IPv4 (`ip`).
    Ipv4,
    /// IPv6 (`ip6`).
    Ipv6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::Ipv4 } else { Self::Ipv6 }
    }
}

/// Every problem of `routes` that can be seen without resolving host names: names, ports,
/// overlaps between routes (same port and protocol), targets, and target IP literals that DNAT
/// cannot reach or that mix families. An empty list means the routes are fine as far as that
/// goes; host names are resolved (and may still fail) when the ruleset is built.
pub fn check(routes: &[NftRoute]) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        check_route(i, route, &mut names, &mut out);
        check_overlaps(routes, i, &mut out);
        // The literal targets; host names are left to `resolve_targets`.
        let literals: Vec<(usize, IpAddr)> = route
            .targets
            .iter()
            .enumerate()
            .filter_map(|(t, target)| parse_literal(&target.host).map(|ip| (t, ip)))
            .collect();
        check_addresses(routes, i, &literals, &mut out);
        if let (true, Some(&(_, first))) = (literals.len() == route.targets.len(), literals.first())
        {
            check_local_addresses(routes, i, Family::of(first), &mut out);
        }
    }
    out
}

/// `local_addresses` that leave the route nothing to listen on in its targets' family.
pub(crate) fn check_local_addresses(
    routes: &[NftRoute],
    i: usize,
    family: Family,
    out: &mut Vec<Problem>,
) {
    let local = &routes[i].local_addresses;
    if !local.is_empty() && !local.iter().any(|a| Family::of(*a) == family) {
        let name = if family == Family::Ipv4 { "IPv4" } else { "IPv6" };
        out.push(problem(
            route_label(routes, i),
            "local_addresses",
            ProblemKind::Address,
            format!(
                "no {name} address, but the targets are {name}: NAT does not translate between \
                 families, so the route would forward nothing"
            ),
        ));
    }
}

pub(crate) fn route_label(routes: &[NftRoute], i: usize) -> String {
    let name = routes[i].name.as_str();
    if name.is_empty() { format!("#{i}") } else { name.to_owned() }
}

fn problem(route: String, field: impl Into<String>, kind: ProblemKind, reason: String) -> Problem {
    Problem { route, field: field.into(), reason, kind }
}

fn check_route<'a>(
    i: usize,
    route: &'a NftRoute,
    names: &mut HashMap<&'a str, usize>,
    out: &mut Vec<Problem>,
) {
    let label = if route.name.is_empty() { format!("#{i}") } else { route.name.clone() };
    if route.name.trim().is_empty() {
        out.push(problem(label.clone(), "name", ProblemKind::Name, "a route needs a name".into()));
    } else if let Some(first) = names.insert(route.name.as_str(), i) {
        out.push(problem(
            label.clone(),
            "name",
            ProblemKind::Name,
            format!("the name is also used by route #{first}; names key the counters"),
        ));
    }
    if route.ports.is_empty() {
        out.push(problem(label.clone(), "ports", ProblemKind::Ports, "no listening port".into()));
    }
    for (p, r) in route.ports.iter().enumerate() {
        if r.start == 0 {
            out.push(problem(
                label.clone(),
                format!("ports[{p}]"),
                ProblemKind::Ports,
                format!("port 0 in `{r}` is not a listening port"),
            ));
        } else if r.start > r.end {
            out.push(problem(
                label.clone(),
                format!("ports[{p}]"),
                ProblemKind::Ports,
                format!("the range {}-{} runs backwards", r.start, r.end),
            ));
        }
    }
    if route.targets.is_empty() {
        out.push(problem(label.clone(), "targets", ProblemKind::Target, "no target".into()));
    }
    for (t, target) in route.targets.iter().enumerate() {
        if target.host.trim().is_empty() {
            out.push(problem(
                label.clone(),
                format!("targets[{t}].host"),
                ProblemKind::Target,
                "empty host".into(),
            ));
        }
        if target.port == TargetPort::Port(0) {
            out.push(problem(
                label.clone(),
                format!("targets[{t}].port"),
                ProblemKind::Target,
                "port 0 is not a target port".into(),
            ));
        }
    }
}

fn protocols_overlap(a: Protocol, b: Protocol) -> Option<&'static str> {
    if a.tcp() && b.tcp() {
        Some("tcp")
    } else if a.udp() && b.udp() {
        Some("udp")
    } else {
        None
    }
}

/// Route `i` against every earlier route: the later one of two that share a port and a
/// protocol is the one refused (nftables would never reach it).
fn check_overlaps(routes: &[NftRoute], i: usize, out: &mut Vec<Problem>) {
    let route = &routes[i];
    for (j, earlier) in routes[..i].iter().enumerate() {
        let Some(proto) = protocols_overlap(route.protocol, earlier.protocol) else { continue };
        for (p, r) in route.ports.iter().enumerate() {
            if let Some(o) = earlier.ports.iter().find(|o| o.overlaps(r) && r.start <= r.end) {
                let shared = PortRange::new(r.start.max(o.start), r.end.min(o.end));
                out.push(problem(
                    route_label(routes, i),
                    format!("ports[{p}]"),
                    ProblemKind::Overlap,
                    format!(
                        "{proto} port {shared} is already forwarded by route `{}`",
                        route_label(routes, j)
                    ),
                ));
            }
        }
    }
}

/// An IP address literal (`10.0.0.5`, `2001:db8::5`, `[2001:db8::5]`), or `None` for a name.
pub(crate) fn parse_literal(host: &str) -> Option<IpAddr> {
    let h = host.trim();
    let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
    h.parse::<IpAddr>().ok().map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

/// Addresses that DNAT cannot reach, and families mixed within one route.
pub(crate) fn check_addresses(
    routes: &[NftRoute],
    i: usize,
    addrs: &[(usize, IpAddr)],
    out: &mut Vec<Problem>,
) {
    let label = route_label(routes, i);
    for &(t, ip) in addrs {
        let why = if ip.is_loopback() {
            Some(
                "is a loopback address: the kernel drops packets DNATed from another host to \
                 loopback; use an address of one of this host's interfaces",
            )
        } else if ip.is_unspecified() {
            Some("is the unspecified address, not a destination")
        } else if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            Some("is a multicast or broadcast address, which NAT cannot target")
        } else {
            None
        };
        if let Some(why) = why {
            out.push(problem(
                label.clone(),
                format!("targets[{t}].host"),
                ProblemKind::Address,
                format!("`{ip}` {why}"),
            ));
        }
    }
    if let Some(&(first_t, first)) = addrs.first() {
        if let Some(&(t, other)) = addrs.iter().find(|(_, ip)| Family::of(*ip) != Family::of(first))
        {
            out.push(problem(
                label,
                format!("targets[{t}].host"),
                ProblemKind::MixedFamilies,
                format!(
                    "`{other}` and targets[{first_t}] `{first}` are of different address families; \
                     NAT does not translate between IPv4 and IPv6, use one route per family"
                ),
            ));
        }
    }
}

/// Resolves host names: the system resolver (`getaddrinfo` through the standard library).
pub fn system_resolver(host: &str) -> Result<Vec<IpAddr>, String> {
    (host, 0u16)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .map_err(|e| e.to_string())
}

/// The address of every target of route `i`: literals as written, names through `resolve`
/// (the first IPv4 address, else the first IPv6 one). Problems go to `out`.
pub(crate) fn resolve_targets(
    routes: &[NftRoute],
    i: usize,
    resolve: &dyn Fn(&str) -> Result<Vec<IpAddr>, String>,
    out: &mut Vec<Problem>,
) -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    let mut resolved = Vec::new();
    for (t, target) in routes[i].targets.iter().enumerate() {
        if let Some(ip) = parse_literal(&target.host) {
            addrs.push(ip);
            continue;
        }
        let host = target.host.trim();
        match resolve(host) {
            Ok(list) => {
                let pick = list.iter().find(|a| a.is_ipv4()).or_else(|| list.first()).copied();
                match pick {
                    Some(ip) => {
                        let ip = parse_literal(&ip.to_string()).unwrap_or(ip);
                        addrs.push(ip);
                        resolved.push((t, ip));
                    }
                    None => out.push(problem(
                        route_label(routes, i),
                        format!("targets[{t}].host"),
                        ProblemKind::Resolve,
                        format!("`{host}` resolves to no address"),
                    )),
                }
            }
            Err(e) => out.push(problem(
                route_label(routes, i),
                format!("targets[{t}].host"),
                ProblemKind::Resolve,
                format!(
                    "`{host}` does not resolve to an IP address ({e}); nftables rules need \
                     addresses when they are written"
                ),
            )),
        }
    }
    // Literals were checked by `check`; resolved names are checked here, and the family
    // mix across literals and names.
    let before = out.len();
    check_addresses(routes, i, &resolved, out);
    if out.len() == before && addrs.len() == routes[i].targets.len() && !resolved.is_empty() {
        let all: Vec<(usize, IpAddr)> = addrs.iter().copied().enumerate().collect();
        let mut mix = Vec::new();
        check_addresses(routes, i, &all, &mut mix);
        out.extend(mix.into_iter().filter(|p| p.kind == ProblemKind::MixedFamilies));
        if let (true, Some(first)) = (out.len() == before, addrs.first()) {
            check_local_addresses(routes, i, Family::of(*first), out);
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;

    fn route(name: &str, ports: &[PortRange], targets: &[Target]) -> NftRoute {
        NftRoute::new(name, ports.iter().copied(), targets.iter().cloned())
    }

    fn shown(problems: &[Problem]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn good_routes_have_no_problem() {
        let mut udp = route("dns", &[PortRange::single(53)], &[Target::preserve("10.0.0.53")]);
        udp.protocol = Protocol::Udp;
        let routes = [
            route("db", &[PortRange::single(5432)], &[Target::new("10.0.0.5", 5432)]),
            route("tcp-dns", &[PortRange::single(53)], &[Target::new("[2001:db8::53]", 53)]),
            udp,
            route("name", &[PortRange::new(9000, 9010)], &[Target::new("db.internal", 1)]),
        ];
        assert_eq!(shown(&check(&routes)), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_named() {
        let mut all = route("all", &[PortRange::single(5432)], &[Target::new("10.0.0.5", 1)]);
        all.protocol = Protocol::All;
        let mut v6_only = route("v6-only", &[PortRange::single(2)], &[Target::new("10.0.0.5", 1)]);
        v6_only.local_addresses = vec!["2001:db8::1".parse().expect("ip")];
        let routes = [
            route("db", &[PortRange::new(5000, 5500)], &[Target::new("10.0.0.5", 0)]),
            route("", &[], &[]),
            route("db", &[PortRange::single(0), PortRange::new(9, 8)], &[Target::new(" ", 1)]),
            all,
            route(
                "bad-targets",
                &[PortRange::single(1)],
                &[
                    Target::new("127.0.0.1", 1),
                    Target::new("::", 1),
                    Target::new("224.0.0.1", 1),
                    Target::new("10.0.0.1", 1),
                    Target::new("2001:db8::1", 1),
                ],
            ),
            v6_only,
        ];
        insta::assert_snapshot!(shown(&check(&routes)).join("\n"), @r"
        route `db`: targets[0].port: port 0 is not a target port
        route `#1`: name: a route needs a name
        route `#1`: ports: no listening port
        route `#1`: targets: no target
        route `db`: name: the name is also used by route #0; names key the counters
        route `db`: ports[0]: port 0 in `0` is not a listening port
        route `db`: ports[1]: the range 9-8 runs backwards
        route `db`: targets[0].host: empty host
        route `all`: ports[0]: tcp port 5432 is already forwarded by route `db`
        route `bad-targets`: targets[0].host: `127.0.0.1` is a loopback address: the kernel drops packets DNATed from another host to loopback; use an address of one of this host's interfaces
        route `bad-targets`: targets[1].host: `::` is the unspecified address, not a destination
        route `bad-targets`: targets[2].host: `224.0.0.1` is a multicast or broadcast address, which NAT cannot target
        route `bad-targets`: targets[1].host: `::` and targets[0] `127.0.0.1` are of different address families; NAT does not translate between IPv4 and IPv6, use one route per family
        route `v6-only`: local_addresses: no IPv4 address, but the targets are IPv4: NAT does not translate between families, so the route would forward nothing
        ");
    }
}

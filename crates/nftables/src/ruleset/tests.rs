use std::net::IpAddr;

use super::*;
use crate::ProblemKind;
use crate::model::Target;

fn no_dns(host: &str) -> Result<Vec<IpAddr>, String> {
    match host {
        "db.internal" => {
            Ok(vec!["2001:db8::5".parse().expect("ip"), "10.0.0.5".parse().expect("ip")])
        }
        "v6.internal" => Ok(vec!["2001:db8::6".parse().expect("ip")]),
        "lo.internal" => Ok(vec!["127.0.0.1".parse().expect("ip")]),
        _ => Err("Name or service not known".into()),
    }
}

fn routes() -> Vec<NftRoute> {
    let mut db = NftRoute::new("db", [PortRange::single(5432)], [Target::new("db.internal", 5432)]);
    db.preserve_source_ip = true;
    db.ip_allow_list = vec![
        "10.0.0.0/8".parse().expect("cidr"),
        "10.1.0.0/16".parse().expect("cidr"),
        "2001:db8::/32".parse().expect("cidr"),
    ];
    db.ip_block_list =
        vec!["10.9.9.9".parse().expect("ip"), "10.9.9.10-10.9.9.20".parse().expect("range")];
    db.max_connections = Some(100);
    let mut web = NftRoute::new(
        "web pool",
        [PortRange::new(8000, 8009), PortRange::single(8010), PortRange::single(7000)],
        [Target::preserve("10.0.1.1"), Target::new("10.0.1.2", 9000)],
    );
    web.protocol = Protocol::All;
    let mut v6 = NftRoute::new(
        "v6",
        [PortRange::single(53)],
        [Target::new("v6.internal", 5353), Target::new("2001:db8::7", 53)],
    );
    v6.protocol = Protocol::Udp;
    v6.balance = Balance::SourceHash;
    v6.ip_allow_list = vec!["10.0.0.0/8".parse().expect("cidr")];
    vec![db, web, v6]
}

/// One line per command, in nft's text-like order: easy to review in the snapshot.
fn lines(batch: &Value) -> Vec<String> {
    batch["nftables"].as_array().expect("array").iter().map(|c| c.to_string()).collect()
}

#[test]
fn the_table_from_scratch() {
    let ruleset = Ruleset::build_with(&routes(), &no_dns).expect("valid");
    assert_eq!(
        ruleset.routes()[0].targets[0].address,
        "10.0.0.5".parse::<IpAddr>().expect("ip"),
        "IPv4 first"
    );
    assert_eq!(ruleset.routes()[1].slug, "web_pool-81eef1");
    assert_eq!(ruleset.routes()[1].ports, [PortRange::single(7000), PortRange::new(8000, 8010)]);
    insta::assert_snapshot!(lines(&ruleset.to_nft_json("smartproxy")).join("\n"));
}

#[test]
fn replacing_keeps_the_counters_of_routes_that_stay() {
    let ruleset = Ruleset::build_with(&routes()[..1], &no_dns).expect("valid");
    let existing = serde_json::json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "smartproxy", "handle": 1}},
        {"counter": {"family": "inet", "table": "smartproxy", "name": "db-in", "packets": 5, "bytes": 500}},
        {"counter": {"family": "inet", "table": "smartproxy", "name": "gone-in", "packets": 1, "bytes": 1}},
        {"chain": {"family": "inet", "table": "smartproxy", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "smartproxy", "name": "output", "handle": 2, "type": "nat", "hook": "output", "prio": -150, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "smartproxy", "name": "route-db", "handle": 3}},
        {"chain": {"family": "inet", "table": "smartproxy", "name": "route-gone"}},
        {"set": {"family": "inet", "table": "smartproxy", "name": "old", "type": "ipv4_addr"}},
        {"rule": {"family": "inet", "table": "smartproxy", "chain": "prerouting", "expr": []}},
    ]});
    let batch = lines(&ruleset.replace_batch("smartproxy", Some(&existing), None));
    let head: Vec<&str> = batch
        .iter()
        .take_while(|l| !l.starts_with(r#"{"add":{"counter""#))
        .map(String::as_str)
        .collect();
    insta::assert_snapshot!(head.join("\n"), @r#"
    {"add":{"table":{"family":"inet","name":"smartproxy"}}}
    {"flush":{"chain":{"family":"inet","name":"output","table":"smartproxy"}}}
    {"flush":{"chain":{"family":"inet","name":"prerouting","table":"smartproxy"}}}
    {"flush":{"chain":{"family":"inet","name":"route-db","table":"smartproxy"}}}
    {"flush":{"chain":{"family":"inet","name":"route-gone","table":"smartproxy"}}}
    {"delete":{"chain":{"family":"inet","name":"output","table":"smartproxy"}}}
    {"delete":{"chain":{"family":"inet","name":"route-gone","table":"smartproxy"}}}
    {"delete":{"set":{"family":"inet","name":"old","table":"smartproxy"}}}
    {"delete":{"counter":{"family":"inet","name":"gone-in","table":"smartproxy"}}}
    "#);
    assert!(
        !batch.iter().any(|l| l.contains(r#""delete":{"counter":{"family":"inet","name":"db-in""#))
    );
    assert!(
        batch.iter().any(|l| l.contains(r#""add":{"rule":{"chain":"route-db""#)),
        "a new route is filled"
    );

    // The same route again: its chains (and the flows its `ct count` tracks) stay as they are.
    let existing = serde_json::json!({"nftables": [
        {"chain": {"family": "inet", "table": "smartproxy", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "smartproxy", "name": "route-db", "handle": 3}},
        {"chain": {"family": "inet", "table": "smartproxy", "name": "count-db", "handle": 4}},
    ]});
    let again = lines(&ruleset.replace_batch("smartproxy", Some(&existing), Some(&ruleset)));
    for chain in ["route-db", "count-db"] {
        let touched: Vec<&String> = again
            .iter()
            .filter(|l| {
                l.starts_with(&format!(r#"{{"add":{{"rule":{{"chain":"{chain}""#))
                    || l.contains(&format!(r#""name":"{chain}""#))
                        && !l.starts_with(r#"{"add":{"chain""#)
            })
            .collect();
        assert!(touched.is_empty(), "{chain} is left as it is: {touched:#?}");
    }
    assert!(
        again
            .iter()
            .any(|l| l.starts_with(r#"{"flush":{"chain":{"family":"inet","name":"prerouting""#))
    );
}

#[test]
fn resolution_problems_name_the_target() {
    let mut r = NftRoute::new("x", [PortRange::single(1)], [Target::new("nowhere.invalid", 1)]);
    let e = Ruleset::build_with(std::slice::from_ref(&r), &no_dns).expect_err("does not resolve");
    insta::assert_snapshot!(e.to_string(), @"1 route problem(s): route `x`: targets[0].host: `nowhere.invalid` does not resolve to an IP address (Name or service not known); nftables rules need addresses when they are written");
    r.targets = vec![Target::new("lo.internal", 1)];
    let e = Ruleset::build_with(std::slice::from_ref(&r), &no_dns).expect_err("loopback");
    insta::assert_snapshot!(e.to_string(), @"1 route problem(s): route `x`: targets[0].host: `127.0.0.1` is a loopback address: the kernel drops packets DNATed from another host to loopback; use an address of one of this host's interfaces");
    r.targets = vec![Target::new("10.0.0.1", 1), Target::new("v6.internal", 1)];
    let e = Ruleset::build_with(std::slice::from_ref(&r), &no_dns).expect_err("mixed");
    insta::assert_snapshot!(e.to_string(), @"1 route problem(s): route `x`: targets[1].host: `2001:db8::6` and targets[0] `10.0.0.1` are of different address families; NAT does not translate between IPv4 and IPv6, use one route per family");
}

#[test]
fn partial_builds_leave_out_only_the_bad_routes() {
    let mut all = routes();
    all.push(NftRoute::new("dup-port", [PortRange::single(5432)], [Target::new("10.0.0.9", 1)]));
    all.push(NftRoute::new(
        "unresolved",
        [PortRange::single(9)],
        [Target::new("nowhere.invalid", 1)],
    ));
    let (ruleset, problems) = Ruleset::build_partial(&all, &no_dns);
    let names: Vec<&str> = ruleset.routes().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["db", "web pool", "v6"]);
    let bad: Vec<(&str, ProblemKind)> =
        problems.iter().map(|p| (p.route.as_str(), p.kind)).collect();
    assert_eq!(bad, [("dup-port", ProblemKind::Overlap), ("unresolved", ProblemKind::Resolve)]);
}

#[test]
fn slugs_are_distinct_and_short() {
    let long = "x".repeat(100);
    let all = vec![
        NftRoute::new("a b", [PortRange::single(1)], [Target::new("10.0.0.1", 1)]),
        NftRoute::new("a/b", [PortRange::single(2)], [Target::new("10.0.0.1", 1)]),
        NftRoute::new(long.clone(), [PortRange::single(3)], [Target::new("10.0.0.1", 1)]),
        NftRoute::new(format!("{long}y"), [PortRange::single(4)], [Target::new("10.0.0.1", 1)]),
    ];
    let ruleset = Ruleset::build_with(&all, &no_dns).expect("valid");
    let slugs: BTreeSet<&str> = ruleset.routes().iter().map(|r| r.slug.as_str()).collect();
    assert_eq!(slugs.len(), 4, "{slugs:?}");
    assert!(
        slugs.iter().all(|s| s.len() <= 40
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')),
        "{slugs:?}"
    );
}

#[test]
fn an_empty_ruleset_is_an_empty_table() {
    assert_eq!(lines(&Ruleset::empty().to_nft_json("t")).len(), 3);
}

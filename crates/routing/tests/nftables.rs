//! Kernel-forwarded routes (`forwarding_engine = "nftables"`): the keys, what validation
//! refuses and why, and a table that does not listen on their ports.

use smartproxy_routing::*;

fn routes(doc: &str) -> Vec<RouteConfig> {
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    toml::from_str::<F>(doc).unwrap_or_else(|e| panic!("{e}")).routes
}

fn errors(doc: &str) -> Vec<String> {
    match validate(&routes(doc)) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issue_example_reads_and_compiles() {
    let rs = routes(
        r#"
[[routes]]
name = "db"
match = { ports = [5432] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 5432 }], forwarding_engine = "nftables",
           nftables = { preserve_source_ip = true, protocol = "tcp" } }

[[routes]]
name = "dns"
match = { ports = [53, "6000-6010"] }
action = { type = "forward", targets = [{ host = "10.0.0.53", port = "preserve" }], forwarding_engine = "nftables",
           nftables = { protocol = "udp" }, load_balancing = "ip-hash" }
security = { ip_allow_list = ["10.0.0.0/8"], ip_block_list = ["10.9.9.9"], max_connections = 100 }

[[routes]]
name = "defaults"
match = { ports = 7000 }
action = { type = "forward", targets = [{ host = "10.0.0.7", port = 7000 }], forwarding_engine = "nftables" }

[[routes]]
name = "web"
match = { ports = 8080 }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }
"#,
    );
    let RouteAction::Forward(db) = &rs[0].action else { panic!("forward") };
    assert_eq!(db.forwarding_engine, ForwardingEngine::Nftables);
    assert_eq!(
        db.nftables,
        Some(
            NftablesOptions::new()
                .with_preserve_source_ip(true)
                .with_protocol(NftablesProtocol::Tcp)
        )
    );
    let RouteAction::Forward(dns) = &rs[1].action else { panic!("forward") };
    assert_eq!(dns.nftables.map(|o| o.protocol), Some(NftablesProtocol::Udp));
    let RouteAction::Forward(d) = &rs[2].action else { panic!("forward") };
    assert!(d.is_kernel_forwarded());
    assert_eq!(d.nftables, None, "the options table may be left out");
    assert!(!rs[3].is_kernel_forwarded());

    // Written back the same way (and the proxy's default is not written at all).
    let back = serde_json::to_value(&rs).expect("serialises");
    assert_eq!(back[0]["action"]["forwarding_engine"], "nftables");
    assert_eq!(back[0]["action"]["nftables"]["protocol"], "tcp");
    assert!(back[3]["action"].get("forwarding_engine").is_none());
    let again: Vec<RouteConfig> = serde_json::from_value(back).expect("reads back");
    assert_eq!(again, rs);

    let table = RouteTable::compile(rs).expect("valid");
    assert_eq!(table.ports(), [8080], "the proxy listens on none of the kernel's ports");
    let kernel: Vec<&str> = table.kernel_routes().map(CompiledRoute::name).collect();
    assert_eq!(kernel, ["db", "dns", "defaults"]);
    let client = "10.1.1.1".parse().expect("ip");
    assert!(table.lookup(&MatchInput::new(5432, client)).is_none());
    assert!(table.lookup(&MatchInput::new(6005, client)).is_none());
    assert_eq!(table.lookup(&MatchInput::new(8080, client)).map(|m| m.route.name()), Some("web"));
    let dns = table.route("dns").expect("by name");
    assert!(dns.is_kernel_forwarded());
    assert_eq!(dns.ip_allow_list().patterns()[0].to_string(), "10.0.0.0/8");
    assert_eq!(dns.ip_block_list().patterns()[0].to_string(), "10.9.9.9");

    let dump = serde_json::to_value(table.dump()).expect("dump");
    assert_eq!(dump["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(dump["routes"][0]["forwarding_engine"], "nftables");
    assert!(dump["routes"][3].get("forwarding_engine").is_none());
}

#[test]
fn what_the_kernel_cannot_honour_is_refused_with_the_reason() {
    insta::assert_snapshot!(errors(
        r#"
[[routes]]
name = "everything"
match = { ports = 1, domains = ["a.example"], path = "/x", headers = { "x-a" = "1" }, tls_version = ["1.3"], client_ip = ["10.0.0.0/8"] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 1 }], forwarding_engine = "nftables",
           tls = { mode = "passthrough" }, send_proxy_protocol = "v2", load_balancing = "least-connections", connect_timeout = "3s" }
security = { max_connections_per_ip = 3, rate_limit_per_minute = 60, max_connections = 10 }

[[routes]]
name = "options-without-engine"
match = { ports = 2 }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 1 }], nftables = { protocol = "udp" } }
"#
    )
    .join("\n"), @r#"
    routes[0].action.tls: kernel forwarding (forwarding_engine = "nftables") cannot handle TLS: the kernel rewrites packet addresses and never sees a handshake or a server name; use the proxy for TLS routes
    routes[0].action.send_proxy_protocol: kernel forwarding (forwarding_engine = "nftables") cannot send a PROXY header: the kernel does not write into the stream; to show the client's address to the target use nftables = { preserve_source_ip = true }
    routes[0].action.load_balancing: kernel forwarding (forwarding_engine = "nftables") cannot balance by least connections: the kernel does not count open connections per target; use "round-robin" or "ip-hash"
    routes[0].action.connect_timeout: kernel forwarding (forwarding_engine = "nftables") makes no connection of its own to the target (the client's packets go through), so there is no connect to time out
    routes[0].match.domains: kernel forwarding (forwarding_engine = "nftables") matches on the port only: the kernel does not read the first bytes of a connection, so it cannot match domains (SNI or Host)
    routes[0].match.path: kernel forwarding (forwarding_engine = "nftables") matches on the port only: the kernel does not read the first bytes of a connection, so it cannot match an HTTP path
    routes[0].match.headers: kernel forwarding (forwarding_engine = "nftables") matches on the port only: the kernel does not read the first bytes of a connection, so it cannot match HTTP headers
    routes[0].match.tls_version: kernel forwarding (forwarding_engine = "nftables") matches on the port only: the kernel does not read the first bytes of a connection, so it cannot match a TLS version
    routes[0].match.client_ip: kernel forwarding (forwarding_engine = "nftables") owns its ports, so no other route could take the clients that do not match; use security.ip_allow_list, which the kernel rules enforce
    routes[0].security.max_connections_per_ip: kernel forwarding (forwarding_engine = "nftables") has no per-client limit; security.max_connections (a conntrack count) and the allow and block lists are what the kernel rules enforce
    routes[0].security.rate_limit_per_minute: kernel forwarding (forwarding_engine = "nftables") has no rate limit; security.max_connections (a conntrack count) and the allow and block lists are what the kernel rules enforce
    routes[1].action.nftables: nftables options apply only with forwarding_engine = "nftables"
    "#);
}

#[test]
fn unknown_values_and_keys_are_refused_by_serde() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    for (doc, needle) in [
        (r#"forwarding_engine = "ebpf""#, "unknown variant `ebpf`"),
        (r#"forwarding_engine = "nftables", nftables = { protocol = "sctp" }"#, "`sctp`"),
        (
            r#"forwarding_engine = "nftables", nftables = { preserve = true }"#,
            "unknown field `preserve`",
        ),
    ] {
        let text = format!(
            "[[routes]]\nmatch = {{ ports = 1 }}\naction = {{ type = \"forward\", targets = [{{ host = \"10.0.0.5\", port = 1 }}], {doc} }}\n"
        );
        let e = toml::from_str::<F>(&text).expect_err(doc);
        assert!(e.to_string().contains(needle), "{doc}: {e}");
    }
}

#[test]
fn a_tcp_port_shared_with_a_proxied_route_is_refused() {
    let doc = r#"
[[routes]]
name = "web"
match = { ports = ["8000-8100"] }
action = { type = "forward", targets = [{ host = "127.0.0.1", port = 9000 }] }

[[routes]]
name = "kernel"
match = { ports = [5432, 8080] }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 5432 }], forwarding_engine = "nftables", nftables = { protocol = "all" } }

[[routes]]
name = "redirect"
match = { ports = 5432 }
action = { type = "socket-handler", handler = "redirect", location = "https://x" }

[[routes]]
name = "udp-only"
match = { ports = 8080 }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 53 }], forwarding_engine = "nftables", nftables = { protocol = "udp" } }

[[routes]]
name = "disabled"
enabled = false
match = { ports = 8001 }
action = { type = "forward", targets = [{ host = "10.0.0.5", port = 1 }], forwarding_engine = "nftables" }
"#;
    insta::assert_snapshot!(errors(doc).join("\n"), @r#"
    routes[1].match.ports: TCP port 8080 is forwarded by the kernel for this route and is also a port of route `web` (routes[0]), which the proxy serves: the NAT rule would take every connection to it; give one of them another port (a route with nftables = { protocol = "udp" } may share it)
    routes[1].match.ports: TCP port 5432 is forwarded by the kernel for this route and is also a port of route `redirect` (routes[2]), which the proxy serves: the NAT rule would take every connection to it; give one of them another port (a route with nftables = { protocol = "udp" } may share it)
    "#);
}

#[test]
fn routes_in_code() {
    let db = RouteConfig::new(
        RouteMatch::ports(5432),
        RouteAction::Forward(
            ForwardAction::to(vec![Target::new("10.0.0.5", 5432)])
                .with_nftables(NftablesOptions::new().with_preserve_source_ip(true)),
        ),
    )
    .with_name("db");
    assert!(db.is_kernel_forwarded());
    let table = RouteTable::compile(vec![db, helpers::forward_route(8080, Target::new("h", 1))])
        .expect("valid");
    assert_eq!(table.ports(), [8080]);
    assert_eq!(table.kernel_routes().count(), 1);
}

//! `RouteTable::lookup` does not allocate: counted with a global allocator wrapper.
#![allow(unsafe_code, reason = "a counting GlobalAlloc is the only way to observe allocations")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;

use smartproxy_routing::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only bumps a
// thread-local counter, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

#[test]
fn lookup_does_not_allocate() {
    let doc = r#"
[[routes]]
name = "exact"
match = { ports = 443, domains = ["a.example.com"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "wild"
match = { ports = 443, domains = ["*.example.com", "example.*"], client_ip = ["10.0.0.0/8", "::1"] }
action = { type = "forward", targets = [{ host = "h", port = 1 }], tls = { mode = "passthrough" } }
[[routes]]
name = "api"
match = { ports = 80, domains = "*", path = "/users/:id/*", headers = { x-env = "/^pr.d$/", accept = "*/*" } }
action = { type = "forward", targets = [{ host = "h", port = 1 }] }
"#;
    #[derive(serde::Deserialize)]
    struct F {
        routes: Vec<RouteConfig>,
    }
    let t = RouteTable::compile(toml::from_str::<F>(doc).unwrap().routes).unwrap();
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let headers = [("X-Env", "prod"), ("Accept", "*/*")];
    let inputs = [
        MatchInput::new(443, ip).with_domain("A.Example.com.").with_tls(None),
        MatchInput::new(443, ip).with_domain("x.y.example.com").with_tls(None),
        MatchInput::new(443, ip).with_domain("example.org").with_tls(None),
        MatchInput::new(443, ip).with_tls(None),
        MatchInput::new(80, ip).with_domain("h").with_path("/users/7/posts").with_headers(&headers),
        MatchInput::new(80, ip).with_domain("h").with_path("/nope"),
        MatchInput::new(9, ip),
    ];
    // Warm up (the regex engine fills a per-thread cache on first use).
    let want: Vec<Option<&str>> =
        inputs.iter().map(|i| t.lookup(i).map(|m| m.route.name())).collect();
    assert_eq!(want, [Some("exact"), Some("wild"), Some("wild"), None, Some("api"), None, None]);
    let before = allocs();
    let mut hits = 0;
    for _ in 0..100 {
        for i in &inputs {
            if let Some(m) = t.lookup(i) {
                hits += 1;
                std::hint::black_box(m.params.get("id"));
                std::hint::black_box(m.route.allows_ip(ip));
            }
        }
    }
    assert_eq!(allocs() - before, 0, "lookup allocated");
    assert_eq!(hits, 400);
}

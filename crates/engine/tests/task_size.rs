//! The size of a connection's task: the future spawned per accepted connection is most of the
//! memory an idle connection costs (about 3.4 KiB before the setup / copy split, 2026-11).

use smartproxy_engine::bench_api::connection_future_size;

/// Guards against regressions: a local kept alive across the copy's await, a second timer or
/// shutdown waiter, or an unboxed setup step grows every connection's task. The bound is the
/// size measured when the split landed (648 bytes in a debug build, which `cargo test` runs;
/// 632 in release), rounded up to the next 64 bytes. If a change must grow the future,
/// measure bytes per idle connection (`benches/idle_conns.py`) and raise it knowingly.
/// Raised to 768 (2026-12): the backend keepalive probes set by the copy a second after the
/// start (four `setsockopt` calls fewer per short connection) made the future 712 bytes, 8
/// more (the probes in six bytes and whether they are still to be set).
const MAX_CONNECTION_FUTURE: usize = 768;

#[test]
fn connection_future_stays_small() {
    let size = connection_future_size();
    assert!(
        size <= MAX_CONNECTION_FUTURE,
        "the connection future is {size} bytes, over {MAX_CONNECTION_FUTURE}: something now \
         lives across the copy's await (see the comment above the bound)"
    );
}

/// The setup future is moved into its box at every accept, so its size is copied once per
/// connection, and a larger box takes glibc's slower path. The paths served inside the setup
/// that hold large state for a connection's whole life (the HTTP layer, socket handlers, TLS
/// termination) are boxed on their own: left inline, the HTTP layer alone made it 7,392
/// bytes (release) for every layer-4 connection (2026-12; 1,952 after boxing, 2,008 in a
/// debug build). The bound is that debug size rounded up to the next 256 bytes.
const MAX_SETUP_FUTURE: usize = 2304;

#[test]
fn setup_future_stays_small() {
    let size = smartproxy_engine::bench_api::setup_future_size();
    assert!(
        size <= MAX_SETUP_FUTURE,
        "the setup future is {size} bytes, over {MAX_SETUP_FUTURE}: a path served inside it \
         is probably no longer boxed (see the comment above the bound)"
    );
}

/// A plain HTTP connection's task is the HTTP layer's state for the connection, written into
/// its box in place at the accept (`pipeline::in_box`). Each layer of `async fn` between the
/// task and the HTTP layer keeps its own arguments for the whole connection: a wrapper left
/// in `HttpService::serve` made it 600 bytes larger (8,416 in a debug build; 7,872 without,
/// 2026-12). The bound is that debug size rounded up to the next 256 bytes.
const MAX_PLAIN_HTTP_FUTURE: usize = 8192;

#[test]
fn plain_http_future_stays_small() {
    let size = smartproxy_engine::bench_api::plain_http_future_size();
    assert!(
        size <= MAX_PLAIN_HTTP_FUTURE,
        "the plain HTTP connection future is {size} bytes, over {MAX_PLAIN_HTTP_FUTURE}: a \
         layer or a local now lives across the connection's await (see the comment above)"
    );
}

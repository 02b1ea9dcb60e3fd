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

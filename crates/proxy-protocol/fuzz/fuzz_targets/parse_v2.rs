#![no_main]
//! v2 only: arbitrary bytes, and arbitrary bytes after the signature (with a small and the
//! largest length cap).

use libfuzzer_sys::fuzz_target;
use smartproxy_proxy_protocol::{ParseOptions, V2_SIGNATURE, Versions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let opts = ParseOptions::default().versions(Versions::V2Only);
    common::check(data, &opts);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(data);
    common::check(&h, &opts);
    common::check(&h, &opts.max_v2_len(usize::from(u16::MAX)));
    common::check(&h, &opts.max_v2_len(64));
});

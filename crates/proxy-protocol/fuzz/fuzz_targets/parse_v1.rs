#![no_main]
//! v1 only: arbitrary bytes, and arbitrary bytes after `PROXY `.

use libfuzzer_sys::fuzz_target;
use smartproxy_proxy_protocol::{ParseOptions, Versions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let opts = ParseOptions::default().versions(Versions::V1Only);
    common::check(data, &opts);
    let mut line = b"PROXY ".to_vec();
    line.extend_from_slice(data);
    common::check(&line, &opts);
});

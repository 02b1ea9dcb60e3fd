#![no_main]
//! Auto-detection over arbitrary bytes; `detect` must agree with `parse` on the version.

use libfuzzer_sys::fuzz_target;
use smartproxy_proxy_protocol::{Detection, ParseOptions, Parsed, Version, detect, parse};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::check(data, &ParseOptions::default());
    if let Ok(Parsed::Complete { header, .. }) = parse(data) {
        let d = detect(data);
        match header.version() {
            Version::V1 => assert_eq!(d, Detection::V1),
            _ => assert_eq!(d, Detection::V2),
        }
    }
});

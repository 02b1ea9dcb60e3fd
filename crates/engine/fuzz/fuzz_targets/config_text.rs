#![no_main]
//! The configuration loader over arbitrary text, as TOML and as JSON: any input gives a
//! configuration or errors (each with a key path or a syntax position), never a panic.

use libfuzzer_sys::fuzz_target;
use smartproxy_engine::{Config, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::Toml, Format::Json] {
        if let Err(e) = Config::from_str(text, format) {
            // The errors render (key paths, lines) without panicking either.
            let _ = e.to_string();
        }
    }
});

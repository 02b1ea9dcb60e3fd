//! Fuzz `peek`: no panic on any input, and the streaming invariants hold:
//! - a complete ClientHello takes `len <= data.len()` bytes, parsing exactly those gives the
//!   same result, and every strict prefix of them is incomplete with a true lower bound;
//! - an error is final: adding bytes never turns it into a success.
//!
//! The first input byte picks a cap (`max_bytes`) so that the cap paths are fuzzed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartproxy_tls_hello::{Peek, PeekOptions, detect, peek};

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else { return };
    let opts = if sel & 1 == 0 {
        PeekOptions::default()
    } else {
        PeekOptions::default().with_max_bytes(usize::from(sel) * 8)
    };
    let _ = detect(data);
    let whole = peek(data, &opts);
    match &whole {
        Ok(Peek::Complete(h)) => {
            assert!(h.len <= data.len() && h.len <= opts.max_bytes);
            assert!(h.records >= 1);
            assert_eq!(peek(&data[..h.len], &opts), whole);
            let cuts = (0..h.len.min(48)).chain([h.len / 2, h.len.saturating_sub(1)]);
            for k in cuts.filter(|&k| k < h.len) {
                match peek(&data[..k], &opts) {
                    Ok(Peek::Incomplete { needed: Some(n) }) => {
                        assert!(n >= 1 && k + n <= h.len, "prefix {k}: needed {n}");
                    }
                    other => panic!("prefix {k} of a complete hello: {other:?}"),
                }
            }
            let _ = (h.max_version(), h.server_name(), h.alpn_str().count(), h.is_resumption());
        }
        Ok(Peek::Incomplete { needed }) => {
            assert!(needed.is_none_or(|n| n >= 1));
        }
        Err(e) => {
            // Errors are decided from bytes already seen: a longer input fails too.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0u8; 64]);
            assert!(peek(&longer, &opts).is_err(), "{e} then success");
        }
        Ok(_) => {}
    }
});

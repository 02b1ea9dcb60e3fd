//! Invariants shared by the parse targets.

use smartproxy_proxy_protocol::{ParseOptions, Parsed, parse_with};

/// Parses `data` and checks the streaming invariants:
/// - a complete header consumes at most the buffer, and parsing exactly those bytes gives the
///   same header; every strict prefix of it is incomplete;
/// - an error on the whole buffer is, on every prefix, either "incomplete" or the same error;
/// - a complete header re-encodes to bytes that parse back to the same header.
pub fn check(data: &[u8], opts: &ParseOptions) {
    let whole = parse_with(data, opts);
    let n = data.len();
    // Prefixes to check: the first 40, and a few around the end.
    let mut cuts: Vec<usize> = (0..n.min(40)).collect();
    cuts.extend([n.saturating_sub(1), n / 2, n.saturating_sub(7)]);
    match &whole {
        Ok(Parsed::Complete { header, consumed }) => {
            assert!(*consumed <= n);
            let again = parse_with(&data[..*consumed], opts);
            assert_eq!(again, whole, "same result on exactly the header bytes");
            for k in cuts.into_iter().chain([consumed.saturating_sub(1)]) {
                if k < *consumed {
                    let p = parse_with(&data[..k], opts);
                    assert!(matches!(p, Ok(Parsed::Incomplete { .. })), "prefix {k}: {p:?}");
                }
            }
            let bytes = header.to_vec().expect("a parsed header encodes");
            assert_eq!(bytes.len(), header.encoded_len());
            match smartproxy_proxy_protocol::parse(&bytes) {
                Ok(Parsed::Complete { header: h2, consumed: c2 }) => {
                    assert_eq!(&h2, header);
                    assert_eq!(c2, bytes.len());
                }
                other => panic!("re-encoded header does not parse: {other:?}"),
            }
        }
        Ok(Parsed::Incomplete { needed }) => {
            if let Some(needed) = needed {
                assert!(*needed > 0);
            }
            for k in cuts {
                if k < n {
                    let p = parse_with(&data[..k], opts);
                    assert!(matches!(p, Ok(Parsed::Incomplete { .. })), "prefix {k}: {p:?}");
                }
            }
        }
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(e) => {
            for k in cuts {
                if k < n {
                    let p = parse_with(&data[..k], opts);
                    assert!(
                        matches!(&p, Ok(Parsed::Incomplete { .. })) || p.as_ref() == Err(e),
                        "prefix {k}: {p:?} vs {e:?}"
                    );
                }
            }
        }
    }
}

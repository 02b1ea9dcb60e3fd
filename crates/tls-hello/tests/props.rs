//! Property tests: no panic on any input; segmentation and record framing do not change the
//! result.

mod common;

use common::*;
use proptest::prelude::*;
use smartproxy_tls_hello::{Peek, PeekOptions, detect, peek};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = peek(&buf, &PeekOptions::default());
        let _ = detect(&buf);
    }

    #[test]
    fn handshake_prefixed_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        len in 0u16..0x500,
        hs_len in 0u32..0x600,
    ) {
        let mut buf = vec![0x16, 0x03, 0x01];
        buf.extend_from_slice(&len.to_be_bytes());
        buf.push(1);
        buf.extend_from_slice(&hs_len.to_be_bytes()[1..]);
        buf.extend_from_slice(&body);
        let _ = peek(&buf, &PeekOptions::default());
    }

    #[test]
    fn random_record_framing_is_transparent(
        idx in 0usize..FIXTURES.len(),
        raw_cuts in proptest::collection::vec(1usize..600, 0..8),
        max in prop_oneof![Just(16 * 1024), 64usize..4096],
    ) {
        let buf = fixture(FIXTURES[idx]);
        let want = view(&complete(&buf));
        let hs_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        let mut cuts: Vec<usize> = raw_cuts.into_iter().filter(|&c| c < hs_len).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let framed = split_records(&buf, &cuts);
        match peek(&framed, &PeekOptions::default().with_max_bytes(max)) {
            Ok(Peek::Complete(h)) => {
                prop_assert!(framed.len() <= max);
                prop_assert_eq!(view(&h), want);
                prop_assert_eq!(h.records, cuts.len() + 1);
            }
            Err(smartproxy_tls_hello::Error::TooLarge { .. }) => prop_assert!(framed.len() > max),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

//! Allocation budget: parsing allocates nothing for headers without TLVs or UNIX paths, one
//! buffer no larger than the TLV bytes otherwise, and nothing for rejected input.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{IP4_BLOCK, ip6_block, tlv, v2, v2_crc};
use smartproxy_proxy_protocol::{Parsed, parse};

struct Counting;

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts (thread-locally,
// so tests running in parallel do not disturb each other).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        let _ = BYTES.try_with(|b| b.set(b.get() + layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, bytes) made by `f`.
fn measure<R>(f: impl FnOnce() -> R) -> (usize, usize, R) {
    let (c0, b0) = (COUNT.with(Cell::get), BYTES.with(Cell::get));
    let r = f();
    (COUNT.with(Cell::get) - c0, BYTES.with(Cell::get) - b0, r)
}

#[test]
fn v1_and_plain_v2_parse_without_allocating() {
    let v1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec();
    let v1_6 = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n".to_vec();
    let v2_4 = v2(0x21, 0x11, &IP4_BLOCK);
    let v2_6 = v2(0x21, 0x21, &ip6_block());
    let local = v2(0x20, 0x00, &[]);
    let crc_only = v2_crc(0x21, 0x11, &IP4_BLOCK);
    for input in [&v1, &v1_6, &v2_4, &v2_6, &local, &crc_only] {
        let (n, _, r) = measure(|| parse(input));
        assert!(matches!(r, Ok(Parsed::Complete { .. })));
        assert_eq!(n, 0, "{input:02x?}");
    }
}

#[test]
fn v2_with_tlvs_allocates_once_at_most_the_tlv_bytes() {
    let mut body = IP4_BLOCK.to_vec();
    body.extend(tlv(0x01, b"h2"));
    body.extend(tlv(0x02, b"example.com"));
    let input = v2_crc(0x21, 0x11, &body);
    let (n, bytes, r) = measure(|| parse(&input));
    assert!(matches!(r, Ok(Parsed::Complete { .. })));
    assert_eq!(n, 1);
    assert_eq!(bytes, 5 + 14, "TLVs without the CRC32C one");
}

#[test]
fn rejected_and_incomplete_input_does_not_allocate() {
    let mut overrun = IP4_BLOCK.to_vec();
    overrun.extend_from_slice(&[0x01, 0xff, 0xff, 0]);
    let overrun = v2(0x21, 0x11, &overrun);
    let mut big = smartproxy_proxy_protocol::V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    for input in [
        &overrun[..],
        &big[..],
        &overrun[..20],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY UNKNOWN xxxxxxxxxxxxxxxxxxxx",
    ] {
        let (n, _, _) = measure(|| parse(input));
        assert_eq!(n, 0, "{input:02x?}");
    }
}

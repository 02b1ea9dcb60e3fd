//! Helpers of the unit tests.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A xorshift generator of numbers below its argument: the random inputs of a test, the same
/// on every run.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

/// `name: value\r\n` lines up to a blank line or the end, as a map and the lower-case names
/// in their order.
pub(crate) fn fields(lines: &[u8]) -> (HeaderMap, Vec<String>) {
    let mut map = HeaderMap::new();
    let mut order = Vec::new();
    let text = std::str::from_utf8(lines).expect("UTF-8 fields");
    for line in text.split_terminator("\r\n").take_while(|l| !l.is_empty()) {
        let (n, v) = line.split_once(": ").expect("name: value");
        order.push(n.to_ascii_lowercase());
        map.append(
            HeaderName::from_bytes(n.as_bytes()).expect("a field name"),
            HeaderValue::from_str(v).expect("a field value"),
        );
    }
    (map, order)
}

//! The smartproxy binary.
fn main() {}

//! cargo xtask: ci, fmt, lint, test, bench, fuzz, release.
fn main() {}

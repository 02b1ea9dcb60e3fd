//! Lookup speed (written below).
fn main() {}

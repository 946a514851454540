//! The broker conformance kit, run against the spool (work in progress).
fn main() {}

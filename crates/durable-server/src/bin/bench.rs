//! Benchmark of SSE fan-out (not a test): see the crate README.
fn main() {}

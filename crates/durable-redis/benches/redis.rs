//! Benches of the Redis backends (written in a later commit).

fn main() {}

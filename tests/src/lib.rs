#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod agent;
pub mod backend;
pub mod check;
pub mod process;

pub use backend::{Kind, Server, Target};

/// Whether the long mode is on (`DURABLE_FAULTS=long`).
pub fn long_mode() -> bool {
    std::env::var("DURABLE_FAULTS").is_ok_and(|v| v == "long")
}

/// `short` iterations, or `long` with `DURABLE_FAULTS=long`.
pub fn iterations(short: usize, long: usize) -> usize {
    if long_mode() {
        long
    } else {
        short
    }
}

/// The random generator of one test: seeded from `DURABLE_TEST_SEED` or at random; the seed is
/// printed (past the test harness' capture) so a failure can be replayed.
pub fn seeded(test: &str) -> fastrand::Rng {
    let seed = std::env::var("DURABLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: seed {seed} (DURABLE_TEST_SEED={seed} to replay)");
    fastrand::Rng::with_seed(seed)
}

/// A name unique to this test process: `<tag><pid hex><random hex>`, lowercase letters and
/// digits only, so it is valid as a namespace, a PostgreSQL schema, a NATS token and a run id.
pub fn unique(tag: &str) -> String {
    format!("{tag}{:x}{:08x}", std::process::id(), fastrand::u32(..))
}

/// A multi-threaded runtime on two workers (the machine's size in CI).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

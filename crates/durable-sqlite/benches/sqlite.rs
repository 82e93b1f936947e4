//! End-to-end benchmarks of durable agents on one SQLite file (`synchronous = FULL`, the
//! default, unless the name says otherwise): scripted model → agentic loop → event log
//! (group-commit writer) → observer.
//!
//! `cargo bench -p durable-sqlite`
//!
//! - `sqlite/durable_1x10k`: one run streaming 10,000 16-byte text deltas, drained by its
//!   observer (run record, lease, log, checkpoint, retention: everything).
//! - `sqlite/durable_100x1000`: 100 such runs of 1,000 deltas at once, all drained.
//! - `sqlite/replay_10k`: `observe(0)` of a finished 10,000-delta run.
//! - `sqlite/durable_1x10k_normal`: the first one with `synchronous = NORMAL`.
//!
//! After the criterion groups, one timed pass of the 100-run load prints the writer's commits
//! (each one WAL fsync under `FULL`) and writes per second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use durable_conformance::bench::runtime as rt;
use durable_core::agent::{Agent, DurableAgent, ScriptedModel, StreamOptions, Turn};
use durable_core::{ObserveOptions, RunId};
use durable_sqlite::{SqliteBackend, SqliteConfig, Synchronous};
use futures::StreamExt;

const DELTA: &str = "0123456789abcdef";

/// A fresh database file for one case, under `<temp>/durable-sqlite-bench-<pid>/`.
fn db_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("durable-sqlite-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir.join(format!("{tag}.db"))
}

fn agent(deltas: usize) -> Agent {
    Agent::builder()
        .id("bench")
        .model(ScriptedModel::new([Turn::new().deltas(deltas, DELTA)]))
        .build()
        .expect("agent")
}

/// A durable agent on `db` whose finished runs expire at once, so iterations do not pile up.
fn durable(db: &SqliteBackend, deltas: usize) -> DurableAgent {
    db.durable_agent(agent(deltas))
        .retention(Duration::from_secs(1))
        .build()
        .expect("durable agent")
}

async fn drain(s: impl futures::Stream<Item = durable_core::Result<durable_core::Event>>) -> u64 {
    s.fold(0u64, |n, e| async move {
        e.expect("event");
        n + 1
    })
    .await
}

async fn many(agent: &DurableAgent, runs: usize) -> u64 {
    let started =
        futures::future::join_all((0..runs).map(|_| agent.stream("go", StreamOptions::new())))
            .await;
    let drains = started
        .into_iter()
        .map(|r| tokio::spawn(drain(r.expect("stream"))));
    futures::future::join_all(drains)
        .await
        .into_iter()
        .map(|n| n.expect("drain"))
        .sum()
}

fn open(rt: &tokio::runtime::Runtime, tag: &str, sync: Synchronous) -> SqliteBackend {
    rt.block_on(SqliteBackend::open_async(
        SqliteConfig::new(db_path(tag)).synchronous(sync),
    ))
    .expect("open")
}

/// Each case on a fresh file, so one case's leftovers (and their purge) do not slow the next.
fn bench_sqlite(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("sqlite");
    g.measurement_time(Duration::from_secs(8));

    g.throughput(Throughput::Elements(10_000));
    let db = open(&rt, "one", Synchronous::Full);
    let one = durable(&db, 10_000);
    g.bench_function("durable_1x10k", |b| {
        b.to_async(&rt).iter(|| async {
            let s = one
                .stream("go", StreamOptions::new())
                .await
                .expect("stream");
            drain(s).await
        });
    });
    drop((one, db));

    let db = open(&rt, "replay", Synchronous::Full);
    let kept = db.durable_agent(agent(10_000)).build().expect("agent");
    let finished: RunId = rt.block_on(async {
        let s = kept
            .stream("go", StreamOptions::new())
            .await
            .expect("stream");
        let id = s.run_id().clone();
        drain(s).await;
        id
    });
    g.bench_function("replay_10k", |b| {
        b.to_async(&rt).iter(|| async {
            let s = kept
                .observe(&finished, ObserveOptions::from(0))
                .await
                .expect("observe");
            drain(s).await
        });
    });
    drop((kept, db));

    g.throughput(Throughput::Elements(100_000));
    let db = open(&rt, "hundred", Synchronous::Full);
    let hundred = durable(&db, 1_000);
    g.bench_function("durable_100x1000", |b| {
        b.iter_batched(
            || (),
            |()| rt.block_on(many(&hundred, 100)),
            BatchSize::PerIteration,
        );
    });
    drop((hundred, db));

    g.throughput(Throughput::Elements(10_000));
    let db = open(&rt, "normal", Synchronous::Normal);
    let one_normal = durable(&db, 10_000);
    g.bench_function("durable_1x10k_normal", |b| {
        b.to_async(&rt).iter(|| async {
            let s = one_normal
                .stream("go", StreamOptions::new())
                .await
                .expect("stream");
            drain(s).await
        });
    });
    drop((one_normal, db));
    g.finish();

    // Commits (WAL fsyncs under FULL) and writes per second under the 100-run load, after one
    // warm-up pass.
    let db = open(&rt, "load", Synchronous::Full);
    let hundred = durable(&db, 1_000);
    rt.block_on(many(&hundred, 100));
    let before = db.stats();
    let t = Instant::now();
    let events = rt.block_on(many(&hundred, 100));
    let secs = t.elapsed().as_secs_f64();
    let after = db.stats();
    let commits = after.commits - before.commits;
    let writes = after.writes - before.writes;
    println!(
        "sqlite/load_100x1000 (synchronous=FULL): {events} events in {:.3} s = {:.0} events/s; \
         {commits} commits = {:.0} commits/s (one WAL fsync each); {writes} writes = {:.0} writes/s, \
         {:.1} writes per commit",
        secs,
        events as f64 / secs,
        commits as f64 / secs,
        writes as f64 / secs,
        writes as f64 / commits.max(1) as f64,
    );
    drop((hundred, db));
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("durable-sqlite-bench-{}", std::process::id())),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_sqlite
}
criterion_main!(benches);

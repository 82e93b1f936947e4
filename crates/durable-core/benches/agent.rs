//! End-to-end agent benchmarks on the in-memory backends: scripted model → agentic loop →
//! event log → observer.
//!
//! `cargo bench -p durable-core --bench agent`
//!
//! - `agent/plain_10k`: a plain (non-durable) `Agent::stream` of 10,000 16-byte text deltas,
//!   drained by the caller. The baseline for the cost of durability.
//! - `agent/durable_10k`: the same script as a `DurableAgent` run (run record, lease, event
//!   log, checkpoint per step), drained by its observer.
//! - `agent/replay_10k`: `observe(0)` of that finished durable run.
//! - `agent/concurrent_100x1000`: 100 durable runs of 1,000 deltas at once, all drained.
//!
//! Peak memory of the concurrent case is measured by the load example instead, where nothing
//! else shares the process: `cargo run --release --example load`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use durable_core::agent::{Agent, DurableAgent, ScriptedModel, StreamOptions, Turn};
use durable_core::{ObserveOptions, RunId};
use futures::StreamExt;

const DELTA: &str = "0123456789abcdef";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn agent(deltas: usize) -> Agent {
    Agent::builder()
        .id("bench")
        .model(ScriptedModel::new([Turn::new().deltas(deltas, DELTA)]))
        .build()
        .expect("agent")
}

async fn drain(s: impl futures::Stream<Item = durable_core::Result<durable_core::Event>>) -> u64 {
    s.fold(0u64, |n, e| async move {
        e.expect("event");
        n + 1
    })
    .await
}

fn bench_agent(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("agent");
    g.throughput(Throughput::Elements(10_000));
    g.measurement_time(Duration::from_secs(8));
    let plain = agent(10_000);
    g.bench_function("plain_10k", |b| {
        b.to_async(&rt).iter(|| async {
            let s = plain
                .stream("go", StreamOptions::new())
                .await
                .expect("stream");
            drain(s).await
        });
    });
    // Finished runs expire at once, so iterations do not pile up in memory.
    let short = |a| {
        DurableAgent::builder(a)
            .retention(Duration::from_secs(2))
            .build()
            .expect("durable agent")
    };
    let durable = short(agent(10_000));
    g.bench_function("durable_10k", |b| {
        b.to_async(&rt).iter(|| async {
            let s = durable
                .stream("go", StreamOptions::new())
                .await
                .expect("stream");
            drain(s).await
        });
    });
    let kept = DurableAgent::new(agent(10_000));
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
    g.throughput(Throughput::Elements(100_000));
    let many = short(agent(1_000));
    g.bench_function("concurrent_100x1000", |b| {
        b.iter_batched(
            || (),
            |()| {
                rt.block_on(async {
                    let runs = futures::future::join_all(
                        (0..100).map(|_| many.stream("go", StreamOptions::new())),
                    )
                    .await;
                    let drains = runs
                        .into_iter()
                        .map(|r| tokio::spawn(drain(r.expect("stream"))));
                    futures::future::join_all(drains).await
                })
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_agent
}
criterion_main!(benches);

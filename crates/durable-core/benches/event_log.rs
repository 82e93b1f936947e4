//! Event-log benchmarks on the in-memory backends.
//!
//! `cargo bench -p durable-core --bench event_log`
//!
//! - `append/single`: `EventLog::append` of one 16-byte delta, one observer attached.
//! - `append/batch64`: `EventLog::append` of 64 deltas at a time (`append_many`), one observer.
//! - `append/writer`: the batching `RunWriter`, one observer attached.
//! - `replay/10k`: `observe(0)` of a finished 10,000-event run, to the end.
//! - `latency`: append → observer receipt, p50/p99 over 20,000 events (printed).
//! - `memory`: RSS growth per idle observer and per finished 10,000-event run (printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use durable_core::memory::{InMemoryCache, InMemoryPubSub};
use durable_core::{EventKind, EventLog, Json, LogConfig, NewEvent, ObserveOptions, RunId};
use futures::StreamExt;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn log() -> EventLog {
    EventLog::new(
        Arc::new(InMemoryCache::new()),
        Arc::new(InMemoryPubSub::new()),
    )
}

fn delta() -> NewEvent {
    // A 16-byte text payload, as an agent's text delta. Built once: the bench measures the log,
    // not JSON validation of its input.
    static DELTA: std::sync::OnceLock<NewEvent> = std::sync::OnceLock::new();
    DELTA
        .get_or_init(|| {
            NewEvent::new(
                EventKind::TextDelta,
                Json::from_text(r#""0123456789abcdef""#).expect("json"),
            )
        })
        .clone()
}

fn finish() -> NewEvent {
    NewEvent::new(EventKind::Finish, Json::null())
}

/// Spawn an observer that drains the run until its end.
fn drain(
    log: &EventLog,
    run: &RunId,
    rt: &tokio::runtime::Runtime,
) -> tokio::task::JoinHandle<u64> {
    let stream = rt
        .block_on(log.observe(run, ObserveOptions::from(0)))
        .expect("observe");
    rt.spawn(async move { stream.fold(0u64, |n, _| async move { n + 1 }).await })
}

fn bench_append(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("append");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("single", |b| {
        b.iter_batched(
            || {
                let log = log();
                let run = RunId::generate();
                rt.block_on(log.create(&run, None)).expect("create");
                let obs = drain(&log, &run, &rt);
                (log, run, obs)
            },
            |(log, run, obs)| {
                rt.block_on(async {
                    let ev = [delta()];
                    for _ in 0..N {
                        log.append(&run, &ev, None).await.expect("append");
                    }
                    log.append(&run, &[finish()], None).await.expect("finish");
                    obs.await.expect("observer")
                })
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("batch64", |b| {
        b.iter_batched(
            || {
                let log = log();
                let run = RunId::generate();
                rt.block_on(log.create(&run, None)).expect("create");
                let obs = drain(&log, &run, &rt);
                (log, run, obs)
            },
            |(log, run, obs)| {
                rt.block_on(async {
                    let batch: Vec<_> = (0..64).map(|_| delta()).collect();
                    for _ in 0..N / 64 {
                        log.append(&run, &batch, None).await.expect("append");
                    }
                    let rest: Vec<_> = (0..N % 64).map(|_| delta()).collect();
                    log.append(&run, &rest, None).await.expect("append");
                    log.append(&run, &[finish()], None).await.expect("finish");
                    obs.await.expect("observer")
                })
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("writer", |b| {
        b.iter_batched(
            || {
                let log = log();
                let run = RunId::generate();
                rt.block_on(log.create(&run, None)).expect("create");
                let obs = drain(&log, &run, &rt);
                (log, run, obs)
            },
            |(log, run, obs)| {
                rt.block_on(async {
                    let w = log.writer(run.clone(), None, 4096);
                    for _ in 0..N {
                        w.send(delta()).await.expect("send");
                    }
                    w.send(finish()).await.expect("finish");
                    w.flush().await.expect("flush");
                    obs.await.expect("observer")
                })
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn bench_replay(c: &mut Criterion) {
    let rt = rt();
    let log = log();
    let run = RunId::generate();
    const N: u64 = 10_000;
    rt.block_on(async {
        log.create(&run, None).await.expect("create");
        let batch: Vec<_> = (0..N).map(|_| delta()).collect();
        log.append(&run, &batch, None).await.expect("append");
        log.append(&run, &[finish()], None).await.expect("finish");
    });
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(N + 1));
    g.bench_function("10k", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = log
                    .observe(&run, ObserveOptions::from(0))
                    .await
                    .expect("observe");
                let n = s.fold(0u64, |n, _| async move { n + 1 }).await;
                assert_eq!(n, N + 1);
            })
        });
    });
    g.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn bench_latency(c: &mut Criterion) {
    let rt = rt();
    // Per-event latency percentiles: criterion reports means of samples, so measure directly.
    let samples = rt.block_on(async {
        let log = log();
        let run = RunId::generate();
        log.create(&run, None).await.expect("create");
        let mut stream = log
            .observe(&run, ObserveOptions::from(0))
            .await
            .expect("observe");
        let ev = [delta()];
        let mut out = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            log.append(&run, &ev, None).await.expect("append");
            stream.next().await.expect("event").expect("ok");
            out.push(t.elapsed());
        }
        out
    });
    let mut sorted = samples;
    sorted.sort();
    eprintln!(
        "latency append→observer over {} events: p50 {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
    let mut config = LogConfig::default();
    config.max_events = u64::MAX;
    let log = log().with_config(config);
    let run = RunId::generate();
    rt.block_on(log.create(&run, None)).expect("create");
    let mut stream = rt
        .block_on(log.observe(&run, ObserveOptions::from(0)))
        .expect("observe");
    let ev = [delta()];
    c.bench_function("latency/append_to_observer", |b| {
        b.iter(|| {
            rt.block_on(async {
                log.append(&run, &ev, None).await.expect("append");
                stream.next().await.expect("event").expect("ok");
            })
        })
    });
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn report_memory(_: &mut Criterion) {
    let rt = rt();
    rt.block_on(async {
        let log = log();
        let run = RunId::generate();
        log.create(&run, None).await.expect("create");
        const OBSERVERS: usize = 20_000;
        let before = rss_bytes();
        let mut observers = Vec::with_capacity(OBSERVERS);
        for _ in 0..OBSERVERS {
            observers.push(log.observe(&run, ObserveOptions::from(0)).await.expect("observe"));
        }
        let per_observer = (rss_bytes().saturating_sub(before)) / OBSERVERS as u64;
        drop(observers);

        const RUNS: usize = 50;
        let before = rss_bytes();
        for _ in 0..RUNS {
            let run = RunId::generate();
            log.create(&run, None).await.expect("create");
            for chunk in 0..10 {
                let batch: Vec<_> = (0..1000).map(|_| delta()).collect();
                log.append(&run, &batch, None).await.expect("append");
                let _ = chunk;
            }
            log.append(&run, &[finish()], None).await.expect("finish");
        }
        let per_run = (rss_bytes().saturating_sub(before)) / RUNS as u64;
        eprintln!(
            "memory: idle observer ≈ {per_observer} B (RSS growth over {OBSERVERS}); finished 10k-event run of 16-byte deltas ≈ {:.2} MiB (over {RUNS} runs)",
            per_run as f64 / (1024.0 * 1024.0)
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = report_memory, bench_append, bench_replay, bench_latency
}
criterion_main!(benches);

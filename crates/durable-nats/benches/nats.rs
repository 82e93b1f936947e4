//! Benchmarks against a real NATS server with JetStream (`DURABLE_TEST_NATS_URL`; skipped with a
//! message if unset).
//!
//! `DURABLE_TEST_NATS_URL=nats://127.0.0.1:14222 cargo bench -p durable-nats --bench nats`
//!
//! - `nats_append/sequential`: one task, `ServerCache::append` of one 16-byte delta at a time.
//! - `nats_append/16_producers`: 16 tasks appending to one log concurrently (G1 holds; every
//!   collision costs a failed expected-sequence check and a re-read).
//! - `nats_append/batch_100`: one task, `append_many` of 100 deltas at a time (one atomic batch).
//! - `nats_raw/publish_sync_ack` and `nats_raw/publish_async_ack`: the comparison, a bare
//!   async-nats JetStream publish loop on the same stream, awaiting each ack before the next, or
//!   sending without waiting and awaiting the acks 1,000 at a time.
//! - `nats_replay/10k_raw_reads` (`ServerCache::read`, 512 per call) and `nats_replay/10k`
//!   (`EventLog::observe(0)` of a finished 10,000-event run, to the end).
//! - `nats_e2e/writer_10k`: one run streaming 10,000 deltas through `EventLog::writer` with one
//!   observer; `nats_e2e/durable_agent_10k`: a `DurableAgent` run of the scripted model streaming
//!   10,000 deltas on NATS only (log, wake-ups, record, lease, checkpoints), drained.
//! - printed, not criterion measurements: the publish comparison (median of 3 rounds,
//!   interleaved): raw publish with sync acks, raw publish with async acks, raw atomic batches of
//!   1,000, beside the adapter's `append` one at a time and `append_many` of 1,000, all on the
//!   same server and stream; append → observer latency at 1 ms pacing (p50, p99,
//!   max over 2,000 events) beside a bare core round trip and the append alone; and fan-out to
//!   1,000 observers of one run, with the core wake subject (this crate's design) and with one
//!   JetStream ordered consumer per observer (the alternative), both fed the same appends of
//!   100 events, including setup time. Run them
//!   alone with `cargo bench -p durable-nats --bench nats -- latency` (the filter skips the
//!   criterion benches).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use bytes::Bytes;
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use durable_conformance::bench::{delta, finish, payload, percentile, runtime as rt};
use durable_conformance::services::env_url;
use durable_core::{AppendOptions, EventLog, LogConfig, ObserveOptions, RunId, ServerCache};
use durable_nats::{Nats, NatsConfig};
use futures::StreamExt;

static URL: OnceLock<String> = OnceLock::new();
const N: u64 = 10_000;
const PREFIX: &str = "durable-bench";
const STREAM: &str = "BENCH_LOGS";

fn connect(rt: &tokio::runtime::Runtime) -> Nats {
    let url = URL.get().expect("url").clone();
    rt.block_on(
        NatsConfig::new(url)
            .subject_prefix(PREFIX)
            .names(STREAM, "BENCH_QUEUES", "BENCH_RUNS")
            .connect(),
    )
    .expect("connect")
}

fn event_log(nats: &Nats, ns: &str) -> EventLog {
    let mut config = LogConfig::default();
    config.namespace = ns.to_owned();
    EventLog::new(Arc::new(nats.server_cache()), Arc::new(nats.pubsub())).with_config(config)
}

fn bench_append(c: &mut Criterion) {
    let rt = rt();
    let nats = connect(&rt);
    let cache = nats.server_cache();
    let shared: Arc<dyn ServerCache> = Arc::new(cache.clone());
    let mut g = c.benchmark_group("nats_append");
    g.throughput(Throughput::Elements(N));
    g.bench_function("sequential", |b| {
        b.iter_batched(
            || format!("bench/seq/{}", RunId::generate()),
            |log| {
                rt.block_on(durable_conformance::bench::append_sequential(
                    &cache, &log, N,
                ))
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("16_producers", |b| {
        b.iter_batched(
            || format!("bench/par/{}", RunId::generate()),
            |log| {
                rt.block_on(durable_conformance::bench::append_concurrent(
                    shared.clone(),
                    &log,
                    N,
                    16,
                ))
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("batch_100", |b| {
        let batch: Vec<Bytes> = (0..100).map(|_| payload()).collect();
        b.iter_batched(
            || format!("bench/batch/{}", RunId::generate()),
            |log| {
                rt.block_on(async {
                    for _ in 0..N / 100 {
                        cache
                            .append_many(&log, &batch, AppendOptions::default())
                            .await
                            .expect("append");
                    }
                    cache.delete(&log).await.expect("delete");
                })
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn bench_raw(c: &mut Criterion) {
    let rt = rt();
    let nats = connect(&rt);
    let js = {
        // The JetStream context spawns its ack task: inside the runtime.
        let _rt = rt.enter();
        async_nats::jetstream::new(nats.client().clone())
    };
    let mut g = c.benchmark_group("nats_raw");
    g.throughput(Throughput::Elements(N));
    g.bench_function("publish_sync_ack", |b| {
        b.iter(|| {
            rt.block_on(async {
                let subject = format!("{PREFIX}.c.raw-{}.x", RunId::generate());
                for _ in 0..N {
                    js.publish(subject.clone(), payload())
                        .await
                        .expect("publish")
                        .await
                        .expect("ack");
                }
            })
        });
    });
    g.bench_function("publish_async_ack", |b| {
        b.iter(|| {
            rt.block_on(async {
                let subject = format!("{PREFIX}.c.raw-{}.x", RunId::generate());
                publish_async_acks(&js, &subject, N).await;
            })
        });
    });
    g.finish();
}

fn bench_replay(c: &mut Criterion) {
    let rt = rt();
    let nats = connect(&rt);
    let log = event_log(&nats, "bench");
    let run = RunId::generate();
    rt.block_on(async {
        log.create(&run, None).await.expect("create");
        let batch: Vec<_> = (0..N).map(|_| delta()).collect();
        log.append(&run, &batch, None).await.expect("append");
        log.append(&run, &[finish()], None).await.expect("finish");
    });
    let mut g = c.benchmark_group("nats_replay");
    g.throughput(Throughput::Elements(N + 1));
    let cache = nats.server_cache();
    let name = log.log_name(&run);
    g.bench_function("10k_raw_reads", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut from = 0;
                while from < N + 1 {
                    from += cache
                        .read(&name, from, 512)
                        .await
                        .expect("read")
                        .entries
                        .len() as u64;
                }
            })
        });
    });
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
    rt.block_on(log.delete(&run)).expect("delete");
}

fn bench_e2e(c: &mut Criterion) {
    let rt = rt();
    let nats = connect(&rt);
    let log = event_log(&nats, "bench");
    let mut g = c.benchmark_group("nats_e2e");
    g.throughput(Throughput::Elements(N));
    g.bench_function("writer_10k", |b| {
        b.iter_batched(
            || {
                let run = RunId::generate();
                rt.block_on(log.create(&run, None)).expect("create");
                let stream = rt
                    .block_on(log.observe(&run, ObserveOptions::from(0)))
                    .expect("observe");
                let obs =
                    rt.spawn(async move { stream.fold(0u64, |n, _| async move { n + 1 }).await });
                (run, obs)
            },
            |(run, obs)| {
                rt.block_on(async {
                    let w = log.writer(run.clone(), None, 4096);
                    for _ in 0..N {
                        w.send(delta()).await.expect("send");
                    }
                    w.send(finish()).await.expect("finish");
                    w.flush().await.expect("flush");
                    assert_eq!(obs.await.expect("observer"), N + 1);
                    log.delete(&run).await.expect("delete");
                })
            },
            BatchSize::PerIteration,
        );
    });
    let mut config = LogConfig::default();
    config.namespace = "bench-agent".to_owned();
    config.retention = Duration::from_secs(5);
    let agent = durable_core::agent::Agent::builder()
        .id("bench")
        .model(durable_core::agent::ScriptedModel::new([
            durable_core::agent::Turn::new().deltas(N as usize, "0123456789abcdef"),
        ]))
        .build()
        .expect("agent");
    let durable = durable_core::agent::DurableAgent::builder(agent)
        .cache(nats.server_cache())
        .pubsub(nats.pubsub())
        .store(nats.workflow_store())
        .log_config(config)
        .build()
        .expect("durable agent");
    g.bench_function("durable_agent_10k", |b| {
        b.to_async(&rt).iter(|| async {
            let run = durable
                .stream("go", durable_core::agent::StreamOptions::new())
                .await
                .expect("stream");
            let n = run
                .fold(0u64, |n, e| async move {
                    e.expect("event");
                    n + 1
                })
                .await;
            assert!(n > N);
        });
    });
    g.finish();
}

fn report(_: &mut Criterion) {
    let rt = rt();
    publish_comparison(&rt);
    latency(&rt);
    fan_out(&rt, 1000, 1000);
}

/// The adapter's appends beside a bare async-nats JetStream publish loop on the same server and
/// stream, round by round (median of [`ROUNDS`]), so the machine's noise hits all alike: how
/// close the adapter gets to what the server can take.
///
/// - raw, sync acks: `publish` and await each ack before the next (one round trip per message);
/// - raw, async acks: publish without waiting, awaiting the acks 1,000 at a time (the server's
///   ingest rate);
/// - raw, atomic batches of 1,000: the same atomic batch publish the adapter uses, bare (batch
///   headers only, commit acknowledged);
/// - adapter `append` one at a time, and `append_many` of 1,000 (what the run writer sends
///   when the producer outpaces the round trip).
fn publish_comparison(rt: &tokio::runtime::Runtime) {
    const ROUNDS: usize = 3;
    const SEQUENTIAL: u64 = 2_000;
    let nats = connect(rt);
    let cache = nats.server_cache();
    let client = nats.client().clone();
    let js = {
        let _rt = rt.enter();
        async_nats::jetstream::new(client.clone())
    };
    let batch: Vec<Bytes> = (0..1000).map(|_| payload()).collect();
    let mut rows: [(&str, u64, Vec<f64>); 5] = [
        ("raw publish, sync ack per message", SEQUENTIAL, Vec::new()),
        ("raw publish, async acks", N, Vec::new()),
        ("raw atomic batches of 1,000", N, Vec::new()),
        ("adapter append, one at a time", SEQUENTIAL, Vec::new()),
        ("adapter append_many, 1,000 per call", N, Vec::new()),
    ];
    rt.block_on(async {
        for _ in 0..ROUNDS {
            for (i, (_, n, rates)) in rows.iter_mut().enumerate() {
                let n = *n;
                let id = RunId::generate();
                let subject = format!("{PREFIX}.c.raw-{id}.x");
                let log = format!("bench/cmp/{id}");
                let t = Instant::now();
                match i {
                    0 => {
                        for _ in 0..n {
                            js.publish(subject.clone(), payload())
                                .await
                                .expect("publish")
                                .await
                                .expect("ack");
                        }
                    }
                    1 => {
                        publish_async_acks(&js, &subject, n).await;
                    }
                    2 => {
                        for _ in 0..n / 1000 {
                            raw_atomic_batch(&client, &subject, &batch).await;
                        }
                    }
                    3 => {
                        for _ in 0..n {
                            durable_core::ServerCacheExt::append(&cache, &log, payload())
                                .await
                                .expect("append");
                        }
                    }
                    _ => {
                        for _ in 0..n / 1000 {
                            cache
                                .append_many(&log, &batch, AppendOptions::default())
                                .await
                                .expect("append");
                        }
                    }
                }
                rates.push(n as f64 / t.elapsed().as_secs_f64());
                if i >= 3 {
                    cache.delete(&log).await.expect("delete");
                }
            }
        }
    });
    for (name, n, rates) in &mut rows {
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "nats publish comparison ({n} messages of {} bytes, median of {ROUNDS}) {name}: {:.0} msgs/s",
            payload().len(),
            rates[rates.len() / 2]
        );
    }
}

/// Publish `n` messages, awaiting the acks in windows of [`ACK_WINDOW`]: async-nats holds at most
/// 5,000 acks in flight per context and then makes `publish` wait for them, so awaiting them
/// only after every publish would never finish.
async fn publish_async_acks(js: &async_nats::jetstream::Context, subject: &str, n: u64) {
    const ACK_WINDOW: usize = 1000;
    let mut acks = Vec::with_capacity(ACK_WINDOW);
    for i in 0..n {
        acks.push(
            js.publish(subject.to_owned(), payload())
                .await
                .expect("publish"),
        );
        if acks.len() == ACK_WINDOW || i + 1 == n {
            for a in acks.drain(..) {
                a.await.expect("ack");
            }
        }
    }
}

/// One atomic batch (server 2.12+), bare: batch id and sequence on every message, the commit
/// acknowledged.
async fn raw_atomic_batch(client: &async_nats::Client, subject: &str, batch: &[Bytes]) {
    let id = RunId::generate().to_string();
    for (i, p) in batch.iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Batch-Id", id.as_str());
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i + 1 == batch.len() {
            h.insert("Nats-Batch-Commit", "1");
            let ack = client
                .request_with_headers(subject.to_owned(), h, p.clone())
                .await
                .expect("commit");
            let ack: serde_json::Value = serde_json::from_slice(&ack.payload).expect("ack");
            assert!(ack.get("error").is_none(), "{ack}");
        } else {
            client
                .publish_with_headers(subject.to_owned(), h, p.clone())
                .await
                .expect("publish");
        }
    }
}

/// Append → observer latency through `EventLog` (announce in the append) at 1 ms pacing,
/// interleaved sample by sample with a bare core round trip (`flush`: PING/PONG), the append
/// alone and a bare JetStream publish awaiting its ack, so the machine's noise hits all of them
/// alike.
fn latency(rt: &tokio::runtime::Runtime) {
    const SAMPLES: usize = 2000;
    let nats = connect(rt);
    let mut results = rt.block_on(async {
        let log = event_log(&nats, "bench");
        assert!(log.announces_in_append());
        let run = RunId::generate();
        log.create(&run, None).await.expect("create");
        let mut stream = log
            .observe(&run, ObserveOptions::from(0))
            .await
            .expect("observe");
        let cache = nats.server_cache();
        let raw_log = format!("bench/append-only/{}", RunId::generate());
        let ev = [delta()];
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let js = async_nats::jetstream::new(nats.client().clone());
        let raw_subject = format!("{PREFIX}.c.raw-{}.x", RunId::generate());
        let mut out: [Vec<Duration>; 4] = std::array::from_fn(|_| Vec::with_capacity(SAMPLES));
        for i in 0..4 * SAMPLES {
            pace.tick().await;
            let t = Instant::now();
            match i % 4 {
                0 => nats.client().flush().await.expect("flush"),
                3 => {
                    js.publish(raw_subject.clone(), payload())
                        .await
                        .expect("publish")
                        .await
                        .expect("ack");
                }
                1 => {
                    log.append(&run, &ev, None).await.expect("append");
                    stream.next().await.expect("event").expect("ok");
                }
                _ => {
                    cache
                        .append_many(&raw_log, &[payload()], AppendOptions::default())
                        .await
                        .expect("append");
                }
            }
            out[i % 4].push(t.elapsed());
        }
        cache.delete(&raw_log).await.expect("delete");
        log.delete(&run).await.expect("delete");
        out
    });
    for (name, sorted) in [
        "bare core round trip (PING)",
        "append→observer (announce in append)",
        "append alone (no observer)",
        "raw JetStream publish, sync ack (the floor of an append)",
    ]
    .iter()
    .zip(results.iter_mut())
    {
        sorted.sort();
        eprintln!(
            "nats latency (1 ms pacing, {} samples) {name}: p50 {:?}, p99 {:?}, max {:?}",
            sorted.len(),
            percentile(sorted, 0.50),
            percentile(sorted, 0.99),
            sorted[sorted.len() - 1]
        );
    }
}

/// One run, `observers` observers, `events` events written through the run writer: the time
/// until every observer has the last event, with the core wake subject (`EventLog::observe`)
/// and with one ordered consumer per observer on the run's entry subjects.
fn fan_out(rt: &tokio::runtime::Runtime, observers: usize, events: u64) {
    let nats = connect(rt);
    rt.block_on(async {
        // Core wake subject: EventLog observers.
        let log = event_log(&nats, "bench-fan");
        let run = RunId::generate();
        log.create(&run, None).await.expect("create");
        let setup = Instant::now();
        let mut tasks = Vec::with_capacity(observers);
        for _ in 0..observers {
            let s = log
                .observe(&run, ObserveOptions::from(0))
                .await
                .expect("observe");
            tasks.push(tokio::spawn(s.fold((0u64, None), |(n, err), e| async move {
                match e {
                    Ok(_) => (n + 1, err),
                    Err(e) => (n, err.or(Some(e.to_string()))),
                }
            })));
        }
        let setup = setup.elapsed();
        let t = Instant::now();
        // The same appends as the ordered consumers get below: batches of 100.
        let batch: Vec<_> = (0..100).map(|_| delta()).collect();
        for _ in 0..events / 100 {
            log.append(&run, &batch, None).await.expect("append");
        }
        let rest: Vec<_> = (0..events % 100).map(|_| delta()).collect();
        if !rest.is_empty() {
            log.append(&run, &rest, None).await.expect("append");
        }
        log.append(&run, &[finish()], None).await.expect("finish");
        let written = t.elapsed();
        let (mut exact, mut failed) = (0, Vec::new());
        for task in tasks {
            match task.await.expect("observer") {
                (n, None) if n == events + 1 => exact += 1,
                (n, err) => failed.push((n, err)),
            }
        }
        eprintln!(
            "nats fan-out, core wake subject: 1 run x {observers} observers x {} events: setup {:?}, written in {:?}, all observers done after {:?} ({:.0} deliveries/s); {exact} observers exact, {} failed{}",
            events + 1,
            setup,
            written,
            t.elapsed(),
            (observers as f64 * (events + 1) as f64) / t.elapsed().as_secs_f64(),
            failed.len(),
            failed
                .first()
                .map(|(n, e)| format!(" (first: {n} events, then {e:?})"))
                .unwrap_or_default()
        );
        log.delete(&run).await.expect("delete");

        // The alternative: one ordered consumer per observer on the run's entry subjects.
        let cache = nats.server_cache();
        let name = format!("bench/fan-ordered/{}", RunId::generate());
        cache
            .append_many(&name, &[], AppendOptions::default())
            .await
            .expect("create");
        let token: String = name
            .bytes()
            .map(|b| match b {
                b'/' => "_s".to_owned(),
                b'_' => "__".to_owned(),
                b'.' => "_d".to_owned(),
                b':' => "_c".to_owned(),
                b => (b as char).to_string(),
            })
            .collect();
        let filter = format!("{PREFIX}.c.{token}.p.*");
        let js = async_nats::jetstream::new(nats.client().clone());
        let stream = js.get_stream(STREAM).await.expect("stream");
        let setup = Instant::now();
        let mut tasks = Vec::with_capacity(observers);
        for _ in 0..observers {
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: filter.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .expect("ordered consumer");
            let mut messages = consumer.messages().await.expect("messages");
            let want = events / 100 * 100;
            tasks.push(tokio::spawn(async move {
                // A message is a chunk: count the entries it holds.
                let mut n = 0;
                while n < want {
                    let m = messages.next().await.expect("end").expect("message");
                    n += durable_core::frame::decode(&m.payload).expect("a chunk").count;
                }
                n
            }));
        }
        let setup = setup.elapsed();
        let t = Instant::now();
        let batch: Vec<Bytes> = (0..100).map(|_| payload()).collect();
        for _ in 0..events / 100 {
            cache
                .append_many(&name, &batch, AppendOptions::default())
                .await
                .expect("append");
        }
        let written = t.elapsed();
        for task in tasks {
            assert_eq!(task.await.expect("consumer"), events / 100 * 100);
        }
        eprintln!(
            "nats fan-out, ordered consumer per observer: 1 run x {observers} observers x {} events: setup {:?}, written in {:?}, all observers done after {:?} ({:.0} deliveries/s)",
            events / 100 * 100,
            setup,
            written,
            t.elapsed(),
            (observers as f64 * (events / 100 * 100) as f64) / t.elapsed().as_secs_f64()
        );
        cache.delete(&name).await.expect("delete");
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = report, bench_append, bench_raw, bench_replay, bench_e2e
}

fn main() {
    let Some(url) = env_url("nats") else {
        eprintln!("nats bench skipped: DURABLE_TEST_NATS_URL is not set");
        return;
    };
    let _ = URL.set(url);
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Benchmarks against a real Redis (`DURABLE_TEST_REDIS_URL`; skipped with a message if unset).
//!
//! `DURABLE_TEST_REDIS_URL=redis://127.0.0.1:16399 cargo bench -p durable-redis --bench redis`
//!
//! - `redis_append/sequential`: one task, `ServerCache::append` of one 16-byte delta at a time
//!   (one round trip each).
//! - `redis_append/16_producers`: 16 tasks appending to the same log concurrently (G1 holds).
//! - `redis_replay/10k`: `EventLog::observe(0)` of a finished 10,000-event run, to the end.
//! - `redis_e2e/writer_10k`: one run streaming 10,000 deltas through `EventLog::writer` (batches
//!   while an append is in flight) with one observer, Redis log + Redis PubSub, until the
//!   observer has the finish event.
//! - `redis_e2e/durable_agent_10k`: a `DurableAgent` run of the scripted model streaming 10,000
//!   16-byte deltas on Redis only (log, wake-ups, run record, lease, checkpoint), drained by its
//!   observer: the multi-instance configuration end to end.
//! - latency (printed, not a criterion measurement): append → observer receipt through
//!   `EventLog` at 1 ms pacing, p50/p99/max over 2,000 events, with the wake-up announced by the
//!   append script and with a separate `PUBLISH`, beside a bare `PING` round trip and the
//!   append script's round trip alone, all interleaved sample by sample; on a 2-thread and a current-thread runtime. Run it alone with
//!   `cargo bench -p durable-redis --bench redis -- latency` (the filter skips the criterion
//!   benches).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use durable_conformance::bench::{delta, finish, payload, percentile, runtime as rt};
use durable_conformance::services::env_url;
use durable_core::{
    AppendOptions, CacheCapabilities, EventLog, LogConfig, LogSlice, ObserveOptions, RunId,
    ServerCache,
};
use durable_redis::{Redis, RedisConfig, RedisServerCache};
use futures::StreamExt;

static URL: OnceLock<String> = OnceLock::new();
const N: u64 = 10_000;

fn connect(rt: &tokio::runtime::Runtime) -> Redis {
    let url = URL.get().expect("url").clone();
    rt.block_on(RedisConfig::new(url).key_prefix("durable-bench:").connect())
        .expect("connect")
}

async fn event_log(redis: &Redis) -> EventLog {
    let mut config = LogConfig::default();
    config.namespace = "bench".to_owned();
    EventLog::new(
        Arc::new(redis.server_cache()),
        Arc::new(redis.pubsub().await.expect("pubsub")),
    )
    .with_config(config)
}

fn bench_append(c: &mut Criterion) {
    let rt = rt();
    let redis = connect(&rt);
    let cache = redis.server_cache();
    let shared: Arc<dyn ServerCache> = Arc::new(cache.clone());
    let mut g = c.benchmark_group("redis_append");
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
    g.finish();
}

fn bench_replay(c: &mut Criterion) {
    let rt = rt();
    let redis = connect(&rt);
    let log = rt.block_on(event_log(&redis));
    let run = RunId::generate();
    rt.block_on(async {
        log.create(&run, None).await.expect("create");
        let batch: Vec<_> = (0..N).map(|_| delta()).collect();
        log.append(&run, &batch, None).await.expect("append");
        log.append(&run, &[finish()], None).await.expect("finish");
    });
    let mut g = c.benchmark_group("redis_replay");
    g.throughput(Throughput::Elements(N + 1));
    let cache = redis.server_cache();
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
    let redis = connect(&rt);
    let log = rt.block_on(event_log(&redis));
    let mut g = c.benchmark_group("redis_e2e");
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
    let durable = rt.block_on(async {
        durable_core::agent::DurableAgent::builder(agent)
            .cache(redis.server_cache())
            .pubsub(redis.pubsub().await.expect("pubsub"))
            .store(redis.workflow_store())
            .log_config(config)
            .build()
            .expect("durable agent")
    });
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

/// The Redis cache with its announce capability hidden, so an `EventLog` over it publishes
/// each wake-up separately (the path every unpaired cache takes).
#[derive(Debug)]
struct SeparatePublish(RedisServerCache);

#[async_trait::async_trait]
impl ServerCache for SeparatePublish {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn capabilities(&self) -> CacheCapabilities {
        self.0.capabilities().with_announce(false)
    }
    async fn get(&self, key: &str) -> durable_core::Result<Option<Bytes>> {
        self.0.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> durable_core::Result<()> {
        self.0.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> durable_core::Result<bool> {
        self.0.delete(key).await
    }
    async fn increment(
        &self,
        key: &str,
        by: i64,
        ttl: Option<Duration>,
    ) -> durable_core::Result<i64> {
        self.0.increment(key, by, ttl).await
    }
    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> durable_core::Result<u64> {
        self.0.append_many(log, payloads, options).await
    }
    async fn read(&self, log: &str, from: u64, limit: usize) -> durable_core::Result<LogSlice> {
        self.0.read(log, from, limit).await
    }
    async fn len(&self, log: &str) -> durable_core::Result<Option<u64>> {
        self.0.len(log).await
    }
    async fn expire(&self, log: &str, ttl: Duration) -> durable_core::Result<bool> {
        self.0.expire(log, ttl).await
    }
    async fn keys(&self, prefix: &str) -> durable_core::Result<Vec<String>> {
        self.0.keys(prefix).await
    }
}

fn report_latency(_: &mut Criterion) {
    let multi = rt();
    latency("2 worker threads", &multi);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    latency("current thread", &single);
}

/// What one latency sample measures.
#[derive(Clone, Copy)]
enum Probe {
    /// A bare `PING` round trip on its own connection: the floor of this machine and server.
    Ping,
    /// `EventLog::append` with the wake-up published by the append script, until the observer
    /// has the event.
    Announce,
    /// The same with the wake-up published separately after the append.
    SeparatePublish,
    /// The append script's round trip alone (`ServerCache::append_many`, no observer): how
    /// much of the above is the server's script rather than the delivery.
    AppendOnly,
}

const PROBES: [Probe; 4] = [
    Probe::Ping,
    Probe::Announce,
    Probe::SeparatePublish,
    Probe::AppendOnly,
];

/// Append → observer latency of both wake-up paths, beside a bare `PING` and the append
/// script alone, interleaved sample by sample at 1 ms pacing so that the machine's noise hits
/// all of them alike.
fn latency(flavor: &str, rt: &tokio::runtime::Runtime) {
    const SAMPLES: usize = 2000;
    let redis = connect(rt);
    let url = URL.get().expect("url").clone();
    let mut results = rt.block_on(async {
        let pubsub = Arc::new(redis.pubsub().await.expect("pubsub"));
        let mut config = LogConfig::default();
        config.namespace = "bench".to_owned();
        let announced = EventLog::new(Arc::new(redis.server_cache()), pubsub.clone())
            .with_config(config.clone());
        let separate = EventLog::new(Arc::new(SeparatePublish(redis.server_cache())), pubsub)
            .with_config(config);
        assert!(announced.announces_in_append() && !separate.announces_in_append());
        let mut ping = redis::Client::open(url)
            .expect("url")
            .get_connection_manager()
            .await
            .expect("connect");
        let mut observed = Vec::new();
        for log in [&announced, &separate] {
            let run = RunId::generate();
            log.create(&run, None).await.expect("create");
            let stream = log
                .observe(&run, ObserveOptions::from(0))
                .await
                .expect("observe");
            observed.push((log.clone(), run, stream));
        }
        let ev = [delta()];
        let cache = redis.server_cache();
        let raw_log = format!("bench/append-only/{}", RunId::generate());
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out: [Vec<Duration>; PROBES.len()] =
            std::array::from_fn(|_| Vec::with_capacity(SAMPLES));
        for i in 0..PROBES.len() * SAMPLES {
            pace.tick().await;
            let probe = PROBES[i % PROBES.len()];
            let t = Instant::now();
            match probe {
                Probe::Ping => {
                    let _: String = redis::cmd("PING")
                        .query_async(&mut ping)
                        .await
                        .expect("ping");
                }
                Probe::Announce | Probe::SeparatePublish => {
                    let at = usize::from(matches!(probe, Probe::SeparatePublish));
                    let (log, run, stream) = &mut observed[at];
                    log.append(run, &ev, None).await.expect("append");
                    stream.next().await.expect("event").expect("ok");
                }
                Probe::AppendOnly => {
                    cache
                        .append_many(&raw_log, &[payload()], AppendOptions::default())
                        .await
                        .expect("append");
                }
            }
            out[i % PROBES.len()].push(t.elapsed());
        }
        cache.delete(&raw_log).await.expect("delete");
        for (log, run, _) in observed {
            log.delete(&run).await.expect("delete");
        }
        out
    });
    for (name, sorted) in [
        "bare PING",
        "append→observer, announce in append",
        "append→observer, separate PUBLISH",
        "append script alone (no observer)",
    ]
    .iter()
    .zip(results.iter_mut())
    {
        sorted.sort();
        eprintln!(
            "redis latency ({flavor}, 1 ms pacing, {} samples) {name}: p50 {:?}, p99 {:?}, max {:?}",
            sorted.len(),
            percentile(sorted, 0.50),
            percentile(sorted, 0.99),
            sorted[sorted.len() - 1]
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = report_latency, bench_append, bench_replay, bench_e2e
}

fn main() {
    let Some(url) = env_url("redis") else {
        eprintln!("redis bench skipped: DURABLE_TEST_REDIS_URL is not set");
        return;
    };
    let _ = URL.set(url);
    benches();
    Criterion::default().configure_from_args().final_summary();
}

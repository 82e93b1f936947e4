//! Benchmarks against a real Kafka-protocol broker (`DURABLE_TEST_KAFKA_URL`; skipped with a
//! message if unset).
//!
//! `DURABLE_TEST_KAFKA_URL=127.0.0.1:<port> cargo bench -p durable-kafka --bench kafka`
//!
//! - `kafka_publish/sequential`: one task, `KafkaPubSub::publish` of a 40-byte payload at a
//!   time, each awaiting the broker's acknowledgement (`acks=all`, idempotent).
//! - `kafka_publish/64_concurrent`: 64 tasks publishing to 64 topics at once (linger batching).
//! - `kafka_publish/raw_rdkafka_1k`: the baseline: a plain rdkafka `FutureProducer` (same
//!   idempotence, acks and linger) enqueues 1,000 records and awaits every delivery report.
//! - `kafka_publish/pubsub_1k`: the same 1,000 records through `KafkaPubSub::publish`, all in
//!   flight at once.
//! - `kafka_e2e/durable_agent_10k`: a `DurableAgent` run streaming 10,000 deltas, run log and
//!   records in memory, wake-ups on Kafka, drained by its caller's stream.
//! - latency (printed): publish → subscriber receipt, p50/p99/max over 1,000 messages at 1 ms
//!   pacing, printed before the criterion benches run.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use durable_conformance::bench::{payload, runtime as rt};
use durable_conformance::services::env_url;
use durable_core::{Delivery, PubSub, RunId};
use durable_kafka::{KafkaConfig, KafkaPubSub};
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

static URL: OnceLock<String> = OnceLock::new();

fn url() -> String {
    URL.get().expect("url").clone()
}

async fn connect() -> KafkaPubSub {
    KafkaConfig::new(url())
        .topic_prefix("durable-bench.")
        .connect()
        .await
        .expect("connect")
}

fn topic(what: &str) -> String {
    format!("bench.{what}.{}", RunId::generate().as_str())
}

fn report_latency(_: &mut Criterion) {
    let rt = rt();
    rt.block_on(async {
        let p = connect().await;
        let t = topic("latency");
        let mut sub = p.subscribe(&t).await.expect("subscribe");
        // Warm up: topic metadata, connections.
        p.publish(&t, payload()).await.expect("publish");
        let _ = sub.next().await;
        let mut samples = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let started = Instant::now();
            p.publish(&t, payload()).await.expect("publish");
            loop {
                match sub.next().await {
                    Some(Delivery::Message(_)) => break,
                    Some(Delivery::Lagged) => continue,
                    None => panic!("subscription ended"),
                }
            }
            samples.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.sort();
        let q = |f: f64| samples[((samples.len() as f64 - 1.0) * f) as usize];
        println!(
            "kafka latency publish→subscriber (1,000 at 1 ms pacing): p50 {:?} p99 {:?} max {:?}",
            q(0.5),
            q(0.99),
            q(1.0)
        );
    });
}

fn bench_publish(c: &mut Criterion) {
    let rt = rt();
    let p = rt.block_on(connect());
    let mut g = c.benchmark_group("kafka_publish");
    let t = topic("seq");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sequential", |b| {
        b.to_async(&rt)
            .iter(|| async { p.publish(&t, payload()).await.expect("publish") });
    });
    let topics: Vec<String> = (0..64).map(|_| topic("conc")).collect();
    rt.block_on(async {
        for t in &topics {
            p.publish(t, payload()).await.expect("warm up");
        }
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_concurrent", |b| {
        b.to_async(&rt).iter(|| async {
            futures::future::try_join_all(topics.iter().map(|t| p.publish(t, payload())))
                .await
                .expect("publish");
        });
    });
    let raw_topic = format!("durable-bench.{}", topic("raw"));
    let t1k = topic("1k");
    rt.block_on(async {
        p.publish(&raw_topic["durable-bench.".len()..], payload())
            .await
            .expect("create");
        p.publish(&t1k, payload()).await.expect("create");
    });
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", url())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("raw_rdkafka_1k", |b| {
        b.to_async(&rt).iter(|| async {
            let body = payload();
            futures::future::try_join_all((0..1000).map(|_| {
                raw.send(
                    FutureRecord::<[u8], [u8]>::to(&raw_topic)
                        .key(&b"k"[..])
                        .payload(&body[..])
                        .partition(0),
                    Timeout::After(Duration::from_secs(30)),
                )
            }))
            .await
            .expect("send");
        });
    });
    g.bench_function("pubsub_1k", |b| {
        b.to_async(&rt).iter(|| async {
            futures::future::try_join_all((0..1000).map(|_| p.publish(&t1k, payload())))
                .await
                .expect("publish");
        });
    });
    g.finish();
}

fn bench_e2e(c: &mut Criterion) {
    const N: u64 = 10_000;
    let rt = rt();
    let mut g = c.benchmark_group("kafka_e2e");
    g.throughput(Throughput::Elements(N));
    let mut config = durable_core::LogConfig::default();
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
            .pubsub(connect().await)
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = report_latency, bench_publish, bench_e2e
}

fn main() {
    let Some(url) = env_url("kafka") else {
        eprintln!("kafka bench skipped: DURABLE_TEST_KAFKA_URL is not set");
        return;
    };
    let _ = URL.set(url);
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Latency as a user of a durable run feels it, on the in-memory defaults and a 2-worker
//! multi-threaded runtime, consumer in the same process:
//!
//! - `latency/time_to_first_event`: from `DurableAgent::stream` being called to the first event
//!   arriving at the caller (p50/p99 over 2,000 runs are printed; criterion reports the mean).
//! - `latency/delivery_1ms_pacing`: model emission → consumer, for 16-byte text deltas emitted
//!   every 1 ms (p50/p99/max over 5,000 deltas are printed).
//!
//! `cargo bench -p durable-core --bench latency`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion};
use durable_core::agent::{
    Agent, DurableAgent, FinishReason, LanguageModel, ModelChunk, ModelRequest, ModelStream,
    ScriptedModel, StreamOptions, Turn, Usage,
};
use durable_core::EventKind;
use futures::StreamExt;

const DELTA: &str = "0123456789abcdef";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn durable(model: impl LanguageModel) -> DurableAgent {
    let agent = Agent::builder()
        .id("bench")
        .model(model)
        .build()
        .expect("agent");
    DurableAgent::builder(agent)
        .retention(Duration::from_secs(1))
        .build()
        .expect("durable agent")
}

/// Emits `n` 16-byte deltas at a fixed pace, recording the instant each one is handed over.
#[derive(Debug)]
struct PacedModel {
    n: usize,
    pace: Duration,
    emitted: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait]
impl LanguageModel for PacedModel {
    fn model_id(&self) -> &str {
        "paced"
    }

    async fn stream(&self, _request: ModelRequest) -> durable_core::Result<ModelStream> {
        let (n, pace, emitted) = (self.n, self.pace, self.emitted.clone());
        let mut interval = tokio::time::interval(pace);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(futures::stream::unfold((0, interval), move |(i, mut iv)| {
            let emitted = emitted.clone();
            async move {
                if i > n {
                    return None;
                }
                if i == n {
                    let finish = ModelChunk::Finish {
                        reason: FinishReason::Stop,
                        usage: Usage::default(),
                    };
                    return Some((Ok(finish), (i + 1, iv)));
                }
                iv.tick().await;
                emitted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Instant::now());
                let chunk = ModelChunk::TextDelta {
                    text: DELTA.to_owned(),
                };
                Some((Ok(chunk), (i + 1, iv)))
            }
        })
        .boxed())
    }
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *v.last().expect("samples"))
}

fn bench_latency(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("latency");

    let quick = durable(ScriptedModel::new([Turn::new().deltas(4, DELTA)]));
    let ttfe = rt.block_on(async {
        let mut samples = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t0 = Instant::now();
            let mut run = quick
                .stream("go", StreamOptions::new())
                .await
                .expect("stream");
            run.next().await.expect("first").expect("event");
            samples.push(t0.elapsed());
            while run.next().await.is_some() {}
        }
        samples
    });
    let (p50, p99, max) = percentiles(ttfe);
    println!("latency time to first event over 2000 runs: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    g.bench_function("time_to_first_event", |b| {
        b.to_async(&rt).iter(|| async {
            let mut run = quick
                .stream("go", StreamOptions::new())
                .await
                .expect("stream");
            let first = run.next().await;
            while run.next().await.is_some() {}
            first
        });
    });

    let emitted = Arc::new(Mutex::new(Vec::new()));
    let paced = durable(PacedModel {
        n: 5000,
        pace: Duration::from_millis(1),
        emitted: emitted.clone(),
    });
    let delivery = rt.block_on(async {
        let mut run = paced
            .stream("go", StreamOptions::new())
            .await
            .expect("stream");
        let mut received = Vec::with_capacity(5000);
        while let Some(e) = run.next().await {
            if e.expect("event").kind == EventKind::TextDelta {
                received.push(Instant::now());
            }
        }
        let emitted = emitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(emitted.len(), received.len(), "every delta arrives");
        received
            .iter()
            .zip(&emitted)
            .map(|(r, e)| r.duration_since(*e))
            .collect::<Vec<_>>()
    });
    let (p50, p99, max) = percentiles(delivery);
    println!(
        "latency delivery at 1 ms pacing over 5000 deltas: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(4));
    targets = bench_latency
}
criterion_main!(benches);

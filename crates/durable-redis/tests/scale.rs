//! Wake-ups at scale: many concurrent runs on one `EventLog` (one Redis cache, one
//! `RedisPubSub`), each with a live observer attached before its first event and a late one
//! attached in the middle. Every observer must get exactly the run's cursors `0..=n`, with no
//! error and no hang, however many `SUBSCRIBE`s are queued at once.
//!
//! `thousand_runs_…` runs in every `cargo test`; the 10,000-run version runs with
//! `DURABLE_SCALE=1`:
//!
//! ```sh
//! DURABLE_SCALE=1 DURABLE_TEST_REDIS_URL=redis://127.0.0.1:6391 DURABLE_TEST_REQUIRE=1 \
//!   cargo test -p durable-redis --release --test scale -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_conformance::harness::require_backends;
use durable_conformance::services::env_url;
use durable_core::{
    Error, EventKind, EventLog, EventStream, LogConfig, NewEvent, ObserveOptions, RunId,
};
use durable_redis::RedisConfig;
use futures::StreamExt;
use tokio::sync::Barrier;

/// Events per run before the late observer attaches, and after.
const BEFORE: u64 = 3;
const AFTER: u64 = 3;

fn delta(i: u64) -> NewEvent {
    NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "i": i })).unwrap()
}

/// Drain an observer to its end; the cursors it saw must be exactly `0..=last`.
async fn drain(mut stream: EventStream, last: u64) -> Result<(), String> {
    let mut next = 0;
    while let Some(e) = stream.next().await {
        let e = e.map_err(|e: Error| format!("observer failed: {e}"))?;
        if e.cursor != next {
            return Err(format!("cursor {} where {next} was due", e.cursor));
        }
        next += 1;
    }
    if next != last + 1 {
        return Err(format!(
            "stream ended after {next} events, expected {}",
            last + 1
        ));
    }
    Ok(())
}

/// One run: live observer, `BEFORE` events, late observer, `AFTER` events and `finish`. The
/// runs pass `phase` together before attaching each kind of observer, so every run's
/// `SUBSCRIBE` (and every late observer's barrier) is requested in one burst: the worst case
/// for the subscription connection.
///
/// Returns how long the late observer's `observe` took (its subscription is part of it).
async fn one_run(log: EventLog, phase: Arc<Barrier>) -> Result<Duration, String> {
    let run = RunId::generate();
    let e = |e: Error| e.to_string();
    log.create(&run, None).await.map_err(e)?;
    phase.wait().await;
    let live = log
        .observe(&run, ObserveOptions::from(0))
        .await
        .map_err(e)?;
    let live = tokio::spawn(drain(live, BEFORE + AFTER));
    for i in 0..BEFORE {
        log.append(&run, &[delta(i)], None).await.map_err(e)?;
    }
    phase.wait().await;
    let attach = Instant::now();
    let late = log
        .observe(&run, ObserveOptions::from(0))
        .await
        .map_err(e)?;
    let attach = attach.elapsed();
    let late = tokio::spawn(drain(late, BEFORE + AFTER));
    for i in BEFORE..BEFORE + AFTER {
        log.append(&run, &[delta(i)], None).await.map_err(e)?;
    }
    let finish = NewEvent::json(EventKind::Finish, &serde_json::json!({})).unwrap();
    log.append(&run, &[finish], None).await.map_err(e)?;
    let live = live.await.map_err(|e| e.to_string())?;
    let late = late.await.map_err(|e| e.to_string())?;
    live.map_err(|e| format!("live {e}"))?;
    late.map_err(|e| format!("late {e}"))?;
    log.delete(&run).await.map_err(e)?;
    Ok(attach)
}

/// Run `runs` runs at once; panics unless every one ends well within `deadline`.
async fn runs_with_live_and_late_observers(url: &str, runs: usize, deadline: Duration) {
    let redis = RedisConfig::new(url)
        .key_prefix("durable-scale-test:")
        .connect()
        .await
        .unwrap();
    let mut config = LogConfig::default();
    config.namespace = "scale".to_owned();
    let log = EventLog::new(
        Arc::new(redis.server_cache()),
        Arc::new(redis.pubsub().await.unwrap()),
    )
    .with_config(config);
    let started = Instant::now();
    let phase = Arc::new(Barrier::new(runs));
    let tasks: Vec<_> = (0..runs)
        .map(|_| tokio::spawn(one_run(log.clone(), phase.clone())))
        .collect();
    let (mut errors, mut hangs, mut attach) = (Vec::new(), 0usize, Vec::with_capacity(runs));
    let end = tokio::time::Instant::now() + deadline;
    for t in tasks {
        match tokio::time::timeout_at(end, t).await {
            Ok(Ok(Ok(t))) => attach.push(t),
            Ok(Ok(Err(e))) => errors.push(e),
            Ok(Err(e)) => errors.push(format!("run task panicked: {e}")),
            Err(_) => hangs += 1,
        }
    }
    let elapsed = started.elapsed();
    attach.sort();
    let pct = |p: f64| {
        attach
            .get(((attach.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "{runs} runs with a live and a late observer each: {} errors, {hangs} hangs, {elapsed:.2?}; \
         late observe() in one burst: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        errors.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    errors.sort();
    errors.dedup();
    assert!(
        errors.is_empty() && hangs == 0,
        "{hangs} runs hung; distinct errors: {:?}",
        &errors[..errors.len().min(5)]
    );
}

fn url_or_skip() -> Option<String> {
    let url = env_url("redis");
    if url.is_none() {
        assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
        eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_runs_with_live_and_late_observers() {
    let Some(url) = url_or_skip() else { return };
    runs_with_live_and_late_observers(&url, 1_000, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_with_live_and_late_observers() {
    if std::env::var("DURABLE_SCALE").ok().as_deref() != Some("1") {
        return eprintln!("skipped: set DURABLE_SCALE=1 to run 10,000 concurrent runs");
    }
    let Some(url) = url_or_skip() else { return };
    runs_with_live_and_late_observers(&url, 10_000, Duration::from_secs(300)).await;
}

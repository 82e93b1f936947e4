//! What the backend crates' criterion benches share (`benches/<backend>.rs`): the runtime they
//! measure on, the events and payloads they append, and percentiles of measured latencies.
//! The cross-backend workloads through `DurableAgent` are in `durable-bench`.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{EventKind, Json, NewEvent, ServerCacheExt as _};

/// The 16 bytes of text every benchmark delta carries.
pub const DELTA_TEXT: &str = "0123456789abcdef";

/// The runtime every bench measures on: multi-threaded, two workers (the CI machine's cores).
///
/// # Panics
/// If the runtime cannot be built (a bench setup failure).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A `text-delta` event of [`DELTA_TEXT`] (built once, cloned cheaply).
///
/// # Panics
/// Never: the JSON is a constant.
pub fn delta() -> NewEvent {
    static DELTA: OnceLock<NewEvent> = OnceLock::new();
    DELTA
        .get_or_init(|| {
            NewEvent::new(
                EventKind::TextDelta,
                Json::from_text(r#""0123456789abcdef""#).expect("json"),
            )
        })
        .clone()
}

/// A `finish` event with no data.
pub fn finish() -> NewEvent {
    NewEvent::new(EventKind::Finish, Json::null())
}

/// A stored-event-sized raw payload for `ServerCache::append` benches.
pub fn payload() -> Bytes {
    Bytes::from_static(br#"{"k":"text-delta","d":"0123456789abcdef"}"#)
}

/// The `p` quantile (0.0..=1.0, nearest rank) of `sorted`; zero for an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    let i = ((last as f64) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i.min(last)]
}

/// `p50 …, p99 …, max …` of `samples` (sorted here), as the benches print them.
pub fn summary(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    format!(
        "p50 {:?}, p99 {:?}, max {:?}",
        percentile(samples, 0.50),
        percentile(samples, 0.99),
        samples.last().copied().unwrap_or_default()
    )
}

/// Append `n` entries of [`payload`] to `log` one after another, then delete it.
///
/// # Panics
/// On any backend error (bench code).
pub async fn append_sequential(cache: &dyn durable_core::ServerCache, log: &str, n: u64) {
    for _ in 0..n {
        cache.append(log, payload()).await.expect("append");
    }
    cache.delete(log).await.expect("delete");
}

/// Append `n` entries of [`payload`] to `log` from `producers` tasks at once, check none was
/// lost, then delete it.
///
/// # Panics
/// On any backend error or a lost entry (bench code).
pub async fn append_concurrent(
    cache: std::sync::Arc<dyn durable_core::ServerCache>,
    log: &str,
    n: u64,
    producers: u64,
) {
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let (cache, log) = (cache.clone(), log.to_owned());
            tokio::spawn(async move {
                for _ in 0..n / producers {
                    cache.append(&log, payload()).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("producer");
    }
    assert_eq!(
        cache.len(log).await.expect("len"),
        Some(n / producers * producers)
    );
    cache.delete(log).await.expect("delete");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_total() {
        let d: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 2.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn delta_is_sixteen_bytes_of_text() {
        assert_eq!(delta().data.as_str(), r#""0123456789abcdef""#);
    }
}

//! More atomic batches at once than nats-server keeps in flight per stream (50 by default):
//! 200 multi-entry batches to 200 logs at once from one process, two rounds. Without a
//! bound the server drops batches past its limit and their appends time out; a process keeps
//! at most 32 in flight, so every append lands at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{AppendOptions, ServerCache};
use durable_nats::NatsConfig;

const LOGS: usize = 200;
const ROUNDS: usize = 2;
const BATCH: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_batches_than_the_server_keeps_in_flight_all_land() {
    let Some(url) = durable_conformance::harness::backend_url("nats") else {
        return;
    };
    let name = |i: usize| format!("batches-{}-{i}", std::process::id());
    let nats = NatsConfig::new(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let cache: Arc<dyn ServerCache> = Arc::new(nats.server_cache());
    let payloads: Vec<Bytes> = (0..BATCH).map(|i| Bytes::from(format!("e{i}"))).collect();
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..LOGS)
            .map(|i| {
                let cache = cache.clone();
                let payloads = payloads.clone();
                let log = name(i);
                tokio::spawn(async move {
                    cache
                        .append_many(&log, &payloads, AppendOptions::default())
                        .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let first = t.await.unwrap().unwrap_or_else(|e| panic!("log{i}: {e}"));
            assert_eq!(first, (round * BATCH) as u64, "log{i}");
        }
    }
    for i in 0..LOGS {
        let slice = cache.read(&name(i), 0, 1000).await.unwrap();
        assert_eq!(slice.entries.len(), ROUNDS * BATCH, "log{i}");
    }
}

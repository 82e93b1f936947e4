//! The frame the append script publishes is byte-identical to `durable_core::frame::encode`,
//! at and around the carry-or-range threshold, for empty payloads, batches above the script's
//! 1,000-argument `RPUSH` chunk, and any bytes; and a cache and pubsub from one `Redis` are
//! paired, so an `EventLog` over them announces inside the append.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_conformance::harness::require_backends;
use durable_conformance::services::env_url;
use durable_core::{
    frame, Announce, AppendOptions, Delivery, EventLog, PubSub, ServerCache, Subscription,
};
use durable_redis::RedisConfig;
use futures::StreamExt;

const DEADLINE: Duration = Duration::from_secs(10);

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn next_raw(sub: &mut Subscription) -> Bytes {
    match tokio::time::timeout(DEADLINE, sub.next()).await.unwrap() {
        Some(Delivery::Message(raw)) => raw,
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_frames_are_byte_identical_to_frame_encode() {
    let Some(url) = env_url("redis") else {
        assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
        return eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    };
    let redis = RedisConfig::new(url)
        .key_prefix("durable-announce-test:")
        .connect()
        .await
        .unwrap();
    let (cache, pubsub) = (redis.server_cache(), redis.pubsub().await.unwrap());
    assert!(cache.capabilities().announce);
    assert_eq!(cache.announce_domain(), pubsub.announce_domain());
    let log = unique("frames");
    let topic = unique("frames.topic");
    let mut sub = pubsub.subscribe(&topic).await.unwrap();
    cache
        .append_many(&log, &[], AppendOptions::default())
        .await
        .unwrap();
    let two = vec![Bytes::from_static(b"{}"), Bytes::from_static(b"")];
    let awkward = vec![
        Bytes::from_static(b"a\nb"),
        Bytes::from_static(b"\r\n\0"),
        Bytes::from(vec![b'x'; 12_345]),
    ];
    let many: Vec<Bytes> = (0..2_500)
        .map(|i| Bytes::from(format!("{{\"i\":{i}}}")))
        .collect();
    let cases: Vec<(Vec<Bytes>, usize)> = vec![
        // body_len(two) == 6: at the threshold the events are carried, one below they are not.
        (two.clone(), 6),
        (two.clone(), 5),
        (two, 0),
        (awkward.clone(), usize::MAX),
        (awkward, 100),
        (many.clone(), 1 << 20),
        (many, 10),
    ];
    let mut next = 0u64;
    for (payloads, max) in cases {
        let first = cache
            .append_announce(
                &log,
                &payloads,
                AppendOptions::default().with_must_exist(),
                Announce::new(&topic, max),
            )
            .await
            .unwrap();
        assert_eq!(first, next);
        let raw = next_raw(&mut sub).await;
        assert_eq!(raw, frame::encode(first, &payloads, max), "max {max}");
        next += payloads.len() as u64;
    }
    assert!(cache.delete(&log).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_and_pubsub_of_one_connection_announce_in_the_append() {
    let Some(url) = env_url("redis") else {
        assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
        return eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    };
    let redis = RedisConfig::new(&url).connect().await.unwrap();
    let log = EventLog::new(
        Arc::new(redis.server_cache()),
        Arc::new(redis.pubsub().await.unwrap()),
    );
    assert!(log.announces_in_append());
    // Another prefix is another channel space: never paired.
    let other = RedisConfig::new(&url)
        .key_prefix("elsewhere:")
        .connect()
        .await
        .unwrap();
    let log = EventLog::new(
        Arc::new(redis.server_cache()),
        Arc::new(other.pubsub().await.unwrap()),
    );
    assert!(!log.announces_in_append());
}

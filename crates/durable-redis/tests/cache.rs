//! Redis-specific edges of the cache contract beyond the conformance suite: the in-memory
//! reference's answers for a non-integer or overflowing `increment`, and `expire`, `len` and
//! `read` on a key's name, with nothing changed by a rejected operation.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use durable_conformance::harness::require_backends;
use durable_conformance::services::env_url;
use durable_core::{AppendOptions, ErrorKind, ServerCache};
use durable_redis::RedisConfig;

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_key_operations_match_the_reference_and_change_nothing() {
    let Some(url) = env_url("redis") else {
        assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
        return eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    };
    let redis = RedisConfig::new(url)
        .key_prefix("durable-cache-test:")
        .connect()
        .await
        .unwrap();
    let cache = redis.server_cache();
    let text = unique("text");
    cache
        .set(&text, Bytes::from_static(b"abc"), None)
        .await
        .unwrap();
    let e = cache.increment(&text, 1, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(
        cache.get(&text).await.unwrap().as_deref(),
        Some(&b"abc"[..])
    );

    let big = unique("big");
    cache.increment(&big, i64::MAX, None).await.unwrap();
    let e = cache.increment(&big, 1, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(cache.increment(&big, 0, None).await.unwrap(), i64::MAX);

    for (op, e) in [
        (
            "expire",
            cache
                .expire(&text, std::time::Duration::from_secs(1))
                .await
                .unwrap_err(),
        ),
        ("len", cache.len(&text).await.unwrap_err()),
        ("read", cache.read(&text, 0, 1).await.unwrap_err()),
    ] {
        assert_eq!(e.kind(), ErrorKind::Conflict, "{op}: {e}");
    }
    // An empty log has only its companion: still a log, so key operations conflict.
    let empty = unique("empty-log");
    cache
        .append_many(&empty, &[], AppendOptions::default())
        .await
        .unwrap();
    let e = cache.get(&empty).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(cache.len(&empty).await.unwrap(), Some(0));
    for k in [&text, &big, &empty] {
        assert!(cache.delete(k).await.unwrap());
    }
}

//! The `tls` feature: with it, a `rediss://` URL reaches a TLS handshake (rustls has its crypto
//! provider, so nothing panics), and a server that does not speak TLS is a clean error; without
//! it, a `rediss://` URL is `InvalidInput` at connect.

#![allow(clippy::unwrap_used)]

use durable_conformance::harness::require_backends;
use durable_conformance::services::env_url;
use durable_core::ErrorKind;
use durable_redis::RedisConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_follow_the_tls_feature() {
    let Some(url) = env_url("redis") else {
        assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
        return eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    };
    let Some(rest) = url.strip_prefix("redis://") else {
        return eprintln!("skipped: DURABLE_TEST_REDIS_URL is not a plain redis:// URL");
    };
    // The plain test server, addressed over TLS: the handshake must fail (here it times out:
    // the server waits for the end of an inline command), never hang or panic.
    let tls_url = format!("rediss://{rest}");
    let e = RedisConfig::new(tls_url)
        .connect_timeout(std::time::Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    eprintln!("rediss:// to a plain server: {e}");
    if cfg!(feature = "tls") {
        assert_ne!(e.kind(), ErrorKind::InvalidInput, "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
}

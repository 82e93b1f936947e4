//! The whole conformance suite against a real Redis (`DURABLE_TEST_REDIS_URL`): cache, pubsub
//! and store are all Redis.

use durable_redis::RedisConfig;

async fn backend() -> Result<durable_conformance::Backend, String> {
    let url = durable_conformance::services::env_url("redis")
        .ok_or("DURABLE_TEST_REDIS_URL is not set")?;
    let redis = RedisConfig::new(url)
        .key_prefix("durable-test:")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let pubsub = redis.pubsub().await.map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("redis")
        .cache(redis.server_cache())
        .pubsub(pubsub)
        .store(redis.workflow_store()))
}

durable_conformance::suite!(backend);

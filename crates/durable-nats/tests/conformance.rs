//! The whole conformance suite against a real NATS server with JetStream
//! (`DURABLE_TEST_NATS_URL`): cache, pubsub and store are all NATS.

use durable_nats::NatsConfig;

async fn backend() -> Result<durable_conformance::Backend, String> {
    let url =
        durable_conformance::services::env_url("nats").ok_or("DURABLE_TEST_NATS_URL is not set")?;
    let nats = NatsConfig::new(url)
        .subject_prefix("durable-test")
        .names("DT_LOGS", "DT_QUEUES", "DT_RUNS")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("nats")
        .cache(nats.server_cache())
        .pubsub(nats.pubsub())
        .store(nats.workflow_store()))
}

durable_conformance::suite!(backend);

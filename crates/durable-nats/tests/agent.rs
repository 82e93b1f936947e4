//! Durable agents on NATS only (run log, wake-ups, work queue and run records): every
//! durable-agent scenario of the conformance suite.

use durable_nats::NatsConfig;

async fn nats() -> Result<durable_conformance::Backend, String> {
    let url =
        durable_conformance::services::env_url("nats").ok_or("DURABLE_TEST_NATS_URL is not set")?;
    let nats = NatsConfig::new(url)
        .subject_prefix("durable-agent-test")
        .names("DA_LOGS", "DA_QUEUES", "DA_RUNS")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("nats")
        .cache(nats.server_cache())
        .pubsub(nats.pubsub())
        .store(nats.workflow_store()))
}

durable_conformance::agent_suite!(nats);

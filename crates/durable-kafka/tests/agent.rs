//! Durable agents with Kafka carrying the wake-ups, the abort control topic and the evented
//! work queue (`DURABLE_TEST_KAFKA_URL`); the run log and run records are in memory, shared by
//! every instance of a scenario.

use durable_kafka::KafkaConfig;

async fn kafka() -> Result<durable_conformance::Backend, String> {
    let url = durable_conformance::services::env_url("kafka")
        .ok_or("DURABLE_TEST_KAFKA_URL is not set")?;
    let kafka = KafkaConfig::new(url)
        .topic_prefix("durable-agent-test.")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("kafka").pubsub(kafka))
}

durable_conformance::agent_suite!(kafka);

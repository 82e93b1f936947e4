//! The conformance suite against a real Kafka-protocol broker (`DURABLE_TEST_KAFKA_URL`, the
//! bootstrap servers; `cargo xtask test` starts tansu). Kafka is the PubSub only: the run log
//! and the run records are the in-memory reference parts (Kafka has no `ServerCache` or
//! `WorkflowStore` here, see the crate README), so every cache and store case skips as
//! "backend has no ServerCache/WorkflowStore" and every event-log case runs with Kafka
//! carrying the wake-ups.

use durable_kafka::KafkaConfig;

async fn backend() -> Result<durable_conformance::Backend, String> {
    let url = durable_conformance::services::env_url("kafka")
        .ok_or("DURABLE_TEST_KAFKA_URL is not set")?;
    let kafka = KafkaConfig::new(url)
        .topic_prefix("durable-test.")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("kafka").pubsub(kafka))
}

durable_conformance::suite!(backend);

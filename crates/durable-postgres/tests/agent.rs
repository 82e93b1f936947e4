//! Durable agents on PostgreSQL only (run log, wake-ups, work queue and run records): every
//! durable-agent scenario of the conformance suite.

mod support;

async fn backend() -> Result<durable_conformance::Backend, String> {
    support::backend("agent").await
}

durable_conformance::agent_suite!(backend);

//! The whole conformance suite against a real PostgreSQL (`DURABLE_TEST_POSTGRES_URL`): cache,
//! pubsub and store are all PostgreSQL, in a schema unique to this test process.

mod support;

async fn backend() -> Result<durable_conformance::Backend, String> {
    support::backend("conf").await
}

durable_conformance::suite!(backend);

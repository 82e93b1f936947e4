//! The whole conformance suite and every durable-agent scenario through a real PgBouncer in
//! transaction pooling mode (`DURABLE_TEST_PGBOUNCER_URL`, started by `cargo xtask test`),
//! with [`PostgresConfig::behind_pooler`](durable_postgres::PostgresConfig::behind_pooler): no
//! `LISTEN`, no named prepared statements, the schema from the database's `search_path`, and
//! observers of other instances woken by the event log's idle re-read.

mod support;

async fn backend() -> Result<durable_conformance::Backend, String> {
    support::pooled_backend("pool").await
}

durable_conformance::suite!(backend);

mod agent {
    durable_conformance::agent_suite!(super::backend);
}

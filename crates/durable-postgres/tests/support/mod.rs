//! Shared by the integration tests: the server from `DURABLE_TEST_POSTGRES_URL` and a schema
//! unique to this test process, so concurrent test binaries never see each other's rows.

#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;

use durable_postgres::{Postgres, PostgresConfig};

/// The URL of the server under test.
pub fn url() -> Option<String> {
    durable_conformance::services::env_url("postgres")
}

/// A schema unique to this process and test binary.
pub fn schema(binary: &str) -> String {
    static SUFFIX: OnceLock<String> = OnceLock::new();
    let suffix = SUFFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}_{nanos:x}", std::process::id())
    });
    format!("t_{binary}_{suffix}")
}

/// Connect (and migrate) into this process's schema for `binary`.
pub async fn connect(binary: &str) -> Result<Postgres, String> {
    let url = url().ok_or("DURABLE_TEST_POSTGRES_URL is not set")?;
    PostgresConfig::new(url)
        .schema(schema(binary))
        .max_connections(8)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Cache (announcing), pubsub and store, all on PostgreSQL.
pub async fn backend(binary: &str) -> Result<durable_conformance::Backend, String> {
    let pg = connect(binary).await?;
    let pubsub = pg.pubsub().await.map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("postgres")
        .cache(pg.server_cache().with_announce())
        .pubsub(pubsub)
        .store(pg.workflow_store()))
}

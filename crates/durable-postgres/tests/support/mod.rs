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

/// The schema the pooled database's `search_path` names.
pub const POOLED_SCHEMA: &str = "durable";

/// A database of this test process reached through PgBouncer in transaction mode
/// (`DURABLE_TEST_PGBOUNCER_URL`, in front of `DURABLE_TEST_POSTGRES_URL`'s server): created
/// and migrated through a direct connection once, with `ALTER DATABASE … SET search_path`
/// naming [`POOLED_SCHEMA`], as a deployment behind a pooler would be set up. Returns the
/// pooled URL of that database.
pub async fn pooled_database(binary: &str) -> Result<String, String> {
    static DB: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let direct = url().ok_or("DURABLE_TEST_POSTGRES_URL is not set")?;
    let pooled = durable_conformance::services::env_url_var("DURABLE_TEST_PGBOUNCER_URL")
        .ok_or("DURABLE_TEST_PGBOUNCER_URL is not set (cargo xtask test starts PgBouncer)")?;
    let name = DB
        .get_or_try_init(|| async {
            let name = schema(binary);
            let admin = PostgresConfig::new(direct.clone())
                .max_connections(1)
                .migrate(false)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            // A plain identifier made of [a-z0-9_]: nothing to quote.
            for sql in [
                format!("CREATE DATABASE {name}"),
                format!("ALTER DATABASE {name} SET search_path = {POOLED_SCHEMA}"),
            ] {
                sqlx::query(&sql)
                    .execute(admin.pool())
                    .await
                    .map_err(|e| format!("{sql}: {e}"))?;
            }
            PostgresConfig::new(with_database(&direct, &name))
                .schema(POOLED_SCHEMA)
                .max_connections(1)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(name)
        })
        .await?;
    Ok(with_database(&pooled, name))
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Cache (announcing), pubsub and store through PgBouncer with
/// [`PostgresConfig::behind_pooler`].
pub async fn pooled_backend(binary: &str) -> Result<durable_conformance::Backend, String> {
    let url = pooled_database(binary).await?;
    let pg = PostgresConfig::new(url)
        .schema(POOLED_SCHEMA)
        .behind_pooler()
        .max_connections(8)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let pubsub = pg.pubsub().await.map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("postgres-pgbouncer")
        .cache(pg.server_cache().with_announce())
        .pubsub(pubsub)
        .store(pg.workflow_store()))
}

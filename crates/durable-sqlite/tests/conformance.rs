//! The whole conformance suite on a SQLite file in a fresh temporary directory: cache, store
//! and the paired in-process pubsub of one `SqliteBackend`.

mod support;

async fn backend() -> Result<durable_conformance::Backend, String> {
    let path = support::temp_dir("conformance").join("durable.db");
    let sqlite = durable_sqlite::SqliteBackend::open_async(durable_sqlite::SqliteConfig::new(path))
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("sqlite")
        .cache(sqlite.server_cache())
        .pubsub(sqlite.pubsub())
        .store(sqlite.workflow_store()))
}

durable_conformance::suite!(backend);

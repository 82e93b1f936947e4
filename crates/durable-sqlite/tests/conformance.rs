//! The whole conformance suite on a SQLite file in a fresh temporary directory: cache, store
//! and the paired in-process pubsub of one `SqliteBackend`.

mod support;

thread_local! {
    /// One database file per test: libtest runs each test on its own thread, and the second
    /// instance the harness opens for the `shared_*` cases must see the same file.
    static DB: std::path::PathBuf = support::temp_dir("conformance").join("durable.db");
}

async fn backend() -> Result<durable_conformance::Backend, String> {
    let path = DB.with(Clone::clone);
    let sqlite = durable_sqlite::SqliteBackend::open_async(durable_sqlite::SqliteConfig::new(path))
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("sqlite")
        .cache(sqlite.server_cache())
        .pubsub(sqlite.pubsub())
        .store(sqlite.workflow_store()))
}

durable_conformance::suite!(backend);

//! Every durable-agent scenario of the conformance suite (`agent_suite!`) on one SQLite file:
//! reconnect at every offset, approval and abort across instances, crash at every event,
//! a superseded owner fenced off, evented takeover, retention.

mod support;

async fn backend() -> Result<durable_conformance::Backend, String> {
    let path = support::temp_dir("agent").join("durable.db");
    let sqlite = durable_sqlite::SqliteBackend::open_async(durable_sqlite::SqliteConfig::new(path))
        .await
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("sqlite")
        .cache(sqlite.server_cache())
        .pubsub(sqlite.pubsub())
        .store(sqlite.workflow_store()))
}

durable_conformance::agent_suite!(backend);

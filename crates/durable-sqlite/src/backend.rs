//! [`SqliteBackend`]: one database file, opened once, shared by a cache, a store and the
//! in-process PubSub that wakes observers.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use durable_core::agent::{Agent, DurableAgent, DurableAgentBuilder};
use durable_core::memory::InMemoryPubSub;
use durable_core::{ErrorKind, Result};

use crate::cache::SqliteServerCache;
use crate::config::SqliteConfig;
use crate::db::{open_writer, Readers};
use crate::error::err;
use crate::store::SqliteWorkflowStore;
use crate::writer::{Writer, WriterStats};

pub(crate) struct Db {
    pub(crate) writer: Writer,
    pub(crate) readers: Readers,
    pub(crate) pubsub: InMemoryPubSub,
    pub(crate) config: SqliteConfig,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.config.path)
            .field("synchronous", &self.config.synchronous)
            .finish()
    }
}

/// The embedded durable store: one SQLite file holding run logs, keys, run records and
/// checkpoints, plus the in-process [`InMemoryPubSub`] its appends are announced on.
///
/// [`SqliteBackend::open`] starts one writer thread (group commit) and a small pool of reader
/// connections. [`server_cache`](Self::server_cache), [`workflow_store`](Self::workflow_store)
/// and [`pubsub`](Self::pubsub) share them; [`durable_agent`](Self::durable_agent) wires all
/// three into a [`DurableAgentBuilder`]. Cheap to clone. The writer thread ends once every
/// handle is dropped.
#[derive(Clone)]
pub struct SqliteBackend {
    db: Arc<Db>,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("config", &self.db.config)
            .finish()
    }
}

impl SqliteBackend {
    /// Open (or create) the database at `path` with default settings ([`SqliteConfig`]).
    ///
    /// This blocks while the file is opened and its schema created (milliseconds): call it
    /// before starting work, or use [`SqliteBackend::open_async`] inside a runtime.
    ///
    /// # Errors
    /// `Unavailable` if the file cannot be opened or created, `Corrupt` if it is not a
    /// database, `Unsupported` if it cannot use WAL mode or was written by a newer schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SqliteConfig::new(path.as_ref()).open()
    }

    /// [`SqliteBackend::open_with`] on a blocking thread, for callers inside a runtime.
    ///
    /// # Errors
    /// As [`SqliteBackend::open`].
    pub async fn open_async(config: SqliteConfig) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_with(config))
            .await
            .map_err(|e| err(ErrorKind::Unexpected, "open", format!("open failed: {e}")))?
    }

    /// Open (or create) the database with `config`.
    ///
    /// # Errors
    /// As [`SqliteBackend::open`].
    pub fn open_with(config: SqliteConfig) -> Result<Self> {
        let conn = open_writer(&config)?;
        let readers = Readers::open(&config)?;
        let pubsub = InMemoryPubSub::new();
        let writer = Writer::spawn(conn, &config, Some(pubsub.clone()))?;
        Ok(Self {
            db: Arc::new(Db {
                writer,
                readers,
                pubsub,
                config,
            }),
        })
    }

    /// The run-log cache on this database (announcing on [`SqliteBackend::pubsub`]).
    pub fn server_cache(&self) -> SqliteServerCache {
        SqliteServerCache {
            db: self.db.clone(),
        }
    }

    /// The workflow store on this database.
    pub fn workflow_store(&self) -> SqliteWorkflowStore {
        SqliteWorkflowStore {
            db: self.db.clone(),
        }
    }

    /// The in-process PubSub that the cache announces appends on: observers in this process
    /// are woken right after the commit that made the events durable. Observers in another
    /// process on the same file are not woken; they find new events at their idle re-read
    /// ([`LogConfig::idle_check`](durable_core::LogConfig::idle_check)).
    pub fn pubsub(&self) -> InMemoryPubSub {
        self.db.pubsub.clone()
    }

    /// A [`DurableAgentBuilder`] for `agent` with this database's cache, store and pubsub:
    /// `SqliteBackend::open("runs.db")?.durable_agent(agent).build()?`.
    pub fn durable_agent(&self, agent: Agent) -> DurableAgentBuilder {
        DurableAgent::builder(agent).sqlite(self)
    }

    /// The settings the database was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.db.config
    }

    /// Commits and writes of the writer thread so far.
    pub fn stats(&self) -> WriterStats {
        self.db.writer.stats()
    }
}

/// Wire a [`SqliteBackend`] into a [`DurableAgentBuilder`].
pub trait DurableAgentBuilderExt {
    /// Use `backend`'s cache, store and pubsub.
    #[must_use]
    fn sqlite(self, backend: &SqliteBackend) -> Self;
}

impl DurableAgentBuilderExt for DurableAgentBuilder {
    fn sqlite(self, backend: &SqliteBackend) -> Self {
        self.cache(backend.server_cache())
            .store(backend.workflow_store())
            .pubsub(backend.pubsub())
    }
}

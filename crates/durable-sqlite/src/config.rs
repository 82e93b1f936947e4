//! Settings of the SQLite backend.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use durable_core::{Error, Result};

use crate::backend::SqliteBackend;
use crate::error::SQLITE;

/// Environment variable read by [`SqliteConfig::from_env`] for the database path.
pub const PATH_ENV_VAR: &str = "DURABLE_SQLITE_PATH";
/// Environment variable read by [`SqliteConfig::from_env`] for [`Synchronous`].
pub const SYNCHRONOUS_ENV_VAR: &str = "DURABLE_SQLITE_SYNCHRONOUS";

/// SQLite's `PRAGMA synchronous` in WAL mode: when a commit is acknowledged, what survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// No fsync at all: an OS crash or power loss can lose acknowledged commits and corrupt
    /// the file. Only for throwaway data.
    Off,
    /// WAL is fsynced at checkpoints only: a process crash loses nothing, an OS crash or power
    /// loss can lose the last acknowledged commits (never corrupt the file).
    Normal,
    /// The default: the WAL is fsynced at every commit, so an acknowledged write survives a
    /// process crash, an OS crash and a power loss. Group commit shares each fsync between
    /// every write queued meanwhile.
    #[default]
    Full,
    /// `FULL`, and the directory is fsynced after the WAL is reset as well.
    Extra,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "0" => Some(Synchronous::Off),
            "normal" | "1" => Some(Synchronous::Normal),
            "full" | "2" => Some(Synchronous::Full),
            "extra" | "3" => Some(Synchronous::Extra),
            _ => None,
        }
    }
}

/// Settings of the SQLite backend. Every field has a documented default; build one with
/// [`SqliteConfig::new`] or [`SqliteConfig::from_env`], adjust it, then
/// [`SqliteConfig::open`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file (created with its tables if missing). Its `-wal` and `-shm`
    /// companions live beside it.
    pub path: PathBuf,
    /// Durability of an acknowledged write (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// Read-only connections used by reads, each on a blocking thread (default 4). Readers never
    /// block the writer (WAL).
    pub readers: usize,
    /// How long a connection waits for a lock held by another process before the operation
    /// fails with a retryable `Unavailable` (default 5 s).
    pub busy_timeout: Duration,
    /// How often the writer purges expired keys, logs and runs and returns free pages to the
    /// file system (default 1 s).
    pub sweep_every: Duration,
    /// Most writes committed in one transaction (default 4096): the writer commits everything
    /// queued up to this many.
    pub max_batch: usize,
    /// Most events of deleted or expired logs removed per sweep transaction (default 20,000),
    /// so a huge log's removal never stalls writers for long.
    pub purge_chunk: usize,
}

impl SqliteConfig {
    /// Settings for the database at `path` with every default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            sweep_every: Duration::from_secs(1),
            max_batch: 4096,
            purge_chunk: 20_000,
        }
    }

    /// Settings from the environment: the path from `DURABLE_SQLITE_PATH` (default
    /// `durable.db`), [`Synchronous`] from `DURABLE_SQLITE_SYNCHRONOUS` (`off`, `normal`,
    /// `full`, `extra`) if set.
    ///
    /// # Errors
    /// `InvalidInput` for an unknown `DURABLE_SQLITE_SYNCHRONOUS`.
    pub fn from_env() -> Result<Self> {
        let path = std::env::var(PATH_ENV_VAR)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "durable.db".to_owned());
        let mut c = Self::new(path);
        if let Ok(s) = std::env::var(SYNCHRONOUS_ENV_VAR) {
            c.synchronous = Synchronous::parse(&s).ok_or_else(|| {
                Error::invalid_input(format!(
                    "{SYNCHRONOUS_ENV_VAR} must be off, normal, full or extra, got {s:?}"
                ))
                .with_backend(SQLITE)
            })?;
        }
        Ok(c)
    }

    /// Set the durability of an acknowledged write.
    #[must_use]
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// Set the number of reader connections (at least 1).
    #[must_use]
    pub fn readers(mut self, n: usize) -> Self {
        self.readers = n.max(1);
        self
    }

    /// Set how long to wait for another process's lock.
    #[must_use]
    pub fn busy_timeout(mut self, t: Duration) -> Self {
        self.busy_timeout = t;
        self
    }

    /// Set the sweep interval.
    #[must_use]
    pub fn sweep_every(mut self, t: Duration) -> Self {
        self.sweep_every = t;
        self
    }

    /// Set the most writes per transaction (at least 1).
    #[must_use]
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Open (or create) the database: a cache, a store and an in-process PubSub that work
    /// together. See [`SqliteBackend`].
    ///
    /// # Errors
    /// `Unavailable` if the file cannot be opened or created, `Corrupt` if it is not a database.
    pub fn open(self) -> Result<SqliteBackend> {
        SqliteBackend::open_with(self)
    }
}

impl fmt::Debug for SqliteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteConfig")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .field("readers", &self.readers)
            .field("busy_timeout", &self.busy_timeout)
            .field("sweep_every", &self.sweep_every)
            .field("max_batch", &self.max_batch)
            .field("purge_chunk", &self.purge_chunk)
            .finish()
    }
}

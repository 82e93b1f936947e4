//! The database file: schema, connections, the reader pool.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use durable_core::{ErrorKind, Result};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::config::SqliteConfig;
use crate::error::{err, from_sqlite};

/// A key's `entries.kind`.
pub(crate) const KIND_KEY: i64 = 0;
/// A log's `entries.kind`.
pub(crate) const KIND_LOG: i64 = 1;

/// Prepared statements kept per connection: more than this crate has, so none is re-parsed.
const STATEMENT_CACHE: usize = 64;

/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// The largest log id an [`event_key`] holds (its end bound included).
pub(crate) const MAX_LOG_ID: i64 = (1 << 31) - 2;
/// The most events one log can hold (cursors fit in 32 bits).
pub(crate) const MAX_LOG_LEN: u64 = 1 << 32;

/// The rowid of a log's event: `log_id` (at most [`MAX_LOG_ID`]) in the high bits, `cursor`
/// (at most [`MAX_LOG_LEN`], the end bound of a full log) added to the low 32 bits: one
/// log's events are one contiguous range of keys, below the next log's.
pub(crate) fn event_key(log_id: i64, cursor: i64) -> i64 {
    (log_id << 32) + cursor
}

/// Schema 1 → 2: events keyed by their packed rowid.
const MIGRATE_1: &str = "
CREATE TABLE events_v2 (key INTEGER PRIMARY KEY, payload BLOB NOT NULL);
INSERT INTO events_v2 (key, payload) SELECT (log_id << 32) + cursor, payload FROM events;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
";

/// Keys and logs share `entries` so a name is either one or the other (`Conflict` otherwise).
/// A log's events are keyed by [`event_key`]`(log_id, cursor)`; `log_id` is the log's
/// `entries.id`, never reused (`AUTOINCREMENT`), so events of a deleted log waiting in `purge`
/// can never be mistaken for a new log's. Times are Unix milliseconds.
///
/// `events` is keyed by its rowid alone (`log_id` in the high 32 bits, the cursor in the low
/// 32): one b-tree, so an append is one quick-balanced insert at the end and a replay is one
/// range scan. (Schema 1 had a `(log_id, cursor)` primary key: a second b-tree to insert into
/// and a rowid lookup per event read; it is migrated on open. `WITHOUT ROWID` was measured
/// worse: there the whole row is the b-tree key, so a big event that becomes a divider cell
/// is copied on every later insert's seek, 13% of a 10k-delta run in `memcpy`.)
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    value BLOB,
    fence INTEGER NOT NULL DEFAULT 0,
    len INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    key INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS purge (
    log_id INTEGER PRIMARY KEY,
    from_cursor INTEGER NOT NULL,
    to_cursor INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at, run_id);
CREATE INDEX IF NOT EXISTS runs_expiry ON runs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (run_id, step_key)
);
";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Open the writer's connection: WAL, incremental auto-vacuum on a new file, the configured
/// `synchronous`, and the schema.
pub(crate) fn open_writer(config: &SqliteConfig) -> Result<Connection> {
    let op = "open";
    let conn =
        Connection::open_with_flags(&config.path, open_flags()).map_err(|e| from_sqlite(op, e))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| from_sqlite(op, e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // page_size and auto_vacuum only take effect before the first table exists; on an
    // existing file they are whatever that file was created with. 8 KiB pages: fewer b-tree
    // splits for appends (measured: ~8% less CPU per event than 4 KiB).
    conn.execute_batch("PRAGMA page_size = 8192; PRAGMA auto_vacuum = INCREMENTAL;")
        .map_err(|e| from_sqlite(op, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| from_sqlite(op, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(
            ErrorKind::Unsupported,
            op,
            format!(
                "{} cannot use WAL mode (journal_mode is {mode})",
                config.path.display()
            ),
        ));
    }
    // Checkpoints run on their own thread (`writer::Checkpointer`), not inside the writer's
    // commits. The writer checkpoints itself only as a backstop, once 1000 frames (8 MiB) are
    // in the WAL: by then the checkpointer has copied nearly all of them, and a checkpoint
    // right after a commit lets the next write restart the WAL from its beginning.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA wal_autocheckpoint = 1000;
         PRAGMA journal_size_limit = 16777216;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -4096;",
        config.synchronous.pragma()
    ))
    .map_err(|e| from_sqlite(op, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| from_sqlite(op, e))?;
    if version > SCHEMA_VERSION {
        return Err(err(
            ErrorKind::Unsupported,
            op,
            format!(
                "{} has schema version {version}; this build knows up to {SCHEMA_VERSION}",
                config.path.display()
            ),
        ));
    }
    let migrate = if version == 1 { MIGRATE_1 } else { "" };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {migrate} {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(|e| from_sqlite(op, e))?;
    Ok(conn)
}

/// The checkpointer's connection: it copies committed WAL frames into the database file.
pub(crate) fn open_checkpointer(config: &SqliteConfig) -> Result<Connection> {
    let op = "open";
    let conn =
        Connection::open_with_flags(&config.path, open_flags()).map_err(|e| from_sqlite(op, e))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| from_sqlite(op, e))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = 0;",
        config.synchronous.pragma()
    ))
    .map_err(|e| from_sqlite(op, e))?;
    Ok(conn)
}

fn open_reader(path: &Path, config: &SqliteConfig) -> Result<Connection> {
    let op = "open";
    let conn = Connection::open_with_flags(path, open_flags()).map_err(|e| from_sqlite(op, e))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| from_sqlite(op, e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // 2 MiB of page cache per reader (4 MiB for the writer): a log is read front to back once
    // per observer, so a bigger cache only raised the 100-run load's peak RSS (measured).
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -2048;")
        .map_err(|e| from_sqlite(op, e))?;
    Ok(conn)
}

/// Read connections, each used on a blocking thread (never on a tokio worker).
pub(crate) struct Readers {
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
    config: SqliteConfig,
}

impl Drop for Readers {
    /// Closing a connection can checkpoint and delete the WAL (when it is the file's last):
    /// that happens on a thread of its own, not on whichever async worker dropped the backend.
    fn drop(&mut self) {
        let conns = std::mem::take(&mut *lock(&self.conns));
        if !conns.is_empty() {
            let _ = std::thread::Builder::new()
                .name("durable-sqlite-close".to_owned())
                .spawn(move || drop(conns));
        }
    }
}

impl Readers {
    pub(crate) fn open(config: &SqliteConfig) -> Result<Self> {
        let n = config.readers.max(1);
        let conns = (0..n)
            .map(|_| open_reader(&config.path, config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conns: Mutex::new(conns),
            permits: Semaphore::new(n),
            config: config.clone(),
        })
    }

    /// Run `f` in one read transaction on a pooled connection, on a blocking thread.
    pub(crate) async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| err(ErrorKind::Unavailable, op, "the reader pool is closed"))?;
        let pooled = lock(&self.conns).pop();
        let config = self.config.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            // A reader lost earlier (its read was cancelled while it ran) is replaced here,
            // off the async threads.
            let mut conn = match pooled {
                Some(c) => c,
                None => match open_reader(&config.path, &config) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = match conn.transaction() {
                Ok(tx) => {
                    let r = f(&tx);
                    // A read transaction has nothing to commit; ending it releases the snapshot.
                    let _ = tx.rollback();
                    r
                }
                Err(e) => Err(from_sqlite(op, e)),
            };
            (Some(conn), result)
        })
        .await
        .map_err(|e| {
            err(
                ErrorKind::Unexpected,
                op,
                format!("reader thread failed: {e}"),
            )
        })?;
        if let Some(conn) = conn {
            lock(&self.conns).push(conn);
        }
        result
    }
}

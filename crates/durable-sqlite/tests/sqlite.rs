//! SQLite-specific behaviour beyond the conformance suite: group commit, two processes on one
//! file (two backends, each with its own writer and readers), persistence across a reopen,
//! and retention keeping the file bounded.

#![allow(clippy::unwrap_used)] // test code panics on purpose

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use durable_core::{
    AppendOptions, EventKind, EventLog, LogConfig, NewEvent, NewRun, ObserveOptions, RunId,
    RunStatus, ServerCache, ServerCacheExt, WorkflowStore,
};
use durable_sqlite::{SqliteBackend, SqliteConfig, Synchronous};
use futures::StreamExt;

async fn open(config: SqliteConfig) -> SqliteBackend {
    SqliteBackend::open_async(config).await.unwrap()
}

fn delta(i: u64) -> NewEvent {
    NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "i": i })).unwrap()
}

fn finish() -> NewEvent {
    NewEvent::json(EventKind::Finish, &serde_json::json!({})).unwrap()
}

/// Concurrent writers share transactions: far fewer commits than writes, and every write is
/// acknowledged only once committed (a fresh reader sees it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let db = open(SqliteConfig::new(support::temp_dir("group").join("g.db"))).await;
    let cache = db.server_cache();
    let before = db.stats();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let log = format!("group/log-{}", i % 10);
                cache
                    .append(&log, Bytes::from(format!("{i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = db.stats();
    let writes = after.writes - before.writes;
    let commits = after.commits - before.commits;
    assert_eq!(writes, 200);
    assert!(commits < writes, "{commits} commits for {writes} writes");
    let mut total = 0;
    for i in 0..10 {
        total += cache.len(&format!("group/log-{i}")).await.unwrap().unwrap();
    }
    assert_eq!(total, 200);
}

/// Two processes on one file (two backends: separate writer threads and connections): their
/// appends to one log get contiguous cursors, each once, and each sees the other's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_file_get_contiguous_cursors() {
    let path = support::temp_dir("two").join("two.db");
    let a = open(SqliteConfig::new(&path)).await.server_cache();
    let b = open(SqliteConfig::new(&path)).await.server_cache();
    let log = "two/run/x/events";
    a.append_many(log, &[], AppendOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (t, cache) in [(0u64, a.clone()), (1, b.clone())] {
        for k in 0..4u64 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..100u64 {
                    let p = Bytes::from(format!("{t}:{k}:{i}"));
                    got.push((cache.append(log, p.clone()).await.unwrap(), p));
                }
                got
            }));
        }
    }
    let mut by_cursor = std::collections::BTreeMap::new();
    for t in tasks {
        for (c, p) in t.await.unwrap() {
            assert!(by_cursor.insert(c, p).is_none(), "cursor {c} given twice");
        }
    }
    assert!(by_cursor.keys().copied().eq(0..800));
    for cache in [&a, &b] {
        let slice = cache.read(log, 0, 1000).await.unwrap();
        assert_eq!(slice.next, 800);
        for (i, e) in slice.entries.iter().enumerate() {
            assert_eq!(Some(e), by_cursor.get(&(i as u64)));
        }
    }
}

/// An observer in a second process is not woken by the first one's pubsub: it finds the
/// events at its idle re-read (`LogConfig::idle_check`), exactly and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_in_another_process_catches_up_by_rereading() {
    let path = support::temp_dir("observer").join("o.db");
    let mut config = LogConfig::default();
    config.idle_check = Duration::from_millis(100);
    let producer_db = open(SqliteConfig::new(&path)).await;
    let observer_db = open(SqliteConfig::new(&path)).await;
    let log_of = |db: &SqliteBackend| {
        EventLog::new(Arc::new(db.server_cache()), Arc::new(db.pubsub()))
            .with_store(Arc::new(db.workflow_store()))
            .with_config(config.clone())
    };
    let producer = log_of(&producer_db);
    let observer = log_of(&observer_db);
    let run = RunId::generate();
    producer.create(&run, None).await.unwrap();
    producer.append(&run, &[delta(0)], None).await.unwrap();
    let mut stream = observer
        .observe(&run, ObserveOptions::default())
        .await
        .unwrap();
    for i in 1..50 {
        producer.append(&run, &[delta(i)], None).await.unwrap();
    }
    producer.append(&run, &[finish()], None).await.unwrap();
    let mut cursors = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the observer catches up within its idle checks")
    {
        cursors.push(e.unwrap().cursor);
    }
    assert!(cursors.iter().copied().eq(0..51), "{cursors:?}");
}

/// Another process holding the write lock past `busy_timeout` makes writes fail with a
/// retryable `Unavailable` naming the backend and operation, and nothing is half-written;
/// once the lock is released the same write succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_retryable_unavailable() {
    let path = support::temp_dir("busy").join("busy.db");
    let db = open(SqliteConfig::new(&path).busy_timeout(Duration::from_millis(50))).await;
    let cache = db.server_cache();
    cache
        .set("busy/key", Bytes::from_static(b"before"), None)
        .await
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = cache
        .set("busy/key", Bytes::from_static(b"during"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), durable_core::ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert_eq!((e.backend(), e.operation()), ("sqlite", "set"));
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        cache.get("busy/key").await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    cache
        .set("busy/key", Bytes::from_static(b"after"), None)
        .await
        .unwrap();
    assert_eq!(
        cache.get("busy/key").await.unwrap().as_deref(),
        Some(&b"after"[..])
    );
}

/// Everything acknowledged is there after the backend is dropped and the file reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_reopen() {
    let path = support::temp_dir("reopen").join("r.db");
    let run = RunId::generate();
    {
        let db = open(SqliteConfig::new(&path).synchronous(Synchronous::Normal)).await;
        let cache = db.server_cache();
        let store = db.workflow_store();
        store.create_run(NewRun::new(run.clone())).await.unwrap();
        let lease = store
            .claim(&run, "w", Duration::from_secs(30))
            .await
            .unwrap();
        store
            .checkpoint(&run, lease.epoch, "step-0", serde_json::json!({"ok": true}))
            .await
            .unwrap();
        cache
            .append_many(
                "reopen/log",
                &[Bytes::from_static(b"a"), Bytes::from_static(b"b")],
                AppendOptions::fenced(lease.epoch),
            )
            .await
            .unwrap();
        cache
            .set("reopen/key", Bytes::from_static(b"v"), None)
            .await
            .unwrap();
    }
    let db = open(SqliteConfig::new(&path)).await;
    let cache = db.server_cache();
    let slice = cache.read("reopen/log", 0, 10).await.unwrap();
    assert_eq!(
        slice.entries,
        [Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    assert_eq!(
        cache.get("reopen/key").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    let snap = db.workflow_store().load(&run).await.unwrap().unwrap();
    assert_eq!(snap.record.epoch, 1);
    assert_eq!(
        snap.checkpoint("step-0"),
        Some(&serde_json::json!({"ok": true}))
    );
    // The fence survived too.
    let stale = cache
        .append_many("reopen/log", &[Bytes::new()], AppendOptions::fenced(0))
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), durable_core::ErrorKind::Fenced);
}

fn file_size(path: &std::path::Path) -> u64 {
    let wal = path.with_extension("db-wal");
    [path.to_path_buf(), wal]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// G6 on disk: 10,000 runs created and retired with a short retention leave a file that stays
/// bounded (expired logs, keys and records are purged; free pages go back to the file system).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_runs_keep_the_file_bounded() {
    let path = support::temp_dir("retention").join("retention.db");
    let db = open(
        SqliteConfig::new(&path)
            .synchronous(Synchronous::Normal)
            .sweep_every(Duration::from_millis(50)),
    )
    .await;
    let store: Arc<dyn WorkflowStore> = Arc::new(db.workflow_store());
    let mut config = LogConfig::default();
    config.retention = Duration::from_millis(20);
    config.tombstone = Duration::from_millis(20);
    let log = EventLog::new(Arc::new(db.server_cache()), Arc::new(db.pubsub()))
        .with_store(store.clone())
        .with_config(config);
    let text = "x".repeat(500);
    let events: Vec<NewEvent> = (0..8)
        .map(|_| NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "t": text })).unwrap())
        .chain([finish()])
        .collect();
    let events = Arc::new(events);
    let started = Instant::now();
    let mut sizes = Vec::new();
    let mut peak_main = 0;
    for round in 0..20 {
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let (log, store, events) = (log.clone(), store.clone(), events.clone());
                tokio::spawn(async move {
                    let run = RunId::generate();
                    store.create_run(NewRun::new(run.clone())).await.unwrap();
                    log.create(&run, Some(1)).await.unwrap();
                    log.append(&run, &events, Some(1)).await.unwrap();
                    store
                        .set_status(&run, None, RunStatus::Completed, None)
                        .await
                        .unwrap();
                    log.retire(&run).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        sizes.push(file_size(&path));
        peak_main = peak_main.max(std::fs::metadata(&path).map_or(0, |m| m.len()));
        eprintln!(
            "after {} runs: {} KiB (WAL {} KiB)",
            (round + 1) * 500,
            sizes[round] / 1024,
            std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len()) / 1024
        );
    }
    eprintln!("10,000 runs in {:?}", started.elapsed());
    // Without purging, the events alone would take 10,000 × 8 × ~560 B ≈ 43 MiB.
    let max = sizes.iter().copied().max().unwrap_or(0);
    assert!(max < 24 << 20, "file grew to {max} bytes: {sizes:?}");
    // The size moves with checkpoints (the WAL's high-water mark can step up when a checkpoint
    // is delayed) and vacuums, by a few MiB; unpurged runs would add about 21 MiB between the
    // two halves.
    let late = sizes[10..].iter().copied().max().unwrap_or(0);
    let early = sizes[..10].iter().copied().max().unwrap_or(0);
    assert!(
        late <= early + (8 << 20),
        "the file keeps growing: {sizes:?}"
    );
    // Once everything expired, the sweep leaves no run, key or log behind, and once the writer
    // is idle the free pages go back to the file system (incremental vacuum).
    let cache = db.server_cache();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = cache.keys("").await.unwrap();
        let runs = store.list_runs(None).await.unwrap();
        let main = std::fs::metadata(&path).map_or(0, |m| m.len());
        // Live data is gone: what is left is the schema and the tenth kept free for reuse.
        if keys.is_empty() && runs.is_empty() && main <= peak_main / 10 + (512 << 10) {
            eprintln!(
                "all expired: main file {} KiB (peak {} KiB)",
                main / 1024,
                peak_main / 1024
            );
            break;
        }
        if Instant::now() >= deadline {
            let c = rusqlite::Connection::open(&path).unwrap();
            for p in [
                "auto_vacuum",
                "freelist_count",
                "page_count",
                "journal_mode",
            ] {
                let v: rusqlite::types::Value = c
                    .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                    .unwrap();
                eprintln!("{p} = {v:?}");
            }
            for t in ["entries", "events", "purge", "runs", "checkpoints"] {
                let v: i64 = c
                    .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                    .unwrap();
                eprintln!("{t}: {v}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} keys and {} runs left, main file {main} bytes (peak {peak_main})",
            keys.len(),
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((cache, store, log, db));
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A file of schema 1 (events keyed `(log_id, cursor)` in a separate index) is migrated on
/// open to packed rowids: its logs read back whole and take appends at the next cursor.
#[tokio::test]
async fn a_schema_1_file_is_migrated_on_open() {
    let path = support::temp_dir("schema1").join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_1).unwrap();
        conn.execute_batch(
            "INSERT INTO entries (id, name, kind, len) VALUES (7, 'old/log', 1, 3);
             INSERT INTO events (log_id, cursor, payload) VALUES
                 (7, 0, x'61'), (7, 1, x'62'), (7, 2, x'63');
             INSERT INTO entries (id, name, kind, len) VALUES (8, 'other/log', 1, 1);
             INSERT INTO events (log_id, cursor, payload) VALUES (8, 0, x'7a');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let db = open(SqliteConfig::new(&path)).await;
    let cache = db.server_cache();
    let entries = |s: &[&'static [u8]]| s.iter().map(|b| Bytes::from_static(b)).collect::<Vec<_>>();
    assert_eq!(
        cache.read("old/log", 0, 10).await.unwrap().entries,
        entries(&[b"a", b"b", b"c"])
    );
    let first = cache
        .append_many(
            "old/log",
            &[Bytes::from_static(b"d")],
            AppendOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(first, 3);
    assert_eq!(
        cache.read("old/log", 1, 10).await.unwrap().entries,
        entries(&[b"b", b"c", b"d"])
    );
    assert_eq!(
        cache.read("other/log", 0, 10).await.unwrap().entries,
        entries(&[b"z"])
    );
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

/// The schema of version 1, as it was released.
const SCHEMA_1: &str = "
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
    log_id INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (log_id, cursor)
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

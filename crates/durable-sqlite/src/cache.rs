//! [`SqliteServerCache`]: keys with TTL and run logs in the database file.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    frame, validate_name, validate_prefix, Announce, AnnounceDomain, AppendOptions,
    CacheCapabilities, Cursor, ErrorKind, LogSlice, PubSub, Result, ServerCache,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::backend::Db;
use crate::db::{event_key, KIND_KEY, KIND_LOG, MAX_LOG_ID, MAX_LOG_LEN};
use crate::error::{err, from_sqlite, wrong_type, SQLITE};
use crate::writer::Announcement;

/// [`ServerCache`] on one SQLite file: keys with TTL in one table, each log's events in a
/// table keyed `(log, cursor)`.
///
/// Every write goes through the backend's one writer thread and is acknowledged after the
/// transaction that holds it committed; reads run on the reader pool and never wait for the
/// writer. With its backend's [`InMemoryPubSub`](durable_core::memory::InMemoryPubSub) it
/// announces appends itself, right after their commit ([`ServerCache::append_announce`]).
///
/// Cheap to clone; clones share the database.
#[derive(Clone, Debug)]
pub struct SqliteServerCache {
    pub(crate) db: Arc<Db>,
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(SQLITE).with_operation(op))
}

/// What the writer needs to know of an entry (never its value).
struct Meta {
    id: i64,
    kind: i64,
    fence: i64,
    len: i64,
    expires_at: Option<i64>,
}

fn meta(conn: &Connection, op: &'static str, name: &str) -> Result<Option<Meta>> {
    conn.prepare_cached("SELECT id, kind, fence, len, expires_at FROM entries WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([name], |r| {
                Ok(Meta {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    fence: r.get(2)?,
                    len: r.get(3)?,
                    expires_at: r.get(4)?,
                })
            })
            .optional()
        })
        .map_err(|e| from_sqlite(op, e))
}

/// The live entry `name` for a write: an expired one is removed first (with its events), as
/// if it had never been there.
fn live_meta(conn: &Connection, op: &'static str, name: &str, now: i64) -> Result<Option<Meta>> {
    match meta(conn, op, name)? {
        Some(m) if m.expires_at.is_some_and(|t| t <= now) => {
            remove_entry(conn, m.id, m.kind, m.len).map_err(|e| from_sqlite(op, e))?;
            Ok(None)
        }
        found => Ok(found),
    }
}

/// Remove an entry now; a log's events are handed to the sweep (`purge`), so removing a huge
/// log never holds the writer for long.
pub(crate) fn remove_entry(
    conn: &Connection,
    id: i64,
    kind: i64,
    len: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM entries WHERE id = ?1")?
        .execute([id])?;
    if kind == KIND_LOG && len > 0 {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO purge (log_id, from_cursor, to_cursor) VALUES (?1, 0, ?2)",
        )?
        .execute([id, len])?;
    }
    Ok(())
}

fn expiry(now: i64, ttl: Duration) -> i64 {
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    now.saturating_add(ms)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The append itself, inside the writer's transaction: the same checks in the same order as
/// the in-memory reference, and nothing written when one fails.
fn append_in(
    conn: &Connection,
    now: i64,
    log: &str,
    payloads: &[Bytes],
    options: AppendOptions,
) -> Result<Cursor> {
    let op = "append";
    let (id, fence, len) = match live_meta(conn, op, log, now)? {
        Some(m) if m.kind != KIND_LOG => return Err(wrong_type(op, log)),
        Some(m) => (Some(m.id), m.fence, m.len),
        None if options.must_exist => {
            return Err(err(
                ErrorKind::NotFound,
                op,
                format!("no log {log} (it was never created, or it was deleted or expired)"),
            ))
        }
        None => (None, 0, 0),
    };
    if let Some(f) = options.fence {
        if to_i64(f) < fence {
            return Err(err(
                ErrorKind::Fenced,
                op,
                format!("epoch {f} is older than the log's fence {fence}"),
            ));
        }
    }
    let first = to_u64(len);
    if first.saturating_add(payloads.len() as u64) > MAX_LOG_LEN {
        return Err(err(
            ErrorKind::LimitExceeded,
            op,
            format!("log {log} would exceed {MAX_LOG_LEN} entries, the most one log holds"),
        ));
    }
    if let Some(max) = options.max_len {
        if first.saturating_add(payloads.len() as u64) > max {
            return Err(err(
                ErrorKind::LimitExceeded,
                op,
                format!("log {log} would exceed {max} entries"),
            ));
        }
    }
    // Accepted: only now is anything written (a rejected append has no effect).
    let new_fence = options.fence.map_or(fence, to_i64);
    let new_len = len.saturating_add(to_i64(payloads.len() as u64));
    let id = match id {
        Some(id) => {
            conn.prepare_cached("UPDATE entries SET fence = ?2, len = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute([id, new_fence, new_len]))
                .map_err(|e| from_sqlite(op, e))?;
            id
        }
        None => conn
            .prepare_cached(
                "INSERT INTO entries (name, kind, fence, len) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            )
            .and_then(|mut s| s.query_row(params![log, KIND_LOG, new_fence, new_len], |r| r.get(0)))
            .map_err(|e| from_sqlite(op, e))?,
    };
    if id > MAX_LOG_ID {
        // Rolled back with this write's savepoint: nothing is stored.
        return Err(err(
            ErrorKind::Unsupported,
            op,
            format!("this file has created {MAX_LOG_ID} logs, the most it can number"),
        ));
    }
    insert_events(conn, id, len, payloads).map_err(|e| from_sqlite(op, e))?;
    Ok(first)
}

/// Events per multi-row `INSERT`: one statement execution for many rows instead of one each.
const ROWS_PER_INSERT: usize = 64;

static INSERT_MANY: LazyLock<String> = LazyLock::new(|| {
    let rows = vec!["(?, ?)"; ROWS_PER_INSERT].join(", ");
    format!("INSERT INTO events (key, payload) VALUES {rows}")
});

/// Store `payloads` at cursors `first..`: full chunks with one multi-row statement each, the
/// rest row by row.
fn insert_events(
    conn: &Connection,
    id: i64,
    first: i64,
    payloads: &[Bytes],
) -> rusqlite::Result<()> {
    let mut key = event_key(id, first);
    let mut chunks = payloads.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let mut many = conn.prepare_cached(&INSERT_MANY)?;
        for chunk in chunks.by_ref() {
            for (i, p) in chunk.iter().enumerate() {
                many.raw_bind_parameter(2 * i + 1, key)?;
                many.raw_bind_parameter(2 * i + 2, &p[..])?;
                key += 1;
            }
            many.raw_execute()?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut one = conn.prepare_cached("INSERT INTO events (key, payload) VALUES (?1, ?2)")?;
        for p in rest {
            one.execute(params![key, &p[..]])?;
            key += 1;
        }
    }
    Ok(())
}

/// A read's view of an entry: `None` if missing or expired.
fn read_meta(conn: &Connection, op: &'static str, name: &str, now: i64) -> Result<Option<Meta>> {
    Ok(meta(conn, op, name)?.filter(|m| m.expires_at.is_none_or(|t| t > now)))
}

impl SqliteServerCache {
    async fn append_with(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Option<Announce<'_>>,
    ) -> Result<Cursor> {
        let op = "append";
        check(op, "log", log)?;
        let announce = match announce {
            Some(a) => {
                check(op, "topic", a.topic)?;
                Some((a.topic.to_owned(), a.max_frame_bytes))
            }
            None => None,
        };
        let log = log.to_owned();
        let payloads = payloads.to_vec();
        self.db
            .writer
            .write(op, move |conn, now| {
                let first = append_in(conn, now, &log, &payloads, options)?;
                let frame: Announcement = match announce {
                    Some((topic, max)) if !payloads.is_empty() => {
                        Some((topic, frame::encode(first, &payloads, max)))
                    }
                    _ => None,
                };
                Ok((first, frame))
            })
            .await
    }
}

#[async_trait]
impl ServerCache for SqliteServerCache {
    fn backend(&self) -> &'static str {
        SQLITE
    }

    fn capabilities(&self) -> CacheCapabilities {
        CacheCapabilities::default()
            .with_ttl(true)
            .with_list_keys(true)
            .with_shared(true)
            .with_announce(true)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let op = "get";
        check(op, "key", key)?;
        let key = key.to_owned();
        self.db
            .readers
            .read(op, move |conn| {
                let now = crate::writer::now();
                let row: Option<(i64, Option<Vec<u8>>, Option<i64>)> = conn
                    .prepare_cached("SELECT kind, value, expires_at FROM entries WHERE name = ?1")
                    .and_then(|mut s| {
                        s.query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                            .optional()
                    })
                    .map_err(|e| from_sqlite(op, e))?;
                match row {
                    None => Ok(None),
                    Some((_, _, Some(t))) if t <= now => Ok(None),
                    Some((KIND_KEY, v, _)) => Ok(Some(Bytes::from(v.unwrap_or_default()))),
                    Some(_) => Err(wrong_type(op, &key)),
                }
            })
            .await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let op = "set";
        check(op, "key", key)?;
        let key = key.to_owned();
        self.db
            .writer
            .write(op, move |conn, now| {
                if live_meta(conn, op, &key, now)?.is_some_and(|m| m.kind == KIND_LOG) {
                    return Err(wrong_type(op, &key));
                }
                let expires_at = ttl.map(|t| expiry(now, t));
                conn.prepare_cached(
                    "INSERT INTO entries (name, kind, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value,
                                                     expires_at = excluded.expires_at",
                )
                .and_then(|mut s| s.execute(params![key, KIND_KEY, &value[..], expires_at]))
                .map_err(|e| from_sqlite(op, e))?;
                Ok(((), None))
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let op = "delete";
        check(op, "key", key)?;
        let key = key.to_owned();
        self.db
            .writer
            .write(op, move |conn, now| match live_meta(conn, op, &key, now)? {
                Some(m) => {
                    remove_entry(conn, m.id, m.kind, m.len).map_err(|e| from_sqlite(op, e))?;
                    Ok((true, None))
                }
                None => Ok((false, None)),
            })
            .await
    }

    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        let op = "increment";
        check(op, "key", key)?;
        let key = key.to_owned();
        self.db
            .writer
            .write(op, move |conn, now| {
                let current = match live_meta(conn, op, &key, now)? {
                    Some(m) if m.kind == KIND_LOG => return Err(wrong_type(op, &key)),
                    Some(m) => {
                        let v: Option<Vec<u8>> = conn
                            .prepare_cached("SELECT value FROM entries WHERE id = ?1")
                            .and_then(|mut s| s.query_row([m.id], |r| r.get(0)))
                            .map_err(|e| from_sqlite(op, e))?;
                        let n = v
                            .as_deref()
                            .and_then(|b| std::str::from_utf8(b).ok())
                            .and_then(|s| s.parse::<i64>().ok())
                            .ok_or_else(|| wrong_type(op, &key))?;
                        Some((m.id, n))
                    }
                    None => None,
                };
                let new = current
                    .map_or(0, |(_, n)| n)
                    .checked_add(by)
                    .ok_or_else(|| err(ErrorKind::InvalidInput, op, "integer overflow"))?;
                let text = new.to_string();
                match current {
                    Some((id, _)) => conn
                        .prepare_cached("UPDATE entries SET value = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![id, text.as_bytes()])),
                    None => conn
                        .prepare_cached(
                            "INSERT INTO entries (name, kind, value, expires_at)
                             VALUES (?1, ?2, ?3, ?4)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                key,
                                KIND_KEY,
                                text.as_bytes(),
                                ttl.map(|t| expiry(now, t))
                            ])
                        }),
                }
                .map_err(|e| from_sqlite(op, e))?;
                Ok((new, None))
            })
            .await
    }

    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        self.append_with(log, payloads, options, None).await
    }

    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        let op = "read";
        check(op, "log", log)?;
        let log = log.to_owned();
        self.db
            .readers
            .read(op, move |conn| {
                let now = crate::writer::now();
                let m = match read_meta(conn, op, &log, now)? {
                    None => return Err(err(ErrorKind::NotFound, op, format!("no log {log}"))),
                    Some(m) if m.kind != KIND_LOG => return Err(wrong_type(op, &log)),
                    Some(m) => m,
                };
                let len = to_u64(m.len);
                if from > len {
                    return Err(err(
                        ErrorKind::OffsetAhead,
                        op,
                        format!("cursor {from} is beyond the end {len} of {log}"),
                    ));
                }
                let end = from.saturating_add(limit as u64).min(len);
                let mut entries = Vec::with_capacity((end - from) as usize);
                if end > from {
                    let mut s = conn
                        .prepare_cached(
                            "SELECT payload FROM events WHERE key >= ?1 AND key < ?2 ORDER BY key",
                        )
                        .map_err(|e| from_sqlite(op, e))?;
                    let mut rows = s
                        .query([event_key(m.id, to_i64(from)), event_key(m.id, to_i64(end))])
                        .map_err(|e| from_sqlite(op, e))?;
                    while let Some(r) = rows.next().map_err(|e| from_sqlite(op, e))? {
                        let p = r.get_ref(0).map_err(|e| from_sqlite(op, e))?;
                        let bytes = p.as_blob().map_err(|e| from_sqlite(op, e.into()))?;
                        entries.push(Bytes::copy_from_slice(bytes));
                    }
                }
                if entries.len() as u64 != end - from {
                    return Err(err(
                        ErrorKind::Corrupt,
                        op,
                        format!(
                            "log {log} holds {} events in {from}..{end}, expected {}",
                            entries.len(),
                            end - from
                        ),
                    ));
                }
                Ok(LogSlice {
                    first: from,
                    entries,
                    next: len,
                })
            })
            .await
    }

    async fn len(&self, log: &str) -> Result<Option<u64>> {
        let op = "len";
        check(op, "log", log)?;
        let log = log.to_owned();
        self.db
            .readers
            .read(op, move |conn| {
                match read_meta(conn, op, &log, crate::writer::now())? {
                    None => Ok(None),
                    Some(m) if m.kind != KIND_LOG => Err(wrong_type(op, &log)),
                    Some(m) => Ok(Some(to_u64(m.len))),
                }
            })
            .await
    }

    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        let op = "expire";
        check(op, "log", log)?;
        let log = log.to_owned();
        self.db
            .writer
            .write(op, move |conn, now| match live_meta(conn, op, &log, now)? {
                None => Ok((false, None)),
                Some(m) if m.kind != KIND_LOG => Err(wrong_type(op, &log)),
                Some(m) => {
                    conn.prepare_cached("UPDATE entries SET expires_at = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute([m.id, expiry(now, ttl)]))
                        .map_err(|e| from_sqlite(op, e))?;
                    Ok((true, None))
                }
            })
            .await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let op = "keys";
        validate_prefix(op, prefix).map_err(|e| e.with_backend(SQLITE).with_operation(op))?;
        // Names are ASCII from the validated alphabet (at most `z`), so the range
        // `[prefix, prefix with its last byte + 1)` is exactly the names starting with it.
        let upper = prefix.as_bytes().split_last().map(|(last, head)| {
            let mut u = head.to_vec();
            u.push(last + 1);
            String::from_utf8_lossy(&u).into_owned()
        });
        let prefix = prefix.to_owned();
        self.db
            .readers
            .read(op, move |conn| {
                let now = crate::writer::now();
                let mut s = conn
                    .prepare_cached(
                        "SELECT name FROM entries
                         WHERE name >= ?1 AND (?2 IS NULL OR name < ?2)
                           AND (expires_at IS NULL OR expires_at > ?3)
                         ORDER BY name",
                    )
                    .map_err(|e| from_sqlite(op, e))?;
                let names = s
                    .query_map(params![prefix, upper, now], |r| r.get::<_, String>(0))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
                    .map_err(|e| from_sqlite(op, e))?;
                // `name` is unique and the order is byte order (BINARY collation): sorted and
                // deduplicated already.
                Ok(names)
            })
            .await
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        self.db.pubsub.announce_domain()
    }

    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        self.append_with(log, payloads, options, Some(announce))
            .await
    }
}

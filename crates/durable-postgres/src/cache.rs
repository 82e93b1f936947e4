//! [`PostgresServerCache`]: keys with TTL and run logs in two tables.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    Announce, AnnounceDomain, AppendOptions, CacheCapabilities, Cursor, ErrorKind, LogSlice,
    Result, ServerCache,
};
use sqlx::Row;

use crate::config::{Postgres, Wake};
use crate::error::{check, err, from_sqlx, BACKEND};
use crate::exec::{QueryExt, ScalarExt};
use crate::notify;

/// One page of a log: `$1` name, `$2` from, `$3` from + limit, `$4` limit.
///
/// One statement, one snapshot: the entries and the length agree. The page comes as one
/// array in one row: per-row overhead (server and driver) would otherwise dominate a page of
/// small events. Cursors are contiguous, so the page is exactly the range `[from, from +
/// limit)`: bounding the index condition by it (not only by `LIMIT`) keeps the scan to the
/// page. With only `LIMIT`, the planner, which cannot know how many rows lie below
/// `next_cursor`, chose (for the custom plans of a connection's first executions) a bitmap
/// scan of the whole rest of the log and a sort, per page: a catch-up read of n events
/// scanned O(n²/limit) rows (`read_scans_only_its_page`).
const READ_SQL: &str = "SELECT l.is_log, l.next_cursor, CASE WHEN l.is_log THEN \
       ARRAY(SELECT payload FROM log_events \
         WHERE name = $1 AND cursor >= $2 AND cursor < $3 AND cursor < l.next_cursor \
         ORDER BY cursor LIMIT $4) END \
     FROM cache_items l \
     WHERE l.name = $1 AND (l.expires_at IS NULL OR l.expires_at > clock_timestamp())";

/// The run log and key/value cache on PostgreSQL.
///
/// - Logs: a row per log in `cache_items` (next cursor, fence, expiry) and a row per event in
///   `log_events` keyed `(name, cursor)`. `append_many` is one call of the `durable_append`
///   function: it locks the log's row (so appenders of *one* log queue behind each other and
///   appenders of different logs never do), checks the fence, then `max_len`, inserts the
///   whole batch with one `INSERT … SELECT unnest(…)`, moves the cursor and the fence, and —
///   for [`append_announce`](ServerCache::append_announce) — sends the wake-up with
///   `pg_notify` in the same transaction. One statement, one round trip per batch.
/// - Keys: rows of the same table, so a key and a log can never share a name.
/// - Expiry is checked on every read; expired rows are removed when touched and by
///   [`Postgres::purge`].
#[derive(Clone, Debug)]
pub struct PostgresServerCache {
    pg: Postgres,
    announce: bool,
}

fn ttl_ms(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| i64::try_from(durable_core::ttl_ms(t)).unwrap_or(i64::MAX))
}

fn cursor_to_u64(op: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| err(ErrorKind::Corrupt, op, format!("negative cursor {v}")))
}

fn conflict(op: &'static str, name: &str, is_log: bool) -> durable_core::Error {
    let what = if is_log { "a log" } else { "a key" };
    err(
        ErrorKind::Conflict,
        op,
        format!("{name:?} is {what}: a key and a log may not share a name"),
    )
}

impl PostgresServerCache {
    pub(crate) fn new(pg: Postgres) -> Self {
        Self {
            pg,
            announce: false,
        }
    }

    /// Connect to `url` with default settings (migrating); see
    /// [`PostgresConfig`](crate::PostgresConfig) for more.
    ///
    /// # Errors
    /// As [`PostgresConfig::connect`](crate::PostgresConfig::connect).
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Postgres::connect(url).await?.server_cache())
    }

    /// Announce appends on the channels of every [`PostgresPubSub`](crate::PostgresPubSub) of
    /// the same database and schema ([`ServerCache::append_announce`]): the event log then
    /// sends one `pg_notify` per batch inside the append's transaction.
    #[must_use]
    pub fn with_announce(mut self) -> Self {
        self.announce = true;
        self
    }

    async fn append_inner(
        &self,
        op: &'static str,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        notify: Option<(String, String, String)>,
    ) -> Result<Cursor> {
        let fence = options.fence.map(|f| i64::try_from(f).unwrap_or(i64::MAX));
        let max_len = options
            .max_len
            .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let rows: Vec<&[u8]> = payloads.iter().map(|p| p.as_ref()).collect();
        let (channel, head, tail) = match notify {
            Some((c, h, t)) => (Some(c), Some(h), Some(t)),
            None => (None, None, None),
        };
        let append = || {
            sqlx::query_scalar("SELECT durable_append($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(log)
                .bind(rows.clone())
                .bind(fence)
                .bind(max_len)
                .bind(options.must_exist)
                .bind(channel.clone())
                .bind(head.clone())
                .bind(tail.clone())
                .fetch_one_on(&self.pg)
        };
        // An empty append (creating a log, raising its fence) may run twice. One with events
        // never: it may have landed, and only the caller knows where it expected it (the run
        // writer compares the log's length).
        let first: i64 = if payloads.is_empty() {
            crate::error::retry_idempotent(append).await
        } else {
            append().await
        }
        .map_err(|e| from_sqlx(op, e))?;
        cursor_to_u64(op, first)
    }
}

#[async_trait]
impl ServerCache for PostgresServerCache {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> CacheCapabilities {
        CacheCapabilities::default()
            .with_ttl(true)
            .with_list_keys(true)
            .with_shared(true)
            .with_announce(self.announce)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        check("get", "key", key)?;
        let row = crate::error::retry_idempotent(|| {
            sqlx::query(
                "SELECT is_log, value FROM cache_items \
             WHERE name = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())",
            )
            .bind(key)
            .fetch_optional_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("get", e))?;
        let Some(row) = row else { return Ok(None) };
        let is_log: bool = row.try_get(0).map_err(|e| from_sqlx("get", e))?;
        if is_log {
            return Err(conflict("get", key, true));
        }
        let value: Option<Vec<u8>> = row.try_get(1).map_err(|e| from_sqlx("get", e))?;
        Ok(Some(Bytes::from(value.unwrap_or_default())))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        check("set", "key", key)?;
        crate::error::retry_idempotent(|| {
            sqlx::query("SELECT durable_set($1, $2, $3)")
                .bind(key)
                .bind(value.as_ref())
                .bind(ttl_ms(ttl))
                .execute_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("set", e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check("delete", "key", key)?;
        // Not run twice: a second run would answer `false` for a key the first deleted.
        sqlx::query_scalar("SELECT durable_delete($1)")
            .bind(key)
            .fetch_one_on(&self.pg)
            .await
            .map_err(|e| from_sqlx("delete", e))
    }

    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        check("increment", "key", key)?;
        // Not run twice: a failed increment may have counted.
        sqlx::query_scalar("SELECT durable_increment($1, $2, $3)")
            .bind(key)
            .bind(by)
            .bind(ttl_ms(ttl))
            .fetch_one_on(&self.pg)
            .await
            .map_err(|e| from_sqlx("increment", e))
    }

    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        check("append", "log", log)?;
        self.append_inner("append", log, payloads, options, None)
            .await
    }

    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        check("read", "log", log)?;
        let from_i = i64::try_from(from).unwrap_or(i64::MAX);
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        let end_i = from_i.saturating_add(limit_i);
        let row = crate::error::retry_idempotent(|| {
            sqlx::query(READ_SQL)
                .bind(log)
                .bind(from_i)
                .bind(end_i)
                .bind(limit_i)
                .fetch_optional_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("read", e))?;
        let Some(row) = row else {
            return Err(err(ErrorKind::NotFound, "read", format!("no log {log}")));
        };
        let is_log: bool = row.try_get(0).map_err(|e| from_sqlx("read", e))?;
        if !is_log {
            return Err(conflict("read", log, false));
        }
        let next = cursor_to_u64("read", row.try_get(1).map_err(|e| from_sqlx("read", e))?)?;
        if from > next {
            return Err(err(
                ErrorKind::OffsetAhead,
                "read",
                format!("cursor {from} is beyond the end {next} of {log}"),
            ));
        }
        let raw = row.try_get_raw(2).map_err(|e| from_sqlx("read", e))?;
        let entries = if sqlx::ValueRef::is_null(&raw) {
            Vec::new()
        } else {
            let bytes = raw
                .as_bytes()
                .map_err(|e| err(ErrorKind::Corrupt, "read", e.to_string()))?;
            bytea_array(&Bytes::copy_from_slice(bytes))
                .ok_or_else(|| err(ErrorKind::Corrupt, "read", "malformed bytea[] page"))?
        };
        Ok(LogSlice {
            first: from,
            entries,
            next,
        })
    }

    async fn len(&self, log: &str) -> Result<Option<u64>> {
        check("len", "log", log)?;
        let row = crate::error::retry_idempotent(|| {
            sqlx::query(
                "SELECT is_log, next_cursor FROM cache_items \
             WHERE name = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())",
            )
            .bind(log)
            .fetch_optional_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("len", e))?;
        let Some(row) = row else { return Ok(None) };
        let is_log: bool = row.try_get(0).map_err(|e| from_sqlx("len", e))?;
        if !is_log {
            return Err(conflict("len", log, false));
        }
        Ok(Some(cursor_to_u64(
            "len",
            row.try_get(1).map_err(|e| from_sqlx("len", e))?,
        )?))
    }

    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        check("expire", "log", log)?;
        let is_log: Option<bool> = crate::error::retry_idempotent(|| {
            sqlx::query_scalar(
                "UPDATE cache_items SET expires_at = CASE WHEN is_log \
                 THEN now() + $2 * interval '1 millisecond' ELSE expires_at END \
             WHERE name = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp()) \
             RETURNING is_log",
            )
            .bind(log)
            .bind(ttl_ms(Some(ttl)))
            .fetch_optional_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("expire", e))?;
        match is_log {
            None => Ok(false),
            Some(false) => Err(conflict("expire", log, false)),
            Some(true) => {
                // Retention is set when a run ends: a good moment to bound table growth,
                // off the caller's path.
                let pg = self.pg.clone();
                tokio::spawn(async move {
                    if let Err(e) = pg.purge(256).await {
                        tracing::debug!(error = %e, "purge of expired rows failed; retried on the next expire");
                    }
                });
                Ok(true)
            }
        }
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        durable_core::validate_prefix("keys", prefix)
            .map_err(|e| e.with_backend(BACKEND).with_operation("keys"))?;
        // Names hold [A-Za-z0-9_-.:/]: only `_` is special in LIKE.
        let pattern = format!("{}%", prefix.replace('_', "\\_"));
        let mut names: Vec<String> = crate::error::retry_idempotent(|| {
            sqlx::query_scalar(
                "SELECT name FROM cache_items WHERE name LIKE $1 ESCAPE '\\' \
               AND (expires_at IS NULL OR expires_at > clock_timestamp()) ORDER BY name",
            )
            .bind(&pattern)
            .fetch_all_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("keys", e))?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        self.announce.then(|| notify::domain(&self.pg))
    }

    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        check("append", "log", log)?;
        check("append", "topic", announce.topic)?;
        if !self.announce {
            return Err(err(
                ErrorKind::Unsupported,
                "append_announce",
                "this PostgresServerCache does not announce (see with_announce)",
            ));
        }
        let schema = &self.pg.config().schema;
        let channel = notify::channel(schema, announce.topic);
        let (head, tail) =
            notify::frame_parts(announce.topic, log, payloads, announce.max_frame_bytes);
        if self.pg.config().wake == Wake::Listen {
            return self
                .append_inner(
                    "append",
                    log,
                    payloads,
                    options,
                    Some((channel, head, tail)),
                )
                .await;
        }
        // No LISTEN session hears the NOTIFY here: hand the frame to this handle's
        // subscribers directly, after the commit. Appends of one log from this process go
        // one at a time (they queue on the log's row anyway), so frames leave in cursor order.
        let _order = self.pg.log_lock(log).await;
        let first = self
            .append_inner(
                "append",
                log,
                payloads,
                options,
                Some((channel, head, tail)),
            )
            .await?;
        if !payloads.is_empty() {
            let frame = durable_core::frame::encode(first, payloads, announce.max_frame_bytes);
            self.pg.local().deliver(announce.topic, frame);
        }
        Ok(first)
    }
}

/// The elements of a `bytea[]` in PostgreSQL's binary array format, each a slice of `buf`:
/// one copy of the page and no allocation per event (decoding to `Vec<Vec<u8>>` cost one per
/// event). `None` unless it is a one-dimensional array of non-null `bytea` that fills `buf`
/// exactly.
///
/// Format: `ndim: i32, has_nulls: i32, element oid: u32`, then per dimension `len: i32,
/// lower bound: i32`, then per element `len: i32` (-1 for NULL) and its bytes.
fn bytea_array(buf: &Bytes) -> Option<Vec<Bytes>> {
    const BYTEA_OID: u32 = 17;
    let word = |at: usize| -> Option<u32> {
        let b = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ndim = word(0)?;
    if ndim == 0 {
        return (buf.len() == 12).then(Vec::new);
    }
    if ndim != 1 || word(8)? != BYTEA_OID {
        return None;
    }
    let count = usize::try_from(word(12)?).ok()?;
    // Bounded by the buffer: every element takes at least its 4-byte length.
    let mut out = Vec::with_capacity(count.min(buf.len() / 4));
    let mut at = 20;
    for _ in 0..count {
        let len = usize::try_from(i32::from_be_bytes(word(at)?.to_be_bytes())).ok()?;
        let start = at + 4;
        let end = start.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        out.push(buf.slice(start..end));
        at = end;
    }
    (at == buf.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{bytea_array, READ_SQL};
    use bytes::{BufMut, Bytes, BytesMut};
    use durable_core::{AppendOptions, ServerCache};

    fn array(elements: &[&[u8]]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32(1);
        b.put_i32(0);
        b.put_u32(17);
        b.put_i32(elements.len() as i32);
        b.put_i32(1);
        for e in elements {
            b.put_i32(e.len() as i32);
            b.put_slice(e);
        }
        b.freeze()
    }

    #[test]
    fn decodes_pages_and_rejects_anything_else() {
        let page = array(&[b"a", b"", b"{\"x\":1}"]);
        let got = bytea_array(&page).unwrap();
        assert_eq!(got, [&b"a"[..], b"", b"{\"x\":1}"]);
        let empty = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17]);
        assert_eq!(bytea_array(&empty).unwrap(), Vec::<Bytes>::new());
        // Every truncation, a trailing byte, a NULL element, a wrong element type.
        for cut in 0..page.len() {
            assert!(bytea_array(&page.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut longer = BytesMut::from(&page[..]);
        longer.put_u8(0);
        assert!(bytea_array(&longer.freeze()).is_none());
        let mut null = BytesMut::from(&array(&[b"a"])[..20]);
        null.put_i32(-1);
        assert!(bytea_array(&null.freeze()).is_none());
        let mut text = BytesMut::from(&page[..]);
        text[8..12].copy_from_slice(&25u32.to_be_bytes());
        assert!(bytea_array(&text.freeze()).is_none());
    }

    /// The largest actual row count of any node of an `EXPLAIN (ANALYZE)` plan, from its
    /// `(actual time=… rows=N loops=…)` parts.
    fn max_actual_rows(plan: &[String]) -> u64 {
        plan.iter()
            .filter_map(|line| {
                let actual = &line[line.find("(actual ")?..];
                let rows = &actual[actual.find("rows=")? + 5..];
                let digits = rows.split(|c: char| !c.is_ascii_digit()).next()?;
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// A page read touches the rows of its page and no others, under both the custom plans of
    /// a connection's first executions and the generic plan that follows: a catch-up read of
    /// a long log must not scan the rest of the log for every page.
    #[tokio::test]
    async fn read_scans_only_its_page() {
        let Some(url) = durable_conformance::services::env_url("postgres") else {
            assert!(
                !durable_conformance::harness::require_backends(),
                "DURABLE_TEST_POSTGRES_URL is not set"
            );
            eprintln!("SKIPPED: DURABLE_TEST_POSTGRES_URL is not set");
            return;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!("t_cacheunit_{}_{nanos:x}", std::process::id());
        let pg = crate::PostgresConfig::new(url)
            .schema(schema)
            .connect()
            .await
            .unwrap();
        let cache = pg.server_cache();
        let log = "plan/run/events";
        let events: Vec<Bytes> = (0..3000).map(|i| Bytes::from(format!("{i}"))).collect();
        cache
            .append_many(log, &events, AppendOptions::default())
            .await
            .unwrap();
        let mut conn = pg.pool().acquire().await.unwrap();
        sqlx::query(&format!(
            "PREPARE page(text, bigint, bigint, bigint) AS {READ_SQL}"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::query(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            for (from, limit) in [(0, 100), (1000, 100), (2950, 100)] {
                let plan: Vec<String> = sqlx::query_scalar(&format!(
                    "EXPLAIN (ANALYZE) EXECUTE page('{log}', {from}, {}, {limit})",
                    from + limit
                ))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
                let rows = max_actual_rows(&plan);
                assert!(rows > 0, "{mode}: no row counts in {plan:#?}");
                assert!(
                    rows <= limit,
                    "{mode}: a page of {limit} from {from} touched {rows} rows: {plan:#?}"
                );
            }
            let slice = cache.read(log, 2950, 100).await.unwrap();
            assert_eq!(slice.entries, events[2950..]);
            assert_eq!(slice.next, 3000);
        }
        // The page's bound saturates: no limit or offset overflows the range.
        let all = cache.read(log, 0, usize::MAX).await.unwrap();
        assert_eq!((all.first, all.next), (0, 3000));
        assert_eq!(all.entries, events);
        assert!(cache.read(log, 5, 0).await.unwrap().entries.is_empty());
        assert!(cache.read(log, 3000, 10).await.unwrap().entries.is_empty());
        for (from, limit) in [(3001, 1), (u64::MAX, usize::MAX)] {
            let e = cache.read(log, from, limit).await.unwrap_err();
            assert_eq!(e.kind(), durable_core::ErrorKind::OffsetAhead);
        }
        sqlx::query("RESET plan_cache_mode")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("DEALLOCATE page")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

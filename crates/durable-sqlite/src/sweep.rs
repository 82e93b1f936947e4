//! Retention: the writer's periodic sweep purges what expired and gives free pages back.

use rusqlite::Connection;

use crate::cache::remove_entry;
use crate::store::remove_run;

/// Most expired entries or runs removed per sweep (the rest go at the next one).
const EXPIRED_PER_SWEEP: i64 = 2048;
/// Free pages always kept for reuse (4096-byte pages: 1 MiB), plus a tenth of the file.
const KEEP_FREE_PAGES: i64 = 256;

/// One sweep in its own transaction: expired keys, logs and runs are removed; events of
/// removed logs are deleted, at most `purge_chunk` of them; then free pages beyond a slack
/// are returned to the file system (`incremental_vacuum`) and the WAL is checkpointed, so the
/// file follows the live data down as well as up.
pub(crate) fn sweep(conn: &Connection, now: i64, purge_chunk: usize) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match purge(conn, now, purge_chunk) {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    vacuum(conn)
}

fn purge(conn: &Connection, now: i64, purge_chunk: usize) -> rusqlite::Result<()> {
    let expired: Vec<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT id, kind, len FROM entries WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )?
        .query_map([now, EXPIRED_PER_SWEEP], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (id, kind, len) in expired {
        remove_entry(conn, id, kind, len)?;
    }
    let runs: Vec<String> = conn
        .prepare_cached(
            "SELECT run_id FROM runs WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )?
        .query_map([now, EXPIRED_PER_SWEEP], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for run in runs {
        remove_run(conn, &run)?;
    }
    let mut budget = i64::try_from(purge_chunk).unwrap_or(i64::MAX);
    while budget > 0 {
        let next: Option<(i64, i64, i64)> = {
            let mut s =
                conn.prepare_cached("SELECT log_id, from_cursor, to_cursor FROM purge LIMIT 1")?;
            let mut rows = s.query([])?;
            match rows.next()? {
                Some(r) => Some((r.get(0)?, r.get(1)?, r.get(2)?)),
                None => None,
            }
        };
        let Some((log_id, from, to)) = next else {
            break;
        };
        let upto = to.min(from.saturating_add(budget));
        conn.prepare_cached(
            "DELETE FROM events WHERE log_id = ?1 AND cursor >= ?2 AND cursor < ?3",
        )?
        .execute([log_id, from, upto])?;
        budget -= upto - from;
        if upto >= to {
            conn.prepare_cached("DELETE FROM purge WHERE log_id = ?1")?
                .execute([log_id])?;
        } else {
            conn.prepare_cached("UPDATE purge SET from_cursor = ?2 WHERE log_id = ?1")?
                .execute([log_id, upto])?;
        }
    }
    Ok(())
}

fn vacuum(conn: &Connection) -> rusqlite::Result<()> {
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let keep = KEEP_FREE_PAGES + pages / 10;
    if free > 2 * keep {
        // A number, not user input: formatting it into the pragma is safe.
        conn.execute_batch(&format!("PRAGMA incremental_vacuum({});", free - keep))?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    }
    Ok(())
}

//! Retention: the writer's periodic sweep purges what expired and gives free pages back.

use rusqlite::Connection;

use crate::cache::remove_entry;
use crate::db::event_key;
use crate::store::remove_run;

/// Most expired entries or runs removed per sweep (the rest go at the next one).
const EXPIRED_PER_SWEEP: i64 = 2048;
/// Free space is given back once it exceeds a tenth of the file by this much, so vacuuming
/// happens in worthwhile steps.
const VACUUM_STEP_BYTES: i64 = 1 << 20;

/// One sweep in its own transaction: expired keys, logs and runs are removed; events of
/// removed logs are deleted, at most `purge_chunk` of them; then free pages beyond a tenth of
/// the file are returned to the file system (`incremental_vacuum`) and the WAL is
/// checkpointed, so the file follows the live data down as well as up.
///
/// While writes keep coming, free pages are returned only in steps of
/// [`VACUUM_STEP_BYTES`]; once the writer was idle for a whole sweep interval everything above
/// the tenth goes back.
pub(crate) fn sweep(
    conn: &Connection,
    now: i64,
    purge_chunk: usize,
    idle: bool,
) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match purge(conn, now, purge_chunk) {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    vacuum(conn, idle)
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
        conn.prepare_cached("DELETE FROM events WHERE key >= ?1 AND key < ?2")?
            .execute([event_key(log_id, from), event_key(log_id, upto)])?;
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

fn vacuum(conn: &Connection, idle: bool) -> rusqlite::Result<()> {
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    // A tenth of the file stays free for reuse: new appends fill free pages before the file
    // grows, so a steady load neither grows the file nor churns it through vacuums.
    let keep = pages / 10;
    let step = if idle {
        0
    } else {
        VACUUM_STEP_BYTES / page_size.max(512)
    };
    if free > keep + step {
        // A number, not user input: formatting it into the pragma is safe. The pragma frees
        // one page per step, so it is stepped to the end.
        let mut s = conn.prepare(&format!("PRAGMA incremental_vacuum({})", free - keep))?;
        let mut rows = s.query([])?;
        while rows.next()?.is_some() {}
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    }
    Ok(())
}

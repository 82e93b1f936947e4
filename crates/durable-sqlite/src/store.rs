//! [`SqliteWorkflowStore`]: run records, checkpoints, leases with epoch fencing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durable_core::{
    check_terminal, ttl_ms, validate_name, Epoch, ErrorKind, Lease, NewRun, Result, RunId,
    RunRecord, RunSnapshot, RunStatus, StoreCapabilities, WorkflowStore,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::backend::Db;
use crate::error::{corrupt, err, from_sqlite, SQLITE};

/// [`WorkflowStore`] on one SQLite file: one row per run (its record as JSON beside the
/// indexed status, creation time and expiry) and one row per checkpoint.
///
/// Transitions run in the backend's writer thread, each checked and applied in one
/// transaction, so the epoch fence holds between processes sharing the file. Lease times are
/// Unix milliseconds of the writing process's clock.
///
/// Cheap to clone; clones share the database.
#[derive(Clone, Debug)]
pub struct SqliteWorkflowStore {
    pub(crate) db: Arc<Db>,
}

fn decode_record(op: &'static str, text: &str) -> Result<RunRecord> {
    serde_json::from_str(text).map_err(|e| corrupt(op, "run record", e))
}

fn encode(op: &'static str, v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| {
        err(
            ErrorKind::InvalidInput,
            op,
            "value is not JSON-serializable",
        )
        .with_source(e)
    })
}

/// The run's record for a read: `None` if missing or expired.
fn read_record(
    conn: &Connection,
    op: &'static str,
    run_id: &str,
    now: i64,
) -> Result<Option<RunRecord>> {
    let text: Option<String> = conn
        .prepare_cached(
            "SELECT record FROM runs
             WHERE run_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        )
        .and_then(|mut s| s.query_row(params![run_id, now], |r| r.get(0)).optional())
        .map_err(|e| from_sqlite(op, e))?;
    text.map(|t| decode_record(op, &t)).transpose()
}

/// Remove a run and its checkpoints.
pub(crate) fn remove_run(conn: &Connection, run_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("DELETE FROM checkpoints WHERE run_id = ?1")?
        .execute([run_id])?;
    Ok(conn
        .prepare_cached("DELETE FROM runs WHERE run_id = ?1")?
        .execute([run_id])?
        > 0)
}

/// The run's live record for a write: an expired one is removed first (with its checkpoints).
fn live_record(
    conn: &Connection,
    op: &'static str,
    run_id: &str,
    now: i64,
) -> Result<Option<RunRecord>> {
    let row: Option<(String, Option<i64>)> = conn
        .prepare_cached("SELECT record, expires_at FROM runs WHERE run_id = ?1")
        .and_then(|mut s| {
            s.query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| from_sqlite(op, e))?;
    match row {
        None => Ok(None),
        Some((_, Some(t))) if t <= now => {
            remove_run(conn, run_id).map_err(|e| from_sqlite(op, e))?;
            Ok(None)
        }
        Some((text, _)) => decode_record(op, &text).map(Some),
    }
}

fn found(op: &'static str, run_id: &str, rec: Option<RunRecord>) -> Result<RunRecord> {
    rec.ok_or_else(|| err(ErrorKind::NotFound, op, format!("no run {run_id}")))
}

fn save(conn: &Connection, op: &'static str, rec: &RunRecord) -> Result<()> {
    let text = encode(op, rec)?;
    conn.prepare_cached("UPDATE runs SET status = ?2, record = ?3 WHERE run_id = ?1")
        .and_then(|mut s| s.execute(params![rec.run_id.as_str(), rec.status.as_str(), text]))
        .map_err(|e| from_sqlite(op, e))?;
    Ok(())
}

fn fence(op: &'static str, rec: &RunRecord, epoch: Epoch) -> Result<()> {
    if rec.epoch != epoch {
        return Err(err(
            ErrorKind::Fenced,
            op,
            format!(
                "epoch {epoch} is stale: run {} is at epoch {}",
                rec.run_id, rec.epoch
            ),
        ));
    }
    Ok(())
}

fn ms(now: i64) -> u64 {
    u64::try_from(now).unwrap_or(0)
}

impl SqliteWorkflowStore {
    /// A transition of one existing run, in the writer's transaction.
    async fn transition<T, F>(&self, op: &'static str, run_id: &RunId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, RunRecord, u64) -> Result<T> + Send + 'static,
    {
        let run_id = run_id.clone();
        self.db
            .writer
            .write(op, move |conn, now| {
                let rec = found(
                    op,
                    run_id.as_str(),
                    live_record(conn, op, run_id.as_str(), now)?,
                )?;
                Ok((f(conn, rec, ms(now))?, None))
            })
            .await
    }
}

/// `set_status` on a record read in the writer's transaction.
#[allow(clippy::too_many_arguments)]
fn change_status(
    conn: &Connection,
    op: &'static str,
    id: &RunId,
    mut rec: RunRecord,
    now: u64,
    epoch: Option<Epoch>,
    status: RunStatus,
    data: Option<Value>,
) -> Result<RunRecord> {
    if let Some(e) = epoch {
        fence(op, &rec, e)?;
    }
    if rec.status.is_terminal() {
        return Err(err(
            ErrorKind::InvalidState,
            op,
            format!("run {id} is already {}", rec.status.as_str()),
        ));
    }
    rec.status = status;
    if let Some(d) = data {
        rec.data = d;
    }
    if status.is_terminal() || status == RunStatus::Suspended {
        rec.owner = None;
        rec.lease_expires_at = None;
    }
    rec.updated_at = now;
    save(conn, op, &rec)?;
    Ok(rec)
}

#[async_trait]
impl WorkflowStore for SqliteWorkflowStore {
    fn backend(&self) -> &'static str {
        SQLITE
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::default()
            .with_shared(true)
            .with_ttl(true)
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        let op = "create_run";
        self.db
            .writer
            .write(op, move |conn, now| {
                let id = run.run_id.as_str();
                if live_record(conn, op, id, now)?.is_some() {
                    return Err(err(
                        ErrorKind::Conflict,
                        op,
                        format!("run {id} already exists"),
                    ));
                }
                // `RunRecord` is non-exhaustive: it is built the way it is stored, from JSON.
                let record: RunRecord = serde_json::from_value(json!({
                    "run_id": run.run_id,
                    "status": run.status,
                    "epoch": 0,
                    "owner": null,
                    "lease_expires_at": null,
                    "resource_id": run.resource_id,
                    "created_at": ms(now),
                    "updated_at": ms(now),
                    "data": run.data,
                }))
                .map_err(|e| {
                    err(ErrorKind::Unexpected, op, "cannot build the run record").with_source(e)
                })?;
                let text = encode(op, &record)?;
                conn.prepare_cached(
                    "INSERT INTO runs (run_id, status, created_at, record) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![id, record.status.as_str(), now, text]))
                .map_err(|e| from_sqlite(op, e))?;
                Ok((record, None))
            })
            .await
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        let op = "get_run";
        let run_id = run_id.clone();
        self.db
            .readers
            .read(op, move |conn| {
                read_record(conn, op, run_id.as_str(), crate::writer::now())
            })
            .await
    }

    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        let op = "load";
        let run_id = run_id.clone();
        self.db
            .readers
            .read(op, move |conn| {
                let Some(record) = read_record(conn, op, run_id.as_str(), crate::writer::now())?
                else {
                    return Ok(None);
                };
                let mut s = conn
                    .prepare_cached(
                        "SELECT step_key, output FROM checkpoints WHERE run_id = ?1 ORDER BY seq",
                    )
                    .map_err(|e| from_sqlite(op, e))?;
                let rows = s
                    .query_map([run_id.as_str()], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(|e| from_sqlite(op, e))?;
                let checkpoints = rows
                    .into_iter()
                    .map(|(k, v)| {
                        serde_json::from_str::<Value>(&v)
                            .map(|v| (k, v))
                            .map_err(|e| corrupt(op, "checkpoint", e))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some(RunSnapshot {
                    record,
                    checkpoints,
                }))
            })
            .await
    }

    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        let op = "claim";
        validate_name("owner", owner).map_err(|e| e.with_backend(SQLITE).with_operation(op))?;
        let owner = owner.to_owned();
        let id = run_id.clone();
        self.transition(op, run_id, move |conn, mut rec, now| {
            if rec.status.is_terminal() {
                return Err(err(
                    ErrorKind::InvalidState,
                    op,
                    format!("run {id} is {}", rec.status.as_str()),
                ));
            }
            if rec.lease_live(now) && rec.owner.as_deref() != Some(owner.as_str()) {
                return Err(err(
                    ErrorKind::Conflict,
                    op,
                    format!("run {id} is leased by another owner"),
                ));
            }
            let expires_at = now.saturating_add(ttl_ms(ttl));
            rec.epoch += 1;
            rec.owner = Some(owner.clone());
            rec.lease_expires_at = Some(expires_at);
            rec.updated_at = now;
            save(conn, op, &rec)?;
            Ok(Lease {
                run_id: id,
                owner,
                epoch: rec.epoch,
                expires_at,
            })
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let op = "renew";
        let lease = lease.clone();
        self.transition(op, &lease.run_id.clone(), move |conn, mut rec, now| {
            fence(op, &rec, lease.epoch)?;
            let expires_at = now.saturating_add(ttl_ms(ttl));
            rec.owner = Some(lease.owner.clone());
            rec.lease_expires_at = Some(expires_at);
            rec.updated_at = now;
            save(conn, op, &rec)?;
            Ok(Lease {
                expires_at,
                ..lease
            })
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let op = "release";
        let epoch = lease.epoch;
        self.transition(op, &lease.run_id, move |conn, mut rec, now| {
            fence(op, &rec, epoch)?;
            rec.owner = None;
            rec.lease_expires_at = None;
            rec.updated_at = now;
            save(conn, op, &rec)
        })
        .await
    }

    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        let op = "checkpoint";
        validate_name("step key", key).map_err(|e| e.with_backend(SQLITE).with_operation(op))?;
        let key = key.to_owned();
        let text = encode(op, &output)?;
        self.transition(op, run_id, move |conn, mut rec, now| {
            fence(op, &rec, epoch)?;
            let id = rec.run_id.as_str().to_owned();
            let stored: Option<String> = conn
                .prepare_cached(
                    "SELECT output FROM checkpoints WHERE run_id = ?1 AND step_key = ?2",
                )
                .and_then(|mut s| s.query_row([&id, &key], |r| r.get(0)).optional())
                .map_err(|e| from_sqlite(op, e))?;
            if let Some(v) = stored {
                // First write wins.
                return serde_json::from_str(&v).map_err(|e| corrupt(op, "checkpoint", e));
            }
            conn.prepare_cached(
                "INSERT INTO checkpoints (run_id, step_key, seq, output)
                 VALUES (?1, ?2,
                         (SELECT COALESCE(MAX(seq) + 1, 0) FROM checkpoints WHERE run_id = ?1),
                         ?3)",
            )
            .and_then(|mut s| s.execute(params![id, key, text]))
            .map_err(|e| from_sqlite(op, e))?;
            rec.updated_at = now;
            save(conn, op, &rec)?;
            Ok(output)
        })
        .await
    }

    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        let op = "set_status";
        let id = run_id.clone();
        self.transition(op, run_id, move |conn, rec, now| {
            change_status(conn, op, &id, rec, now, epoch, status, data)
        })
        .await
    }

    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        let op = "finish_run";
        check_terminal(status)?;
        let id = run_id.clone();
        // One transaction (the writer's): the status and the expiry commit together.
        self.transition(op, run_id, move |conn, rec, now| {
            let rec = change_status(conn, op, &id, rec, now, epoch, status, None)?;
            let at = i64::try_from(now.saturating_add(ttl_ms(ttl))).unwrap_or(i64::MAX);
            conn.prepare_cached("UPDATE runs SET expires_at = ?2 WHERE run_id = ?1")
                .and_then(|mut s| s.execute(params![id.as_str(), at]))
                .map_err(|e| from_sqlite(op, e))?;
            Ok(rec)
        })
        .await
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        let op = "list_runs";
        self.db
            .readers
            .read(op, move |conn| {
                let now = crate::writer::now();
                let mut s = conn
                    .prepare_cached(
                        "SELECT record FROM runs
                         WHERE (?1 IS NULL OR status = ?1)
                           AND (expires_at IS NULL OR expires_at > ?2)
                         ORDER BY created_at, run_id",
                    )
                    .map_err(|e| from_sqlite(op, e))?;
                let texts = s
                    .query_map(params![status.map(RunStatus::as_str), now], |r| {
                        r.get::<_, String>(0)
                    })
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(|e| from_sqlite(op, e))?;
                texts.iter().map(|t| decode_record(op, t)).collect()
            })
            .await
    }

    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        let op = "expire_run";
        let run_id = run_id.clone();
        self.db
            .writer
            .write(op, move |conn, now| {
                if live_record(conn, op, run_id.as_str(), now)?.is_none() {
                    return Ok((false, None));
                }
                let at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
                conn.prepare_cached("UPDATE runs SET expires_at = ?2 WHERE run_id = ?1")
                    .and_then(|mut s| s.execute(params![run_id.as_str(), at]))
                    .map_err(|e| from_sqlite(op, e))?;
                Ok((true, None))
            })
            .await
    }

    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        let op = "delete_run";
        let run_id = run_id.clone();
        self.db
            .writer
            .write(op, move |conn, now| {
                let live = live_record(conn, op, run_id.as_str(), now)?.is_some();
                remove_run(conn, run_id.as_str()).map_err(|e| from_sqlite(op, e))?;
                Ok((live, None))
            })
            .await
    }
}

//! [`PostgresWorkflowStore`]: run records and checkpoints, leases on the database clock.

use std::time::Duration;

use async_trait::async_trait;
use durable_core::{
    check_terminal, Epoch, ErrorKind, Lease, NewRun, Result, RunId, RunRecord, RunSnapshot,
    RunStatus, StoreCapabilities, WorkflowStore,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::config::Postgres;
use crate::error::{check, err, from_sqlx, BACKEND};
use crate::exec::{QueryExt, ScalarExt};

/// The workflow store on PostgreSQL: a `runs` table and a `checkpoints` table keyed
/// `(run_id, key)`.
///
/// Every transition is one call of a PL/pgSQL function that locks the run's row, checks the
/// epoch fence and the status rules, and writes: one statement per transition. Lease times
/// come from the **database clock** (`clock_timestamp()`), so every instance agrees on when
/// a lease expires. `list_runs(status)` is served by an index on `(status, created_at)`.
#[derive(Clone, Debug)]
pub struct PostgresWorkflowStore {
    pg: Postgres,
}

const RUN_COLUMNS: &str =
    "run_id, status, epoch, owner, lease_expires_at, resource_id, created_at, updated_at, data";

fn ms(ttl: Duration) -> i64 {
    i64::try_from(durable_core::ttl_ms(ttl)).unwrap_or(i64::MAX)
}

fn epoch_i64(e: Epoch) -> i64 {
    i64::try_from(e).unwrap_or(i64::MAX)
}

fn status_of(op: &'static str, s: &str) -> Result<RunStatus> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| err(ErrorKind::Corrupt, op, format!("unknown status {s:?}")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn record(op: &'static str, row: &PgRow) -> Result<RunRecord> {
    let get = |e| from_sqlx(op, e);
    let run_id: String = row.try_get("run_id").map_err(get)?;
    let status: String = row.try_get("status").map_err(get)?;
    let data: String = row.try_get("data").map_err(get)?;
    let data: Value = serde_json::from_str(&data)
        .map_err(|e| err(ErrorKind::Corrupt, op, "run data is not JSON").with_source(e))?;
    RunId::new(&run_id).map_err(|e| e.with_backend(BACKEND).with_operation(op))?;
    status_of(op, &status)?;
    // `RunRecord` is non-exhaustive: built through its serde form.
    let rec = serde_json::json!({
        "run_id": run_id,
        "status": status,
        "epoch": to_u64(row.try_get("epoch").map_err(get)?),
        "owner": row.try_get::<Option<String>, _>("owner").map_err(get)?,
        "lease_expires_at": row
            .try_get::<Option<i64>, _>("lease_expires_at")
            .map_err(get)?
            .map(to_u64),
        "resource_id": row.try_get::<Option<String>, _>("resource_id").map_err(get)?,
        "created_at": to_u64(row.try_get("created_at").map_err(get)?),
        "updated_at": to_u64(row.try_get("updated_at").map_err(get)?),
        "data": data,
    });
    serde_json::from_value(rec)
        .map_err(|e| err(ErrorKind::Corrupt, op, "run record does not decode").with_source(e))
}

fn json_text(op: &'static str, v: &Value) -> Result<String> {
    serde_json::to_string(v).map_err(|e| {
        err(
            ErrorKind::InvalidInput,
            op,
            "value cannot be encoded as JSON",
        )
        .with_source(e)
    })
}

/// Whether a statement may run a second time after a failure that may have come after the
/// server ran it.
#[derive(Clone, Copy)]
enum Rerun {
    /// A second run changes nothing and answers the same.
    Idempotent,
    /// A second run would fail or answer differently (create a run that now exists, set a
    /// terminal status twice): the error goes to the caller.
    Never,
}

impl PostgresWorkflowStore {
    pub(crate) fn new(pg: Postgres) -> Self {
        Self { pg }
    }

    /// Run the query `q` builds and decode its row; an idempotent one once more after a broken
    /// connection (see [`retry_idempotent`](crate::error::retry_idempotent)).
    async fn one<'q>(
        &self,
        op: &'static str,
        rerun: Rerun,
        q: impl Fn() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> + Sync,
    ) -> Result<RunRecord> {
        let row = match rerun {
            Rerun::Idempotent => {
                crate::error::retry_idempotent(|| q().fetch_one_on(&self.pg)).await
            }
            Rerun::Never => q().fetch_one_on(&self.pg).await,
        }
        .map_err(|e| from_sqlx(op, e))?;
        record(op, &row)
    }
}

#[async_trait]
impl WorkflowStore for PostgresWorkflowStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::default()
            .with_shared(true)
            .with_ttl(true)
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        let data = json_text("create_run", &run.data)?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM durable_create_run($1, $2, $3, $4)");
        self.one("create_run", Rerun::Never, || {
            sqlx::query(&sql)
                .bind(run.run_id.as_str())
                .bind(run.status.as_str())
                .bind(run.resource_id.clone())
                .bind(data.clone())
        })
        .await
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1 \
             AND (expires_at IS NULL OR expires_at > clock_timestamp())"
        );
        let row = crate::error::retry_idempotent(|| {
            sqlx::query(&sql)
                .bind(run_id.as_str())
                .fetch_optional_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("get_run", e))?;
        row.map(|r| record("get_run", &r)).transpose()
    }

    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS}, \
               array(SELECT key FROM checkpoints c WHERE c.run_id = r.run_id ORDER BY seq) AS keys, \
               array(SELECT output FROM checkpoints c WHERE c.run_id = r.run_id ORDER BY seq) AS outputs \
             FROM runs r WHERE run_id = $1 \
             AND (expires_at IS NULL OR expires_at > clock_timestamp())"
        );
        let Some(row) = crate::error::retry_idempotent(|| {
            sqlx::query(&sql)
                .bind(run_id.as_str())
                .fetch_optional_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("load", e))?
        else {
            return Ok(None);
        };
        let record = record("load", &row)?;
        let keys: Vec<String> = row.try_get("keys").map_err(|e| from_sqlx("load", e))?;
        let outputs: Vec<String> = row.try_get("outputs").map_err(|e| from_sqlx("load", e))?;
        let mut checkpoints = Vec::with_capacity(keys.len());
        for (k, o) in keys.into_iter().zip(outputs) {
            let v: Value = serde_json::from_str(&o).map_err(|e| {
                err(ErrorKind::Corrupt, "load", "checkpoint is not JSON").with_source(e)
            })?;
            checkpoints.push((k, v));
        }
        Ok(Some(RunSnapshot {
            record,
            checkpoints,
        }))
    }

    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        check("claim", "owner", owner)?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM durable_claim($1, $2, $3)");
        let rec = self
            .one("claim", Rerun::Idempotent, || {
                sqlx::query(&sql)
                    .bind(run_id.as_str())
                    .bind(owner)
                    .bind(ms(ttl))
            })
            .await?;
        Ok(Lease {
            run_id: run_id.clone(),
            owner: owner.to_owned(),
            epoch: rec.epoch,
            expires_at: rec.lease_expires_at.unwrap_or_default(),
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM durable_renew($1, $2, $3, $4)");
        let rec = self
            .one("renew", Rerun::Idempotent, || {
                sqlx::query(&sql)
                    .bind(lease.run_id.as_str())
                    .bind(epoch_i64(lease.epoch))
                    .bind(&lease.owner)
                    .bind(ms(ttl))
            })
            .await?;
        Ok(Lease {
            expires_at: rec.lease_expires_at.unwrap_or_default(),
            ..lease.clone()
        })
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        crate::error::retry_idempotent(|| {
            sqlx::query("SELECT durable_release($1, $2)")
                .bind(lease.run_id.as_str())
                .bind(epoch_i64(lease.epoch))
                .execute_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("release", e))?;
        Ok(())
    }

    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        check("checkpoint", "step key", key)?;
        let text = json_text("checkpoint", &output)?;
        let stored: String = crate::error::retry_idempotent(|| {
            sqlx::query_scalar("SELECT durable_checkpoint($1, $2, $3, $4)")
                .bind(run_id.as_str())
                .bind(epoch_i64(epoch))
                .bind(key)
                .bind(&text)
                .fetch_one_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("checkpoint", e))?;
        if stored == text {
            return Ok(output);
        }
        serde_json::from_str(&stored).map_err(|e| {
            err(ErrorKind::Corrupt, "checkpoint", "checkpoint is not JSON").with_source(e)
        })
    }

    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        let data = data.map(|d| json_text("set_status", &d)).transpose()?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM durable_set_status($1, $2, $3, $4)");
        self.one("set_status", Rerun::Never, || {
            sqlx::query(&sql)
                .bind(run_id.as_str())
                .bind(epoch.map(epoch_i64))
                .bind(status.as_str())
                .bind(data.clone())
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
        const OP: &str = "finish_run";
        check_terminal(status)?;
        let set = format!("SELECT {RUN_COLUMNS} FROM durable_set_status($1, $2, $3, NULL)");
        let expire = "UPDATE runs SET expires_at = now() + $2 * interval '1 millisecond' \
                      WHERE run_id = $1";
        // One transaction: the status and the expiry commit together. Behind a pooler the
        // transaction keeps the session, so named statements are fine only without one.
        let persistent = !self.pg.config().pooler;
        // Not run twice: a commit whose reply was lost finished the run, and a second run
        // would fail with "already completed".
        let mut c = self.pg.conns().get().await.map_err(|e| from_sqlx(OP, e))?;
        let row = async {
            let mut tx = sqlx::Connection::begin(&mut c.conn).await?;
            let row = sqlx::query(&set)
                .bind(run_id.as_str())
                .bind(epoch.map(epoch_i64))
                .bind(status.as_str())
                .persistent(persistent)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(expire)
                .bind(run_id.as_str())
                .bind(ms(ttl))
                .persistent(persistent)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(row)
        }
        .await;
        c.finish(&row);
        let row = row.map_err(|e| from_sqlx(OP, e))?;
        record(OP, &row)
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR status = $1) \
             AND (expires_at IS NULL OR expires_at > clock_timestamp()) \
             ORDER BY created_at, run_id"
        );
        let rows = crate::error::retry_idempotent(|| {
            sqlx::query(&sql)
                .bind(status.map(RunStatus::as_str))
                .fetch_all_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("list_runs", e))?;
        rows.iter().map(|r| record("list_runs", r)).collect()
    }

    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        let n = crate::error::retry_idempotent(|| {
            sqlx::query(
                "UPDATE runs SET expires_at = now() + $2 * interval '1 millisecond' \
             WHERE run_id = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())",
            )
            .bind(run_id.as_str())
            .bind(ms(ttl))
            .execute_on(&self.pg)
        })
        .await
        .map_err(|e| from_sqlx("expire_run", e))?
        .rows_affected();
        Ok(n > 0)
    }

    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        // Not run twice: a second run would answer `false` for the run the first deleted.
        sqlx::query_scalar("SELECT durable_delete_run($1)")
            .bind(run_id.as_str())
            .fetch_one_on(&self.pg)
            .await
            .map_err(|e| from_sqlx("delete_run", e))
    }
}

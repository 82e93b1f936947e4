//! [`NatsWorkflowStore`]: run records and checkpoints in a JetStream key-value bucket.
//!
//! Keys: `r.<run_id>` holds the record, `c.<run_id>.<token(step key)>` one checkpoint each. Every
//! record change is a compare-and-set on the key's revision (a publish with
//! `Nats-Expected-Last-Subject-Sequence` on the bucket's stream), so claims, renewals, releases
//! and status changes never overwrite each other; the epoch in the record fences stale owners.
//! A checkpoint is created only if its key has no revision yet (first write wins), and its
//! revision order is the order `load` returns.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    check_terminal, now_ms, ttl_ms, validate_name, Epoch, ErrorKind, Lease, NewRun, Result, RunId,
    RunRecord, RunSnapshot, RunStatus, StoreCapabilities, WorkflowStore,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Shared;
use crate::error::{corrupt, err, NATS};
use crate::js::{Published, EXPECTED_LAST_SUBJECT_SEQ};
use crate::subject::{token, untoken};

/// Compare-and-set retries before giving up as `Unavailable`.
const MAX_RETRIES: usize = 1000;
/// Checkpoints fetched per batch get in `load`.
const PAGE: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Stored {
    record: RunRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

/// Run records, checkpoints and leases on NATS JetStream key-value. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsWorkflowStore {
    shared: Arc<Shared>,
}

fn fence(op: &'static str, record: &RunRecord, epoch: Epoch) -> Result<()> {
    if record.epoch != epoch {
        return Err(err(
            ErrorKind::Fenced,
            op,
            format!(
                "epoch {epoch} is stale: run {} is at epoch {}",
                record.run_id, record.epoch
            ),
        ));
    }
    Ok(())
}

fn not_found(op: &'static str, run_id: &RunId) -> durable_core::Error {
    err(
        ErrorKind::NotFound,
        op,
        format!("run {run_id} does not exist"),
    )
}

impl NatsWorkflowStore {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn stream(&self) -> String {
        format!("KV_{}", self.shared.bucket())
    }

    fn record_subject(&self, run_id: &RunId) -> String {
        format!("$KV.{}.r.{}", self.shared.bucket(), run_id.as_str())
    }

    fn checkpoints_prefix(&self, run_id: &RunId) -> String {
        format!("$KV.{}.c.{}.", self.shared.bucket(), run_id.as_str())
    }

    /// The record and its revision; `None` if missing. An expired record is purged and `None`.
    async fn read(&self, op: &'static str, run_id: &RunId) -> Result<Option<(u64, RunRecord)>> {
        let Some(m) = self
            .shared
            .js
            .last(op, &self.stream(), &self.record_subject(run_id))
            .await?
        else {
            return Ok(None);
        };
        if m.payload.is_empty() {
            // A KV delete or purge marker.
            return Ok(None);
        }
        let stored: Stored = serde_json::from_slice(&m.payload)
            .map_err(|e| corrupt(op, format!("run record does not decode: {e}")))?;
        if stored.expires_at.is_some_and(|t| t <= now_ms()) {
            self.purge(op, run_id).await?;
            return Ok(None);
        }
        Ok(Some((m.seq, stored.record)))
    }

    async fn purge(&self, op: &'static str, run_id: &RunId) -> Result<u64> {
        let stream = self.stream();
        let a = self
            .shared
            .js
            .purge(
                op,
                &stream,
                &format!("{}>", self.checkpoints_prefix(run_id)),
            )
            .await?;
        let b = self
            .shared
            .js
            .purge(op, &stream, &self.record_subject(run_id))
            .await?;
        Ok(a + b)
    }

    async fn write(
        &self,
        op: &'static str,
        subject: String,
        expected: u64,
        payload: Bytes,
    ) -> Result<Published> {
        let mut h = HeaderMap::new();
        h.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string().as_str());
        self.shared.js.publish(op, subject, h, payload).await
    }

    async fn write_record(
        &self,
        op: &'static str,
        expected: u64,
        record: &RunRecord,
        expires_at: Option<u64>,
    ) -> Result<Published> {
        let body = serde_json::to_vec(&Stored {
            record: record.clone(),
            expires_at,
        })
        .map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                op,
                format!("record does not encode: {e}"),
            )
        })?;
        self.write(
            op,
            self.record_subject(&record.run_id),
            expected,
            body.into(),
        )
        .await
    }

    /// Compare-and-set loop over the record: `f` changes it (or fails), then it is written if
    /// nobody else wrote in between.
    async fn update<T>(
        &self,
        op: &'static str,
        run_id: &RunId,
        f: impl FnMut(&mut RunRecord) -> Result<T>,
    ) -> Result<(T, RunRecord)> {
        self.update_expiring(op, run_id, None, f).await
    }

    /// [`update`](Self::update) that also sets the record's expiry (Unix ms) in the same write.
    async fn update_expiring<T>(
        &self,
        op: &'static str,
        run_id: &RunId,
        expires_at: Option<u64>,
        mut f: impl FnMut(&mut RunRecord) -> Result<T>,
    ) -> Result<(T, RunRecord)> {
        for _ in 0..MAX_RETRIES {
            let (rev, mut record) = self
                .read(op, run_id)
                .await?
                .ok_or_else(|| not_found(op, run_id))?;
            let out = f(&mut record)?;
            record.updated_at = now_ms();
            if let Published::Stored(_) = self.write_record(op, rev, &record, expires_at).await? {
                return Ok((out, record));
            }
        }
        Err(err(ErrorKind::Unavailable, op, "too much contention on one run").with_retryable(true))
    }
}

/// `set_status`'s change of a record read for a compare-and-set write.
fn change_status(
    op: &'static str,
    rec: &mut RunRecord,
    epoch: Option<Epoch>,
    status: RunStatus,
    data: Option<&Value>,
) -> Result<()> {
    if let Some(e) = epoch {
        fence(op, rec, e)?;
    }
    if rec.status.is_terminal() {
        return Err(err(
            ErrorKind::InvalidState,
            op,
            format!("run {} is already {}", rec.run_id, rec.status.as_str()),
        ));
    }
    rec.status = status;
    if let Some(d) = data {
        rec.data = d.clone();
    }
    if status.is_terminal() || status == RunStatus::Suspended {
        rec.owner = None;
        rec.lease_expires_at = None;
    }
    Ok(())
}

#[async_trait]
impl WorkflowStore for NatsWorkflowStore {
    fn backend(&self) -> &'static str {
        NATS
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::ALL
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        const OP: &str = "create_run";
        if let Some((rev, _)) = self.read(OP, &run.run_id).await? {
            let _ = rev;
            return Err(err(
                ErrorKind::Conflict,
                OP,
                format!("run {} already exists", run.run_id),
            ));
        }
        // Leftover checkpoints of an expired or deleted run with this id must not leak in.
        self.shared
            .js
            .purge(
                OP,
                &self.stream(),
                &format!("{}>", self.checkpoints_prefix(&run.run_id)),
            )
            .await?;
        let ms = now_ms();
        // `RunRecord` is non-exhaustive: build it through its serde form.
        let record: RunRecord = serde_json::from_value(serde_json::json!({
            "run_id": run.run_id.as_str(),
            "status": run.status,
            "epoch": 0,
            "owner": null,
            "lease_expires_at": null,
            "resource_id": run.resource_id,
            "created_at": ms,
            "updated_at": ms,
            "data": run.data,
        }))
        .map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                OP,
                format!("record does not encode: {e}"),
            )
        })?;
        // The read above purged an expired record, so "no revision" is the expected state.
        let rev = self
            .shared
            .js
            .last(OP, &self.stream(), &self.record_subject(&run.run_id))
            .await?
            .map_or(0, |m| m.seq);
        match self.write_record(OP, rev, &record, None).await? {
            Published::Stored(_) if rev == 0 => Ok(record),
            Published::Stored(_) => Ok(record),
            Published::WrongLastSequence => Err(err(
                ErrorKind::Conflict,
                OP,
                format!("run {} already exists", record.run_id),
            )),
        }
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        Ok(self.read("get_run", run_id).await?.map(|(_, r)| r))
    }

    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        const OP: &str = "load";
        let Some((_, record)) = self.read(OP, run_id).await? else {
            return Ok(None);
        };
        let prefix = self.checkpoints_prefix(run_id);
        let filter = format!("{prefix}*");
        let stream = self.stream();
        let mut checkpoints = Vec::new();
        let mut seq = 1;
        loop {
            let page = self
                .shared
                .js
                .batch(OP, &stream, &filter, seq, PAGE)
                .await?;
            let n = page.len();
            for m in page {
                seq = m.seq + 1;
                if m.payload.is_empty() {
                    continue;
                }
                let key = m
                    .subject
                    .strip_prefix(&prefix)
                    .and_then(untoken)
                    .ok_or_else(|| corrupt(OP, "checkpoint on a foreign subject"))?;
                let value: Value = serde_json::from_slice(&m.payload)
                    .map_err(|e| corrupt(OP, format!("checkpoint does not decode: {e}")))?;
                checkpoints.push((key, value));
            }
            if n < PAGE {
                break;
            }
        }
        Ok(Some(RunSnapshot {
            record,
            checkpoints,
        }))
    }

    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        const OP: &str = "claim";
        validate_name("owner", owner).map_err(|e| e.with_backend(NATS).with_operation(OP))?;
        let (lease, _) = self
            .update(OP, run_id, |rec| {
                let now = now_ms();
                if rec.status.is_terminal() {
                    return Err(err(
                        ErrorKind::InvalidState,
                        OP,
                        format!("run {run_id} is {}", rec.status.as_str()),
                    ));
                }
                if rec.lease_live(now) && rec.owner.as_deref() != Some(owner) {
                    return Err(err(
                        ErrorKind::Conflict,
                        OP,
                        format!("run {run_id} is leased by another owner"),
                    ));
                }
                rec.epoch += 1;
                rec.owner = Some(owner.to_owned());
                rec.lease_expires_at = Some(now + ttl_ms(ttl));
                Ok(Lease {
                    run_id: run_id.clone(),
                    owner: owner.to_owned(),
                    epoch: rec.epoch,
                    expires_at: now + ttl_ms(ttl),
                })
            })
            .await?;
        Ok(lease)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        const OP: &str = "renew";
        let (lease, _) = self
            .update(OP, &lease.run_id, |rec| {
                fence(OP, rec, lease.epoch)?;
                let now = now_ms();
                rec.owner = Some(lease.owner.clone());
                rec.lease_expires_at = Some(now + ttl_ms(ttl));
                Ok(Lease {
                    expires_at: now + ttl_ms(ttl),
                    ..lease.clone()
                })
            })
            .await?;
        Ok(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        const OP: &str = "release";
        self.update(OP, &lease.run_id, |rec| {
            fence(OP, rec, lease.epoch)?;
            rec.owner = None;
            rec.lease_expires_at = None;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        const OP: &str = "checkpoint";
        validate_name("step key", key).map_err(|e| e.with_backend(NATS).with_operation(OP))?;
        let (_, record) = self
            .read(OP, run_id)
            .await?
            .ok_or_else(|| not_found(OP, run_id))?;
        fence(OP, &record, epoch)?;
        let subject = format!("{}{}", self.checkpoints_prefix(run_id), token(key));
        let body = serde_json::to_vec(&output).map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                OP,
                format!("output does not encode: {e}"),
            )
        })?;
        match self.write(OP, subject.clone(), 0, body.into()).await? {
            Published::Stored(_) => Ok(output),
            Published::WrongLastSequence => {
                let m = self
                    .shared
                    .js
                    .last(OP, &self.stream(), &subject)
                    .await?
                    .ok_or_else(|| corrupt(OP, "checkpoint vanished"))?;
                serde_json::from_slice(&m.payload)
                    .map_err(|e| corrupt(OP, format!("checkpoint does not decode: {e}")))
            }
        }
    }

    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        const OP: &str = "set_status";
        let (_, record) = self
            .update(OP, run_id, |rec| {
                change_status(OP, rec, epoch, status, data.as_ref())
            })
            .await?;
        Ok(record)
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
        // The status and the expiry in one revision-checked write of the record (G6).
        let expires_at = now_ms().saturating_add(ttl_ms(ttl));
        let (_, record) = self
            .update_expiring(OP, run_id, Some(expires_at), |rec| {
                change_status(OP, rec, epoch, status, None)
            })
            .await?;
        Ok(record)
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        const OP: &str = "list_runs";
        let filter = format!("$KV.{}.r.*", self.shared.bucket());
        let stream = self.stream();
        let now = now_ms();
        let mut out = Vec::new();
        let mut seq = 1;
        loop {
            let page = self
                .shared
                .js
                .batch(OP, &stream, &filter, seq, PAGE)
                .await?;
            let n = page.len();
            for m in page {
                seq = m.seq + 1;
                if m.payload.is_empty() {
                    continue;
                }
                let stored: Stored = serde_json::from_slice(&m.payload)
                    .map_err(|e| corrupt(OP, format!("run record does not decode: {e}")))?;
                if stored.expires_at.is_some_and(|t| t <= now) {
                    continue;
                }
                if status.is_none_or(|s| stored.record.status == s) {
                    out.push(stored.record);
                }
            }
            if n < PAGE {
                break;
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(out)
    }

    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        const OP: &str = "expire_run";
        let expires_at = now_ms() + ttl_ms(ttl);
        for _ in 0..MAX_RETRIES {
            let Some((rev, record)) = self.read(OP, run_id).await? else {
                return Ok(false);
            };
            if let Published::Stored(_) = self
                .write_record(OP, rev, &record, Some(expires_at))
                .await?
            {
                return Ok(true);
            }
        }
        Err(err(ErrorKind::Unavailable, OP, "too much contention on one run").with_retryable(true))
    }

    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        const OP: &str = "delete_run";
        let existed = self.read(OP, run_id).await?.is_some();
        self.purge(OP, run_id).await?;
        Ok(existed)
    }
}

/// The step keys of a run are tokens; keep `token` and `untoken` in step (used by `load`).
#[cfg(test)]
mod tests {
    #[test]
    fn step_keys_round_trip() {
        let k = "step-1/model:0.out";
        assert_eq!(
            crate::subject::untoken(&crate::subject::token(k)).as_deref(),
            Some(k)
        );
    }
}

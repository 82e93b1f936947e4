use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::{lock, BACKEND};
use crate::error::{Error, ErrorKind, Result};
use crate::id::{validate_name, RunId};
use crate::store::{
    now_ms, ttl_ms, Epoch, Lease, NewRun, RunRecord, RunSnapshot, RunStatus, StoreCapabilities,
    WorkflowStore,
};

/// In-memory [`WorkflowStore`].
#[derive(Clone, Debug, Default)]
pub struct InMemoryWorkflowStore {
    runs: Arc<Mutex<HashMap<RunId, StoredRun>>>,
}

#[derive(Debug)]
struct StoredRun {
    record: RunRecord,
    checkpoints: Vec<(String, Value)>,
    expires_at: Option<Instant>,
}

impl InMemoryWorkflowStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_run<R>(
        &self,
        op: &'static str,
        run_id: &RunId,
        f: impl FnOnce(&mut StoredRun) -> Result<R>,
    ) -> Result<R> {
        let mut runs = lock(&self.runs);
        let now = Instant::now();
        if runs
            .get(run_id)
            .is_some_and(|r| r.expires_at.is_some_and(|t| t <= now))
        {
            runs.remove(run_id);
        }
        match runs.get_mut(run_id) {
            Some(run) => f(run),
            None => Err(err(ErrorKind::NotFound, op, format!("no run {run_id}"))),
        }
    }
}

fn err(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
        .with_backend(BACKEND)
        .with_operation(op)
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

/// `set_status` on a record held under the store's lock.
fn change_status(
    op: &'static str,
    r: &mut StoredRun,
    epoch: Option<Epoch>,
    status: RunStatus,
    data: Option<Value>,
) -> Result<RunRecord> {
    if let Some(e) = epoch {
        fence(op, &r.record, e)?;
    }
    if r.record.status.is_terminal() {
        return Err(err(
            ErrorKind::InvalidState,
            op,
            format!(
                "run {} is already {}",
                r.record.run_id,
                r.record.status.as_str()
            ),
        ));
    }
    r.record.status = status;
    if let Some(d) = data {
        r.record.data = d;
    }
    if status.is_terminal() || status == RunStatus::Suspended {
        r.record.owner = None;
        r.record.lease_expires_at = None;
    }
    r.record.updated_at = now_ms();
    Ok(r.record.clone())
}

#[async_trait]
impl WorkflowStore for InMemoryWorkflowStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::ALL.with_shared(false)
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        let mut runs = lock(&self.runs);
        let now = Instant::now();
        if let Some(existing) = runs.get(&run.run_id) {
            if existing.expires_at.is_none_or(|t| t > now) {
                return Err(err(
                    ErrorKind::Conflict,
                    "create_run",
                    format!("run {} already exists", run.run_id),
                ));
            }
        }
        let ms = now_ms();
        let record = RunRecord {
            run_id: run.run_id.clone(),
            status: run.status,
            epoch: 0,
            owner: None,
            lease_expires_at: None,
            resource_id: run.resource_id,
            created_at: ms,
            updated_at: ms,
            data: run.data,
        };
        runs.insert(
            run.run_id,
            StoredRun {
                record: record.clone(),
                checkpoints: Vec::new(),
                expires_at: None,
            },
        );
        Ok(record)
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        match self.with_run("get_run", run_id, |r| Ok(r.record.clone())) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        let snap = self.with_run("load", run_id, |r| {
            Ok(RunSnapshot {
                record: r.record.clone(),
                checkpoints: r.checkpoints.clone(),
            })
        });
        match snap {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        validate_name("owner", owner)
            .map_err(|e| e.with_backend(BACKEND).with_operation("claim"))?;
        self.with_run("claim", run_id, |r| {
            let now = now_ms();
            let rec = &mut r.record;
            if rec.status.is_terminal() {
                return Err(err(
                    ErrorKind::InvalidState,
                    "claim",
                    format!("run {run_id} is {}", rec.status.as_str()),
                ));
            }
            if rec.lease_live(now) && rec.owner.as_deref() != Some(owner) {
                return Err(err(
                    ErrorKind::Conflict,
                    "claim",
                    format!("run {run_id} is leased by another owner"),
                ));
            }
            rec.epoch += 1;
            rec.owner = Some(owner.to_owned());
            rec.lease_expires_at = Some(now + ttl_ms(ttl));
            rec.updated_at = now;
            Ok(Lease {
                run_id: run_id.clone(),
                owner: owner.to_owned(),
                epoch: rec.epoch,
                expires_at: now + ttl_ms(ttl),
            })
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        self.with_run("renew", &lease.run_id, |r| {
            fence("renew", &r.record, lease.epoch)?;
            let now = now_ms();
            r.record.owner = Some(lease.owner.clone());
            r.record.lease_expires_at = Some(now + ttl_ms(ttl));
            r.record.updated_at = now;
            Ok(Lease {
                expires_at: now + ttl_ms(ttl),
                ..lease.clone()
            })
        })
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.with_run("release", &lease.run_id, |r| {
            fence("release", &r.record, lease.epoch)?;
            r.record.owner = None;
            r.record.lease_expires_at = None;
            r.record.updated_at = now_ms();
            Ok(())
        })
    }

    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        validate_name("step key", key)
            .map_err(|e| e.with_backend(BACKEND).with_operation("checkpoint"))?;
        self.with_run("checkpoint", run_id, |r| {
            fence("checkpoint", &r.record, epoch)?;
            if let Some((_, v)) = r.checkpoints.iter().find(|(k, _)| k == key) {
                return Ok(v.clone());
            }
            r.checkpoints.push((key.to_owned(), output.clone()));
            r.record.updated_at = now_ms();
            Ok(output)
        })
    }

    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        self.with_run("set_status", run_id, |r| {
            change_status("set_status", r, epoch, status, data)
        })
    }

    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        crate::store::check_terminal(status)?;
        self.with_run("finish_run", run_id, |r| {
            let record = change_status("finish_run", r, epoch, status, None)?;
            r.expires_at = Some(Instant::now() + ttl);
            Ok(record)
        })
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        let mut runs = lock(&self.runs);
        let now = Instant::now();
        runs.retain(|_, r| r.expires_at.is_none_or(|t| t > now));
        let mut out: Vec<RunRecord> = runs
            .values()
            .filter(|r| status.is_none_or(|s| r.record.status == s))
            .map(|r| r.record.clone())
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(out)
    }

    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        match self.with_run("expire_run", run_id, |r| {
            r.expires_at = Some(Instant::now() + ttl);
            Ok(())
        }) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        Ok(lock(&self.runs).remove(run_id).is_some())
    }
}

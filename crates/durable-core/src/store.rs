//! [`WorkflowStore`]: run records, step checkpoints, leases with epoch fencing.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::RunId;

/// An owner epoch. Every successful [`WorkflowStore::claim`] increments it; writes carrying an
/// older epoch are rejected with `Fenced`.
pub type Epoch = u64;

/// The lifecycle state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunStatus {
    /// Created, not yet picked up by an executor (evented runs wait here in the queue).
    Pending,
    /// Being executed by the lease holder.
    Running,
    /// Waiting for outside input (tool approval); resumable from any process.
    Suspended,
    /// Finished successfully. Terminal.
    Completed,
    /// Finished with an error. Terminal.
    Failed,
    /// Aborted on request. Terminal.
    Aborted,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RunStatus {
    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Aborted
        )
    }

    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Suspended => "suspended",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }
}

/// The persistent record of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Current status.
    pub status: RunStatus,
    /// Current owner epoch (0 before the first claim).
    pub epoch: Epoch,
    /// The current lease holder, if any.
    pub owner: Option<String>,
    /// When the current lease expires, in Unix milliseconds.
    pub lease_expires_at: Option<u64>,
    /// Who the run belongs to (used to restrict `observe` to its owner).
    pub resource_id: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
    /// Last change, Unix milliseconds.
    pub updated_at: u64,
    /// Opaque executor data (agent input, suspension payload, …).
    pub data: Value,
}

impl RunRecord {
    /// Whether the lease is held and unexpired at `now_ms`.
    pub fn lease_live(&self, now_ms: u64) -> bool {
        self.owner.is_some() && self.lease_expires_at.is_some_and(|t| t > now_ms)
    }
}

/// The input of [`WorkflowStore::create_run`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewRun {
    /// The run.
    pub run_id: RunId,
    /// Initial status (normally `Pending` or `Running`).
    pub status: RunStatus,
    /// Owner of the run for access control.
    pub resource_id: Option<String>,
    /// Executor data.
    pub data: Value,
}

impl NewRun {
    /// A pending run with no data.
    pub fn new(run_id: RunId) -> Self {
        Self {
            run_id,
            status: RunStatus::Pending,
            resource_id: None,
            data: Value::Null,
        }
    }

    /// Set the initial status.
    #[must_use]
    pub fn status(mut self, status: RunStatus) -> Self {
        self.status = status;
        self
    }

    /// Set the resource id.
    #[must_use]
    pub fn resource_id(mut self, resource_id: impl Into<String>) -> Self {
        self.resource_id = Some(resource_id.into());
        self
    }

    /// Set the executor data.
    #[must_use]
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// A held lease, returned by [`WorkflowStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run_id: RunId,
    /// The holder.
    pub owner: String,
    /// The epoch this lease fences with.
    pub epoch: Epoch,
    /// Expiry, Unix milliseconds.
    pub expires_at: u64,
}

/// A run record with its checkpoints in write order.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    /// The record.
    pub record: RunRecord,
    /// `(step key, output)` in the order they were first written.
    pub checkpoints: Vec<(String, Value)>,
}

impl RunSnapshot {
    /// The checkpoint stored under `key`.
    pub fn checkpoint(&self, key: &str) -> Option<&Value> {
        self.checkpoints
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }
}

/// What a [`WorkflowStore`] backend supports.
///
/// `Default` is "nothing"; backends turn on what they implement with the `with_*` setters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// Records survive the process and are visible to other processes.
    ///
    /// # Behavior
    /// - A run created through one instance is seen and taken over through a second, which
    ///   fences the first (`shared_store_is_seen_by_another_instance`).
    pub shared: bool,
    /// [`WorkflowStore::expire_run`] is honoured by the backend.
    pub ttl: bool,
}

impl StoreCapabilities {
    /// All capabilities on.
    pub const ALL: Self = Self {
        shared: true,
        ttl: true,
    };

    /// Set whether records are shared between processes.
    #[must_use]
    pub const fn with_shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// Set whether [`WorkflowStore::expire_run`] is honoured.
    #[must_use]
    pub const fn with_ttl(mut self, ttl: bool) -> Self {
        self.ttl = ttl;
        self
    }
}

/// Run records and step checkpoints: what a run needs to continue after a crash.
#[async_trait]
pub trait WorkflowStore: Send + Sync + Debug + 'static {
    /// The backend's name.
    fn backend(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> StoreCapabilities;

    /// Create a run record with epoch 0 and no owner.
    ///
    /// # Behavior
    /// - Creating an existing run fails with `Conflict` and changes nothing
    ///   (`create_run_twice_conflicts`).
    async fn create_run(&self, run: NewRun) -> Result<RunRecord>;

    /// The run record, or `None`.
    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>>;

    /// The run record with all checkpoints, or `None`.
    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>>;

    /// Take the run's lease for `owner` for `ttl`, incrementing the epoch.
    ///
    /// # Behavior
    /// - Fails with `Conflict` while another owner's lease is unexpired; succeeds once it has
    ///   expired, with a higher epoch (`claim_is_exclusive_until_lease_expires`).
    /// - Fails with `NotFound` for an unknown run, `InvalidState` for a terminal run.
    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease>;

    /// Extend a held lease.
    ///
    /// # Behavior
    /// - Fails with `Fenced` once a newer epoch exists (`stale_epoch_is_fenced`).
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Give the lease up (the run stays as it is, claimable at once).
    ///
    /// # Behavior
    /// - A stale lease's release fails with `Fenced` and changes nothing.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Store the output of step `key` for the holder of `epoch` and return the stored output.
    ///
    /// # Behavior
    /// - First write wins: writing an existing key returns the stored output unchanged
    ///   (`checkpoint_is_idempotent`).
    /// - A stale epoch is rejected with `Fenced` (`stale_epoch_is_fenced`).
    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value>;

    /// Change the status (and optionally replace the data). With `epoch`, the write is fenced.
    ///
    /// # Behavior
    /// - Terminal runs accept no further status change: `InvalidState`
    ///   (`terminal_status_is_final`).
    /// - A stale epoch is rejected with `Fenced` (`stale_epoch_is_fenced`).
    /// - Entering a terminal or suspended status releases the lease.
    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord>;

    /// Runs, optionally only those in `status`.
    ///
    /// # Behavior
    /// - Lists exactly the runs in that status (`list_runs_by_status`).
    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>>;

    /// Make the record and its checkpoints expire after `ttl`. Returns whether the run exists.
    ///
    /// # Behavior
    /// - After the TTL, `get_run` is `None` (`run_record_expires`).
    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool>;

    /// Delete the record and its checkpoints. Returns whether the run existed.
    async fn delete_run(&self, run_id: &RunId) -> Result<bool>;

    /// Enter the terminal `status` and make the record and its checkpoints expire after `ttl`:
    /// [`set_status`](Self::set_status) and [`expire_run`](Self::expire_run) together, so no
    /// crash can leave a terminal run that never expires (G6). No process looks at a terminal run
    /// again, so its retention must be in the write that makes it terminal.
    ///
    /// The default runs the two writes one after the other; every store of this workspace
    /// overrides it with one atomic write, and a third-party store should too.
    ///
    /// # Behavior
    /// - The run is terminal at once and its record expires after `ttl`
    ///   (`finishing_a_run_schedules_its_expiry`).
    /// - A non-terminal `status` is `InvalidInput`; the fence, terminal and not-found rules of
    ///   `set_status` apply.
    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        check_terminal(status)?;
        let record = self.set_status(run_id, epoch, status, None).await?;
        self.expire_run(run_id, ttl).await?;
        Ok(record)
    }
}

/// `finish_run`'s argument check: only a terminal status finishes a run.
///
/// # Errors
/// `InvalidInput` for a status that is not terminal.
pub fn check_terminal(status: RunStatus) -> Result<()> {
    if status.is_terminal() {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "finish_run needs a terminal status, not {}",
            status.as_str()
        )))
    }
}

#[async_trait]
impl<T: WorkflowStore + ?Sized> WorkflowStore for Arc<T> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn capabilities(&self) -> StoreCapabilities {
        (**self).capabilities()
    }
    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        (**self).create_run(run).await
    }
    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        (**self).get_run(run_id).await
    }
    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        (**self).load(run_id).await
    }
    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        (**self).claim(run_id, owner, ttl).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        (**self).renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        (**self).release(lease).await
    }
    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        (**self).checkpoint(run_id, epoch, key, output).await
    }
    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        (**self).set_status(run_id, epoch, status, data).await
    }
    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        (**self).list_runs(status).await
    }
    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        (**self).expire_run(run_id, ttl).await
    }
    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        (**self).delete_run(run_id).await
    }
    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        (**self).finish_run(run_id, epoch, status, ttl).await
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `Duration` in whole milliseconds, saturating, at least 1.
pub fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

//! Timeout decorators: every call of a backend under test is bounded, so a hang becomes a
//! `Timeout` error naming the backend and the operation, never a stuck CI.
//!
//! [`Backend`](crate::Backend) hands cases its parts wrapped in these, so no case needs to bound
//! a single backend call itself; cases keep explicit deadlines only where they wait for a
//! *condition* (a live event arriving, a TTL elapsing). Every trait method is delegated,
//! capabilities and announce pairing included, so capability-driven behaviour is unchanged.
//! Subscription streams are not bounded item by item (a quiet topic is not a hang): the cases
//! that read them bound their own waits.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    Announce, AnnounceDomain, AppendOptions, CacheCapabilities, Cursor, Epoch, Error, ErrorKind,
    GroupSubscription, Job, JobAcker, Lease, LogSlice, NewRun, PubSub, PubSubCapabilities, Result,
    RunId, RunRecord, RunSnapshot, RunStatus, ServerCache, StoreCapabilities, Subscription,
    WorkflowStore,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::Value;

/// Await `fut` for at most `limit`; past it, a retryable `Timeout` error naming `backend` and
/// `operation`.
async fn bounded<T>(
    backend: &'static str,
    operation: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("{backend} {operation} did not complete within {limit:?}"),
        )
        .with_backend(backend)
        .with_operation(operation)),
    }
}

/// A [`ServerCache`] whose every call completes within a limit or fails with `Timeout`.
#[derive(Clone)]
pub struct TimeoutCache {
    inner: Arc<dyn ServerCache>,
    limit: Duration,
}

impl TimeoutCache {
    /// Bound every call of `inner` by `limit`.
    pub fn new(inner: Arc<dyn ServerCache>, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

impl fmt::Debug for TimeoutCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutCache")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

#[async_trait]
impl ServerCache for TimeoutCache {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> CacheCapabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        bounded(self.backend(), "get", self.limit, self.inner.get(key)).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        bounded(
            self.backend(),
            "set",
            self.limit,
            self.inner.set(key, value, ttl),
        )
        .await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        bounded(self.backend(), "delete", self.limit, self.inner.delete(key)).await
    }
    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        bounded(
            self.backend(),
            "increment",
            self.limit,
            self.inner.increment(key, by, ttl),
        )
        .await
    }
    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        bounded(
            self.backend(),
            "append_many",
            self.limit,
            self.inner.append_many(log, payloads, options),
        )
        .await
    }
    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        bounded(
            self.backend(),
            "read",
            self.limit,
            self.inner.read(log, from, limit),
        )
        .await
    }
    async fn len(&self, log: &str) -> Result<Option<u64>> {
        bounded(self.backend(), "len", self.limit, self.inner.len(log)).await
    }
    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        bounded(
            self.backend(),
            "expire",
            self.limit,
            self.inner.expire(log, ttl),
        )
        .await
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        bounded(self.backend(), "keys", self.limit, self.inner.keys(prefix)).await
    }
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        self.inner.announce_domain()
    }
    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        bounded(
            self.backend(),
            "append_announce",
            self.limit,
            self.inner.append_announce(log, payloads, options, announce),
        )
        .await
    }
}

/// A [`PubSub`] whose every call completes within a limit or fails with `Timeout`: publish,
/// flush, `subscribe` and `subscribe_group` themselves, and the `ack`/`nack` of every job a
/// group delivers. The items of a subscription are not bounded.
#[derive(Clone)]
pub struct TimeoutPubSub {
    inner: Arc<dyn PubSub>,
    limit: Duration,
}

impl TimeoutPubSub {
    /// Bound every call of `inner` by `limit`.
    pub fn new(inner: Arc<dyn PubSub>, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

impl fmt::Debug for TimeoutPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutPubSub")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Settles the backend's own job under the limit.
struct TimeoutAcker {
    job: Job,
    backend: &'static str,
    limit: Duration,
}

impl JobAcker for TimeoutAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let TimeoutAcker {
            job,
            backend,
            limit,
        } = *self;
        Box::pin(bounded(backend, "ack", limit, job.ack()))
    }
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let TimeoutAcker {
            job,
            backend,
            limit,
        } = *self;
        Box::pin(bounded(backend, "nack", limit, job.nack()))
    }
}

#[async_trait]
impl PubSub for TimeoutPubSub {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> PubSubCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        bounded(
            self.backend(),
            "publish",
            self.limit,
            self.inner.publish(topic, payload),
        )
        .await
    }
    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        bounded(
            self.backend(),
            "subscribe",
            self.limit,
            self.inner.subscribe(topic),
        )
        .await
    }
    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        let (backend, limit) = (self.backend(), self.limit);
        let group = bounded(
            backend,
            "subscribe_group",
            limit,
            self.inner.subscribe_group(topic, group),
        )
        .await?;
        // A job handed back unsettled (dropped) reaches the backend's job through its own
        // drop, exactly as without the decorator.
        Ok(GroupSubscription::new(group.map(move |job| {
            job.map(|job| {
                let (payload, attempt) = (job.payload().clone(), job.attempt());
                Job::new(
                    payload,
                    attempt,
                    Box::new(TimeoutAcker {
                        job,
                        backend,
                        limit,
                    }),
                )
            })
        })))
    }
    async fn flush(&self) -> Result<()> {
        bounded(self.backend(), "flush", self.limit, self.inner.flush()).await
    }
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        self.inner.announce_domain()
    }
}

/// A [`WorkflowStore`] whose every call completes within a limit or fails with `Timeout`.
#[derive(Clone)]
pub struct TimeoutStore {
    inner: Arc<dyn WorkflowStore>,
    limit: Duration,
}

impl TimeoutStore {
    /// Bound every call of `inner` by `limit`.
    pub fn new(inner: Arc<dyn WorkflowStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

impl fmt::Debug for TimeoutStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutStore")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

#[async_trait]
impl WorkflowStore for TimeoutStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        bounded(
            self.backend(),
            "create_run",
            self.limit,
            self.inner.create_run(run),
        )
        .await
    }
    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        bounded(
            self.backend(),
            "get_run",
            self.limit,
            self.inner.get_run(run_id),
        )
        .await
    }
    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        bounded(self.backend(), "load", self.limit, self.inner.load(run_id)).await
    }
    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        bounded(
            self.backend(),
            "claim",
            self.limit,
            self.inner.claim(run_id, owner, ttl),
        )
        .await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        bounded(
            self.backend(),
            "renew",
            self.limit,
            self.inner.renew(lease, ttl),
        )
        .await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        bounded(
            self.backend(),
            "release",
            self.limit,
            self.inner.release(lease),
        )
        .await
    }
    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        bounded(
            self.backend(),
            "checkpoint",
            self.limit,
            self.inner.checkpoint(run_id, epoch, key, output),
        )
        .await
    }
    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        bounded(
            self.backend(),
            "set_status",
            self.limit,
            self.inner.set_status(run_id, epoch, status, data),
        )
        .await
    }
    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        bounded(
            self.backend(),
            "list_runs",
            self.limit,
            self.inner.list_runs(status),
        )
        .await
    }
    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        bounded(
            self.backend(),
            "expire_run",
            self.limit,
            self.inner.expire_run(run_id, ttl),
        )
        .await
    }
    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        bounded(
            self.backend(),
            "finish_run",
            self.limit,
            self.inner.finish_run(run_id, epoch, status, ttl),
        )
        .await
    }
    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        bounded(
            self.backend(),
            "delete_run",
            self.limit,
            self.inner.delete_run(run_id),
        )
        .await
    }
}

//! [`DurableAgent`]: runs that survive their caller, their process, and wait for approval.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::definition::{Agent, AgentInput, GenerateOutput, RunSpec, StreamOptions};
use super::memory::{ConversationMemory, InMemoryMemory};
use super::runner::{
    approval_key, Decision, DurableCtx, Journal, Outcome, Runner, Sink, StopFlag, StopReason,
};
use crate::cache::ServerCache;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventKind, NewEvent};
use crate::id::RunId;
use crate::log::{EventLog, EventStream, LogConfig, ObserveOptions, OnSuspend};
use crate::memory::{lock, InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use crate::pubsub::{Delivery, PubSub};
use crate::store::{now_ms, Lease, NewRun, RunRecord, RunSnapshot, RunStatus, WorkflowStore};

/// Batches of events a run may queue ahead of its log appends. A remote cache needs room for
/// what the model produces during one round trip (the writer sends it all in the next append);
/// an in-process cache appends at once, so queueing there would only cost memory.
const REMOTE_WRITER_BATCHES: usize = 8;
const LOCAL_WRITER_BATCHES: usize = 1;

/// First and longest pause before an interrupted run is claimed again (see `spawn`).
const RESTART_MIN: Duration = Duration::from_millis(50);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// Default lease of an executing run (renewed every third of it while the run executes).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The answer to a suspended tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumeData {
    /// Whether the call may run.
    pub approved: bool,
    /// Why (given to the model when declined).
    pub reason: Option<String>,
    /// The call being answered; checked against the suspended call when set.
    pub tool_call_id: Option<String>,
}

impl ResumeData {
    /// Approve the suspended call.
    pub fn approve() -> Self {
        Self {
            approved: true,
            ..Self::default()
        }
    }

    /// Decline the suspended call.
    pub fn decline(reason: Option<String>) -> Self {
        Self {
            approved: false,
            reason,
            tool_call_id: None,
        }
    }

    /// Only answer if the suspended call is `tool_call_id`.
    #[must_use]
    pub fn for_call(mut self, tool_call_id: impl Into<String>) -> Self {
        self.tool_call_id = Some(tool_call_id.into());
        self
    }
}

/// A run's event stream handed to a caller of `stream`, `observe` or `resume`.
///
/// Dropping it (or [`DurableRun::cleanup`]) only detaches this caller: the run goes on, and
/// other observers are not affected (SPEC G6).
pub struct DurableRun {
    run_id: RunId,
    output: EventStream,
    end_on_suspend: bool,
    done: bool,
}

impl DurableRun {
    /// The run's id: pass it to `observe` from any process to reconnect.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Detach this caller (the same as dropping the stream). Never deletes anything.
    pub fn cleanup(self) {}

    /// Events this observer holds in memory right now (bounded).
    pub fn buffered_events(&self) -> usize {
        self.output.buffered_events()
    }

    /// Drain the stream and return the final answer.
    ///
    /// # Errors
    /// The run's error, or the stream's.
    pub async fn output(self) -> Result<GenerateOutput> {
        let run_id = self.run_id.clone();
        GenerateOutput::collect(run_id, self).await
    }
}

impl fmt::Debug for DurableRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableRun")
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl Stream for DurableRun {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(Pin::new(&mut self.output).poll_next(cx));
        if let Some(Ok(ev)) = &item {
            if self.end_on_suspend && ev.kind == EventKind::Suspended {
                self.done = true;
            }
        }
        Poll::Ready(item)
    }
}

/// What [`DurableAgent::create`] found or made.
pub(crate) enum Created {
    /// A new run, its log ready (and leased to this instance when claimed).
    New {
        run_id: RunId,
        snapshot: RunSnapshot,
        lease: Option<Lease>,
    },
    /// The caller's run id names a run with the same input: a retried `stream`.
    Existing(RunRecord),
}

struct LocalRun {
    cancel: CancellationToken,
    stop: StopFlag,
}

pub(crate) struct Inner {
    pub(crate) agent: Agent,
    pub(crate) log: EventLog,
    pub(crate) store: Arc<dyn WorkflowStore>,
    pub(crate) cache: Option<Arc<dyn ServerCache>>,
    pub(crate) pubsub: Arc<dyn PubSub>,
    memory: Arc<dyn ConversationMemory>,
    pub(crate) worker_id: String,
    pub(crate) lease_ttl: Duration,
    local: Mutex<HashMap<RunId, LocalRun>>,
    /// This instance's one subscription to the agent's control topic (abort requests for any
    /// run), started with the first execution: one per process, not one per run. The token
    /// stops the listener; it is cancelled by `shutdown` and when the instance is dropped.
    control: tokio::sync::Mutex<Option<CancellationToken>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = self.control.get_mut() {
            stop.cancel();
        }
    }
}

/// A durable agent: each run executes in a task of this process, its events go to the run
/// log, and its steps are checkpointed, so
/// - the caller may drop the stream and [`observe`](DurableAgent::observe) again from any
///   offset, from any instance sharing the backends;
/// - a crashed run continues from its last completed step with [`recover`](DurableAgent::recover);
/// - a tool call can wait for approval and be [resumed](DurableAgent::resume) from any instance;
/// - [`abort`](DurableAgent::abort) works from any instance.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct DurableAgent {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for DurableAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableAgent")
            .field("agent", &self.inner.agent.id())
            .field("worker_id", &self.inner.worker_id)
            .field("log", &self.inner.log)
            .field("store", &self.inner.store.backend())
            .finish()
    }
}

/// Builds a [`DurableAgent`]; every backend defaults to its in-memory implementation.
pub struct DurableAgentBuilder {
    agent: Agent,
    cache: Option<Arc<dyn ServerCache>>,
    no_cache: bool,
    pubsub: Option<Arc<dyn PubSub>>,
    store: Option<Arc<dyn WorkflowStore>>,
    memory: Option<Arc<dyn ConversationMemory>>,
    config: LogConfig,
    worker_id: Option<String>,
    lease_ttl: Duration,
}

impl fmt::Debug for DurableAgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableAgentBuilder")
            .field("agent", &self.agent.id())
            .finish()
    }
}

impl DurableAgentBuilder {
    /// Store run logs in `cache` (default: in memory).
    #[must_use]
    pub fn cache(self, cache: impl ServerCache) -> Self {
        self.cache_arc(Arc::new(cache))
    }

    /// Store run logs in a shared `cache`.
    #[must_use]
    pub fn cache_arc(mut self, cache: Arc<dyn ServerCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Live only: events are published but not stored, so `observe` sees only what comes
    /// after it attaches and nothing is replayable.
    #[must_use]
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Wake observers and carry control messages over `pubsub` (default: in memory).
    #[must_use]
    pub fn pubsub(self, pubsub: impl PubSub) -> Self {
        self.pubsub_arc(Arc::new(pubsub))
    }

    /// Use a shared `pubsub`.
    #[must_use]
    pub fn pubsub_arc(mut self, pubsub: Arc<dyn PubSub>) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// Keep run records and checkpoints in `store` (default: in memory).
    #[must_use]
    pub fn store(self, store: impl WorkflowStore) -> Self {
        self.store_arc(Arc::new(store))
    }

    /// Use a shared `store`.
    #[must_use]
    pub fn store_arc(mut self, store: Arc<dyn WorkflowStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Conversation memory for runs with a thread id (default: in memory).
    #[must_use]
    pub fn memory(mut self, memory: impl ConversationMemory) -> Self {
        self.memory = Some(Arc::new(memory));
        self
    }

    /// How long a finished run's events and record are kept (default 24 h).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// The event log's settings (namespace, limits, retention).
    #[must_use]
    pub fn log_config(mut self, config: LogConfig) -> Self {
        self.config = config;
        self
    }

    /// This instance's identity as a lease owner (default: random). A process restarted with
    /// the same id recovers its own runs at once instead of waiting for their leases to expire.
    #[must_use]
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Lease of an executing run (default 30 s): a crashed executor's runs are taken over this
    /// long after its last heartbeat.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Build the agent.
    ///
    /// # Errors
    /// `InvalidInput` for an invalid worker id or a lease shorter than 10 ms.
    pub fn build(self) -> Result<DurableAgent> {
        let worker_id = self
            .worker_id
            .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4()));
        crate::id::validate_name("worker id", &worker_id)?;
        if self.lease_ttl < Duration::from_millis(10) {
            return Err(Error::invalid_input("lease_ttl must be at least 10 ms"));
        }
        self.config.validate()?;
        let pubsub = self
            .pubsub
            .unwrap_or_else(|| Arc::new(InMemoryPubSub::new()));
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(InMemoryWorkflowStore::new()));
        let cache = if self.no_cache {
            None
        } else {
            Some(self.cache.unwrap_or_else(|| Arc::new(InMemoryCache::new())))
        };
        let log = match &cache {
            Some(c) => EventLog::new(c.clone(), pubsub.clone()),
            None => EventLog::live_only(pubsub.clone()),
        }
        .with_store(store.clone())
        .with_config(self.config);
        Ok(DurableAgent {
            inner: Arc::new(Inner {
                agent: self.agent,
                log,
                store,
                cache,
                pubsub,
                memory: self
                    .memory
                    .unwrap_or_else(|| Arc::new(InMemoryMemory::new())),
                worker_id,
                lease_ttl: self.lease_ttl,
                local: Mutex::new(HashMap::new()),
                control: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

impl DurableAgent {
    /// A durable agent on in-memory backends (one process).
    pub fn new(agent: Agent) -> Self {
        Self::builder(agent)
            .build()
            .unwrap_or_else(|_| unreachable!("default options are valid"))
    }

    /// Configure backends and options.
    pub fn builder(agent: Agent) -> DurableAgentBuilder {
        DurableAgentBuilder {
            agent,
            cache: None,
            no_cache: false,
            pubsub: None,
            store: None,
            memory: None,
            config: LogConfig::default(),
            worker_id: None,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// The wrapped agent.
    pub fn agent(&self) -> &Agent {
        &self.inner.agent
    }

    /// The event log the runs write to.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// The store holding run records.
    pub fn store(&self) -> &Arc<dyn WorkflowStore> {
        &self.inner.store
    }

    /// This instance's lease-owner id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// Start a run and stream its events from cursor 0. The run executes in a task of this
    /// process and goes on if the stream is dropped. The stream ends after the terminal event,
    /// or after `suspended` if a tool call waits for approval.
    ///
    /// # Errors
    /// `InvalidInput` for bad input or options, `Conflict` if the run id exists, or a
    /// backend error.
    pub async fn stream(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<DurableRun> {
        let (run_id, snapshot, lease) = match self.create(input.into(), &options, true).await? {
            Created::New {
                run_id,
                snapshot,
                lease,
            } => (run_id, snapshot, lease),
            Created::Existing(record) => return self.adopt(record).await,
        };
        let lease = lease.ok_or_else(|| Error::new(ErrorKind::Unexpected, "no lease"))?;
        let output = match self
            .inner
            .log
            .observe(&run_id, ObserveOptions::from(0).on_suspend(OnSuspend::Wait))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.discard(&run_id).await;
                return Err(e);
            }
        };
        self.spawn(run_id.clone(), lease, snapshot);
        Ok(DurableRun {
            run_id,
            output,
            end_on_suspend: true,
            done: false,
        })
    }

    /// `stream` again with the run id of a run that exists with the same input: the caller
    /// retries a `stream` whose answer it did not get. Continue the run here if no executor
    /// holds it, and stream it from cursor 0.
    async fn adopt(&self, record: RunRecord) -> Result<DurableRun> {
        let run_id = record.run_id.clone();
        let executing_here = lock(&self.inner.local).contains_key(&run_id);
        let orphaned = matches!(record.status, RunStatus::Running | RunStatus::Pending)
            && (!record.lease_live(now_ms())
                || record.owner.as_deref() == Some(self.inner.worker_id.as_str()));
        if orphaned && !executing_here {
            // Its log may never have been created: taking it over creates it (from cursor 0
            // the observer below misses nothing the execution appends meanwhile).
            self.take_over(&run_id).await?;
        }
        let output = self
            .inner
            .log
            .observe(&run_id, ObserveOptions::from(0).on_suspend(OnSuspend::Wait))
            .await?;
        Ok(DurableRun {
            run_id,
            output,
            end_on_suspend: true,
            done: false,
        })
    }

    /// Remove what a failed `stream` created (record, log), so a caller told "it failed" is
    /// never surprised by the run executing later. Best effort: if the backend fails here too,
    /// a retry of `stream` with the same run id adopts the run instead of running it twice.
    pub(crate) async fn discard(&self, run_id: &RunId) {
        if let Err(e) = self.inner.log.delete(run_id).await {
            tracing::warn!(run_id = %run_id, error = %e, "a failed stream left its run behind; retry stream with the same run id to continue it");
        }
    }

    /// Create the run record (and, when `claim`, take its lease), with the log ready. A run id
    /// given by the caller that names a run with the same input is [`Created::Existing`]: a
    /// retried `stream` returns the run it already started.
    pub(crate) async fn create(
        &self,
        mut input: AgentInput,
        options: &StreamOptions,
        claim: bool,
    ) -> Result<Created> {
        let i = &self.inner;
        if let Some(thread) = &options.thread_id {
            let mut prior = i.memory.load(thread).await?;
            prior.append(&mut input.messages);
            input.messages = prior;
        }
        let spec = RunSpec::new(&i.agent, input, options)?;
        let run_id = options.run_id.clone().unwrap_or_else(RunId::generate);
        let status = if claim {
            RunStatus::Running
        } else {
            RunStatus::Pending
        };
        let mut new = NewRun::new(run_id.clone())
            .status(status)
            .data(serde_json::to_value(&spec)?);
        if let Some(r) = &options.resource_id {
            new = new.resource_id(r.clone());
        }
        let record = match i.store.create_run(new).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::Conflict && options.run_id.is_some() => {
                return match i.store.get_run(&run_id).await? {
                    Some(existing)
                        if self.spec_of(&existing).is_ok_and(|mut s| {
                            s.suspension = None;
                            s == spec
                        }) =>
                    {
                        Ok(Created::Existing(existing))
                    }
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let ready = async {
            let lease = if claim {
                Some(i.store.claim(&run_id, &i.worker_id, i.lease_ttl).await?)
            } else {
                None
            };
            i.log
                .create(&run_id, lease.as_ref().map(|l| l.epoch))
                .await?;
            Ok::<_, Error>(lease)
        };
        match ready.await {
            Ok(lease) => Ok(Created::New {
                run_id,
                snapshot: RunSnapshot {
                    record,
                    checkpoints: Vec::new(),
                },
                lease,
            }),
            Err(e) => {
                self.discard(&run_id).await;
                Err(e)
            }
        }
    }

    /// Run to the end and return the final answer. A run that suspends returns with
    /// [`GenerateOutput::suspended`] set; [`resume`](DurableAgent::resume) continues it.
    ///
    /// # Errors
    /// As [`DurableAgent::stream`], or the run's error.
    pub async fn generate(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<GenerateOutput> {
        self.stream(input, options).await?.output().await
    }

    /// Observe a run from `options.offset`: what it produced from there, then live events,
    /// then its end. Works from any instance sharing the backends.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `Gone` after retention, `OffsetAhead` past the end.
    pub async fn observe(&self, run_id: &RunId, options: ObserveOptions) -> Result<DurableRun> {
        let output = self.inner.log.observe(run_id, options).await?;
        Ok(DurableRun {
            run_id: run_id.clone(),
            output,
            end_on_suspend: false,
            done: false,
        })
    }

    /// [`observe`](DurableAgent::observe), only for the run's owner: a run whose
    /// `resource_id` is not `resource_id` answers `NotFound`, exactly like a run that does not
    /// exist, so its existence does not leak.
    ///
    /// # Errors
    /// As [`DurableAgent::observe`].
    pub async fn observe_as(
        &self,
        run_id: &RunId,
        resource_id: &str,
        options: ObserveOptions,
    ) -> Result<DurableRun> {
        let owned = self
            .inner
            .store
            .get_run(run_id)
            .await?
            .is_some_and(|r| r.resource_id.as_deref() == Some(resource_id));
        if !owned {
            return Err(
                Error::not_found(format!("run {run_id} does not exist")).with_operation("observe")
            );
        }
        self.observe(run_id, options).await
    }

    /// The run's record.
    ///
    /// # Errors
    /// `NotFound` for an unknown (or expired) run.
    pub async fn status(&self, run_id: &RunId) -> Result<RunRecord> {
        self.inner
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("run {run_id} does not exist")))
    }

    /// Answer the suspended tool call of `run_id` and continue the run in this process. The
    /// returned stream starts after the `suspended` event.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `InvalidState` if it is not suspended, `InvalidInput` if
    /// `data.tool_call_id` names another call or the run belongs to another agent, `Conflict`
    /// if another instance is resuming it right now.
    pub async fn resume(&self, run_id: &RunId, data: ResumeData) -> Result<DurableRun> {
        let (lease, output) = self
            .prepare_resume(run_id, data, RunStatus::Running)
            .await?;
        let snapshot = self
            .inner
            .store
            .load(run_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("run {run_id} does not exist")))?;
        self.spawn(run_id.clone(), lease, snapshot);
        Ok(output)
    }

    /// Check and record the answer to a suspended call: the decision is checkpointed and the
    /// run set to `status` (`Running` to execute it here, `Pending` to queue it), under a
    /// fresh lease. Returns the lease and the caller's stream from after `suspended`.
    pub(crate) async fn prepare_resume(
        &self,
        run_id: &RunId,
        data: ResumeData,
        status: RunStatus,
    ) -> Result<(Lease, DurableRun)> {
        let i = &self.inner;
        let record = self.status(run_id).await?;
        let mut spec = self.spec_of(&record)?;
        if record.status != RunStatus::Suspended {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "run {run_id} is {}, not suspended: nothing to resume",
                    record.status.as_str()
                ),
            )
            .with_operation("resume"));
        }
        let s = spec.suspension.take().ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("run {run_id} is suspended without a suspended call"),
            )
        })?;
        if let Some(id) = &data.tool_call_id {
            if *id != s.tool_call_id {
                return Err(Error::invalid_input(format!(
                    "run {run_id} waits for tool call {}, not {id}",
                    s.tool_call_id
                ))
                .with_operation("resume"));
            }
        }
        let lease = i.store.claim(run_id, &i.worker_id, i.lease_ttl).await?;
        i.log.create(run_id, Some(lease.epoch)).await?;
        let decision = Decision {
            approved: data.approved,
            reason: data.reason,
        };
        i.store
            .checkpoint(
                run_id,
                lease.epoch,
                &approval_key(s.step, s.index),
                serde_json::to_value(&decision)?,
            )
            .await?;
        i.store
            .set_status(
                run_id,
                Some(lease.epoch),
                status,
                Some(serde_json::to_value(&spec)?),
            )
            .await?;
        let from = if i.log.is_durable() {
            i.log.len(run_id).await?.unwrap_or(0)
        } else {
            0
        };
        let output = i
            .log
            .observe(
                run_id,
                ObserveOptions::from(from).on_suspend(OnSuspend::Wait),
            )
            .await?;
        Ok((
            lease,
            DurableRun {
                run_id: run_id.clone(),
                output,
                end_on_suspend: true,
                done: false,
            },
        ))
    }

    /// Approve the suspended call `tool_call_id` (see [`DurableAgent::resume`]).
    ///
    /// # Errors
    /// As [`DurableAgent::resume`].
    pub async fn approve_tool_call(
        &self,
        run_id: &RunId,
        tool_call_id: &str,
    ) -> Result<DurableRun> {
        self.resume(run_id, ResumeData::approve().for_call(tool_call_id))
            .await
    }

    /// Decline the suspended call `tool_call_id`: the model gets a "not approved" result.
    ///
    /// # Errors
    /// As [`DurableAgent::resume`].
    pub async fn decline_tool_call(
        &self,
        run_id: &RunId,
        tool_call_id: &str,
        reason: Option<String>,
    ) -> Result<DurableRun> {
        self.resume(run_id, ResumeData::decline(reason).for_call(tool_call_id))
            .await
    }

    fn writer_batches(&self) -> usize {
        match &self.inner.cache {
            Some(c) if c.capabilities().shared => REMOTE_WRITER_BATCHES,
            _ => LOCAL_WRITER_BATCHES,
        }
    }

    fn abort_marker(&self, run_id: &RunId) -> String {
        let mut k = self.inner.log.run_prefix(run_id);
        k.push_str("abort");
        k
    }

    /// Abort requests for every run of this agent: the payload is the run id.
    fn control_topic(&self) -> String {
        format!(
            "{}.ctl.{}",
            self.inner.log.config().namespace,
            self.inner.agent.id()
        )
    }

    /// Start this instance's control listener once. If the subscription fails, the next
    /// execution tries again; meanwhile aborts are still found by the per-step marker check.
    async fn ensure_control(&self) {
        let mut control = self.inner.control.lock().await;
        if control.as_ref().is_some_and(|t| !t.is_cancelled()) {
            return;
        }
        match self.inner.pubsub.subscribe(&self.control_topic()).await {
            Ok(sub) => {
                let stop = CancellationToken::new();
                tokio::spawn(listen_control(
                    sub,
                    Arc::downgrade(&self.inner),
                    stop.clone(),
                ));
                *control = Some(stop);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no control subscription; abort is checked at each step");
            }
        }
    }

    /// Abort a run, wherever it executes. Returns the run's final status (`Aborted`, or the
    /// terminal status it reached first). Aborting a finished run changes nothing.
    ///
    /// The executing instance is told over PubSub and by a marker it checks at every step; a
    /// run with no live executor (suspended, pending, or whose executor died) is aborted here.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `Timeout` if the executor neither stops nor loses its
    /// lease within two lease periods.
    pub async fn abort(&self, run_id: &RunId) -> Result<RunStatus> {
        let i = &self.inner;
        let record = self.status(run_id).await?;
        if record.status.is_terminal() {
            return Ok(record.status);
        }
        let local = lock(&i.local)
            .get(run_id)
            .map(|l| (l.cancel.clone(), l.stop.clone()));
        let running_elsewhere = record.status == RunStatus::Running && record.lease_live(now_ms());
        if local.is_none() && !running_elsewhere {
            return self.force_abort(run_id).await;
        }
        let from = if i.log.is_durable() {
            i.log.len(run_id).await?.unwrap_or(0)
        } else {
            0
        };
        let mut waiter = if i.log.is_durable() {
            Some(
                i.log
                    .observe(
                        run_id,
                        ObserveOptions::from(from).on_suspend(OnSuspend::Wait),
                    )
                    .await?,
            )
        } else {
            None
        };
        match local {
            Some((cancel, stop)) => {
                stop.set(StopReason::Abort);
                cancel.cancel();
            }
            None => {
                if let Some(cache) = &i.cache {
                    let keep = i.log.config().retention + i.log.config().tombstone;
                    cache
                        .set(
                            &self.abort_marker(run_id),
                            Bytes::from_static(b"1"),
                            Some(keep),
                        )
                        .await?;
                }
                i.pubsub
                    .publish(
                        &self.control_topic(),
                        Bytes::copy_from_slice(run_id.as_str().as_bytes()),
                    )
                    .await?;
            }
        }
        let limit = i.lease_ttl * 2 + Duration::from_secs(1);
        if let Some(w) = waiter.as_mut() {
            let ended = tokio::time::timeout(limit, async {
                while let Some(ev) = w.next().await {
                    if ev.is_err() || ev.is_ok_and(|e| e.kind.is_terminal()) {
                        break;
                    }
                }
            })
            .await;
            if ended.is_err() {
                return match self.force_abort(run_id).await {
                    Err(e) if e.kind() == ErrorKind::Conflict => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("run {run_id} did not stop within {limit:?}"),
                    )
                    .with_operation("abort")),
                    r => r,
                };
            }
        }
        Ok(self.status(run_id).await?.status)
    }

    async fn force_abort(&self, run_id: &RunId) -> Result<RunStatus> {
        let i = &self.inner;
        let lease = match i.store.claim(run_id, &i.worker_id, i.lease_ttl).await {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::InvalidState => {
                return Ok(self.status(run_id).await?.status)
            }
            Err(e) => return Err(e),
        };
        i.log.create(run_id, Some(lease.epoch)).await?;
        let ev = NewEvent::json(EventKind::Abort, &json!({"reason": "aborted"}))?;
        i.log.append(run_id, &[ev], Some(lease.epoch)).await?;
        i.store
            .set_status(run_id, Some(lease.epoch), RunStatus::Aborted, None)
            .await?;
        i.log.retire(run_id).await?;
        Ok(RunStatus::Aborted)
    }

    fn spec_of(&self, record: &RunRecord) -> Result<RunSpec> {
        let spec: RunSpec = serde_json::from_value(record.data.clone()).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("run {} has no readable agent input", record.run_id),
            )
            .with_source(e)
        })?;
        if spec.agent_id != self.inner.agent.id() {
            return Err(Error::invalid_input(format!(
                "run {} belongs to agent {}, not {}",
                record.run_id,
                spec.agent_id,
                self.inner.agent.id()
            )));
        }
        Ok(spec)
    }

    fn is_ours(&self, record: &RunRecord) -> bool {
        record.data.get("agent_id").and_then(|v| v.as_str()) == Some(self.inner.agent.id())
    }

    /// Stop every run executing in this process, leaving each as it is (resumable from its last
    /// checkpoint by [`recover`](DurableAgent::recover) here or on another instance). For a
    /// graceful process exit.
    ///
    /// Also ends this instance's control subscription (it is started again by the next run
    /// this instance executes).
    pub fn shutdown(&self) {
        for run in lock(&self.inner.local).values() {
            run.stop.set(StopReason::Shutdown);
            run.cancel.cancel();
        }
        if let Ok(control) = self.inner.control.try_lock() {
            if let Some(stop) = control.as_ref() {
                stop.cancel();
            }
        }
    }

    /// Runs of this agent that have not reached a terminal state (running, pending or
    /// suspended), from every instance.
    ///
    /// # Errors
    /// The store's error.
    pub async fn list_active_runs(&self) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for status in [RunStatus::Running, RunStatus::Pending, RunStatus::Suspended] {
            out.extend(
                self.inner
                    .store
                    .list_runs(Some(status))
                    .await?
                    .into_iter()
                    .filter(|r| self.is_ours(r)),
            );
        }
        Ok(out)
    }

    /// Continue, in this process, every run of this agent whose executor is gone (lease
    /// expired, or held by this instance's own worker id from before a restart), from its last
    /// checkpoint. Returns the runs taken over. Completed tool calls are not executed again.
    ///
    /// # Errors
    /// The store's error.
    pub async fn recover(&self) -> Result<Vec<RunId>> {
        let i = &self.inner;
        let now = now_ms();
        let mut recovered = Vec::new();
        for record in self.list_active_runs().await? {
            let run_id = record.run_id.clone();
            if record.status == RunStatus::Suspended {
                self.repair_suspended(&record).await?;
                continue;
            }
            if lock(&i.local).contains_key(&run_id) {
                continue;
            }
            if record.lease_live(now) && record.owner.as_deref() != Some(i.worker_id.as_str()) {
                continue;
            }
            if self.take_over(&run_id).await?.is_some() {
                recovered.push(run_id);
            }
        }
        Ok(recovered)
    }

    /// Claim `run_id` and execute it here. `None` if another owner holds it or it finished.
    pub(crate) async fn take_over(&self, run_id: &RunId) -> Result<Option<JoinHandle<Outcome>>> {
        let i = &self.inner;
        let lease = match i.store.claim(run_id, &i.worker_id, i.lease_ttl).await {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Conflict | ErrorKind::InvalidState | ErrorKind::NotFound
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = i.log.create(run_id, Some(lease.epoch)).await {
            let _ = i.store.release(&lease).await;
            return Err(e);
        }
        let Some(snapshot) = i.store.load(run_id).await? else {
            return Ok(None);
        };
        if snapshot.record.status == RunStatus::Pending {
            i.store
                .set_status(run_id, Some(lease.epoch), RunStatus::Running, None)
                .await?;
        }
        Ok(Some(self.spawn(run_id.clone(), lease, snapshot)))
    }

    /// A suspended run whose `suspended` event did not make it to the log (a crash between
    /// persisting and announcing) gets it now, so observers waiting for it see it.
    async fn repair_suspended(&self, record: &RunRecord) -> Result<()> {
        let i = &self.inner;
        if !i.log.is_durable() {
            return Ok(());
        }
        let Some(len) = i.log.len(&record.run_id).await? else {
            return Ok(());
        };
        let last = match len {
            0 => None,
            n => i.log.read(&record.run_id, n - 1, 1).await?.pop(),
        };
        if last.is_some_and(|e| e.kind == EventKind::Suspended) {
            return Ok(());
        }
        let spec = self.spec_of(record)?;
        if let Some(s) = spec.suspension {
            let mut data = serde_json::to_value(&s)?;
            data["reason"] = "approval".into();
            let ev = NewEvent::json(EventKind::Suspended, &data)?;
            i.log.append(&record.run_id, &[ev], None).await?;
        }
        Ok(())
    }

    fn spawn(&self, run_id: RunId, lease: Lease, snapshot: RunSnapshot) -> JoinHandle<Outcome> {
        let cancel = CancellationToken::new();
        let stop = StopFlag::default();
        lock(&self.inner.local).insert(
            run_id.clone(),
            LocalRun {
                cancel: cancel.clone(),
                stop: stop.clone(),
            },
        );
        let agent = self.clone();
        tokio::spawn(async move {
            let (mut lease, mut snapshot) = (lease, snapshot);
            let mut delay = RESTART_MIN;
            let outcome = loop {
                let outcome = agent
                    .execute(&run_id, lease, snapshot, cancel.clone(), stop.clone())
                    .await;
                if outcome != Outcome::Interrupted {
                    break outcome;
                }
                // Supervision: a backend outage outlasted the writer's retries. Restart from the
                // last checkpoint as soon as the backend answers, without waiting for anyone
                // to call `recover`.
                match agent.reacquire(&run_id, &cancel, &mut delay).await {
                    Some((l, s)) => (lease, snapshot) = (l, s),
                    None => break Outcome::Stopped,
                }
            };
            lock(&agent.inner.local).remove(&run_id);
            cancel.cancel();
            outcome
        })
    }

    /// Claim `run_id` again after an interrupted execution, retrying retryable errors with
    /// backoff until it succeeds, the run is cancelled (abort, shutdown), or the run is no
    /// longer ours to execute (another owner took it, it ended, it was deleted).
    async fn reacquire(
        &self,
        run_id: &RunId,
        cancel: &CancellationToken,
        delay: &mut Duration,
    ) -> Option<(Lease, RunSnapshot)> {
        let i = &self.inner;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(*delay) => {}
            }
            *delay = (*delay * 2).min(RESTART_MAX);
            let attempt = async {
                let lease = i.store.claim(run_id, &i.worker_id, i.lease_ttl).await?;
                i.log.create(run_id, Some(lease.epoch)).await?;
                let snapshot = i.store.load(run_id).await?;
                Ok::<_, Error>(snapshot.map(|s| (lease, s)))
            };
            match attempt.await {
                Ok(Some(found)) => {
                    tracing::info!(run_id = %run_id, "backend is back; restarting the run from its last checkpoint");
                    return Some(found);
                }
                Ok(None) => return None,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(run_id = %run_id, error = %e, retry_in = ?delay, "backend still unavailable");
                }
                Err(e) => {
                    tracing::info!(run_id = %run_id, error = %e, "not restarting the run");
                    return None;
                }
            }
        }
    }

    async fn execute(
        &self,
        run_id: &RunId,
        lease: Lease,
        snapshot: RunSnapshot,
        cancel: CancellationToken,
        stop: StopFlag,
    ) -> Outcome {
        let i = &self.inner;
        let spec = match self.spec_of(&snapshot.record) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run_id = %run_id, error = %e, "cannot execute run");
                let _ = i
                    .store
                    .set_status(run_id, Some(lease.epoch), RunStatus::Failed, None)
                    .await;
                return Outcome::Failed;
            }
        };
        let lease_active = Arc::new(tokio::sync::Mutex::new(true));
        tokio::spawn(heartbeat(
            i.store.clone(),
            lease.clone(),
            i.lease_ttl,
            lease_active.clone(),
            cancel.clone(),
            stop.clone(),
        ));
        self.ensure_control().await;
        let mut journal = Journal::restore(snapshot.checkpoints);
        let mut end = None;
        if i.log.is_durable() {
            match self.scan(run_id, &mut journal).await {
                Ok(Err(next)) => end = Some(next),
                Ok(Ok(ended)) => {
                    let outcome = match ended {
                        RunStatus::Completed => Outcome::Finished,
                        RunStatus::Aborted => Outcome::Aborted,
                        _ => Outcome::Failed,
                    };
                    *lease_active.lock().await = false;
                    if i.store
                        .set_status(run_id, Some(lease.epoch), ended, None)
                        .await
                        .is_ok()
                    {
                        let _ = i.log.retire(run_id).await;
                    }
                    return outcome;
                }
                Err(e) => {
                    *lease_active.lock().await = false;
                    if e.is_retryable() {
                        tracing::warn!(run_id = %run_id, error = %e, "cannot read the run log; retrying");
                        return Outcome::Interrupted;
                    }
                    tracing::warn!(run_id = %run_id, error = %e, "cannot read the run log; leaving the run to recovery");
                    return Outcome::Stopped;
                }
            }
        }
        let memory = spec.thread_id.clone().map(|t| (i.memory.clone(), t));
        let runner = Runner {
            def: i.agent.def.clone(),
            run_id: run_id.clone(),
            spec,
            sink: Sink::Log(match end {
                Some(next) => i.log.writer_at(
                    run_id.clone(),
                    Some(lease.epoch),
                    self.writer_batches(),
                    next,
                ),
                None => i
                    .log
                    .writer(run_id.clone(), Some(lease.epoch), self.writer_batches()),
            }),
            journal,
            cancel,
            stop,
            durable: Some(DurableCtx {
                store: i.store.clone(),
                log: i.log.clone(),
                epoch: lease.epoch,
                lease_active: lease_active.clone(),
                abort_marker: i.cache.clone().map(|c| (c, self.abort_marker(run_id))),
                memory,
            }),
            background: tokio::task::JoinSet::new(),
        };
        let outcome = runner.run().await;
        // This execution's heartbeat must not renew (or report a fence) once it is over: the
        // run may be claimed again at once by a restart.
        *lease_active.lock().await = false;
        outcome
    }

    /// Read the log from the journal's scan point; returns the terminal status if the log
    /// already ends the run, else (`Err`) the log's next cursor.
    async fn scan(
        &self,
        run_id: &RunId,
        journal: &mut Journal,
    ) -> Result<std::result::Result<RunStatus, u64>> {
        let log = &self.inner.log;
        let mut from = journal.scan_from();
        let batch = log.config().read_batch.max(1);
        loop {
            let events = log.read(run_id, from, batch).await?;
            if events.is_empty() {
                return Ok(Err(from));
            }
            from += events.len() as u64;
            for ev in &events {
                match ev.kind {
                    EventKind::Finish => return Ok(Ok(RunStatus::Completed)),
                    EventKind::Error => return Ok(Ok(RunStatus::Failed)),
                    EventKind::Abort => return Ok(Ok(RunStatus::Aborted)),
                    _ => journal.observe(ev),
                }
            }
        }
    }
}

async fn heartbeat(
    store: Arc<dyn WorkflowStore>,
    mut lease: Lease,
    ttl: Duration,
    active: Arc<tokio::sync::Mutex<bool>>,
    cancel: CancellationToken,
    stop: StopFlag,
) {
    let every = ttl / 3;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let guard = active.lock().await;
        if !*guard {
            return;
        }
        match store.renew(&lease, ttl).await {
            Ok(l) => lease = l,
            Err(e) if e.kind() == ErrorKind::Fenced => {
                stop.set(StopReason::Fenced);
                cancel.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %lease.run_id, error = %e, "lease not renewed; retrying");
            }
        }
    }
}

/// Cancel the local runs named by abort requests, until the agent instance is dropped or
/// shut down (`stop`). Dropping `sub` on return unsubscribes.
async fn listen_control(
    mut sub: crate::pubsub::Subscription,
    inner: std::sync::Weak<Inner>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        let Delivery::Message(m) = msg else { continue };
        let Ok(run_id) = std::str::from_utf8(&m)
            .map_err(|_| Error::invalid_input("control message is not UTF-8"))
            .and_then(RunId::new)
        else {
            continue;
        };
        let local = lock(&inner.local);
        if let Some(run) = local.get(&run_id) {
            run.stop.set(StopReason::Abort);
            run.cancel.cancel();
        }
    }
}

//! [`DurableAgent`]: runs that survive their caller, their process, and wait for approval.

mod builder;
mod control;
mod executor;
mod run;

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

use super::definition::{Agent, GenerateOutput};
use super::memory::{ConversationMemory, InMemoryMemory};
use super::runner::{
    approval_key, Decision, DurableCtx, Journal, Outcome, Runner, Sink, StopFlag, StopReason,
};
use super::spec::{AgentInput, RunSpec, StreamOptions};
use crate::cache::ServerCache;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventKind, NewEvent};
use crate::id::RunId;
use crate::log::{EventLog, EventStream, LogConfig, ObserveOptions, OnSuspend};
use crate::memory::{lock, InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use crate::pubsub::{Delivery, PubSub};
use crate::store::{now_ms, Lease, NewRun, RunRecord, RunSnapshot, RunStatus, WorkflowStore};

pub use builder::DurableAgentBuilder;
pub(crate) use run::Created;
pub use run::{DurableRun, ResumeData};

/// Batches of events a run may queue ahead of its log appends. A remote cache needs room for
/// what the model produces during one round trip (the writer sends it all in the next append);
/// an in-process cache appends at once, so queueing there would only cost memory. Four batches
/// (≤ 512 events) keep one run's rate on every backend (measured: 8 was no faster on Redis,
/// PostgreSQL, NATS or Kafka, and cost SQLite's 100-run load 10 MiB of peak RSS).
const REMOTE_WRITER_BATCHES: usize = 4;
const LOCAL_WRITER_BATCHES: usize = 1;

/// First and longest pause before an interrupted run is claimed again (see `spawn`).
const RESTART_MIN: Duration = Duration::from_millis(50);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// Default lease of an executing run (renewed every third of it while the run executes).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

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
        let spec = RunSpec::new(&i.agent.def, input, options)?;
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
}

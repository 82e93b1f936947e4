//! [`EventedAgent`]: runs queued on a PubSub work queue and executed by a worker pool.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::durable::{Created, DurableAgent, DurableRun, ResumeData};
use super::spec::{AgentInput, StreamOptions};
use crate::error::{Error, Result};
use crate::id::RunId;
use crate::log::{ObserveOptions, OnSuspend};
use crate::memory::lock;
use crate::pubsub::Job;
use crate::store::RunStatus;

/// The consumer group every worker of an agent joins.
const GROUP: &str = "workers";

/// Fire-and-forget durable runs: [`stream`](EventedAgent::stream) creates the run, queues it
/// and returns at once; a pool of workers (in this process or any other sharing the backends)
/// claims queued runs and executes them with a lease and heartbeat. When a worker dies its
/// lease expires and another worker's sweep continues the run from its last checkpoint, the
/// dead worker fenced off by epoch.
///
/// Observe, resume, abort and status go through [`EventedAgent::durable`].
///
/// Cheap to clone: clones share the workers, which stop when the last clone is dropped (or at
/// [`EventedAgent::shutdown`]).
#[derive(Clone)]
pub struct EventedAgent {
    shared: Arc<Shared>,
}

struct Shared {
    durable: DurableAgent,
    queue: String,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for EventedAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventedAgent")
            .field("durable", &self.shared.durable)
            .field("queue", &self.shared.queue)
            .finish()
    }
}

/// Builds an [`EventedAgent`]; see [`EventedAgent::builder`].
#[derive(Debug)]
pub struct EventedAgentBuilder {
    durable: DurableAgent,
    workers: usize,
    sweep_every: Option<Duration>,
}

impl EventedAgentBuilder {
    /// Worker tasks in this process, each executing one run at a time (default 4). Zero makes
    /// a producer-only instance (an API process that only queues and observes).
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// How often the workers look for runs whose executor died (default: half the lease).
    #[must_use]
    pub fn sweep_every(mut self, every: Duration) -> Self {
        self.sweep_every = Some(every);
        self
    }

    /// Join the work queue and start the workers on the current tokio runtime.
    ///
    /// # Errors
    /// The PubSub's error if the queue cannot be joined, `Unsupported` if it has no consumer
    /// groups.
    pub async fn start(self) -> Result<EventedAgent> {
        let durable = self.durable;
        let queue = durable.log().names().queue_topic(durable.agent().id());
        let pubsub = durable.inner.pubsub.clone();
        if self.workers > 0 && !pubsub.capabilities().groups {
            return Err(Error::unsupported(format!(
                "pubsub backend {} has no consumer groups: it cannot carry a work queue",
                pubsub.backend()
            )));
        }
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        for _ in 0..self.workers {
            let sub = pubsub.subscribe_group(&queue, GROUP).await?;
            tasks.push(tokio::spawn(worker(durable.clone(), sub, shutdown.clone())));
        }
        if self.workers > 0 {
            let every = self
                .sweep_every
                .unwrap_or(durable.inner.lease_ttl / 2)
                .max(Duration::from_millis(5));
            tasks.push(tokio::spawn(sweeper(
                durable.clone(),
                every,
                shutdown.clone(),
            )));
        }
        Ok(EventedAgent {
            shared: Arc::new(Shared {
                durable,
                queue,
                shutdown,
                tasks: Mutex::new(tasks),
            }),
        })
    }
}

impl EventedAgent {
    /// An evented agent over `durable`'s backends.
    pub fn builder(durable: DurableAgent) -> EventedAgentBuilder {
        EventedAgentBuilder {
            durable,
            workers: 4,
            sweep_every: None,
        }
    }

    /// The durable agent behind it (observe, resume, abort, status).
    pub fn durable(&self) -> &DurableAgent {
        &self.shared.durable
    }

    /// Create the run, queue it, and return its stream from cursor 0 at once. The run
    /// executes on whichever worker takes it.
    ///
    /// # Errors
    /// As [`DurableAgent::stream`]; the PubSub's error if the run cannot be queued (the run
    /// record then stays `pending` and a sweep picks it up).
    pub async fn stream(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<DurableRun> {
        let (run_id, queue) = match self
            .shared
            .durable
            .create(input.into(), &options, false)
            .await?
        {
            Created::New { run_id, .. } => (run_id, true),
            // A retried `stream`: queue it again only if no worker has taken it.
            Created::Existing(record) => (record.run_id, record.status == RunStatus::Pending),
        };
        let stream = match self
            .shared
            .durable
            .observe(&run_id, ObserveOptions::from(0).on_suspend(OnSuspend::End))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.shared.durable.discard(&run_id).await;
                return Err(e);
            }
        };
        if queue {
            self.enqueue(&run_id).await?;
        }
        Ok(stream)
    }

    async fn enqueue(&self, run_id: &RunId) -> Result<()> {
        self.shared
            .durable
            .inner
            .pubsub
            .publish(
                &self.shared.queue,
                Bytes::copy_from_slice(run_id.as_str().as_bytes()),
            )
            .await
    }

    /// Observe a run (see [`DurableAgent::observe`]).
    ///
    /// # Errors
    /// As [`DurableAgent::observe`].
    pub async fn observe(&self, run_id: &RunId, options: ObserveOptions) -> Result<DurableRun> {
        self.shared.durable.observe(run_id, options).await
    }

    /// Answer the suspended tool call of `run_id` and queue the run to the workers (this
    /// instance's or any other's): the caller never executes it. The returned stream starts
    /// after the `suspended` event.
    ///
    /// # Errors
    /// As [`DurableAgent::resume`]; the PubSub's error if the run cannot be queued (it then
    /// stays `pending` and a worker's sweep picks it up).
    pub async fn resume(&self, run_id: &RunId, data: ResumeData) -> Result<DurableRun> {
        let (lease, output) = self
            .shared
            .durable
            .prepare_resume(run_id, data, RunStatus::Pending)
            .await?;
        // Let any worker claim it at once, not after this lease expires.
        self.shared.durable.inner.store.release(&lease).await?;
        self.enqueue(run_id).await?;
        Ok(output)
    }

    /// Approve the suspended call `tool_call_id` and queue the run (see
    /// [`EventedAgent::resume`]).
    ///
    /// # Errors
    /// As [`EventedAgent::resume`].
    pub async fn approve_tool_call(
        &self,
        run_id: &RunId,
        tool_call_id: &str,
    ) -> Result<DurableRun> {
        self.resume(run_id, ResumeData::approve().for_call(tool_call_id))
            .await
    }

    /// Decline the suspended call `tool_call_id` and queue the run (see
    /// [`EventedAgent::resume`]).
    ///
    /// # Errors
    /// As [`EventedAgent::resume`].
    pub async fn decline_tool_call(
        &self,
        run_id: &RunId,
        tool_call_id: &str,
        reason: Option<String>,
    ) -> Result<DurableRun> {
        self.resume(run_id, ResumeData::decline(reason).for_call(tool_call_id))
            .await
    }

    /// Abort a run wherever it executes (see [`DurableAgent::abort`]).
    ///
    /// # Errors
    /// As [`DurableAgent::abort`].
    pub async fn abort(&self, run_id: &RunId) -> Result<crate::store::RunStatus> {
        self.shared.durable.abort(run_id).await
    }

    /// Stop this instance's workers. Runs they execute stop where they are and are continued
    /// by other workers once their leases expire.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.durable.shutdown();
        for t in lock(&self.shared.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn worker(
    durable: DurableAgent,
    mut sub: crate::pubsub::GroupSubscription,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            n = sub.next() => n,
        };
        match next {
            Some(Ok(job)) => handle(&durable, job).await,
            Some(Err(e)) => tracing::warn!(error = %e, "work queue error"),
            None => return,
        }
    }
}

async fn handle(durable: &DurableAgent, job: Job) {
    let run_id = match std::str::from_utf8(job.payload())
        .map_err(|_| Error::invalid_input("queued run id is not UTF-8"))
        .and_then(RunId::new)
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "dropping a malformed job");
            let _ = job.ack().await;
            return;
        }
    };
    match durable.take_over(&run_id).await {
        Ok(Some(execution)) => {
            let _ = execution.await;
            let _ = job.ack().await;
        }
        // Another worker holds it (its sweep takes over if that worker dies), or it ended.
        Ok(None) => {
            let _ = job.ack().await;
        }
        Err(e) => {
            tracing::warn!(run_id = %run_id, error = %e, "cannot take the run; returning it to the queue");
            let _ = job.nack().await;
        }
    }
}

async fn sweeper(durable: DurableAgent, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = durable.recover().await {
            tracing::warn!(error = %e, "sweep for orphaned runs failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, ScriptedModel, Turn};

    #[tokio::test]
    async fn a_clone_keeps_the_workers_until_the_last_one_goes() {
        let agent = Agent::builder()
            .id("a")
            .model(ScriptedModel::new([Turn::text("one two")]))
            .build()
            .unwrap();
        let first = EventedAgent::builder(DurableAgent::new(agent))
            .workers(1)
            .start()
            .await
            .unwrap();
        let second = first.clone();
        drop(first);
        let run = second.stream("hi", StreamOptions::default()).await.unwrap();
        let kinds: Vec<_> = run.map(|e| e.unwrap().kind).collect().await;
        assert_eq!(kinds.last(), Some(&crate::event::EventKind::Finish));
        let token = second.shared.shutdown.clone();
        drop(second);
        assert!(token.is_cancelled(), "the last clone stops the workers");
    }
}

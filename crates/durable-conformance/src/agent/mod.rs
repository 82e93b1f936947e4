//! Durable agents end to end on any backend: the scenarios of [`agent_suite!`](crate::agent_suite)
//! ([`scenarios`]), and helpers for agent tests of any kind — drain a run with a deadline, wait
//! for a settled status, compare runs the way a client sees them, share backends between
//! instances. The helpers panic on failure, as test code does.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use durable_core::agent::{Agent, DurableAgent, DurableAgentBuilder, DurableRun};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{
    Event, EventKind, EventLog, ObserveOptions, PubSub, RunId, RunStatus, ServerCache,
    WorkflowStore,
};
use futures::StreamExt;
use serde_json::Value;

use crate::Backend;

mod rig;
pub mod scenarios;

pub use rig::{process_runtime, run_scenario, run_scenario_test, Rig, Scenario};

/// Drain `run` to its end; panics if the stream errs or stalls for `stall` between events.
pub async fn collect(mut run: DurableRun, stall: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(stall, run.next())
        .await
        .unwrap_or_else(|_| panic!("run {} stalled for {stall:?}", run.run_id()))
    {
        out.push(ev.unwrap_or_else(|e| panic!("observe failed: {e}")));
    }
    out
}

/// Read a run to its end the way a reconnecting client does: observe from cursor 0 and, when the
/// stream (or `observe` itself) fails with a retryable error, observe again from the next cursor.
/// Panics on a gap, a duplicate or a non-retryable error; bound it with a timeout.
pub async fn follow(log: EventLog, run: RunId) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    loop {
        let next = events.len() as u64;
        let mut stream = match log.observe(&run, ObserveOptions::from(next)).await {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => panic!("observe {run}: {e}"),
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    assert_eq!(
                        ev.cursor,
                        events.len() as u64,
                        "observer saw a gap or a dup"
                    );
                    let terminal = ev.kind.is_terminal();
                    events.push(ev);
                    if terminal {
                        return events;
                    }
                }
                Err(e) if e.is_retryable() => break,
                Err(e) => panic!("observe {run} failed: {e}"),
            }
        }
    }
}

/// Every event of the run, from cursor 0 to its end.
pub async fn observe_all(agent: &DurableAgent, run_id: &RunId, stall: Duration) -> Vec<Event> {
    let run = agent
        .observe(run_id, ObserveOptions::from(0))
        .await
        .unwrap_or_else(|e| panic!("observe {run_id}: {e}"));
    collect(run, stall).await
}

/// The run's status once it is terminal (or whatever it is after `limit`). The terminal status
/// is written right after the terminal event, so a client that saw the event may briefly still
/// read `running`.
pub async fn settled_status(agent: &DurableAgent, run_id: &RunId, limit: Duration) -> RunStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = agent
            .status(run_id)
            .await
            .unwrap_or_else(|e| panic!("status {run_id}: {e}"))
            .status;
        if status.is_terminal() || tokio::time::Instant::now() >= deadline {
            return status;
        }
        tokio::task::yield_now().await;
    }
}

/// What a client shows: each `step-restart` drops the events since that step's `step-start`;
/// cursors, timestamps and run ids are left out. Two runs of the same script compare equal.
pub fn client_view(events: &[Event]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for e in events {
        let mut data = e.data.to_value();
        if e.kind == EventKind::StepRestart {
            let start = out
                .iter()
                .rposition(|(k, d)| k == "step-start" && d["step"] == data["step"])
                .unwrap_or_else(|| panic!("step-restart at {} names no started step", e.cursor));
            out.truncate(start);
            continue;
        }
        if let Value::Object(m) = &mut data {
            m.remove("run_id");
        }
        out.push((e.kind.as_str().to_owned(), data));
    }
    out
}

/// Panics unless the cursors are exactly 0, 1, 2, …
pub fn assert_contiguous(events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.cursor, i as u64, "cursors are contiguous from 0");
    }
}

/// Backends shared by several agent instances, each standing for a process: what they share
/// is what processes behind a load balancer share.
#[derive(Clone)]
pub struct SharedBackends {
    /// The run logs.
    pub cache: Arc<dyn ServerCache>,
    /// Wake-ups, control messages and work queues.
    pub pubsub: Arc<dyn PubSub>,
    /// Run records and checkpoints.
    pub store: Arc<dyn WorkflowStore>,
}

impl fmt::Debug for SharedBackends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBackends")
            .field("cache", &self.cache.backend())
            .field("pubsub", &self.pubsub.backend())
            .field("store", &self.store.backend())
            .finish()
    }
}

impl SharedBackends {
    /// One set of in-memory backends (the cache announcing on the pubsub).
    pub fn memory() -> Self {
        let pubsub = InMemoryPubSub::new();
        Self {
            cache: Arc::new(InMemoryCache::new().with_pubsub(&pubsub)),
            pubsub: Arc::new(pubsub),
            store: Arc::new(InMemoryWorkflowStore::new()),
        }
    }

    /// The parts of `backend` under test (bounded by its timeout decorators), each missing one
    /// filled with an in-memory one that every instance built from the result shares.
    pub fn from_backend(backend: &Backend) -> Self {
        let memory = Self::memory();
        let pubsub = backend.pubsub_under_test();
        let cache = match (backend.cache_under_test(), &pubsub) {
            (Some(c), _) => c,
            // An in-memory cache announces only on the in-memory pubsub it is paired with.
            (None, Some(_)) => Arc::new(InMemoryCache::new()),
            (None, None) => memory.cache,
        };
        Self {
            cache,
            pubsub: pubsub.unwrap_or(memory.pubsub),
            store: backend.store_under_test().unwrap_or(memory.store),
        }
    }

    /// A [`DurableAgent`] builder over these backends.
    pub fn builder(&self, agent: Agent) -> DurableAgentBuilder {
        DurableAgent::builder(agent)
            .cache_arc(self.cache.clone())
            .pubsub_arc(self.pubsub.clone())
            .store_arc(self.store.clone())
    }
}

/// Where a fault test's producer waits for the fault. The producer appends as fast as the
/// backend takes it; a test task scheduled late on a loaded machine could inject its fault
/// after the run ended and then wait for an error that never comes. Call
/// [`FaultGate::pass`] after each append: the producer does not go past entry `hold_at` until
/// the test calls [`FaultGate::open`] (right after injecting the fault), so the fault always
/// lands mid-run, between the test's trigger point and `hold_at`.
#[derive(Debug, Clone)]
pub struct FaultGate {
    hold_at: u64,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FaultGate {
    /// A gate that holds the producer after entry `hold_at`.
    pub fn new(hold_at: u64) -> Self {
        Self {
            hold_at,
            open: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// After appending entry `i`: wait here if it is the holding point and the gate is shut.
    pub async fn pass(&self, i: u64) {
        if i == self.hold_at {
            let mut open = self.open.subscribe();
            // The sender lives in `self`: this wait ends only by opening.
            let _ = open.wait_for(|o| *o).await;
        }
    }

    /// The fault is in: let the producer go on.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Append `event` as entry `i` of `run` exactly once, for fault tests whose producer outlives
/// backend failures: after a retryable error, the log's length tells whether the lost answer
/// belonged to a stored append (then it is not sent again). Each retryable error bumps
/// `errors`; any other error, a cursor out of sequence, or a log grown by more than one entry
/// panics.
pub async fn append_once(
    log: &durable_core::EventLog,
    run: &durable_core::RunId,
    i: u64,
    event: &durable_core::NewEvent,
    fence: u64,
    errors: &tokio::sync::watch::Sender<usize>,
) {
    /// Pause between retries while the backend is down (pacing only, not synchronisation).
    const RETRY_PAUSE: Duration = Duration::from_millis(10);
    loop {
        match log
            .append(run, std::slice::from_ref(event), Some(fence))
            .await
        {
            Ok(cursor) => {
                assert_eq!(cursor, i, "append got a cursor out of sequence");
                return;
            }
            Err(e) if e.is_retryable() => {
                errors.send_modify(|n| *n += 1);
                loop {
                    match log.len(run).await {
                        Ok(Some(len)) if len > i => {
                            assert_eq!(len, i + 1, "log grew by more than one append");
                            return;
                        }
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => tokio::time::sleep(RETRY_PAUSE).await,
                        Err(e) => panic!("len: {e}"),
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => panic!("append {i}: {e}"),
        }
    }
}

//! Faults injected between the runtime and its backends: transient append failures (before and
//! after the append lands), an outage longer than the writer's retries, a failed `stream`, and
//! what an instance leaves behind when it is dropped. Every run must finish by itself, exactly.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use durable_conformance::agent::{self as support, assert_contiguous, client_view};
use durable_core::agent::{
    Agent, DurableAgent, EventedAgent, FnTool, ScriptedModel, StreamOptions, ToolContext,
    ToolError, Turn,
};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{
    Announce, AnnounceDomain, AppendOptions, CacheCapabilities, Cursor, Epoch, Error, ErrorKind,
    Event, EventKind, Lease, LogConfig, LogSlice, NewRun, Result, RunId, RunRecord, RunSnapshot,
    RunStatus, ServerCache, StoreCapabilities, WorkflowStore,
};
use serde::Deserialize;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

/// What the faulty cache does to appends.
#[derive(Debug, Default)]
struct Faults {
    /// Appends that reach this cursor fail (`fail_appends` times).
    fail_at: AtomicU64,
    fail_appends: AtomicU32,
    /// The failing append is stored first, then reported failed (a lost response).
    land_then_fail: AtomicBool,
    /// Empty appends (log creation) fail this many times.
    fail_creates: AtomicU32,
    /// Deletes fail (cleanup after a failed stream cannot run).
    fail_deletes: AtomicBool,
    /// Every operation fails until this instant once an append reaches `fail_at` (an outage).
    outage: Mutex<Option<Duration>>,
    down_until: Mutex<Option<Instant>>,
    /// The page size the cache advertises (`CacheCapabilities::append_page`).
    page: AtomicU64,
    /// Every non-empty append that reached the cache: (log length before, entries).
    appends: Mutex<Vec<(u64, usize)>>,
}

impl Faults {
    fn unavailable(op: &'static str) -> Error {
        Error::new(ErrorKind::Unavailable, "injected: connection reset")
            .with_backend("faulty")
            .with_operation(op)
            .with_retryable(true)
    }

    fn check_down(&self, op: &'static str) -> Result<()> {
        match *self.down_until.lock().unwrap() {
            Some(t) if Instant::now() < t => Err(Self::unavailable(op)),
            _ => Ok(()),
        }
    }
}

/// An in-memory cache with injected faults.
#[derive(Debug, Clone)]
struct FaultyCache {
    inner: InMemoryCache,
    faults: Arc<Faults>,
}

impl FaultyCache {
    fn new(faults: Arc<Faults>) -> Self {
        Self {
            inner: InMemoryCache::new(),
            faults,
        }
    }

    /// Decide the fate of an append of `n` entries to `log`; `Ok(true)` = store then fail.
    async fn before_append(&self, log: &str, n: usize) -> Result<bool> {
        let f = &self.faults;
        f.check_down("append_many")?;
        if n == 0 {
            if f.fail_creates
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
                .is_ok()
            {
                return Err(Error::new(ErrorKind::Timeout, "injected: timed out")
                    .with_backend("faulty")
                    .with_operation("append_many")
                    .with_retryable(true));
            }
            return Ok(false);
        }
        let len = self.inner.len(log).await?.unwrap_or(0);
        let at = f.fail_at.load(Ordering::Acquire);
        if at == 0 || len + n as u64 <= at {
            return Ok(false);
        }
        if let Some(d) = f.outage.lock().unwrap().take() {
            *f.down_until.lock().unwrap() = Some(Instant::now() + d);
            return Err(Faults::unavailable("append_many"));
        }
        if f.fail_appends
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok()
        {
            if f.land_then_fail.load(Ordering::Acquire) {
                return Ok(true);
            }
            return Err(Faults::unavailable("append_many"));
        }
        Ok(false)
    }
}

#[async_trait]
impl ServerCache for FaultyCache {
    fn backend(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> CacheCapabilities {
        self.inner
            .capabilities()
            .with_append_page(self.faults.page.load(Ordering::Acquire))
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.faults.check_down("get")?;
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.faults.check_down("set")?;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.faults.check_down("delete")?;
        if self.faults.fail_deletes.load(Ordering::Acquire) {
            return Err(Faults::unavailable("delete"));
        }
        self.inner.delete(key).await
    }
    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        self.faults.check_down("increment")?;
        self.inner.increment(key, by, ttl).await
    }
    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        let land_then_fail = self.before_append(log, payloads.len()).await?;
        if !payloads.is_empty() {
            let len = self.inner.len(log).await?.unwrap_or(0);
            self.faults
                .appends
                .lock()
                .unwrap()
                .push((len, payloads.len()));
        }
        let first = self.inner.append_many(log, payloads, options).await?;
        if land_then_fail {
            return Err(Faults::unavailable("append_many"));
        }
        Ok(first)
    }
    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        self.faults.check_down("read")?;
        self.inner.read(log, from, limit).await
    }
    async fn len(&self, log: &str) -> Result<Option<u64>> {
        self.faults.check_down("len")?;
        self.inner.len(log).await
    }
    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        self.faults.check_down("expire")?;
        self.inner.expire(log, ttl).await
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.keys(prefix).await
    }
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        None
    }
    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        self.inner
            .append_announce(log, payloads, options, announce)
            .await
    }
}

/// Completed executions per tool call id, and the contexts each attempt saw.
#[derive(Clone, Default)]
struct Calls {
    done: Arc<Mutex<HashMap<String, u32>>>,
    seen: Arc<Mutex<Vec<(String, u32, String)>>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

/// A weather tool that counts completions; it never completes `hang_on`.
fn weather(calls: Calls, hang_on: Option<&str>, instance: &'static str) -> FnTool<Lookup> {
    let hang_on = hang_on.map(str::to_owned);
    FnTool::new(
        "weather",
        "Current weather of a city",
        move |a: Lookup, ctx: ToolContext| {
            let calls = calls.clone();
            let hang = hang_on.as_deref() == Some(ctx.tool_call_id.as_str());
            async move {
                calls.seen.lock().unwrap().push((
                    ctx.tool_call_id.clone(),
                    ctx.attempt,
                    ctx.idempotency_key(),
                ));
                if hang {
                    futures::future::pending::<()>().await;
                }
                *calls
                    .done
                    .lock()
                    .unwrap()
                    .entry(format!("{instance}:{}", ctx.tool_call_id))
                    .or_default() += 1;
                Ok::<_, ToolError>(json!({"city": a.city, "sky": "sunny"}))
            }
        },
    )
}

/// A long answer (200 deltas), a tool call, and a closing answer.
fn script() -> Vec<Turn> {
    vec![
        Turn::new()
            .deltas(200, "word ")
            .tool_call("call-0", "weather", json!({"city": "Paris"})),
        Turn::new().deltas(200, "more ").delta("Sunny in Paris."),
    ]
}

fn agent(model: ScriptedModel, calls: Calls, hang_on: Option<&str>) -> Agent {
    agent_on("node", model, calls, hang_on)
}

fn agent_on(
    instance: &'static str,
    model: ScriptedModel,
    calls: Calls,
    hang_on: Option<&str>,
) -> Agent {
    Agent::builder()
        .id("forecaster")
        .model(model)
        .tool(weather(calls, hang_on, instance))
        .build()
        .unwrap()
}

#[derive(Clone)]
struct Backends {
    cache: FaultyCache,
    pubsub: InMemoryPubSub,
    store: InMemoryWorkflowStore,
}

impl Backends {
    fn new(faults: Arc<Faults>) -> Self {
        Self {
            cache: FaultyCache::new(faults),
            pubsub: InMemoryPubSub::new(),
            store: InMemoryWorkflowStore::new(),
        }
    }

    fn durable(&self, agent: Agent, worker: &str, retry_for: Duration) -> DurableAgent {
        let mut config = LogConfig::default();
        config.retry_for = retry_for;
        DurableAgent::builder(agent)
            .cache(self.cache.clone())
            .pubsub(self.pubsub.clone())
            .store(self.store.clone())
            .worker_id(worker)
            .lease_ttl(Duration::from_millis(500))
            .log_config(config)
            .build()
            .unwrap()
    }
}

/// What an uninterrupted run of `script()` shows a client.
async fn reference() -> Vec<(String, serde_json::Value)> {
    let b = Backends::new(Arc::default());
    let a = b.durable(
        agent(ScriptedModel::new(script()), Calls::default(), None),
        "ref",
        Duration::from_secs(1),
    );
    let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    client_view(&support::collect(run, DEADLINE).await)
}

/// Read a run the way a reconnecting client does (see `support::follow`), within the deadline.
async fn follow(agent: &DurableAgent, run_id: &RunId) -> Vec<Event> {
    tokio::time::timeout(
        DEADLINE,
        support::follow(agent.log().clone(), run_id.clone()),
    )
    .await
    .expect("run never ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_append_failure_is_retried_without_a_gap_or_a_duplicate() {
    let reference = reference().await;
    for land_then_fail in [false, true] {
        let faults = Arc::new(Faults::default());
        faults.fail_at.store(100, Ordering::Release);
        faults.fail_appends.store(3, Ordering::Release);
        faults
            .land_then_fail
            .store(land_then_fail, Ordering::Release);
        let b = Backends::new(faults.clone());
        let calls = Calls::default();
        let a = b.durable(
            agent(
                ScriptedModel::new(script()).with_delay(Duration::from_micros(50)),
                calls.clone(),
                None,
            ),
            "node-1",
            Duration::from_secs(10),
        );
        let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
        let run_id = run.run_id().clone();
        let events = support::collect(run, DEADLINE).await;
        assert_contiguous(&events);
        assert_eq!(
            client_view(&events),
            reference,
            "land_then_fail={land_then_fail}"
        );
        assert!(
            events.iter().all(|e| e.kind != EventKind::StepRestart),
            "retried in place, no step re-run"
        );
        assert_eq!(
            faults.fail_appends.load(Ordering::Acquire),
            0,
            "faults fired"
        );
        assert_eq!(
            support::settled_status(&a, &run_id, DEADLINE).await,
            RunStatus::Completed
        );
        assert_eq!(calls.done.lock().unwrap().values().sum::<u32>(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retries_restarts_the_run_by_itself() {
    let reference = reference().await;
    let faults = Arc::new(Faults::default());
    faults.fail_at.store(300, Ordering::Release);
    *faults.outage.lock().unwrap() = Some(Duration::from_millis(400));
    let b = Backends::new(faults.clone());
    let calls = Calls::default();
    // The writer gives up after 50 ms; the instance must restart the run on its own.
    let a = b.durable(
        agent(
            ScriptedModel::new(script()).with_delay(Duration::from_micros(50)),
            calls.clone(),
            None,
        ),
        "node-1",
        Duration::from_millis(50),
    );
    let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    drop(run);
    // A client on another instance with patient observers (the default retry budget).
    let viewer = b.durable(
        agent(ScriptedModel::new(script()), Calls::default(), None),
        "viewer",
        Duration::from_secs(15),
    );
    let events = follow(&viewer, &run_id).await;
    assert!(
        faults.down_until.lock().unwrap().is_some(),
        "the outage happened"
    );
    assert_contiguous(&events);
    assert!(
        events.iter().any(|e| e.kind == EventKind::StepRestart),
        "the interrupted step was restarted by the instance itself"
    );
    assert_eq!(client_view(&events), reference);
    assert_eq!(
        support::settled_status(&a, &run_id, DEADLINE).await,
        RunStatus::Completed
    );
    let done = calls.done.lock().unwrap();
    assert_eq!(done.values().sum::<u32>(), 1, "the tool ran once: {done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_leaves_nothing_that_runs_later() {
    let faults = Arc::new(Faults::default());
    faults.fail_creates.store(1, Ordering::Release);
    let b = Backends::new(faults.clone());
    let calls = Calls::default();
    let a = b.durable(
        agent(ScriptedModel::new(script()), calls.clone(), None),
        "node-1",
        Duration::from_secs(1),
    );
    let run_id = RunId::new("retry-me").unwrap();
    let err = a
        .stream("Weather?", StreamOptions::new().run_id(run_id.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        a.status(&run_id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(a.list_active_runs().await.unwrap().is_empty());
    let other = b.durable(
        agent(ScriptedModel::new(script()), calls.clone(), None),
        "node-2",
        Duration::from_secs(1),
    );
    assert!(other.recover().await.unwrap().is_empty());
    assert!(calls.seen.lock().unwrap().is_empty(), "nothing ran");
    // The caller retries with the same id: a fresh run that completes once.
    let run = a
        .stream("Weather?", StreamOptions::new().run_id(run_id.clone()))
        .await
        .unwrap();
    let events = support::collect(run, DEADLINE).await;
    assert_eq!(events.last().unwrap().kind, EventKind::Finish);
    assert_eq!(calls.done.lock().unwrap().values().sum::<u32>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_stream_returns_the_run_it_started() {
    let faults = Arc::new(Faults::default());
    faults.fail_creates.store(1, Ordering::Release);
    faults.fail_deletes.store(true, Ordering::Release);
    let b = Backends::new(faults.clone());
    let calls = Calls::default();
    let a = b.durable(
        agent(ScriptedModel::new(script()), calls.clone(), None),
        "node-1",
        Duration::from_secs(1),
    );
    let run_id = RunId::new("adopt-me").unwrap();
    let options = StreamOptions::new().run_id(run_id.clone());
    // The cleanup fails too: the run record stays behind.
    a.stream("Weather?", options.clone()).await.unwrap_err();
    faults.fail_deletes.store(false, Ordering::Release);
    // Another input under the same id is a conflict, not an adoption.
    let other = a
        .stream("Something else", options.clone())
        .await
        .unwrap_err();
    assert_eq!(other.kind(), ErrorKind::Conflict);
    // The same input is the same run, executed once.
    let run = a.stream("Weather?", options.clone()).await.unwrap();
    assert_eq!(run.run_id(), &run_id);
    let events = support::collect(run, DEADLINE).await;
    assert_contiguous(&events);
    assert_eq!(events.last().unwrap().kind, EventKind::Finish);
    // And once more after it finished: the same run again, not a second execution.
    let again = a.stream("Weather?", options).await.unwrap();
    let replay = support::collect(again, DEADLINE).await;
    assert_eq!(client_view(&replay), client_view(&events));
    assert_eq!(calls.done.lock().unwrap().values().sum::<u32>(), 1);
}

#[tokio::test]
async fn an_invalid_namespace_is_rejected_when_the_agent_is_built() {
    for ns in ["a*b", "{x}", "a b", "", "a..b", "x>y"] {
        let mut config = LogConfig::default();
        config.namespace = ns.to_owned();
        let err =
            DurableAgent::builder(agent(ScriptedModel::new(script()), Calls::default(), None))
                .log_config(config)
                .build()
                .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "namespace {ns:?}");
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_shutting_down_an_agent_releases_its_control_subscription() {
    let b = Backends::new(Arc::default());
    for shutdown in [false, true] {
        let a = b.durable(
            agent(ScriptedModel::new(script()), Calls::default(), None),
            "node-1",
            Duration::from_secs(1),
        );
        let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
        let run_id = run.run_id().clone();
        support::collect(run, DEADLINE).await;
        support::settled_status(&a, &run_id, DEADLINE).await;
        assert_eq!(
            b.pubsub.active_topics(),
            1,
            "the control topic, while alive"
        );
        if shutdown {
            a.shutdown();
            wait_for("shutdown releases the control subscription", || {
                b.pubsub.active_topics() == 0
            })
            .await;
        }
        // The run's task may hold the instance a moment longer; the subscription goes with it.
        drop(a);
        wait_for(
            "dropping the agent releases the control subscription",
            || b.pubsub.active_topics() == 0,
        )
        .await;
    }
}

#[test]
fn an_interrupted_tool_sees_its_attempt_and_a_stable_idempotency_key() {
    let b = Backends::new(Arc::default());
    let calls = Calls::default();
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let main = tokio::runtime::Runtime::new().unwrap();
    let a = b.durable(
        agent(ScriptedModel::new(script()), calls.clone(), Some("call-0")),
        "node-1",
        Duration::from_secs(1),
    );
    let run_id = doomed
        .block_on(a.stream("Weather?", StreamOptions::new()))
        .unwrap()
        .run_id()
        .clone();
    main.block_on(wait_for("the tool starts", || {
        !calls.seen.lock().unwrap().is_empty()
    }));
    // The process dies inside the tool.
    drop(doomed);
    drop(a);
    let restarted = b.durable(
        agent(ScriptedModel::new(script()), calls.clone(), None),
        "node-1",
        Duration::from_secs(1),
    );
    main.block_on(async {
        assert_eq!(restarted.recover().await.unwrap(), vec![run_id.clone()]);
        assert_eq!(
            support::settled_status(&restarted, &run_id, DEADLINE).await,
            RunStatus::Completed
        );
    });
    let seen = calls.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].1, seen[1].1), (1, 2), "attempts 1 then 2");
    assert_eq!(
        seen[0].2, seen[1].2,
        "one idempotency key for both attempts"
    );
    assert_eq!(seen[0].2, format!("{run_id}/0/0/call-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evented_resume_is_executed_by_a_worker_not_by_the_caller() {
    let b = Backends::new(Arc::default());
    let calls = Calls::default();
    let model = ScriptedModel::new(script());
    let worker = EventedAgent::builder(b.durable(
        agent_on("worker", model.clone(), calls.clone(), None),
        "worker",
        Duration::from_secs(1),
    ))
    .workers(1)
    .start()
    .await
    .unwrap();
    let api = EventedAgent::builder(b.durable(
        agent_on("api", model, calls.clone(), None),
        "api",
        Duration::from_secs(1),
    ))
    .workers(0)
    .start()
    .await
    .unwrap();
    let run = api
        .stream("Weather?", StreamOptions::new().require_tool_approval(true))
        .await
        .unwrap();
    let run_id = run.run_id().clone();
    let first = support::collect(run, DEADLINE).await;
    assert_eq!(first.last().unwrap().kind, EventKind::Suspended);
    let rest = api.approve_tool_call(&run_id, "call-0").await.unwrap();
    let rest = support::collect(rest, DEADLINE).await;
    assert_eq!(rest.last().unwrap().kind, EventKind::Finish);
    assert_eq!(rest.first().unwrap().cursor, first.len() as u64);
    let done = calls.done.lock().unwrap().clone();
    assert_eq!(done.get("worker:call-0"), Some(&1), "{done:?}");
    assert_eq!(done.get("api:call-0"), None, "the caller executed nothing");
    drop(worker);
}

/// An in-memory store whose first `finish_run` calls fail, retryably, before they change
/// anything: a process that dies between appending a run's last event and recording its end.
#[derive(Debug, Clone)]
struct FailingFinish {
    inner: InMemoryWorkflowStore,
    failures: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

#[async_trait]
impl WorkflowStore for FailingFinish {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        self.inner.create_run(run).await
    }
    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        self.inner.get_run(run_id).await
    }
    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        self.inner.load(run_id).await
    }
    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        self.inner.claim(run_id, owner, ttl).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        self.inner.release(lease).await
    }
    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.inner.checkpoint(run_id, epoch, key, output).await
    }
    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<serde_json::Value>,
    ) -> Result<RunRecord> {
        self.inner.set_status(run_id, epoch, status, data).await
    }
    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        self.inner.list_runs(status).await
    }
    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        self.inner.expire_run(run_id, ttl).await
    }
    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        self.inner.delete_run(run_id).await
    }
    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        let left = self.failures.load(Ordering::Acquire);
        if left > 0 {
            self.failures.store(left - 1, Ordering::Release);
            return Err(Faults::unavailable("finish_run"));
        }
        self.inner.finish_run(run_id, epoch, status, ttl).await
    }
}

/// G6 across a crash between a run's last event and its terminal status: the log's retention is
/// scheduled first, the status write fails, and the instance runs the run again by itself: it
/// finds the log ended, records the status with its expiry, and after the retention nothing of
/// the run is left (no record, no key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_end_was_not_recorded_is_finished_with_its_retention() {
    let cache = FaultyCache::new(Arc::default());
    let store = FailingFinish {
        inner: InMemoryWorkflowStore::new(),
        failures: Arc::new(AtomicU32::new(1)),
        calls: Arc::default(),
    };
    let mut config = LogConfig::default();
    config.retention = Duration::from_millis(300);
    config.tombstone = Duration::from_millis(100);
    let calls = Calls::default();
    let a = DurableAgent::builder(agent(ScriptedModel::new(script()), calls.clone(), None))
        .cache(cache.clone())
        .pubsub(InMemoryPubSub::new())
        .store(store.clone())
        .worker_id("node-1")
        .lease_ttl(Duration::from_millis(500))
        .log_config(config)
        .build()
        .unwrap();
    let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    let events = support::collect(run, DEADLINE).await;
    assert_contiguous(&events);
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::Finish),
        "the run streamed to its end"
    );
    let prefix = a.log().run_prefix(&run_id);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let record = store.get_run(&run_id).await.unwrap();
        let keys = cache.keys(&prefix).await.unwrap();
        if record.is_none() && keys.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: record {record:?}, keys {keys:?} (finish_run called {} times)",
            store.calls.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.calls.load(Ordering::Acquire),
        2,
        "the failed finish was retried once by the instance itself"
    );
    assert_eq!(calls.done.lock().unwrap().values().sum::<u32>(), 1);
}

/// A cache advertising a page size gets the run writer's batches cut at page boundaries (only
/// the first append, before the writer knows its cursor, may cross one), and a transient
/// failure of a piece in the middle of a batch is retried without a gap or a duplicate.
#[tokio::test]
async fn the_writer_cuts_its_batches_at_the_caches_pages() {
    const PAGE: u64 = 8;
    let faults = Arc::new(Faults::default());
    faults.page.store(PAGE, Ordering::Release);
    // The append reaching cursor 45 fails once after it landed (a lost reply).
    faults.fail_at.store(45, Ordering::Release);
    faults.fail_appends.store(1, Ordering::Release);
    faults.land_then_fail.store(true, Ordering::Release);
    let cache = FaultyCache::new(faults.clone());
    let log = durable_core::EventLog::new(Arc::new(cache), Arc::new(InMemoryPubSub::new()));
    let run = RunId::new("paged-run").unwrap();
    log.create(&run, None).await.unwrap();
    let writer = log.writer(run.clone(), None, 64);
    let mut sent = 0u64;
    for size in [3u64, 13, 1, 8, 21, 5, 30] {
        let batch = (sent..sent + size)
            .map(|i| {
                durable_core::NewEvent::json(EventKind::TextDelta, &json!({ "i": i })).unwrap()
            })
            .collect();
        writer.send_batch(batch).await.unwrap();
        sent += size;
        if sent == 3 {
            // The writer learns its cursor from its first append.
            writer.flush().await.unwrap();
        }
    }
    assert_eq!(writer.flush().await.unwrap(), sent);
    let events = log.read(&run, 0, 1000).await.unwrap();
    assert_eq!(events.len() as u64, sent);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.cursor, i as u64);
        assert_eq!(e.data.to_value()["i"], i as u64);
    }
    let appends = faults.appends.lock().unwrap().clone();
    for &(at, n) in appends.iter().skip(1) {
        assert!(
            at / PAGE == (at + n as u64 - 1) / PAGE,
            "an append of {n} at {at} crosses a page of {PAGE}: {appends:?}"
        );
    }
    assert!(appends.len() > 1, "{appends:?}");
}

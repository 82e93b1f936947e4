//! The agent runtime end to end on the in-memory backends: streaming, reconnecting, crash
//! recovery at every point of a run, approval, abort across instances, evented workers.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_conformance::agent::{self as support, assert_contiguous, client_view};
use durable_core::agent::{
    Agent, DurableAgent, DurableRun, EventedAgent, FnTool, ResumeData, ScriptedModel,
    StreamOptions, ToolContext, ToolError, Turn,
};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{ErrorKind, Event, EventKind, LogConfig, ObserveOptions, RunId, RunStatus};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

/// Shared backends: two agents built over clones behave like two processes sharing servers.
#[derive(Clone, Default)]
struct Backends {
    cache: InMemoryCache,
    pubsub: InMemoryPubSub,
    store: InMemoryWorkflowStore,
}

/// Completed executions per tool call id, shared by every agent instance of a test.
type Completions = Arc<Mutex<HashMap<String, u32>>>;

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

/// A weather tool that counts completed executions; with `hang_on`, it never completes the
/// call with that id (an executor that dies inside the tool).
fn weather(done: Completions, hang_on: Option<String>) -> FnTool<Lookup> {
    FnTool::new(
        "weather",
        "Current weather of a city",
        move |a: Lookup, ctx: ToolContext| {
            let done = done.clone();
            let hang = hang_on.as_deref() == Some(ctx.tool_call_id.as_str());
            async move {
                if hang {
                    futures::future::pending::<()>().await;
                }
                *done.lock().unwrap().entry(ctx.tool_call_id).or_default() += 1;
                Ok::<_, ToolError>(json!({"city": a.city, "sky": "sunny"}))
            }
        },
    )
}

/// Three tool-calling steps, then an answer.
fn script() -> Vec<Turn> {
    let mut turns: Vec<Turn> = ["Paris", "Oslo", "Lima"]
        .iter()
        .enumerate()
        .map(|(i, city)| {
            Turn::new()
                .words(&format!("Looking up {city} now."))
                .tool_call(format!("call-{i}"), "weather", json!({ "city": city }))
        })
        .collect();
    turns.push(Turn::text("It is sunny in Paris, Oslo and Lima."));
    turns
}

fn agent(model: ScriptedModel, done: Completions, hang_on: Option<String>) -> Agent {
    Agent::builder()
        .id("forecaster")
        .instructions("You report the weather.")
        .model(model)
        .tool(weather(done, hang_on))
        .build()
        .unwrap()
}

fn durable(b: &Backends, agent: Agent, worker: &str) -> DurableAgent {
    DurableAgent::builder(agent)
        .cache(b.cache.clone())
        .pubsub(b.pubsub.clone())
        .store(b.store.clone())
        .worker_id(worker)
        .lease_ttl(Duration::from_millis(300))
        .build()
        .unwrap()
}

async fn collect(run: DurableRun) -> Vec<Event> {
    support::collect(run, DEADLINE).await
}

async fn observe_all(agent: &DurableAgent, run_id: &RunId) -> Vec<Event> {
    support::observe_all(agent, run_id, DEADLINE).await
}

async fn settled_status(agent: &DurableAgent, run_id: &RunId) -> RunStatus {
    support::settled_status(agent, run_id, DEADLINE).await
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[tokio::test]
async fn plain_agent_streams_tool_steps_and_answers() {
    let done = Completions::default();
    let agent = agent(ScriptedModel::new(script()), done.clone(), None);
    let out = agent
        .generate("Weather?", StreamOptions::new())
        .await
        .unwrap();
    assert_eq!(out.text, "It is sunny in Paris, Oslo and Lima.");
    assert_eq!(out.finish_reason, "stop");
    assert_eq!(out.steps, 4);
    assert_eq!(done.lock().unwrap().len(), 3);

    let events: Vec<Event> = agent
        .stream("Weather?", StreamOptions::new())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_contiguous(&events);
    let k = kinds(&events);
    assert_eq!(k[0], "start");
    assert_eq!(k.last(), Some(&"finish"));
    assert_eq!(k.iter().filter(|k| **k == "tool-result").count(), 3);
    assert_eq!(k.iter().filter(|k| **k == "step-finish").count(), 4);
}

#[tokio::test]
async fn agent_builder_rejects_bad_definitions() {
    let model = || ScriptedModel::new([Turn::text("x")]);
    let e = Agent::builder().model(model()).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = Agent::builder()
        .id("a.b")
        .model(model())
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = Agent::builder().id("a").build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let done = Completions::default();
    let e = Agent::builder()
        .id("a")
        .model(model())
        .tool(weather(done.clone(), None))
        .tool(weather(done, None))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn unknown_tools_and_model_failures_are_reported_not_panicked() {
    let model = ScriptedModel::new([
        Turn::new().tool_call("c1", "nope", json!({})),
        Turn::text("partial ").fail("provider went away"),
    ]);
    let agent = DurableAgent::new(Agent::builder().id("a").model(model).build().unwrap());
    let run = agent.stream("hi", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    let events = collect(run).await;
    let k = kinds(&events);
    assert!(k.contains(&"tool-error"), "{k:?}");
    assert_eq!(k.last(), Some(&"error"));
    assert_eq!(settled_status(&agent, &run_id).await, RunStatus::Failed);
    let err = agent
        .generate("hi", StreamOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unexpected);
}

#[tokio::test]
async fn reconnect_from_offset_is_exact_and_run_outlives_the_caller() {
    let b = Backends::default();
    let done = Completions::default();
    let model = ScriptedModel::new(script()).with_delay(Duration::from_micros(200));
    let a = durable(&b, agent(model, done.clone(), None), "a");
    let mut run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(run.next().await.unwrap().unwrap());
    }
    drop(run); // the client disconnects; the run goes on
    let offset = seen.last().unwrap().cursor + 1;
    let rest = collect(
        a.observe(&run_id, ObserveOptions::from(offset))
            .await
            .unwrap(),
    )
    .await;
    seen.extend(rest);
    let full = observe_all(&a, &run_id).await;
    assert_eq!(seen, full);
    assert_contiguous(&full);
    assert_eq!(full.last().unwrap().kind, EventKind::Finish);
    assert_eq!(settled_status(&a, &run_id).await, RunStatus::Completed);
    assert!(done.lock().unwrap().values().all(|n| *n == 1));
}

#[tokio::test]
async fn second_instance_observes_and_aborts_a_run_started_on_the_first() {
    let b = Backends::default();
    let done = Completions::default();
    let hanging = ScriptedModel::new([Turn::text("thinking about it").hang()]);
    let a = durable(&b, agent(hanging.clone(), done.clone(), None), "a");
    let other = durable(&b, agent(hanging, done, None), "b");
    let mut run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    // Wait until it produced text, so it is mid-step when aborted.
    while run.next().await.unwrap().unwrap().kind != EventKind::TextDelta {}
    let watcher = other
        .observe(&run_id, ObserveOptions::from(0))
        .await
        .unwrap();
    assert_eq!(other.abort(&run_id).await.unwrap(), RunStatus::Aborted);
    let seen = collect(watcher).await;
    assert_eq!(seen.last().unwrap().kind, EventKind::Abort);
    let rest = collect(run).await;
    assert_eq!(rest.last().unwrap().kind, EventKind::Abort);
    assert_eq!(
        other.abort(&run_id).await.unwrap(),
        RunStatus::Aborted,
        "idempotent"
    );
    let unknown = RunId::new("no-such-run").unwrap();
    assert_eq!(
        other.abort(&unknown).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn approval_suspends_then_resumes_on_another_instance() {
    let b = Backends::default();
    let done = Completions::default();
    let model = ScriptedModel::new([
        Turn::new().tool_call("call-0", "weather", json!({"city": "Paris"})),
        Turn::text("Sunny."),
    ]);
    let a = durable(&b, agent(model.clone(), done.clone(), None), "a");
    let opts = StreamOptions::new().require_tool_approval(true);
    let run = a.stream("Weather?", opts.clone()).await.unwrap();
    let run_id = run.run_id().clone();
    let events = collect(run).await;
    let k = kinds(&events);
    assert_eq!(&k[k.len() - 2..], ["tool-call-approval", "suspended"]);
    // Persisted before announced: the status is already suspended.
    let rec = a.status(&run_id).await.unwrap();
    assert_eq!(rec.status, RunStatus::Suspended);
    assert!(
        done.lock().unwrap().is_empty(),
        "not executed before approval"
    );

    // A fresh instance (another process) approves.
    let b2 = durable(&b, agent(model.clone(), done.clone(), None), "b");
    let wrong = b2
        .approve_tool_call(&run_id, "other-call")
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::InvalidInput);
    let resumed = collect(b2.approve_tool_call(&run_id, "call-0").await.unwrap()).await;
    assert_eq!(resumed.first().unwrap().cursor, events.len() as u64);
    assert_eq!(resumed.last().unwrap().kind, EventKind::Finish);
    assert_eq!(done.lock().unwrap().get("call-0"), Some(&1));
    let full = observe_all(&b2, &run_id).await;
    assert_contiguous(&full);
    assert_eq!(full.len(), events.len() + resumed.len());

    // Resume of a run that is not suspended, or does not exist: clear errors.
    let again = b2.resume(&run_id, ResumeData::approve()).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidState);
    let unknown = RunId::new("missing").unwrap();
    let e = b2
        .resume(&unknown, ResumeData::approve())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Decline: the model is told the call was not approved.
    let run = a.stream("Weather?", opts).await.unwrap();
    let run_id = run.run_id().clone();
    collect(run).await;
    let declined = collect(
        b2.decline_tool_call(&run_id, "call-0", Some("too expensive".into()))
            .await
            .unwrap(),
    )
    .await;
    let result = declined
        .iter()
        .find(|e| e.kind == EventKind::ToolResult)
        .unwrap()
        .data
        .to_value();
    assert_eq!(result["declined"], true);
    assert!(result["result"]
        .as_str()
        .unwrap()
        .contains("not approved by the user: too expensive"));
    assert_eq!(declined.last().unwrap().kind, EventKind::Finish);
    assert_eq!(
        done.lock().unwrap().get("call-0"),
        Some(&1),
        "declined call never ran"
    );
}

#[tokio::test]
async fn generate_reports_a_suspension() {
    let done = Completions::default();
    let model = ScriptedModel::new([
        Turn::new().tool_call("c", "weather", json!({"city": "Rome"})),
        Turn::text("ok"),
    ]);
    let a = DurableAgent::new(agent(model, done, None));
    let out = a
        .generate("w?", StreamOptions::new().require_tool_approval(true))
        .await
        .unwrap();
    let s = out.suspended.expect("suspended");
    assert_eq!(
        (s.tool_call_id.as_str(), s.tool_name.as_str()),
        ("c", "weather")
    );
    assert_eq!(out.finish_reason, "suspended");
    let after = a.resume(&out.run_id, ResumeData::approve()).await.unwrap();
    assert_eq!(after.output().await.unwrap().text, "ok");
}

/// The reference run: what an uninterrupted run of [`script`] looks like to a client.
fn reference() -> Vec<(String, Value)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = Backends::default();
        let a = durable(
            &b,
            agent(ScriptedModel::new(script()), Completions::default(), None),
            "ref",
        );
        let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
        client_view(&collect(run).await)
    })
}

/// Start a run on a runtime of its own, let it progress until `stop_at` says so (and, if
/// given, until checkpoint `checkpoint` is stored), then drop that runtime: the executor dies
/// mid-flight. A fresh agent over the same stores recovers the run; check the result.
fn crash_and_recover(
    reference: &[(String, Value)],
    model: ScriptedModel,
    hang_tool_on: Option<String>,
    mut stop_at: impl FnMut(&Event) -> bool,
    checkpoint: Option<String>,
) {
    let b = Backends::default();
    let done = Completions::default();
    let main = tokio::runtime::Runtime::new().unwrap();
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let a = durable(
        &b,
        agent(model.clone(), done.clone(), hang_tool_on),
        "node-1",
    );
    let run_id = doomed
        .block_on(a.stream("Weather?", StreamOptions::new()))
        .unwrap()
        .run_id()
        .clone();
    let observer = durable(
        &b,
        agent(model.without_faults(), done.clone(), None),
        "viewer",
    );
    main.block_on(async {
        let mut s = observer
            .observe(&run_id, ObserveOptions::from(0))
            .await
            .unwrap();
        while let Some(ev) = tokio::time::timeout(DEADLINE, s.next()).await.unwrap() {
            let ev = ev.unwrap();
            if stop_at(&ev) || ev.kind.is_terminal() {
                break;
            }
        }
        if let Some(key) = checkpoint {
            use durable_core::WorkflowStore;
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while b
                .store
                .load(&run_id)
                .await
                .unwrap()
                .unwrap()
                .checkpoint(&key)
                .is_none()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "checkpoint {key} never written"
                );
                tokio::task::yield_now().await;
            }
        }
    });
    drop(doomed);
    drop(a);
    // The process restarts with the same worker id: it recovers its runs at once.
    let restarted = durable(
        &b,
        agent(model.without_faults(), done.clone(), None),
        "node-1",
    );
    main.block_on(async {
        let recovered = restarted.recover().await.unwrap();
        let status = restarted.status(&run_id).await.unwrap().status;
        assert!(
            recovered.contains(&run_id) || status == RunStatus::Completed,
            "recovered {recovered:?}, status {status:?}"
        );
        let events = observe_all(&restarted, &run_id).await;
        assert_contiguous(&events);
        assert_eq!(client_view(&events), reference, "{:?}", kinds(&events));
        let restarts = events
            .iter()
            .filter(|e| e.kind == EventKind::StepRestart)
            .count();
        assert!(restarts <= 1, "at most the interrupted step restarts");
        assert_eq!(
            settled_status(&restarted, &run_id).await,
            RunStatus::Completed
        );
    });
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 3, "every call completed: {done:?}");
    assert!(
        done.values().all(|n| *n == 1),
        "no tool call completed twice: {done:?}"
    );
}

#[test]
fn crash_at_every_event_then_recover_finishes_exactly_once() {
    let reference = reference();
    let n = reference.len() as u64;
    let model = ScriptedModel::new(script()).with_delay(Duration::from_micros(300));
    for until in 1..=n {
        crash_and_recover(
            &reference,
            model.clone(),
            None,
            |e| e.cursor + 1 >= until,
            None,
        );
    }
}

#[test]
fn crash_mid_model_step_and_inside_tools_then_recover() {
    use durable_core::agent::ScriptItem;
    let reference = reference();
    for step in 0..4u64 {
        // The model hangs after the first delta of `step`: a half-streamed step.
        let mut turns = script();
        let mut hung = Turn::new();
        for (i, item) in turns[step as usize].items().iter().enumerate() {
            match item {
                ScriptItem::Text(s) => hung = hung.delta(s.clone()),
                ScriptItem::ToolCall(c) => {
                    hung = hung.tool_call(c.id.clone(), c.name.clone(), c.arguments.clone())
                }
                _ => {}
            }
            if i == 0 {
                hung = hung.hang();
            }
        }
        turns[step as usize] = hung;
        let mut in_step = false;
        let stop = move |e: &Event| {
            if e.kind == EventKind::StepStart {
                in_step = e.data.to_value()["step"] == step;
            }
            in_step && e.kind == EventKind::TextDelta
        };
        crash_and_recover(&reference, ScriptedModel::new(turns), None, stop, None);
    }
    for call in 0..3u32 {
        // The executor dies inside a tool call, after its step was checkpointed.
        let id = format!("call-{call}");
        let seen = id.clone();
        crash_and_recover(
            &reference,
            ScriptedModel::new(script()),
            Some(id),
            move |e| e.kind == EventKind::ToolCall && e.data.to_value()["tool_call_id"] == *seen,
            Some(format!("s{call}-model")),
        );
    }
}

#[test]
fn evented_run_survives_its_worker() {
    let b = Backends::default();
    let done = Completions::default();
    let main = tokio::runtime::Runtime::new().unwrap();
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let model = ScriptedModel::new(script());
    // The API process only queues and observes.
    let api = main
        .block_on(
            EventedAgent::builder(durable(&b, agent(model.clone(), done.clone(), None), "api"))
                .workers(0)
                .start(),
        )
        .unwrap();
    // Worker 1 dies inside the second tool call.
    let w1 = doomed
        .block_on(
            EventedAgent::builder(durable(
                &b,
                agent(model.clone(), done.clone(), Some("call-1".into())),
                "worker-1",
            ))
            .workers(1)
            .start(),
        )
        .unwrap();
    let run = main
        .block_on(api.stream("Weather?", StreamOptions::new()))
        .unwrap();
    let run_id = run.run_id().clone();
    main.block_on(async {
        // Wait until worker 1 executes it and is inside the hanging call.
        let mut s = api.observe(&run_id, ObserveOptions::from(0)).await.unwrap();
        loop {
            let ev = tokio::time::timeout(DEADLINE, s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.kind == EventKind::ToolCall && ev.data.to_value()["tool_call_id"] == "call-1" {
                break;
            }
        }
        assert_eq!(
            api.durable()
                .status(&run_id)
                .await
                .unwrap()
                .owner
                .as_deref(),
            Some("worker-1")
        );
    });
    drop(w1);
    drop(doomed);
    // Worker 2 joins; its sweep takes the run over once worker 1's lease expires.
    let w2 = main
        .block_on(
            EventedAgent::builder(durable(&b, agent(model, done.clone(), None), "worker-2"))
                .workers(1)
                .sweep_every(Duration::from_millis(50))
                .start(),
        )
        .unwrap();
    main.block_on(async {
        let events = collect(run).await;
        assert_eq!(events.last().unwrap().kind, EventKind::Finish);
        assert_eq!(
            settled_status(api.durable(), &run_id).await,
            RunStatus::Completed
        );
        let rec = api.durable().status(&run_id).await.unwrap();
        assert!(rec.epoch >= 2, "the takeover bumped the epoch");
    });
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 3);
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    w2.shutdown();
}

#[tokio::test]
async fn observe_as_hides_other_owners_runs() {
    let a = DurableAgent::new(agent(
        ScriptedModel::new([Turn::text("hi")]),
        Completions::default(),
        None,
    ));
    let run = a
        .stream("x", StreamOptions::new().resource_id("alice"))
        .await
        .unwrap();
    let run_id = run.run_id().clone();
    collect(run).await;
    assert!(a
        .observe_as(&run_id, "alice", ObserveOptions::from(0))
        .await
        .is_ok());
    let e = a
        .observe_as(&run_id, "mallory", ObserveOptions::from(0))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn finished_runs_leave_nothing_behind_after_retention() {
    let b = Backends::default();
    let mut config = LogConfig::default();
    config.retention = Duration::from_millis(50);
    config.tombstone = Duration::from_millis(50);
    let a = DurableAgent::builder(agent(
        ScriptedModel::new(script()),
        Completions::default(),
        None,
    ))
    .cache(b.cache.clone())
    .pubsub(b.pubsub.clone())
    .store(b.store.clone())
    .log_config(config)
    .build()
    .unwrap();
    let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    collect(run).await;
    let prefix = a.log().run_prefix(&run_id);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        use durable_core::{ServerCache, WorkflowStore};
        let keys = b.cache.keys(&prefix).await.unwrap();
        let record = b.store.get_run(&run_id).await.unwrap();
        if keys.is_empty() && record.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {keys:?} {record:?}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn thread_memory_carries_the_conversation() {
    let a = DurableAgent::new(
        Agent::builder()
            .id("chat")
            .model(ScriptedModel::new([
                Turn::text("first"),
                Turn::text("second"),
            ]))
            .build()
            .unwrap(),
    );
    let opts = StreamOptions::new().thread_id("t-1");
    assert_eq!(a.generate("one", opts.clone()).await.unwrap().text, "first");
    // The second run sees the first answer (one assistant message), so the script answers
    // with its second turn.
    assert_eq!(a.generate("two", opts).await.unwrap().text, "second");
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Topic {
    topic: String,
}

/// A background research tool: call `n` (1-based, by its id `bg-n`) finishes once `released`
/// reaches `n`.
fn research(released: tokio::sync::watch::Receiver<u32>) -> FnTool<Topic> {
    FnTool::new(
        "research",
        "Research a topic",
        move |a: Topic, ctx: ToolContext| {
            let mut released = released.clone();
            async move {
                let n: u32 = ctx.tool_call_id.trim_start_matches("bg-").parse().unwrap();
                released.wait_for(|r| *r >= n).await.unwrap();
                Ok::<_, ToolError>(json!({"topic": a.topic, "findings": n}))
            }
        },
    )
    .background()
}

fn idle_agent(released: tokio::sync::watch::Receiver<u32>) -> DurableAgent {
    let model = ScriptedModel::new([
        Turn::new()
            .tool_call("bg-1", "research", json!({"topic": "tides"}))
            .tool_call("bg-2", "research", json!({"topic": "winds"})),
        Turn::text("Both tasks started."),
        Turn::text("Tides are done."),
        Turn::text("Winds are done."),
    ]);
    DurableAgent::new(
        Agent::builder()
            .id("researcher")
            .model(model)
            .tool(research(released))
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn until_idle_turns_background_completions_into_follow_ups_on_one_run() {
    let (release, released) = tokio::sync::watch::channel(0u32);
    let a = idle_agent(released);
    let mut run = a
        .stream(
            "Research tides and winds",
            StreamOptions::new().until_idle(),
        )
        .await
        .unwrap();
    let run_id = run.run_id().clone();
    let mut events = Vec::new();
    let mut finished_steps = 0;
    while let Some(ev) = tokio::time::timeout(DEADLINE, run.next()).await.unwrap() {
        let ev = ev.unwrap();
        if ev.kind == EventKind::StepFinish {
            finished_steps += 1;
            // After the first answer, finish task 1; after its follow-up, task 2.
            if finished_steps == 2 || finished_steps == 3 {
                release.send_modify(|r| *r += 1);
            }
        }
        events.push(ev);
    }
    assert_contiguous(&events);
    let texts: Vec<String> = events
        .iter()
        .filter(|e| e.kind == EventKind::StepFinish)
        .map(|e| e.data.to_value()["step"].to_string())
        .collect();
    assert_eq!(texts, ["0", "1", "2", "3"], "two follow-up turns");
    let background: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == EventKind::ToolResult && e.data.to_value()["background"] == true)
        .map(|e| e.data.to_value()["result"]["findings"].clone())
        .collect();
    assert_eq!(background, [json!(1), json!(2)]);
    let finish = events.last().unwrap();
    assert_eq!(finish.kind, EventKind::Finish);
    assert_eq!(finish.data.to_value()["text"], "Winds are done.");
    assert_eq!(finish.data.to_value()["reason"], "stop");
    assert!(
        events.iter().all(|e| e.run_id == run_id),
        "one run id throughout"
    );
    assert_eq!(observe_all(&a, &run_id).await, events);
}

#[tokio::test]
async fn until_idle_ends_after_max_idle_when_a_task_never_finishes() {
    let (_release, released) = tokio::sync::watch::channel(0u32);
    let a = idle_agent(released);
    let out = a
        .generate(
            "Research",
            StreamOptions::new().until_idle_for(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!(out.finish_reason, "idle-timeout");
    assert_eq!(out.text, "Both tasks started.");
    // Without until_idle, background tools run in the foreground like any other tool.
    let (release, released) = tokio::sync::watch::channel(2u32);
    let b = idle_agent(released);
    let out = b.generate("Research", StreamOptions::new()).await.unwrap();
    assert_eq!(out.text, "Both tasks started.");
    drop(release);
}

#[tokio::test]
async fn a_live_but_superseded_owner_is_fenced_off() {
    let reference = tokio::task::spawn_blocking(reference).await.unwrap();
    let b = Backends::default();
    let done = Completions::default();
    let model = ScriptedModel::new(script());
    // The old owner is alive but stuck inside the second tool call.
    let old = durable(
        &b,
        agent(model.clone(), done.clone(), Some("call-1".into())),
        "node-1",
    );
    let run = old.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    let mut s = run;
    loop {
        let ev = s.next().await.unwrap().unwrap();
        if ev.kind == EventKind::ToolCall && ev.data.to_value()["tool_call_id"] == "call-1" {
            break;
        }
    }
    // A replacement with the same identity takes the run over (epoch + 1) while the old one
    // still runs: the old one must not write another event.
    let new = durable(&b, agent(model, done.clone(), None), "node-1");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !new.recover().await.unwrap().contains(&run_id) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let events = collect(s).await;
    assert_eq!(events.last().unwrap().kind, EventKind::Finish);
    let all = observe_all(&new, &run_id).await;
    assert_contiguous(&all);
    assert_eq!(client_view(&all), reference);
    assert_eq!(settled_status(&new, &run_id).await, RunStatus::Completed);
    assert!(done.lock().unwrap().values().all(|n| *n == 1));
}

#[test]
fn until_idle_run_recovers_with_its_background_tasks() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let b = Backends::default();
    let make = |released, worker: &str| {
        let model = ScriptedModel::new([
            Turn::new()
                .tool_call("bg-1", "research", json!({"topic": "tides"}))
                .tool_call("bg-2", "research", json!({"topic": "winds"})),
            Turn::text("Both tasks started."),
            Turn::text("Tides are done."),
            Turn::text("Winds are done."),
        ]);
        let agent = Agent::builder()
            .id("researcher")
            .model(model)
            .tool(research(released))
            .build()
            .unwrap();
        durable(&b, agent, worker)
    };
    // First process: both tasks start, task 1 completes and its follow-up turn runs, then the
    // process dies while task 2 is still running.
    let (release1, released1) = tokio::sync::watch::channel(0u32);
    let first = make(released1, "node-1");
    let run_id = doomed.block_on(async {
        let mut run = first
            .stream("Research", StreamOptions::new().until_idle())
            .await
            .unwrap();
        let mut step_finishes = 0;
        loop {
            let ev = tokio::time::timeout(DEADLINE, run.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.kind == EventKind::StepFinish {
                step_finishes += 1;
                if step_finishes == 2 {
                    release1.send_replace(1);
                }
                if step_finishes == 3 {
                    break run.run_id().clone();
                }
            }
        }
    });
    drop(doomed);
    drop(first);
    // Restart: task 2 is started again and completes; its follow-up turn ends the run.
    let (_release2, released2) = tokio::sync::watch::channel(2u32);
    let second = make(released2, "node-1");
    main.block_on(async {
        assert!(second.recover().await.unwrap().contains(&run_id));
        let events = observe_all(&second, &run_id).await;
        assert_contiguous(&events);
        let texts: Vec<Value> = events
            .iter()
            .filter(|e| e.kind == EventKind::StepFinish)
            .map(|e| e.data.to_value()["step"].clone())
            .collect();
        assert_eq!(texts, [json!(0), json!(1), json!(2), json!(3)]);
        let bg: Vec<Value> = events
            .iter()
            .filter(|e| e.data.to_value()["background"] == true)
            .map(|e| e.data.to_value()["tool_call_id"].clone())
            .collect();
        assert_eq!(
            bg,
            [json!("bg-1"), json!("bg-2")],
            "each completion announced once"
        );
        let finish = events.last().unwrap().data.to_value();
        assert_eq!(finish["text"], "Winds are done.");
    });
}

#[tokio::test]
async fn abort_cancels_a_running_tool_and_ends_a_suspended_run() {
    let (tx, mut cancelled) = tokio::sync::mpsc::channel::<String>(1);
    let slow = FnTool::new(
        "slow",
        "Takes forever",
        move |_: Topic, ctx: ToolContext| {
            let tx = tx.clone();
            async move {
                // Work the tool hands off (a subprocess, a remote job) learns of the abort through
                // the token; the tool's own future is simply dropped.
                let (cancel, id) = (ctx.cancel.clone(), ctx.tool_call_id.clone());
                tokio::spawn(async move {
                    cancel.cancelled().await;
                    let _ = tx.send(id).await;
                });
                futures::future::pending::<Result<Value, ToolError>>().await
            }
        },
    );
    let model = ScriptedModel::new([
        Turn::new().tool_call("c-1", "slow", json!({"topic": "x"})),
        Turn::text("never"),
    ]);
    let a = DurableAgent::new(
        Agent::builder()
            .id("slowpoke")
            .model(model)
            .tool(slow)
            .build()
            .unwrap(),
    );
    let mut run = a.stream("go", StreamOptions::new()).await.unwrap();
    while run.next().await.unwrap().unwrap().kind != EventKind::ToolCall {}
    assert_eq!(a.abort(run.run_id()).await.unwrap(), RunStatus::Aborted);
    let rest = collect(run).await;
    assert_eq!(rest.last().unwrap().kind, EventKind::Abort);
    // The tool saw its cancellation signal.
    let seen = tokio::time::timeout(DEADLINE, cancelled.recv())
        .await
        .unwrap();
    assert_eq!(seen.as_deref(), Some("c-1"));

    // A suspended run has no executor: abort ends it on the spot, and it cannot be resumed.
    let done = Completions::default();
    let model = ScriptedModel::new([
        Turn::new().tool_call("c", "weather", json!({"city": "Rome"})),
        Turn::text("ok"),
    ]);
    let b = DurableAgent::new(agent(model, done, None));
    let out = b
        .generate("w?", StreamOptions::new().require_tool_approval(true))
        .await
        .unwrap();
    assert!(out.suspended.is_some());
    assert_eq!(b.abort(&out.run_id).await.unwrap(), RunStatus::Aborted);
    let e = b
        .resume(&out.run_id, ResumeData::approve())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    let events = observe_all(&b, &out.run_id).await;
    assert_eq!(events.last().unwrap().kind, EventKind::Abort);
}

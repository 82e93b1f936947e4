//! The agent runtime on the in-memory backends: what is not a backend scenario (plain agents,
//! builder validation, thread memory, until_idle, tool cancellation) is tested here; the
//! durable-agent scenarios every backend proves (reconnect, approval and abort across
//! instances, crash recovery, evented takeover, retention) run via `agent_suite!`.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_conformance::agent::{self as support, assert_contiguous, SharedBackends};
use durable_core::agent::{
    Agent, DurableAgent, DurableRun, FnTool, ResumeData, ScriptedModel, StreamOptions, ToolContext,
    ToolError, Turn,
};
use durable_core::{ErrorKind, Event, EventKind, ObserveOptions, RunId, RunStatus};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

async fn memory() -> Result<durable_conformance::Backend, String> {
    Ok(durable_conformance::Backend::memory())
}

durable_conformance::agent_suite!(memory);

const DEADLINE: Duration = Duration::from_secs(20);

/// Completed executions per tool call id, shared by every agent instance of a test.
type Completions = Arc<Mutex<HashMap<String, u32>>>;

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

/// A weather tool that counts completed executions.
fn weather(done: Completions) -> FnTool<Lookup> {
    FnTool::new(
        "weather",
        "Current weather of a city",
        move |a: Lookup, ctx: ToolContext| {
            let done = done.clone();
            async move {
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

fn agent(model: ScriptedModel, done: Completions) -> Agent {
    Agent::builder()
        .id("forecaster")
        .instructions("You report the weather.")
        .model(model)
        .tool(weather(done))
        .build()
        .unwrap()
}

fn durable(b: &SharedBackends, agent: Agent, worker: &str) -> DurableAgent {
    b.builder(agent)
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
    let agent = agent(ScriptedModel::new(script()), done.clone());
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

/// The in-memory defaults are paired: the cache announces each append itself (one operation,
/// frames in cursor order, events stored once as their frame). A pubsub or cache of the
/// caller's leaves the other default unpaired.
#[tokio::test]
async fn the_in_memory_defaults_announce_in_the_append() {
    let done = Completions::default();
    let plain = DurableAgent::new(agent(ScriptedModel::new(script()), done.clone()));
    assert!(plain.log().announces_in_append());
    let run = plain
        .stream("Weather?", StreamOptions::new())
        .await
        .unwrap();
    assert_contiguous(&collect(run).await);
    let other = DurableAgent::builder(agent(ScriptedModel::new(script()), done))
        .pubsub(Arc::new(durable_core::memory::InMemoryPubSub::new()))
        .build()
        .unwrap();
    assert!(!other.log().announces_in_append());
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
        .tool(weather(done.clone()))
        .tool(weather(done))
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
async fn generate_reports_a_suspension() {
    let done = Completions::default();
    let model = ScriptedModel::new([
        Turn::new().tool_call("c", "weather", json!({"city": "Rome"})),
        Turn::text("ok"),
    ]);
    let a = DurableAgent::new(agent(model, done));
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

#[tokio::test]
async fn observe_as_hides_other_owners_runs() {
    let a = DurableAgent::new(agent(
        ScriptedModel::new([Turn::text("hi")]),
        Completions::default(),
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

#[test]
fn until_idle_run_recovers_with_its_background_tasks() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let b = SharedBackends::memory();
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
    let b = DurableAgent::new(agent(model, done));
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

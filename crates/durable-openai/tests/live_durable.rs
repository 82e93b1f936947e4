//! A durable agent on a real model (`DURABLE_TEST_LLM_URL`, see `support/live.rs`): the client
//! disconnects mid-stream and observes from its offset; the executor dies mid-step and a fresh
//! agent with the same worker id recovers the run without repeating the completed tool call.
//!
//! The model is SmolLM2-135M under llama-server in `cargo xtask test`, guided by
//! [`GuidedModel`] (few-shot turn, `required` tool choice after the user, `temperature: 0`).

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durable_conformance::agent::{assert_contiguous, SharedBackends};
use durable_core::agent::{
    Agent, DurableAgent, DurableRun, LanguageModel, ModelChunk, ModelRequest, ModelStream, Role,
    StreamOptions, Tool, ToolContext, ToolError,
};
use durable_core::{Event, EventKind, ObserveOptions, RunId, RunStatus};
use durable_openai::GuidedModel;
use futures::StreamExt;
use serde_json::{json, Value};
use support::live::{
    example_turn, hold_server, hold_server_blocking, live_builder, llm_url, weather_tool,
    LIVE_DEADLINE,
};

/// `get_weather`, counting its completed executions (shared by every instance of a test).
struct Weather(Arc<AtomicU32>);

#[async_trait]
impl Tool for Weather {
    fn name(&self) -> &str {
        "get_weather"
    }

    fn description(&self) -> &str {
        "Get the current weather for a city"
    }

    fn parameters(&self) -> Value {
        weather_tool().parameters
    }

    async fn execute(&self, args: Value, _ctx: ToolContext) -> Result<Value, ToolError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"city": args["city"], "temp_c": 21, "sky": "sunny"}))
    }
}

/// Fault injection on the client side: the real stream of the answer step (the call after a
/// tool result) hangs after its first text delta, so the executor is mid-step when it dies.
#[derive(Debug)]
struct HangsMidAnswer<M>(M);

#[async_trait]
impl<M: LanguageModel> LanguageModel for HangsMidAnswer<M> {
    fn model_id(&self) -> &str {
        self.0.model_id()
    }

    async fn stream(&self, request: ModelRequest) -> durable_core::Result<ModelStream> {
        let answering = request
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Tool);
        let inner = self.0.stream(request).await?;
        if !answering {
            return Ok(inner);
        }
        let mut seen_text = false;
        Ok(inner
            .take_while(move |c| {
                let go = !seen_text;
                seen_text |= matches!(c, Ok(ModelChunk::TextDelta { .. }));
                futures::future::ready(go)
            })
            .chain(futures::stream::pending())
            .boxed())
    }
}

fn guided(url: &str) -> GuidedModel<durable_openai::OpenAiModel> {
    GuidedModel::new(live_builder(url).build().expect("model"))
        .temperature(0.0)
        .max_tokens(200)
        .examples(example_turn())
}

fn agent(model: impl LanguageModel, executions: &Arc<AtomicU32>) -> Agent {
    Agent::builder()
        .id("forecaster")
        .instructions("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        .model(model)
        .tool(Weather(executions.clone()))
        .max_steps(4)
        .build()
        .expect("agent")
}

/// An instance ("process") over backends shared with the test's other instances.
fn durable(b: &SharedBackends, agent: Agent, worker: &str) -> DurableAgent {
    b.builder(agent)
        .worker_id(worker)
        .lease_ttl(Duration::from_millis(300))
        .build()
        .expect("durable agent")
}

async fn collect(run: DurableRun) -> Vec<Event> {
    durable_conformance::agent::collect(run, LIVE_DEADLINE).await
}

async fn observe_all(agent: &DurableAgent, run_id: &RunId) -> Vec<Event> {
    durable_conformance::agent::observe_all(agent, run_id, LIVE_DEADLINE).await
}

async fn settled_status(agent: &DurableAgent, run_id: &RunId) -> RunStatus {
    durable_conformance::agent::settled_status(agent, run_id, LIVE_DEADLINE).await
}

fn count(events: &[Event], kind: EventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

fn answer_text(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.kind == EventKind::TextDelta)
        .map(|e| e.data.to_value()["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// What every finished run of the weather question looks like, whatever the prose.
fn assert_weather_run(events: &[Event]) {
    assert_contiguous(events);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let calls: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == EventKind::ToolCall)
        .map(|e| e.data.to_value())
        .collect();
    assert_eq!(calls.len(), 1, "one tool call: {kinds:?}");
    assert_eq!(calls[0]["tool_name"], "get_weather", "{calls:?}");
    assert!(calls[0]["args"]["city"].is_string(), "{calls:?}");
    assert_eq!(count(events, EventKind::ToolResult), 1, "{kinds:?}");
    assert!(!answer_text(events).trim().is_empty(), "{kinds:?}");
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::Finish),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_durable_disconnect_then_observe_from_offset_is_exact() {
    let Some(url) = llm_url() else { return };
    let _one = hold_server().await;
    let b = SharedBackends::memory();
    let executions = Arc::new(AtomicU32::new(0));
    let a = durable(&b, agent(guided(&url), &executions), "node-1");
    let mut run = a
        .stream("What is the weather in Paris?", StreamOptions::new())
        .await
        .expect("stream");
    let run_id = run.run_id().clone();

    // The client reads up to the first text delta of the answer, then goes away.
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(LIVE_DEADLINE, run.next())
        .await
        .expect("stream stalled")
    {
        let ev = ev.expect("event");
        let stop = ev.kind == EventKind::TextDelta || ev.kind.is_terminal();
        seen.push(ev);
        if stop {
            break;
        }
    }
    drop(run);
    let offset = seen.last().map_or(0, |e| e.cursor + 1);

    // Reconnect from the offset: what was missed, then live, to the end.
    let rest = collect(
        a.observe(&run_id, ObserveOptions::from(offset))
            .await
            .expect("observe"),
    )
    .await;
    seen.extend(rest);
    let full = observe_all(&a, &run_id).await;
    assert_eq!(seen, full, "stitched stream == uninterrupted observe(0)");
    assert_weather_run(&full);
    assert_eq!(settled_status(&a, &run_id).await, RunStatus::Completed);
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}

#[test]
fn live_durable_crash_mid_step_then_recover_does_not_repeat_the_tool() {
    let Some(url) = llm_url() else { return };
    let _one = hold_server_blocking();
    let b = SharedBackends::memory();
    let executions = Arc::new(AtomicU32::new(0));
    let main = tokio::runtime::Runtime::new().expect("runtime");
    let doomed = tokio::runtime::Runtime::new().expect("runtime");

    // The doomed process: its answer step hangs after the first delta.
    let a = durable(
        &b,
        agent(HangsMidAnswer(guided(&url)), &executions),
        "node-1",
    );
    let run_id = doomed
        .block_on(a.stream("What is the weather in Paris?", StreamOptions::new()))
        .expect("stream")
        .run_id()
        .clone();
    let viewer = durable(&b, agent(guided(&url), &executions), "viewer");
    main.block_on(async {
        let mut s = viewer
            .observe(&run_id, ObserveOptions::from(0))
            .await
            .expect("observe");
        let mut after_result = false;
        loop {
            let ev = tokio::time::timeout(LIVE_DEADLINE, s.next())
                .await
                .expect("stream stalled")
                .expect("the run ended before the answer step")
                .expect("event");
            assert!(!ev.kind.is_terminal(), "the run ended: {ev:?}");
            after_result |= ev.kind == EventKind::ToolResult;
            if after_result && ev.kind == EventKind::TextDelta {
                break; // mid-step: the answer has started streaming
            }
        }
    });
    assert_eq!(executions.load(Ordering::SeqCst), 1, "the tool ran once");
    drop(doomed); // the executor dies mid-step (its HTTP stream is dropped with it)
    drop(a);

    // The process restarts with the same worker id and recovers its run at once.
    let restarted = durable(&b, agent(guided(&url), &executions), "node-1");
    main.block_on(async {
        let recovered = restarted.recover().await.expect("recover");
        assert!(recovered.contains(&run_id), "recovered {recovered:?}");
        let events = observe_all(&restarted, &run_id).await;
        assert_eq!(
            count(&events, EventKind::StepRestart),
            1,
            "the answer step restarts"
        );
        assert_eq!(
            settled_status(&restarted, &run_id).await,
            RunStatus::Completed
        );
        // The log holds the interrupted partial answer, then the restart and the full answer.
        let restart = events
            .iter()
            .position(|e| e.kind == EventKind::StepRestart)
            .expect("restart");
        assert_eq!(
            count(&events[restart..], EventKind::ToolCall),
            0,
            "no second call"
        );
        assert!(!answer_text(&events[restart..]).trim().is_empty());
        assert_eq!(count(&events, EventKind::ToolCall), 1);
        assert_eq!(count(&events, EventKind::ToolResult), 1);
        assert_eq!(
            events.last().map(|e| e.kind.clone()),
            Some(EventKind::Finish)
        );
    });
    assert_eq!(
        executions.load(Ordering::SeqCst),
        1,
        "the completed tool call is not repeated"
    );
}

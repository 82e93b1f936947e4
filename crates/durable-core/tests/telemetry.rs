//! Tracing spans of a durable run: one `durable.run` span per execution, a `durable.model`
//! span per model call and a `durable.tool` span per tool call, with the OpenTelemetry GenAI
//! attributes and the run id on each; per-chunk events only when asked for.

#![allow(clippy::unwrap_used)] // test code panics on purpose

mod support;

use durable_core::agent::{Agent, DurableAgent, StreamOptions};
use futures::StreamExt;
use support::{weather_agent, Capture};

async fn run_to_end(agent: Agent) -> String {
    let durable = DurableAgent::new(agent);
    let run = durable
        .stream("Weather in Paris?", StreamOptions::new())
        .await
        .unwrap();
    let run_id = run.run_id().to_string();
    let events: Vec<_> = run.collect().await;
    assert!(events.iter().all(Result::is_ok));
    run_id
}

#[tokio::test(flavor = "current_thread")]
async fn spans_carry_gen_ai_attributes_and_the_run_id() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.subscriber());
    let run_id = run_to_end(weather_agent(false)).await;

    let spans = capture.spans();
    let runs: Vec<_> = spans.iter().filter(|s| s.name == "durable.run").collect();
    assert_eq!(runs.len(), 1, "one execution, one run span: {spans:#?}");
    let run = runs[0];
    assert_eq!(run.field("gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(run.field("otel.name"), Some("invoke_agent weather-agent"));
    assert_eq!(run.field("gen_ai.agent.id"), Some("weather-agent"));
    assert_eq!(run.field("durable.outcome"), Some("Finished"));

    let models: Vec<_> = spans.iter().filter(|s| s.name == "durable.model").collect();
    assert_eq!(models.len(), 3, "three model steps");
    for (step, m) in models.iter().enumerate() {
        assert_eq!(m.parent.as_deref(), Some("durable.step"));
        assert_eq!(m.field("gen_ai.operation.name"), Some("chat"));
        assert_eq!(m.field("gen_ai.request.model"), Some("scripted"));
        assert_eq!(m.field("otel.name"), Some("chat scripted"));
        assert_eq!(m.field("durable.step"), Some(step.to_string().as_str()));
        assert!(m.field("gen_ai.usage.input_tokens").is_some());
        assert!(m.field("gen_ai.usage.output_tokens").is_some());
        assert!(m.field("gen_ai.response.finish_reasons").is_some());
    }

    let tools: Vec<_> = spans.iter().filter(|s| s.name == "durable.tool").collect();
    assert_eq!(tools.len(), 2, "two tool calls");
    assert_eq!(tools[1].field("gen_ai.tool.call.id"), Some("call-1"));
    assert_eq!(tools[1].field("durable.step"), Some("1"));
    let t = tools[0];
    assert_eq!(t.parent.as_deref(), Some("durable.step"));
    let steps: Vec<_> = spans.iter().filter(|s| s.name == "durable.step").collect();
    assert_eq!(steps.len(), 3, "one span per step");
    assert!(steps
        .iter()
        .all(|s| s.parent.as_deref() == Some("durable.run")));
    assert_eq!(t.field("gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(t.field("gen_ai.tool.name"), Some("weather"));
    assert_eq!(t.field("gen_ai.tool.call.id"), Some("call-0"));
    assert_eq!(t.field("otel.name"), Some("execute_tool weather"));
    assert_eq!(t.field("error.type"), None);

    for s in spans.iter().filter(|s| s.name.starts_with("durable.")) {
        assert_eq!(s.field("durable.run_id"), Some(run_id.as_str()), "{s:?}");
    }
    assert_eq!(
        capture.chunk_events(),
        0,
        "per-chunk events are off by default"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn chunk_events_only_when_asked_for() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.subscriber());
    run_to_end(weather_agent(true)).await;
    // Every delta, the tool call and each finish: more than the two steps' worth of words.
    assert!(capture.chunk_events() > 10, "{}", capture.chunk_events());
}

//! The built-in demo agent (scripted model, one tool) and the demo page `durable serve` shows.

use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use durable_core::agent::{Agent, FnTool, ScriptedModel, ToolContext, ToolError, Turn};
use serde::Deserialize;
use serde_json::json;

/// The demo page: streams a run with `EventSource` and resumes after a dropped connection.
pub const DEMO_PAGE: &str = include_str!("../static/demo.html");

/// The demo answer's final text.
pub const DEMO_ANSWER: &str = "It is sunny and 21 degrees in Paris today. A durable agent streamed this answer one word at a time, and every word carries its cursor, so a client that loses its connection resumes exactly where it stopped.";

/// The arguments of the demo tool.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WeatherArgs {
    /// The city.
    pub city: String,
}

/// The demo model: a `weather` tool call, then [`DEMO_ANSWER`] word by word, each chunk after
/// `delay`.
pub fn model(delay: Duration) -> ScriptedModel {
    ScriptedModel::new([
        Turn::new().tool_call("call-1", "weather", json!({"city": "Paris"})),
        Turn::text(DEMO_ANSWER),
    ])
    .with_delay(delay)
}

/// The demo agent `demo` on [`model`].
///
/// # Errors
/// Never in practice (the definition is valid).
pub fn agent(delay: Duration) -> durable_core::Result<Agent> {
    agent_with("demo", delay, 1)
}

/// The demo model answering [`DEMO_ANSWER`] `repeat` times in one text turn (a long run).
pub fn model_repeated(delay: Duration, repeat: u32) -> ScriptedModel {
    let text = vec![DEMO_ANSWER; repeat.max(1) as usize].join(" ");
    ScriptedModel::new([
        Turn::new().tool_call("call-1", "weather", json!({"city": "Paris"})),
        Turn::text(&text),
    ])
    .with_delay(delay)
}

/// The demo agent under another `id`, its answer repeated `repeat` times.
///
/// # Errors
/// `InvalidInput` for an invalid id.
pub fn agent_with(id: &str, delay: Duration, repeat: u32) -> durable_core::Result<Agent> {
    Agent::builder()
        .id(id)
        .instructions("Answer weather questions.")
        .model(model_repeated(delay, repeat))
        .tool(FnTool::new(
            "weather",
            "Current weather of a city",
            |a: WeatherArgs, _ctx: ToolContext| async move {
                Ok::<_, ToolError>(json!({"city": a.city, "sky": "sunny", "celsius": 21}))
            },
        ))
        .build()
}

/// `GET /` serving [`DEMO_PAGE`].
pub fn page() -> Router {
    Router::new().route("/", get(|| async { Html(DEMO_PAGE) }))
}

//! A capturing `tracing` layer and the agent the telemetry tests run.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use durable_core::agent::{Agent, FnTool, ScriptedModel, ToolContext, ToolError, Turn};
use serde::Deserialize;
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as recorded: its name, its parent's name and every field recorded on it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub name: String,
    pub parent: Option<String>,
    pub fields: HashMap<String, String>,
}

impl SpanRecord {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every span (in creation order) and counts `durable::chunk` events.
#[derive(Clone, Default)]
pub struct Capture {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    by_id: Arc<Mutex<HashMap<u64, usize>>>,
    chunks: Arc<Mutex<usize>>,
}

impl Capture {
    pub fn subscriber(&self) -> impl Subscriber + Send + Sync {
        tracing_subscriber::registry().with(self.clone())
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().clone()
    }

    pub fn chunk_events(&self) -> usize {
        *self.chunks.lock().unwrap()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned());
        let mut spans = self.spans.lock().unwrap();
        self.by_id
            .lock()
            .unwrap()
            .insert(id.into_u64(), spans.len());
        spans.push(SpanRecord {
            name: attrs.metadata().name().to_owned(),
            parent,
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let Some(&i) = self.by_id.lock().unwrap().get(&id.into_u64()) else {
            return;
        };
        values.record(&mut Fields(&mut self.spans.lock().unwrap()[i].fields));
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "durable::chunk" {
            *self.chunks.lock().unwrap() += 1;
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

/// Three model steps: words and a `weather` tool call, again for another city, the answer.
pub fn weather_agent(trace_chunks: bool) -> Agent {
    weather_agent_paced(trace_chunks, std::time::Duration::ZERO)
}

/// [`weather_agent`] with a pause between model chunks.
pub fn weather_agent_paced(trace_chunks: bool, pace: std::time::Duration) -> Agent {
    let tool = FnTool::new(
        "weather",
        "Weather",
        |a: Lookup, _ctx: ToolContext| async move {
            Ok::<_, ToolError>(json!({ "city": a.city, "sky": "sunny" }))
        },
    );
    Agent::builder()
        .id("weather-agent")
        .model(
            ScriptedModel::new([
                Turn::new().words("Let me look that up for you.").tool_call(
                    "call-0",
                    "weather",
                    json!({ "city": "Paris" }),
                ),
                Turn::new().words("And in Oslo.").tool_call(
                    "call-1",
                    "weather",
                    json!({ "city": "Oslo" }),
                ),
                Turn::text("Sunny in Paris and Oslo."),
            ])
            .with_delay(pace),
        )
        .tool(tool)
        .trace_chunks(trace_chunks)
        .build()
        .unwrap()
}

//! The main demo: a durable agent streams, the client disconnects, reconnects with
//! `observe(run_id, offset)`, and gets exactly what it missed; then a tool call waits for
//! approval and another instance approves it.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Runs on embedded (in-memory) backends and a scripted model. With `DURABLE_DEMO_LLM_URL`
//! (an OpenAI-compatible base URL such as `http://127.0.0.1:8080/v1`) or `OPENAI_API_KEY` /
//! `OPENAI_BASE_URL` set, it uses that model instead (`OPENAI_MODEL` names it, default
//! `gpt-4o-mini`). A `DURABLE_DEMO_LLM_URL` model is taken to be a small local one and is
//! guided ([`durable::openai::GuidedModel`]: `required` tool choice after the user, worked
//! examples, `temperature: 0`). `cargo xtask demo` starts llama-server with SmolLM2-135M and
//! runs this on it.

use std::time::Duration;

use durable::agent::{
    Agent, DurableAgent, FnTool, LanguageModel, Message, ScriptedModel, StreamOptions, ToolCall,
    ToolContext, ToolError, Turn,
};
use durable::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable::{Event, EventKind, ObserveOptions};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, schemars::JsonSchema)]
struct City {
    /// The city to look up.
    city: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Records {
    /// Delete records older than this many days.
    older_than_days: u32,
}

fn weather_tool() -> FnTool<City> {
    FnTool::new(
        "get_weather",
        "Current weather of a city",
        |a: City, _ctx: ToolContext| async move {
            Ok::<_, ToolError>(json!({"city": a.city, "temperature_c": 18, "sky": "sunny"}))
        },
    )
}

fn delete_tool() -> FnTool<Records> {
    FnTool::new(
        "delete_records",
        "Delete old records",
        |a: Records, _ctx: ToolContext| async move {
            Ok::<_, ToolError>(json!({"deleted": 42, "older_than_days": a.older_than_days}))
        },
    )
    .require_approval()
}

/// A real model if the environment names one, else the script.
fn model(script: Vec<Turn>) -> (Box<dyn Fn() -> std::sync::Arc<dyn LanguageModel>>, String) {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    let base = var("DURABLE_DEMO_LLM_URL").or_else(|| var("OPENAI_BASE_URL"));
    if base.is_some() || var("OPENAI_API_KEY").is_some() {
        let mut b = durable::openai::OpenAiModelBuilder::from_env();
        if let Some(base) = base {
            b = b.base_url(base);
        }
        if var("OPENAI_MODEL").is_none() {
            b = b.model("gpt-4o-mini");
        }
        let local = var("DURABLE_DEMO_LLM_URL").is_some();
        if local {
            b = b.parallel_tool_calls(false);
        }
        match b.build() {
            Ok(m) => {
                let name = format!("{} at {}", m.model(), m.base_url());
                let m: std::sync::Arc<dyn LanguageModel> = if local {
                    std::sync::Arc::new(guided(m))
                } else {
                    std::sync::Arc::new(m)
                };
                return (Box::new(move || m.clone()), name);
            }
            Err(e) => eprintln!("cannot use the configured model ({e}); using the script"),
        }
    }
    let scripted = ScriptedModel::new(script).with_delay(Duration::from_millis(15));
    (
        Box::new(move || std::sync::Arc::new(scripted.clone())),
        "scripted model".to_owned(),
    )
}

/// A small local model (such as the SmolLM2-135M `cargo xtask demo` starts) calls tools only
/// when told to: `required` tool choice after the user, one worked example per tool,
/// `temperature: 0`, a short answer.
fn guided(
    model: durable::openai::OpenAiModel,
) -> durable::openai::GuidedModel<durable::openai::OpenAiModel> {
    let call = |id: &str, name: &str, args| ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args,
    };
    durable::openai::GuidedModel::new(model)
        .temperature(0.0)
        .max_tokens(160)
        .examples(vec![
            Message::user("What's the weather in Berlin?"),
            Message::assistant(
                "",
                vec![call("ex-1", "get_weather", json!({"city": "Berlin"}))],
            ),
            Message::tool(
                "ex-1",
                r#"{"city": "Berlin", "temperature_c": 12, "sky": "cloudy"}"#,
            ),
            Message::assistant("It is 12 °C and cloudy in Berlin.", vec![]),
            Message::user("Clean up records older than 7 days."),
            Message::assistant(
                "",
                vec![call(
                    "ex-2",
                    "delete_records",
                    json!({"older_than_days": 7}),
                )],
            ),
            Message::tool("ex-2", r#"{"deleted": 3, "older_than_days": 7}"#),
            Message::assistant("Done: 3 records older than 7 days were deleted.", vec![]),
        ])
}

fn show(e: &Event) -> String {
    let d = e.data.to_value();
    match e.kind {
        EventKind::TextDelta | EventKind::ReasoningDelta => {
            d["text"].as_str().unwrap_or("").to_owned()
        }
        EventKind::ToolCall => format!(
            "\n  ⚙ {}({})\n",
            d["tool_name"].as_str().unwrap_or("?"),
            d["args"]
        ),
        EventKind::ToolResult => format!("  ↳ {}\n", d["result"]),
        EventKind::ToolCallApproval => format!(
            "\n  ✋ {}({}) needs approval\n",
            d["tool_name"].as_str().unwrap_or("?"),
            d["args"]
        ),
        _ => String::new(),
    }
}

fn text_of(events: &[Event]) -> String {
    events.iter().map(show).collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Backends shared by two "instances" (in production: Redis, NATS, PostgreSQL …).
    let (cache, pubsub, store) = (
        InMemoryCache::new(),
        InMemoryPubSub::new(),
        InMemoryWorkflowStore::new(),
    );
    let (make_model, model_name) = model(vec![
        Turn::text("Let me check the weather in Paris.").tool_call(
            "call-1",
            "get_weather",
            json!({"city": "Paris"}),
        ),
        Turn::text("It is 18 °C and sunny in Paris: a fine day for a walk along the Seine."),
        Turn::text("I will clean up records older than 30 days.").tool_call(
            "call-2",
            "delete_records",
            json!({"older_than_days": 30}),
        ),
        Turn::text("Done: 42 old records were deleted."),
    ]);
    let instance = |name: &str| {
        let agent = Agent::builder()
            .id("assistant")
            .instructions("You are a helpful assistant. Use tools when they help.")
            .model_arc(make_model())
            .tool(weather_tool())
            .tool(delete_tool())
            .build()?;
        DurableAgent::builder(agent)
            .cache(cache.clone())
            .pubsub(pubsub.clone())
            .store(store.clone())
            .worker_id(name)
            .build()
    };
    let a = instance("instance-a")?;
    println!("durable quickstart · {model_name} · in-memory backends\n");

    // 1. Stream, then "lose the connection" after a few events.
    println!("① stream(\"What's the weather in Paris?\")");
    let mut run = a
        .stream(
            "What's the weather in Paris?",
            StreamOptions::new().thread_id("demo-thread"),
        )
        .await?;
    let run_id = run.run_id().clone();
    let mut seen = Vec::new();
    while let Some(ev) = run.next().await {
        let ev = ev?;
        print!("{}", show(&ev));
        let is_text = ev.kind == EventKind::TextDelta;
        seen.push(ev);
        if is_text
            && seen
                .iter()
                .filter(|e| e.kind == EventKind::TextDelta)
                .count()
                == 4
        {
            break;
        }
    }
    drop(run); // the client disconnects; the run goes on without it
    let offset = seen.last().map_or(0, |e| e.cursor + 1);
    println!(
        "\n   ✂ client disconnected after cursor {} (run {run_id} keeps going)\n",
        offset - 1
    );
    tokio::time::sleep(Duration::from_millis(120)).await;

    // 2. Reconnect from the offset: exactly what was missed, then live, then the end.
    println!("② observe(run_id, offset = {offset})");
    let mut resumed = a.observe(&run_id, ObserveOptions::from(offset)).await?;
    while let Some(ev) = resumed.next().await {
        let ev = ev?;
        print!("{}", show(&ev));
        seen.push(ev);
    }
    let full: Vec<Event> = a
        .observe(&run_id, ObserveOptions::from(0))
        .await?
        .map(|e| e.expect("event"))
        .collect()
        .await;
    let exact = seen == full;
    println!(
        "\n\n   {} stitched stream == uninterrupted observe(0): {} events, cursors 0..{}",
        if exact { "✓" } else { "✗" },
        full.len(),
        full.len() - 1
    );
    println!(
        "   final text: {:?}\n",
        text_of(&full).lines().last().unwrap_or("")
    );
    if !exact {
        return Err("the stitched stream differs from the full log".into());
    }

    // 3. Approval: the run suspends; another instance approves it.
    println!("③ stream(\"Now clean up records older than 30 days.\") on the same thread; the tool needs approval");
    let run = a
        .stream(
            "Now clean up records older than 30 days.",
            StreamOptions::new().thread_id("demo-thread"),
        )
        .await?;
    let run_id = run.run_id().clone();
    let mut call_id = None;
    let events: Vec<Event> = run.map(|e| e.expect("event")).collect().await;
    for ev in &events {
        print!("{}", show(ev));
        if ev.kind == EventKind::Suspended {
            call_id = ev.data.to_value()["tool_call_id"]
                .as_str()
                .map(str::to_owned);
        }
    }
    let status = a.status(&run_id).await?.status;
    println!(
        "   ⏸ run {run_id} is {} (persisted before announced)",
        status.as_str()
    );
    let Some(call_id) = call_id else {
        println!("   (the model answered without calling the tool: nothing to approve)");
        return Ok(());
    };
    // instance-b shares the backends (and the conversation memory is per instance, so it is
    // not needed here: the run's input was stored with the run).
    let b = instance("instance-b")?;
    println!("   instance-b approves {call_id}:\n");
    let after: Vec<Event> = b
        .approve_tool_call(&run_id, &call_id)
        .await?
        .map(|e| e.expect("event"))
        .collect()
        .await;
    print!("{}", text_of(&after));
    let last = after.last().map(|e| e.kind.as_str()).unwrap_or("none");
    println!("\n\n   ✓ run {run_id} resumed on instance-b and ended with `{last}`");
    Ok(())
}

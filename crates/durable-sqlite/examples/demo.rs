//! A durable agent on one SQLite file survives its process being killed mid-answer.
//!
//! ```sh
//! cargo run -p durable-sqlite --example demo   # starts a run, crashes mid-answer
//! cargo run -p durable-sqlite --example demo   # recovers it, finishes it, replays it from 0
//! ```
//!
//! The first command starts a run (a tool call, then a long answer streamed word by word) and
//! kills its own process (`abort`, no cleanup) after a few words of the answer. The same
//! command again finds the interrupted run in the file, calls `recover()`, which continues it
//! from its last checkpoint (the tool is not called again), and shows `observe(run, 0)`: one
//! exact stream, cursors `0..n` without gap or duplicate, where a `step-restart` event tells
//! the client to drop the interrupted answer's partial words. The third command starts a new
//! run, and so on.
//!
//! The file is `durable-demo.db` in the system's temporary directory (`DURABLE_SQLITE_PATH` to
//! change it); `DURABLE_DEMO_NO_CRASH=1` lets the first run finish.

use std::io::Write;
use std::time::Duration;

use durable_core::agent::{
    Agent, DurableAgent, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError, Turn,
};
use durable_core::{Event, EventKind, ObserveOptions, Result, RunId};
use durable_sqlite::{SqliteBackend, SqliteConfig};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

/// Text deltas of the answer after which the first process kills itself.
const CRASH_AFTER_WORDS: usize = 8;

#[derive(Deserialize, schemars::JsonSchema)]
struct City {
    /// The city to look up.
    city: String,
}

fn agent() -> Result<Agent> {
    let weather = FnTool::new(
        "get_weather",
        "Current weather of a city",
        |a: City, _ctx: ToolContext| async move {
            println!("\n  (tool get_weather runs for {})", a.city);
            Ok::<_, ToolError>(json!({"city": a.city, "temperature_c": 18, "sky": "sunny"}))
        },
    );
    let model = ScriptedModel::new([
        Turn::text("Let me check the weather in Paris. ").tool_call(
            "call-1",
            "get_weather",
            json!({"city": "Paris"}),
        ),
        Turn::text(
            "It is 18 degrees and sunny in Paris right now, a fine afternoon for a walk along \
             the Seine, so take sunglasses and maybe a light jacket for the evening breeze.",
        ),
    ])
    .with_delay(Duration::from_millis(60));
    Agent::builder()
        .id("weather-demo")
        .instructions("You answer weather questions.")
        .model(model)
        .tool(weather)
        .build()
}

fn show(e: &Event) {
    let data = e.data.to_value();
    match &e.kind {
        EventKind::TextDelta => print!("{}", data["text"].as_str().unwrap_or_default()),
        EventKind::StepStart => print!("\n[{} step-start {}] ", e.cursor, data["step"]),
        EventKind::StepRestart => print!(
            "\n[{} step-restart {}: drop that step's partial output] ",
            e.cursor, data["step"]
        ),
        kind => print!("\n[{} {}] ", e.cursor, kind.as_str()),
    }
    let _ = std::io::stdout().flush();
}

fn main() -> Result<()> {
    let config = SqliteConfig::from_env()?;
    let path = if std::env::var_os(durable_sqlite::PATH_ENV_VAR).is_some() {
        config.path.clone()
    } else {
        std::env::temp_dir().join("durable-demo.db")
    };
    // The one-liner: a DurableAgent whose runs, checkpoints and wake-ups live in one file.
    let durable = SqliteBackend::open(&path)?
        .durable_agent(agent()?)
        .worker_id("demo-worker")
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            durable_core::Error::new(durable_core::ErrorKind::Unexpected, e.to_string())
        })?;
    rt.block_on(async move {
        let recovered = durable.recover().await?;
        if let Some(run_id) = recovered.first() {
            println!(
                "{}: found interrupted run {run_id}; recover() continues it from its last checkpoint.",
                path.display()
            );
            println!("observe({run_id}, offset 0), replayed and then live:");
            let mut stream = durable.observe(run_id, ObserveOptions::from(0)).await?;
            let mut events = Vec::new();
            while let Some(e) = stream.next().await {
                let e = e?;
                show(&e);
                events.push(e);
            }
            let exact = events.iter().enumerate().all(|(i, e)| e.cursor == i as u64);
            println!(
                "\n\n{} events, cursors 0..={}: {}.",
                events.len(),
                events.len().saturating_sub(1),
                if exact { "one exact stream, no gap, no duplicate" } else { "NOT CONTIGUOUS" }
            );
            settle(&durable, run_id).await?;
            println!("Run the same command again to start a new run.");
            return Ok(());
        }
        let crash = std::env::var_os("DURABLE_DEMO_NO_CRASH").is_none();
        println!("{}: starting a run.", path.display());
        let mut run = durable
            .stream("What's the weather in Paris?", StreamOptions::new())
            .await?;
        // Words of the answer that follows the tool call (step 1).
        let (mut step, mut answer_words) = (0, 0);
        while let Some(e) = run.next().await {
            let e = e?;
            show(&e);
            match e.kind {
                EventKind::StepStart => step = e.data.to_value()["step"].as_u64().unwrap_or(0),
                EventKind::TextDelta if step >= 1 => answer_words += 1,
                _ => {}
            }
            if crash && answer_words == CRASH_AFTER_WORDS {
                println!(
                    "\n\n*** Simulating a crash: this process kills itself mid-answer (abort, no cleanup). ***\n\
                     *** Run the same command again: the run is recovered from {}. ***",
                    path.display()
                );
                std::process::abort();
            }
        }
        settle(&durable, run.run_id()).await?;
        println!("\n\nThe run finished (DURABLE_DEMO_NO_CRASH is set).");
        Ok(())
    })
}

/// Wait until the run's record is terminal: it is written right after the terminal event, and
/// leaving before it would make the next start recover the finished run again.
async fn settle(durable: &DurableAgent, run_id: &RunId) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !durable.status(run_id).await?.status.is_terminal()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

//! The agent every worker runs: a scripted model that streams text and calls a tool `TOOLS`
//! times; the tool records each execution in a side file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use durable_conformance::agent::{client_view, collect};
use durable_core::agent::{
    Agent, DurableAgent, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError, Turn,
};
use serde_json::{json, Value};

/// The user's message of every run.
pub const INPUT: &str = "Weather report, please.";
/// Tool calls per run (one per model step but the last).
pub const TOOLS: usize = 3;
const CITIES: [&str; TOOLS] = ["Paris", "Oslo", "Lima"];

/// The model's script: per step `deltas` text deltas, then a weather tool call; then a final
/// answer of `deltas` deltas.
pub fn script(deltas: usize) -> Vec<Turn> {
    let mut turns: Vec<Turn> = CITIES
        .iter()
        .enumerate()
        .map(|(i, city)| {
            Turn::new().deltas(deltas, &format!("{city} ")).tool_call(
                format!("call-{i}"),
                "weather",
                json!({ "city": city }),
            )
        })
        .collect();
    turns.push(Turn::new().deltas(deltas, "sunny "));
    turns
}

/// The agent over [`script`], its text deltas `delay` apart. With a side file, its tool appends
/// `start <pid> <run> s<step>-tool-<index> <attempt>` before and `done …` after its work. With a gate,
/// the tool call of step 1 waits until the gate file exists (so a test can act while the run
/// is held live).
pub fn agent(
    deltas: usize,
    delay: Duration,
    side: Option<PathBuf>,
    gate: Option<PathBuf>,
) -> Agent {
    let tool = FnTool::new("weather", "Weather", move |a: Value, ctx: ToolContext| {
        let (side, gate) = (side.clone(), gate.clone());
        async move {
            let key = format!("{} s{}-tool-{}", ctx.run_id, ctx.step, ctx.index);
            let pid = std::process::id();
            if let Some(side) = &side {
                record(side, &format!("start {pid} {key} {}", ctx.attempt));
            }
            if let Some(gate) = gate.filter(|_| ctx.step == 1) {
                wait_for_file(&gate).await;
            }
            let out = json!({ "city": a["city"], "sky": "sunny" });
            if let Some(side) = &side {
                record(side, &format!("done {pid} {key}"));
            }
            Ok::<_, ToolError>(out)
        }
    });
    Agent::builder()
        .id("faults")
        .model(ScriptedModel::new(script(deltas)).with_delay(delay))
        .tool(tool)
        .build()
        .expect("the agent is valid")
}

/// Append one line to the side file and fsync it: one `write` on an `O_APPEND` file, so lines
/// of concurrent processes never interleave and a line survives the writer's SIGKILL.
pub fn record(side: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side)
        .unwrap_or_else(|e| panic!("open {}: {e}", side.display()));
    f.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("write {}: {e}", side.display()));
}

/// What a client shows of an uninterrupted run of [`agent`] (in memory, in this process).
pub async fn reference_view(deltas: usize) -> Vec<(String, Value)> {
    let agent = DurableAgent::new(agent(deltas, Duration::ZERO, None, None));
    let run = agent
        .stream(INPUT, StreamOptions::new())
        .await
        .expect("reference run");
    client_view(&collect(run, Duration::from_secs(30)).await)
}

/// Wait until `path` exists; panics after a minute.
async fn wait_for_file(path: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

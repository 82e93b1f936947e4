//! The real AI SDK client (npm `ai`, pinned, installed by `cargo xtask` into the tools dir)
//! against `/api/chat`: `tests/js/chat.mjs` uses the SDK's own `DefaultChatTransport` and
//! `readUIMessageStream`, kills connections mid-answer, resumes, and compares the rebuilt UI
//! message with the uninterrupted one (tool calls, an approval, a restarted step).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use durable_core::agent::{
    Agent, DurableAgent, FnTool, ScriptedModel, ToolContext, ToolError, Turn,
};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{PubSub, ServerCache, WorkflowStore};
use durable_server::demo::WeatherArgs;
use durable_server::DurableServer;
use serde_json::json;
use support::*;

const DELAY: Duration = Duration::from_millis(30);
const ANSWER: &str = "It is sunny in the city today with a light breeze from the west and a few high clouds, warm enough for a walk along the river before dinner, and the evening should stay dry and calm until late.";

/// The AI SDK install, or why there is none.
fn ai_sdk_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("DURABLE_TEST_AI_SDK_DIR") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/durable/tools/npm-ai"),
            None => return Err("DURABLE_TEST_AI_SDK_DIR is not set".to_owned()),
        },
    };
    if !dir.join("node_modules/ai/package.json").is_file() {
        return Err(format!(
            "no AI SDK in {} (set DURABLE_TEST_AI_SDK_DIR, or run `cargo xtask test`)",
            dir.display()
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("`node` is not on PATH".to_owned());
    }
    Ok(dir)
}

fn weather(approval: bool) -> FnTool<WeatherArgs> {
    let t = FnTool::new(
        "weather",
        "Current weather of a city",
        |a: WeatherArgs, _ctx: ToolContext| async move {
            Ok::<_, ToolError>(json!({"city": a.city, "sky": "sunny"}))
        },
    );
    if approval {
        t.require_approval()
    } else {
        t
    }
}

fn tool_model(city: &str) -> ScriptedModel {
    ScriptedModel::new([
        Turn::new()
            .reasoning("The user wants the weather.")
            .words("Let me check. ")
            .tool_call("call-1", "weather", json!({"city": city})),
        Turn::text(ANSWER),
    ])
    .with_delay(DELAY)
}

fn chat_server(agent: DurableAgent) -> DurableServer {
    DurableServer::builder().agent(agent).build().unwrap()
}

fn agent_on(model: ScriptedModel, approval: bool) -> Agent {
    Agent::builder()
        .id("chat")
        .model(model)
        .tool(weather(approval))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_sdk_client_rebuilds_the_same_message_after_a_resume() {
    let dir = match ai_sdk_dir() {
        Ok(d) => d,
        Err(why) if require() => {
            panic!("DURABLE_TEST_REQUIRE=1 and the AI SDK client is missing: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let tools = chat_server(DurableAgent::new(agent_on(tool_model("Paris"), false)));
    let approval = chat_server(DurableAgent::new(agent_on(tool_model("Oslo"), true)));

    // A step whose model call hangs after three words; `POST /restart/test/crash` stops its
    // executor and recovers the run on a second instance (same backends, healthy model), which
    // re-runs the step and logs `step-restart`.
    let story = ScriptedModel::new([Turn::new().words("Once upon a ").hang().words(ANSWER)])
        .with_delay(DELAY);
    let cache: Arc<dyn ServerCache> = Arc::new(InMemoryCache::new());
    let pubsub: Arc<dyn PubSub> = Arc::new(InMemoryPubSub::new());
    let store: Arc<dyn WorkflowStore> = Arc::new(InMemoryWorkflowStore::new());
    let instance = |model: ScriptedModel| {
        DurableAgent::builder(agent_on(model, false))
            .cache_arc(cache.clone())
            .pubsub_arc(pubsub.clone())
            .store_arc(store.clone())
            .worker_id("node-1")
            .build()
            .unwrap()
    };
    let crashing = instance(story.clone());
    let recovering = instance(story.without_faults());
    let restart = chat_server(crashing.clone());
    let reference = chat_server(DurableAgent::new(agent_on(story.without_faults(), false)));
    let taken = Arc::new(Mutex::new(Some((crashing, recovering.clone()))));
    let crash = post(move || {
        let taken = taken.clone();
        async move {
            let Some((crashing, recovering)) = taken.lock().unwrap().take() else {
                return axum::http::StatusCode::CONFLICT;
            };
            crashing.shutdown();
            let recovered = recovering.recover().await.unwrap();
            assert_eq!(recovered.len(), 1, "the hung run is recovered");
            axum::http::StatusCode::OK
        }
    });

    let app = Router::new()
        .nest("/tools", tools.router())
        .nest("/approval", approval.router())
        .nest("/restart", restart.router().route("/test/crash", crash))
        .nest("/restart-ref", reference.router());
    let base = serve(app).await;
    let script =
        durable_services::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("tests/js/chat.mjs");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(&base)
            .env("AI_SDK_DIR", &dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the node test timed out")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(r#"{"passed":["tools","approval","restart"]}"#),
        "{stdout}"
    );
    println!("node: {}", stdout.trim());
    drop(recovering);
}

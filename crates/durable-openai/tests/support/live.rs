//! Shared by the tests against a real OpenAI-compatible server (`live*.rs`).
//!
//! - `DURABLE_TEST_LLM_URL`: the server's base URL, including `/v1`
//!   (`cargo xtask test` starts llama-server + SmolLM2-135M and sets it);
//! - `DURABLE_TEST_LLM_MODEL`: the model name (default `smollm2`; llama.cpp ignores it);
//! - `DURABLE_TEST_LLM_KEY`: an API key, if the server wants one.
//!
//! Without the URL the tests return at once, saying so; with `DURABLE_TEST_REQUIRE=1` (CI) they
//! fail instead.

use std::time::Duration;

use durable_core::agent::{Message, ToolCall, ToolSpec};
use durable_openai::{OpenAiModel, OpenAiModelBuilder};
use serde_json::json;

/// Generous deadline for one real model call (a 135M model on 2 shared cores, a queued request).
pub const LIVE_DEADLINE: Duration = Duration::from_secs(60);

/// The tests share one server with one slot: run them one at a time, so a test that looks at the
/// server's state (`/slots`) sees only its own request. Take it with [`hold_server`].
static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The server, held by one test at a time: across test binaries too (`cargo xtask test` runs
/// two binaries at once, and `live` and `live_durable` share the one server), by a lock on a
/// file beside the process-wide mutex. Released on drop.
pub struct ServerHold {
    _file: std::fs::File,
    _local: tokio::sync::MutexGuard<'static, ()>,
}

fn lock_file() -> std::fs::File {
    let path = std::env::temp_dir().join("durable-test-llm-server.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// Hold the server (see [`ServerHold`]).
pub async fn hold_server() -> ServerHold {
    let local = SERVER.lock().await;
    let file = tokio::task::spawn_blocking(lock_file)
        .await
        .expect("the lock task panicked");
    ServerHold {
        _file: file,
        _local: local,
    }
}

/// [`hold_server`] outside a runtime.
pub fn hold_server_blocking() -> ServerHold {
    let local = SERVER.blocking_lock();
    ServerHold {
        _file: lock_file(),
        _local: local,
    }
}

/// `DURABLE_TEST_LLM_URL`, or `None` (after saying so) when it is unset; panics when it is unset
/// and `DURABLE_TEST_REQUIRE=1`.
pub fn llm_url() -> Option<String> {
    if let Some(url) = std::env::var("DURABLE_TEST_LLM_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return Some(url.trim().trim_end_matches('/').to_owned());
    }
    let required = std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1" || v == "true");
    assert!(
        !required,
        "DURABLE_TEST_LLM_URL is not set and DURABLE_TEST_REQUIRE=1: run the tests with \
         `cargo xtask test` (it starts llama-server), or point it at an OpenAI-compatible server"
    );
    eprintln!(
        "DURABLE_TEST_LLM_URL is not set: live model test skipped (`cargo xtask test` starts one)"
    );
    None
}

/// A builder for the live server. Retries stay on (quick): llama-server closes idle keep-alive
/// connections, and a request sent on one that is closing fails with `IncompleteMessage`
/// before any byte of an answer; the provider retries exactly that case.
pub fn live_builder(url: &str) -> OpenAiModelBuilder {
    let model = std::env::var("DURABLE_TEST_LLM_MODEL")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "smollm2".to_owned());
    let mut builder = OpenAiModel::builder()
        .base_url(url)
        .model(model)
        .parallel_tool_calls(false)
        .max_retries(2)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .request_timeout(LIVE_DEADLINE);
    if let Ok(key) = std::env::var("DURABLE_TEST_LLM_KEY") {
        if !key.is_empty() {
            builder = builder.api_key(key);
        }
    }
    builder
}

/// The model at `DURABLE_TEST_LLM_URL`, if set.
pub fn live_model() -> Option<OpenAiModel> {
    let url = llm_url()?;
    Some(live_builder(&url).build().expect("live model"))
}

/// The server's root (the base URL without `/v1`), for llama.cpp's own endpoints.
pub fn server_root(url: &str) -> String {
    url.strip_suffix("/v1").unwrap_or(url).to_owned()
}

/// The weather tool the few-shot turn uses.
pub fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Get the current weather for a city".into(),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"]
        }),
    }
}

/// One few-shot turn: what makes the 135M model call the tool cleanly.
pub fn example_turn() -> Vec<Message> {
    vec![
        Message::user("What is the weather in Berlin?"),
        Message::assistant(
            "",
            vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Berlin"}),
            }],
        ),
        Message::tool("call_1", r#"{"temp_c": 12, "sky": "cloudy"}"#),
        Message::assistant("It is 12°C and cloudy in Berlin.", vec![]),
    ]
}

/// The few-shot turn, then `question`.
pub fn few_shot(question: &str) -> Vec<Message> {
    let mut messages = example_turn();
    messages.push(Message::user(question));
    messages
}

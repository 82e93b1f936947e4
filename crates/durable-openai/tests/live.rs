//! The provider against a real OpenAI-compatible server, when one is given:
//!
//! - `DURABLE_TEST_OPENAI_URL`: its base URL (for llama.cpp: `http://127.0.0.1:PORT/v1`);
//! - `DURABLE_TEST_OPENAI_MODEL`: the model name (default `smollm2`; llama.cpp ignores it);
//! - `DURABLE_TEST_OPENAI_KEY`: an API key, if the server wants one.
//!
//! Written for `llama-server` with SmolLM2-135M-Instruct and
//! `--chat-template-file tests/fixtures/llamacpp/smol-json-tools.jinja`
//! (see the project's local-LLM notes), at `temperature: 0`. The assertions are on structure
//! (chunk order, finish reasons, a parseable tool call, usage), never on prose.
//! Without the URL every test returns at once, saying so.

mod support;

use durable_core::agent::{
    FinishReason, Message, ModelChunk, ModelRequest, ToolCall, ToolChoice, ToolSpec,
};
use durable_openai::OpenAiModel;
use serde_json::json;
use support::{chunks, text};

fn live_model() -> Option<OpenAiModel> {
    let Some(url) = std::env::var("DURABLE_TEST_OPENAI_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("DURABLE_TEST_OPENAI_URL is not set: live OpenAI-compatible test skipped");
        return None;
    };
    let model = std::env::var("DURABLE_TEST_OPENAI_MODEL").unwrap_or_else(|_| "smollm2".to_owned());
    let mut builder = OpenAiModel::builder()
        .base_url(url)
        .model(model)
        .parallel_tool_calls(false);
    if let Ok(key) = std::env::var("DURABLE_TEST_OPENAI_KEY") {
        builder = builder.api_key(key);
    }
    Some(builder.build().expect("live model"))
}

fn weather_tool() -> ToolSpec {
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

/// One few-shot turn, then the question: what makes the 135M model call the tool cleanly.
fn few_shot(question: &str) -> Vec<Message> {
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
        Message::user(question),
    ]
}

fn assert_finish_last(out: &[ModelChunk], expected: FinishReason) {
    let finishes = out
        .iter()
        .filter(|c| matches!(c, ModelChunk::Finish { .. }))
        .count();
    assert_eq!(finishes, 1, "{out:?}");
    match out.last() {
        Some(ModelChunk::Finish { reason, usage }) => {
            assert_eq!(reason, &expected);
            assert!(
                usage.input_tokens > 0 && usage.output_tokens > 0,
                "{usage:?}"
            );
        }
        other => panic!("the last chunk is not Finish: {other:?}"),
    }
}

#[tokio::test]
async fn live_plain_text_streams_and_finishes_with_usage() {
    let Some(model) = live_model() else { return };
    let request = ModelRequest {
        messages: vec![Message::user("What is the capital of France?")],
        max_tokens: Some(64),
        temperature: Some(0.0),
        ..Default::default()
    };
    let out = chunks(&model, request).await;
    assert!(!text(&out).trim().is_empty(), "{out:?}");
    assert_finish_last(&out, FinishReason::Stop);
}

#[tokio::test]
async fn live_tool_call_arrives_complete_then_the_result_is_used() {
    let Some(model) = live_model() else { return };
    let mut messages = few_shot("What is the weather in Paris?");
    let request = ModelRequest {
        messages: messages.clone(),
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Required,
        max_tokens: Some(200),
        temperature: Some(0.0),
    };
    let out = chunks(&model, request).await;
    let calls: Vec<&ToolCall> = out
        .iter()
        .filter_map(|c| match c {
            ModelChunk::ToolCall(call) => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{out:?}");
    assert_eq!(calls[0].name, "get_weather");
    assert!(calls[0].arguments.get("city").is_some(), "{:?}", calls[0]);
    assert!(!calls[0].id.is_empty());
    assert_finish_last(&out, FinishReason::ToolCalls);

    let call = calls[0].clone();
    messages.push(Message::assistant("", vec![call.clone()]));
    messages.push(Message::tool(call.id, r#"{"temp_c": 21, "sky": "sunny"}"#));
    let request = ModelRequest {
        messages,
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Auto,
        max_tokens: Some(200),
        temperature: Some(0.0),
    };
    let out = chunks(&model, request).await;
    assert!(!text(&out).trim().is_empty(), "{out:?}");
    assert_finish_last(&out, FinishReason::Stop);
}

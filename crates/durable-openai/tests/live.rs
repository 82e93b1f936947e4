//! The provider against a real OpenAI-compatible server: `DURABLE_TEST_LLM_URL` (its base URL
//! including `/v1`; see `support/live.rs`). `cargo xtask test` builds and starts llama.cpp
//! `llama-server` with SmolLM2-135M-Instruct and
//! `--chat-template-file tests/fixtures/llamacpp/smol-json-tools.jinja`.
//!
//! The assertions are on structure (chunk order, finish reasons, a parseable tool call, usage,
//! error kinds), never on prose; requests use `temperature: 0` and small `max_tokens`.

mod support;

use std::time::Duration;

use durable_core::agent::{
    FinishReason, LanguageModel, Message, ModelChunk, ModelRequest, ToolCall, ToolChoice,
};
use durable_core::ErrorKind;
use futures::StreamExt;
use serde_json::{json, Value};
use support::live::{
    few_shot, hold_server, live_builder, live_model, llm_url, server_root, weather_tool,
    LIVE_DEADLINE,
};
use support::text;

/// Every item of a call under [`LIVE_DEADLINE`].
async fn live_collect(
    model: &impl LanguageModel,
    request: ModelRequest,
) -> durable_core::Result<Vec<durable_core::Result<ModelChunk>>> {
    let stream = tokio::time::timeout(LIVE_DEADLINE, model.stream(request))
        .await
        .expect("stream() hung")?;
    Ok(
        tokio::time::timeout(LIVE_DEADLINE, stream.collect::<Vec<_>>())
            .await
            .expect("the stream hung"),
    )
}

async fn live_chunks(model: &impl LanguageModel, request: ModelRequest) -> Vec<ModelChunk> {
    live_collect(model, request)
        .await
        .expect("stream() failed")
        .into_iter()
        .collect::<durable_core::Result<Vec<_>>>()
        .expect("the stream yielded an error")
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
                "usage via stream_options.include_usage: {usage:?}"
            );
        }
        other => panic!("the last chunk is not Finish: {other:?}"),
    }
}

fn tool_calls(out: &[ModelChunk]) -> Vec<&ToolCall> {
    out.iter()
        .filter_map(|c| match c {
            ModelChunk::ToolCall(call) => Some(call),
            _ => None,
        })
        .collect()
}

fn weather_request(messages: Vec<Message>, choice: ToolChoice) -> ModelRequest {
    ModelRequest {
        messages,
        tools: vec![weather_tool()],
        tool_choice: choice,
        max_tokens: Some(200),
        temperature: Some(0.0),
    }
}

/// The raw SSE `data:` payloads the server sends for `body` (to check what is on the wire).
async fn raw_events(url: &str, body: &Value) -> Vec<Value> {
    let response = reqwest::Client::new()
        .post(format!("{url}/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("raw request");
    assert!(response.status().is_success(), "{}", response.status());
    let text = tokio::time::timeout(LIVE_DEADLINE, response.text())
        .await
        .expect("raw stream hung")
        .expect("raw body");
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("each data line is JSON"))
        .collect()
}

#[tokio::test]
async fn live_plain_text_streams_deltas_then_finish_with_usage() {
    let Some(model) = live_model() else { return };
    let _one = hold_server().await;
    let request = ModelRequest {
        messages: vec![Message::user("What is the capital of France?")],
        max_tokens: Some(48),
        temperature: Some(0.0),
        ..Default::default()
    };
    let out = live_chunks(&model, request).await;
    let deltas = out
        .iter()
        .filter(|c| matches!(c, ModelChunk::TextDelta { .. }))
        .count();
    assert!(deltas > 1, "the answer arrives in several deltas: {out:?}");
    assert!(!text(&out).trim().is_empty(), "{out:?}");
    assert!(
        out[..out.len() - 1]
            .iter()
            .all(|c| matches!(c, ModelChunk::TextDelta { .. })),
        "only text before the finish: {out:?}"
    );
    // 48 tokens are enough for this answer, but a tiny model may ramble: either end is fine.
    match out.last() {
        Some(ModelChunk::Finish {
            reason: FinishReason::Length,
            ..
        }) => assert_finish_last(&out, FinishReason::Length),
        _ => assert_finish_last(&out, FinishReason::Stop),
    }
}

#[tokio::test]
async fn live_tool_call_streams_argument_fragments_and_arrives_whole() {
    let Some(url) = llm_url() else { return };
    let model = live_builder(&url).build().unwrap();
    let _one = hold_server().await;
    let messages = few_shot("What is the weather in Paris?");

    // On the wire: the call comes in several `delta.tool_calls` fragments.
    let body = json!({
        "model": "smollm2", "stream": true, "max_tokens": 200, "temperature": 0,
        "tool_choice": "required", "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather for a city",
            "parameters": weather_tool().parameters}}],
        "messages": [
            {"role": "user", "content": "What is the weather in Berlin?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Berlin\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 12, \"sky\": \"cloudy\"}"},
            {"role": "assistant", "content": "It is 12°C and cloudy in Berlin."},
            {"role": "user", "content": "What is the weather in Paris?"}
        ]
    });
    let events = raw_events(&url, &body).await;
    let fragments: Vec<&Value> = events
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .map(|_| e)
        })
        .collect();
    assert!(
        fragments.len() > 1,
        "the arguments are streamed in pieces: {events:?}"
    );
    assert!(events
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));

    // Through the provider: one complete call with parsed arguments, then the finish.
    let out = live_chunks(&model, weather_request(messages, ToolChoice::Required)).await;
    let calls = tool_calls(&out);
    assert_eq!(calls.len(), 1, "{out:?}");
    assert_eq!(calls[0].name, "get_weather");
    assert!(
        calls[0].arguments["city"].is_string(),
        "a JSON object with a city: {:?}",
        calls[0]
    );
    assert!(!calls[0].id.is_empty());
    assert!(
        matches!(out[out.len() - 2], ModelChunk::ToolCall(_)),
        "{out:?}"
    );
    assert_finish_last(&out, FinishReason::ToolCalls);
}

#[tokio::test]
async fn live_tool_round_trip_uses_the_result() {
    let Some(model) = live_model() else { return };
    let _one = hold_server().await;
    let mut messages = few_shot("What is the weather in Paris?");
    let out = live_chunks(
        &model,
        weather_request(messages.clone(), ToolChoice::Required),
    )
    .await;
    let call = tool_calls(&out).first().copied().cloned().expect("a call");
    messages.push(Message::assistant("", vec![call.clone()]));
    messages.push(Message::tool(call.id, r#"{"temp_c": 21, "sky": "sunny"}"#));
    let out = live_chunks(&model, weather_request(messages, ToolChoice::Auto)).await;
    assert!(tool_calls(&out).is_empty(), "{out:?}");
    assert!(!text(&out).trim().is_empty(), "{out:?}");
    assert_finish_last(&out, FinishReason::Stop);
}

#[tokio::test]
async fn live_error_event_mid_stream_is_an_err_item() {
    let Some(model) = live_model() else { return };
    let _one = hold_server().await;
    // With this template `auto` has no grammar: asked for JSON, the model writes text that
    // llama.cpp's tool-call parser rejects mid-stream, and the server ends the stream with
    // `data: {"error": {"code": 500, ...}}`.
    let request = ModelRequest {
        messages: vec![Message::user("Write a JSON object")],
        tools: vec![weather_tool()],
        tool_choice: ToolChoice::Auto,
        max_tokens: Some(60),
        temperature: Some(0.0),
    };
    let items = live_collect(&model, request)
        .await
        .expect("stream() succeeds: the error comes later");
    let (last, before) = items.split_last().expect("items");
    let err = last.as_ref().expect_err("the stream ends with the error");
    assert_eq!(
        err.kind(),
        ErrorKind::Unavailable,
        "a server_error (code 500): {err}"
    );
    assert!(err.is_retryable(), "{err}");
    assert!(
        before.iter().all(Result::is_ok),
        "one error, at the end: {items:?}"
    );
    assert!(
        before
            .iter()
            .all(|c| !matches!(c, Ok(ModelChunk::Finish { .. }))),
        "no Finish before the error: {items:?}"
    );
}

#[tokio::test]
async fn live_malformed_request_is_a_400_invalid_input() {
    let Some(url) = llm_url() else { return };
    let _one = hold_server().await;
    // `n: 2`: llama.cpp allows one choice only and answers 400 invalid_request_error.
    let model = live_builder(&url)
        .body_field("n", json!(2))
        .build()
        .unwrap();
    let request = ModelRequest {
        messages: vec![Message::user("Hi")],
        max_tokens: Some(8),
        ..Default::default()
    };
    let err = match tokio::time::timeout(LIVE_DEADLINE, model.stream(request))
        .await
        .expect("stream() hung")
    {
        Ok(_) => panic!("a request with n = 2 was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.message().contains("400"),
        "the status is in the message: {err}"
    );
}

/// llama.cpp's `/slots`, slot 0.
#[derive(Debug)]
struct Slot {
    processing: bool,
    task: u64,
    /// Whether its task still had tokens to generate (false once it finished normally).
    has_next_token: bool,
    /// Tokens in the slot's context (prompt and generated).
    context_tokens: u64,
}

async fn slot_state(root: &str) -> Option<Slot> {
    let response = reqwest::get(format!("{root}/slots")).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let slots: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    let slot = &slots[0];
    Some(Slot {
        processing: slot["is_processing"].as_bool()?,
        task: slot["id_task"].as_u64()?,
        has_next_token: slot["next_token"][0]["has_next_token"].as_bool()?,
        context_tokens: slot["n_prompt_tokens"].as_u64()?,
    })
}

#[tokio::test]
async fn live_dropping_the_stream_stops_generation_on_the_server() {
    let Some(url) = llm_url() else { return };
    let _one = hold_server().await;
    const LIMIT: u32 = 2000;
    // `ignore_eos` (llama.cpp): without the cancel the server would generate all LIMIT tokens
    // (about 20 s here).
    let model = live_builder(&url)
        .body_field("ignore_eos", json!(true))
        .build()
        .unwrap();
    let request = ModelRequest {
        messages: vec![Message::user("Tell me a very long story about a dragon.")],
        max_tokens: Some(LIMIT),
        temperature: Some(0.0),
        ..Default::default()
    };
    let mut stream = tokio::time::timeout(LIVE_DEADLINE, model.stream(request))
        .await
        .expect("stream() hung")
        .expect("stream()");
    let mut deltas = 0;
    while deltas < 5 {
        match tokio::time::timeout(LIVE_DEADLINE, stream.next())
            .await
            .expect("no delta")
        {
            Some(Ok(ModelChunk::TextDelta { .. })) => deltas += 1,
            Some(Ok(_)) => {}
            other => panic!("the stream ended early: {other:?}"),
        }
    }
    // Our task is the one generating (this test holds the server).
    let root = server_root(&url);
    let running = slot_state(&root).await;
    drop(stream);

    if let Some(running) = running {
        assert!(
            running.processing,
            "the slot generates while we stream: {running:?}"
        );
        // The server notices the closed connection and ends the task well before LIMIT.
        let deadline = tokio::time::Instant::now() + LIVE_DEADLINE;
        let ended = loop {
            let slot = slot_state(&root).await.expect("/slots");
            if !slot.processing {
                break slot;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot is still generating: {slot:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling interval, not a sync
        };
        assert_eq!(ended.task, running.task, "no other task ran: {ended:?}");
        assert!(
            ended.has_next_token,
            "the task was stopped, not finished: {ended:?}"
        );
        assert!(
            ended.context_tokens < u64::from(LIMIT),
            "far fewer than {LIMIT} tokens were generated: {ended:?}"
        );
    } else {
        eprintln!("{root}/slots is not available: only the follow-up request is checked");
    }
    // The one slot is free again: a follow-up request is served.
    let plain = live_builder(&url).build().unwrap();
    let out = live_chunks(
        &plain,
        ModelRequest {
            messages: vec![Message::user("Say hi.")],
            max_tokens: Some(8),
            temperature: Some(0.0),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(out.last(), Some(ModelChunk::Finish { .. })),
        "{out:?}"
    );
}

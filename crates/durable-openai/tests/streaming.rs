//! The provider against a loopback server replaying recorded chat-completions transcripts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use durable_core::agent::{
    FinishReason, LanguageModel, Message, ModelChunk, ModelRequest, ToolCall, ToolChoice, ToolSpec,
    Usage,
};
use durable_core::ErrorKind;
use futures::StreamExt;
use serde_json::json;
use support::{ask, chunks, collect, fixture, text, Delivery, Reply, TestServer, DEADLINE};
use tokio::sync::Notify;

const TRANSCRIPTS: &[&str] = &[
    "openai_text_usage.sse",
    "openai_tool_call_fragments.sse",
    "parallel_tool_calls_interleaved.sse",
    "llamacpp_reasoning.sse",
    "llamacpp_tool_call.sse",
    "ollama_tool_call.sse",
    "crlf_keepalive_multiline.sse",
];

#[tokio::test]
async fn plain_text_streams_deltas_then_finish_with_usage() {
    let server = TestServer::start(vec![Reply::sse(fixture("openai_text_usage.sse"))]).await;
    let out = chunks(&server.model(), ask("What is the capital of France?")).await;
    assert_eq!(text(&out), "The capital of France is Paris.");
    assert!(out[..out.len() - 1]
        .iter()
        .all(|c| matches!(c, ModelChunk::TextDelta { .. })));
    assert_eq!(
        out.last(),
        Some(&ModelChunk::Finish {
            reason: FinishReason::Stop,
            usage: Usage {
                input_tokens: 14,
                output_tokens: 8
            },
        })
    );
    assert_eq!(
        out.len(),
        8,
        "one delta per content chunk, no empty deltas: {out:?}"
    );
}

#[tokio::test]
async fn a_tool_call_split_across_chunks_arrives_complete() {
    let server =
        TestServer::start(vec![Reply::sse(fixture("openai_tool_call_fragments.sse"))]).await;
    let out = chunks(&server.model(), ask("Weather in Paris?")).await;
    assert_eq!(
        out,
        [
            ModelChunk::ToolCall(ToolCall {
                id: "call_Q8vLmR2xTz".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris (France)", "unit": "c"}),
            }),
            ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens: 61,
                    output_tokens: 17
                },
            },
        ]
    );
}

#[tokio::test]
async fn parallel_tool_calls_with_interleaved_indices_are_assembled_in_index_order() {
    let server = TestServer::start(vec![Reply::sse(fixture(
        "parallel_tool_calls_interleaved.sse",
    ))])
    .await;
    let out = chunks(&server.model(), ask("Weather in Paris and time in Berlin?")).await;
    assert_eq!(
        out[..2],
        [
            ModelChunk::ToolCall(ToolCall {
                id: "call_first".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            }),
            ModelChunk::ToolCall(ToolCall {
                id: "call_second".into(),
                name: "get_time".into(),
                arguments: json!({"tz": "Europe/Berlin"}),
            }),
        ]
    );
    assert!(matches!(
        out[2],
        ModelChunk::Finish {
            reason: FinishReason::ToolCalls,
            usage: Usage {
                input_tokens: 80,
                output_tokens: 40
            }
        }
    ));
    assert_eq!(out.len(), 3);
}

#[tokio::test]
async fn a_llama_cpp_tool_call_streamed_token_by_token_arrives_complete() {
    let server = TestServer::start(vec![Reply::sse(fixture("llamacpp_tool_call.sse"))]).await;
    let out = chunks(&server.model(), ask("What is the weather in Paris?")).await;
    assert_eq!(
        out,
        [
            ModelChunk::ToolCall(ToolCall {
                id: "Xq7wOb3mZp9kT2vR8sLc4nHf1dJ6yAeU".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            }),
            ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens: 231,
                    output_tokens: 9
                },
            },
        ]
    );
}

#[tokio::test]
async fn a_whole_tool_call_in_one_chunk_works_too() {
    let server = TestServer::start(vec![Reply::sse(fixture("ollama_tool_call.sse"))]).await;
    let out = chunks(&server.model(), ask("Weather in Berlin?")).await;
    assert_eq!(
        out,
        [
            ModelChunk::ToolCall(ToolCall {
                id: "call_h3k1x0".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Berlin"}),
            }),
            ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens: 150,
                    output_tokens: 18
                },
            },
        ]
    );
}

#[tokio::test]
async fn reasoning_content_becomes_reasoning_deltas_before_the_text() {
    let server = TestServer::start(vec![Reply::sse(fixture("llamacpp_reasoning.sse"))]).await;
    let out = chunks(&server.model(), ask("2+2?")).await;
    let reasoning: String = out
        .iter()
        .filter_map(|c| match c {
            ModelChunk::ReasoningDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasoning, "The user asks 2+2. That is 4.");
    assert_eq!(text(&out), "2 + 2 = 4");
    let first_text = out
        .iter()
        .position(|c| matches!(c, ModelChunk::TextDelta { .. }))
        .unwrap();
    assert!(out[..first_text]
        .iter()
        .all(|c| matches!(c, ModelChunk::ReasoningDelta { .. })));
    assert_eq!(
        out.last(),
        Some(&ModelChunk::Finish {
            reason: FinishReason::Stop,
            usage: Usage {
                input_tokens: 20,
                output_tokens: 12
            }
        })
    );
}

#[tokio::test]
async fn keep_alive_comments_crlf_and_multi_line_data_are_parsed() {
    let server = TestServer::start(vec![Reply::sse(fixture("crlf_keepalive_multiline.sse"))]).await;
    let out = chunks(&server.model(), ask("hi")).await;
    assert_eq!(text(&out), "Hello, world");
    assert!(matches!(
        out.last(),
        Some(ModelChunk::Finish {
            reason: FinishReason::Length,
            ..
        })
    ));
}

#[tokio::test]
async fn an_error_object_mid_stream_ends_the_stream_with_an_error() {
    let server =
        TestServer::start(vec![Reply::sse(fixture("llamacpp_error_mid_stream.sse"))]).await;
    let items = collect(&server.model(), ask("json please")).await.unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(matches!(items[0], Ok(ModelChunk::TextDelta { .. })));
    assert!(matches!(items[1], Ok(ModelChunk::TextDelta { .. })));
    let err = items[2].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.backend(), "openai");
    assert!(err.message().contains("Failed to parse input"), "{err}");
}

#[tokio::test]
async fn invalid_tool_arguments_are_a_clear_error() {
    let server = TestServer::start(vec![Reply::sse(fixture("invalid_tool_arguments.sse"))]).await;
    let items = collect(&server.model(), ask("weather")).await.unwrap();
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unexpected);
    assert!(err.message().contains("get_weather"), "{err}");
    assert!(items
        .iter()
        .all(|i| !matches!(i, Ok(ModelChunk::ToolCall(_)))));
}

#[tokio::test]
async fn a_truncated_stream_is_an_error_not_a_finish() {
    let server = TestServer::start(vec![Reply::sse(fixture("truncated.sse"))]).await;
    let items = collect(&server.model(), ask("story")).await.unwrap();
    assert!(matches!(&items[0], Ok(ModelChunk::TextDelta { text }) if text == "Once upon"));
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(items
        .iter()
        .all(|i| !matches!(i, Ok(ModelChunk::Finish { .. }))));
}

#[tokio::test]
async fn an_empty_200_body_is_an_error() {
    let server = TestServer::start(vec![Reply::sse(Vec::new())]).await;
    let items = collect(&server.model(), ask("hi")).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].as_ref().unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn one_byte_per_write_gives_the_same_chunks_as_whole_delivery() {
    for name in TRANSCRIPTS {
        let whole =
            TestServer::start(vec![Reply::sse(fixture(name)).delivered(Delivery::Whole)]).await;
        let bytewise =
            TestServer::start(vec![Reply::sse(fixture(name)).delivered(Delivery::Bytewise)]).await;
        let expected = chunks(&whole.model(), ask("x")).await;
        let got = chunks(&bytewise.model(), ask("x")).await;
        assert!(!got.is_empty());
        // Ids are the server's, so equal transcripts give equal chunks.
        assert_eq!(got, expected, "{name}");
    }
}

#[tokio::test]
async fn rate_limited_then_success_is_retried() {
    let server = TestServer::start(vec![
        Reply::json(
            429,
            std::str::from_utf8(&fixture("openai_429.json")).unwrap(),
        )
        .header("retry-after", "0"),
        Reply::sse(fixture("openai_text_usage.sse")),
    ])
    .await;
    let out = chunks(&server.model(), ask("hi")).await;
    assert_eq!(text(&out), "The capital of France is Paris.");
    assert_eq!(server.request_count(), 2);
    let requests = server.requests();
    assert_eq!(
        requests[0].body, requests[1].body,
        "the same request is re-sent"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_retryable() {
    let server = TestServer::start(vec![Reply::json(
        500,
        r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error"}}"#,
    )])
    .await;
    let model = server.builder().max_retries(2).build().unwrap();
    let err = collect(&model, ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert!(err.message().contains("HTTP 500"), "{err}");
    assert_eq!(server.request_count(), 3, "one request and two retries");
}

#[tokio::test]
async fn bad_request_is_not_retried_and_surfaces_the_server_message() {
    let server = TestServer::start(vec![Reply::json(
        400,
        std::str::from_utf8(&fixture("openai_400.json")).unwrap(),
    )])
    .await;
    let err = collect(&server.model(), ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!err.is_retryable());
    assert!(
        err.message()
            .contains("Invalid value for 'tool_choice': 'required' is not supported"),
        "{err}"
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn unauthorized_is_not_retried() {
    let server = TestServer::start(vec![Reply::json(
        401,
        r#"{"error":{"message":"Incorrect API key provided: sk-wrong.","type":"invalid_request_error","code":"invalid_api_key"}}"#,
    )])
    .await;
    let err = collect(&server.model(), ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!err.is_retryable());
    assert!(err.message().contains("Incorrect API key"), "{err}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let model = durable_openai::OpenAiModel::builder()
        .base_url(format!("http://{addr}/v1"))
        .model("m")
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .build()
        .unwrap();
    let err = collect(&model, ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = TestServer::start(vec![Reply::never_answered()]).await;
    let model = server
        .builder()
        .request_timeout(Duration::from_millis(200))
        .max_retries(1)
        .build()
        .unwrap();
    let err = collect(&model, ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        server.request_count(),
        2,
        "a timeout before the stream is retried"
    );
}

#[tokio::test]
async fn a_stalled_stream_hits_the_idle_timeout() {
    let body = fixture("openai_text_usage.sse");
    let first_event = body.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let server = TestServer::start(vec![
        Reply::sse(body[..first_event + 60].to_vec()).held_open()
    ])
    .await;
    let model = server
        .builder()
        .idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let items = collect(&model, ask("hi")).await.unwrap();
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

fn weather_request() -> ModelRequest {
    ModelRequest {
        messages: vec![
            Message::system("You are terse."),
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
            Message::user("What is the weather in Paris?"),
        ],
        tools: vec![ToolSpec {
            name: "get_weather".into(),
            description: "Get the current weather for a city".into(),
            parameters: json!({
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"]
            }),
        }],
        tool_choice: ToolChoice::Required,
        max_tokens: Some(200),
        temperature: Some(0.0),
    }
}

#[tokio::test]
async fn the_request_body_and_headers_are_what_the_api_expects() {
    let server =
        TestServer::start(vec![Reply::sse(fixture("openai_tool_call_fragments.sse"))]).await;
    let model = server
        .builder()
        .api_key("sk-test-123")
        .header("OpenAI-Organization", "org-42")
        .parallel_tool_calls(false)
        .body_field("seed", json!(42))
        .build()
        .unwrap();
    chunks(&model, weather_request()).await;
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(r.header("openai-organization"), Some("org-42"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r
        .header("user-agent")
        .unwrap()
        .starts_with("durable-openai/"));
    assert_eq!(
        r.json(),
        json!({
            "model": "test-model",
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 200,
            "temperature": 0.0,
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "seed": 42,
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Get the current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "City name"}},
                    "required": ["city"]
                }
            }}],
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the weather in Berlin?"},
                {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Berlin\"}"}
                }]},
                {"role": "tool", "tool_call_id": "call_1",
                 "content": "{\"temp_c\": 12, \"sky\": \"cloudy\"}"},
                {"role": "assistant", "content": "It is 12°C and cloudy in Berlin."},
                {"role": "user", "content": "What is the weather in Paris?"}
            ]
        })
    );
}

#[tokio::test]
async fn without_a_key_there_is_no_authorization_header_and_no_tools_field() {
    let server = TestServer::start(vec![Reply::sse(fixture("openai_text_usage.sse"))]).await;
    chunks(&server.model(), ask("hi")).await;
    let r = &server.requests()[0];
    assert_eq!(r.header("authorization"), None);
    let body = r.json();
    assert!(
        body.get("tools").is_none() && body.get("tool_choice").is_none(),
        "{body}"
    );
    assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let body = fixture("openai_text_usage.sse");
    // Two events, then the server keeps the response open as a generating model would.
    let cut = body
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"\n\n")
        .nth(1)
        .unwrap()
        .0
        + 2;
    let mut server = TestServer::start(vec![Reply::sse(body[..cut].to_vec()).held_open()]).await;
    let model = server.model();
    let mut stream = tokio::time::timeout(DEADLINE, model.stream(ask("hi")))
        .await
        .unwrap()
        .unwrap();
    let first = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, ModelChunk::TextDelta { text: "The".into() });
    drop(stream);
    server.client_closed().await;
}

#[tokio::test]
async fn a_server_that_ignores_stream_true_still_works() {
    let body = fixture("openai_non_streaming.json");
    let server =
        TestServer::start(vec![Reply::json(200, std::str::from_utf8(&body).unwrap())]).await;
    let out = chunks(&server.model(), ask("Weather in Paris?")).await;
    assert_eq!(
        out,
        [
            ModelChunk::TextDelta {
                text: "Let me check.".into()
            },
            ModelChunk::ToolCall(ToolCall {
                id: "call_nonstream1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            }),
            ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens: 82,
                    output_tokens: 17
                },
            },
        ]
    );
}

#[tokio::test]
async fn an_html_page_is_a_clear_error_not_a_hang_or_a_finish() {
    let mut reply = Reply::sse(b"<!doctype html><html><body>Welcome</body></html>".to_vec());
    reply.headers = vec![("content-type".into(), "text/html; charset=utf-8".into())];
    let server = TestServer::start(vec![reply]).await;
    let err = collect(&server.model(), ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unexpected);
    assert!(!err.is_retryable());
    assert!(err.message().contains("base URL"), "{err}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn a_finished_stream_returns_its_connection_to_the_pool() {
    // The end of the chunked body comes only after the client has `Finish`: a client that
    // dropped the body at `[DONE]` could not reuse the connection.
    let release = Arc::new(Notify::new());
    let server = TestServer::start(vec![Reply::sse(fixture("openai_text_usage.sse"))
        .kept_alive()
        .end_after(release.clone())])
    .await;
    let model = server.model();
    for _ in 0..2 {
        let mut stream = tokio::time::timeout(DEADLINE, model.stream(ask("hi")))
            .await
            .unwrap()
            .unwrap();
        loop {
            let item = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap();
            if matches!(item, Some(Ok(ModelChunk::Finish { .. }))) {
                break;
            }
            assert!(matches!(item, Some(Ok(_))), "{item:?}");
        }
        release.notify_one();
        let end = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap();
        assert!(end.is_none());
    }
    let connections: Vec<usize> = server.requests().iter().map(|r| r.connection).collect();
    assert_eq!(
        connections,
        [0, 0],
        "both calls on one keep-alive connection"
    );
}

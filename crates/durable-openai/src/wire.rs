//! The chat-completions wire format: the request body we send and the stream chunks we read.
//!
//! Chunk types are lenient on purpose: every field is optional and unknown fields are ignored,
//! because OpenAI, Ollama, vLLM and llama.cpp each add or omit different ones.

use durable_core::agent::{Message, ModelRequest, Role, ToolChoice};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /chat/completions` body.
#[derive(Debug, Serialize)]
pub(crate) struct ChatRequest<'a> {
    pub(crate) model: &'a str,
    pub(crate) messages: Vec<WireMessage<'a>>,
    pub(crate) stream: bool,
    pub(crate) stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tools: Vec<WireTool<'a>>,
    /// Only sent with tools: some servers reject `tool_choice` without `tools`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<f32>,
    #[serde(flatten)]
    pub(crate) extra: &'a Map<String, Value>,
}

/// Request fields configured on the model rather than per call.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOptions {
    /// Sent with tools only.
    pub(crate) parallel_tool_calls: Option<bool>,
    /// Send the token limit as `max_completion_tokens` (OpenAI reasoning models) instead of
    /// `max_tokens`.
    pub(crate) max_completion_tokens: bool,
    /// Extra top-level fields (`top_p`, `seed`, a server's own options).
    pub(crate) extra: Map<String, Value>,
}

/// Fields the provider sets itself; `extra` may not override them.
pub(crate) const RESERVED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
];

#[derive(Debug, Serialize)]
pub(crate) struct StreamOptions {
    pub(crate) include_usage: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireMessage<'a> {
    role: &'static str,
    /// `null` for an assistant message that only calls tools (what OpenAI itself sends back).
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    /// The arguments as a JSON *string*, as the API wants them.
    arguments: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

impl<'a> ChatRequest<'a> {
    /// The streaming request for `request` on `model`.
    pub(crate) fn new(
        model: &'a str,
        request: &'a ModelRequest,
        options: &'a RequestOptions,
    ) -> Self {
        let tools: Vec<WireTool<'a>> = request
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                function: WireFunction {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.parameters,
                },
            })
            .collect();
        let tool_choice = (!tools.is_empty()).then_some(match request.tool_choice {
            ToolChoice::Auto => "auto",
            ToolChoice::Required => "required",
            ToolChoice::None => "none",
        });
        Self {
            model,
            messages: request.messages.iter().map(WireMessage::from).collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            parallel_tool_calls: options.parallel_tool_calls.filter(|_| !tools.is_empty()),
            tools,
            tool_choice,
            max_tokens: request
                .max_tokens
                .filter(|_| !options.max_completion_tokens),
            max_completion_tokens: request.max_tokens.filter(|_| options.max_completion_tokens),
            temperature: request.temperature,
            extra: &options.extra,
        }
    }
}

impl<'a> From<&'a Message> for WireMessage<'a> {
    fn from(m: &'a Message) -> Self {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let tool_calls: Vec<WireToolCall<'a>> = m
            .tool_calls
            .iter()
            .map(|c| WireToolCall {
                id: &c.id,
                kind: "function",
                function: WireFunctionCall {
                    name: &c.name,
                    arguments: c.arguments.to_string(),
                },
            })
            .collect();
        let content = if m.content.is_empty() && !tool_calls.is_empty() {
            None
        } else {
            Some(m.content.as_str())
        };
        Self {
            role,
            content,
            tool_calls,
            tool_call_id: m.tool_call_id.as_deref(),
        }
    }
}

/// One `data:` payload of the stream: a `chat.completion.chunk` or an error object.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Chunk {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) choices: Vec<Choice>,
    pub(crate) usage: Option<WireUsage>,
    pub(crate) error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Choice {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) index: u32,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) delta: Delta,
    /// A non-streaming `chat.completion` (from a server or proxy that ignored `stream: true`)
    /// has the whole answer here, in the shape of a delta.
    pub(crate) message: Option<Delta>,
    pub(crate) finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Delta {
    pub(crate) content: Option<String>,
    /// llama.cpp, vLLM, DeepSeek.
    pub(crate) reasoning_content: Option<String>,
    /// Ollama, OpenRouter, newer vLLM.
    pub(crate) reasoning: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) tool_calls: Vec<ToolCallDelta>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ToolCallDelta {
    pub(crate) index: Option<u32>,
    pub(crate) id: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) function: FunctionDelta,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FunctionDelta {
    pub(crate) name: Option<String>,
    pub(crate) arguments: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub(crate) struct WireUsage {
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) prompt_tokens: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) completion_tokens: u64,
}

/// Servers send `null` where others omit a field: treat both as the default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// The `message` of an error object (`{"error": {"message": ...}}`, or `{"error": "text"}`),
/// with its `type`/`code` when present.
pub(crate) fn error_message(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let message = o
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let mut tags = Vec::new();
            for key in ["type", "code"] {
                match o.get(key) {
                    Some(Value::String(s)) => tags.push(format!("{key} {s}")),
                    Some(Value::Number(n)) => tags.push(format!("{key} {n}")),
                    _ => {}
                }
            }
            if tags.is_empty() {
                message.to_owned()
            } else {
                format!("{message} ({})", tags.join(", "))
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_core::agent::{ToolCall, ToolSpec};
    use serde_json::json;

    #[test]
    fn request_maps_messages_tools_and_options() {
        let request = ModelRequest {
            messages: vec![
                Message::system("be brief"),
                Message::user("weather?"),
                Message::assistant(
                    "",
                    vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: json!({"city": "Paris"}),
                    }],
                ),
                Message::tool("call_1", "{\"temp_c\":21}"),
            ],
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: "Weather for a city".into(),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::Required,
            max_tokens: Some(64),
            temperature: Some(0.0),
        };
        let body =
            serde_json::to_value(ChatRequest::new("m", &request, &RequestOptions::default()))
                .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "content": "{\"temp_c\":21}", "tool_call_id": "call_1"}
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather", "description": "Weather for a city",
                    "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "max_tokens": 64,
                "temperature": 0.0
            })
        );
    }

    #[test]
    fn no_tools_means_no_tools_and_no_tool_choice() {
        let request = ModelRequest {
            messages: vec![Message::user("hi")],
            ..Default::default()
        };
        let options = RequestOptions {
            parallel_tool_calls: Some(false),
            max_completion_tokens: true,
            extra: Map::new(),
        };
        let body = serde_json::to_value(ChatRequest::new("m", &request, &options)).unwrap();
        assert!(body.get("parallel_tool_calls").is_none(), "only with tools");
        assert!(body.get("tools").is_none());
        assert!(body.get("tool_choice").is_none());
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("temperature").is_none());
    }

    #[test]
    fn options_add_parallel_tool_calls_the_token_field_and_extra_fields() {
        let request = ModelRequest {
            messages: vec![Message::user("hi")],
            tools: vec![ToolSpec {
                name: "t".into(),
                description: "d".into(),
                parameters: json!({}),
            }],
            max_tokens: Some(10),
            ..Default::default()
        };
        let mut extra = Map::new();
        extra.insert("seed".into(), json!(7));
        let options = RequestOptions {
            parallel_tool_calls: Some(false),
            max_completion_tokens: true,
            extra,
        };
        let body = serde_json::to_value(ChatRequest::new("m", &request, &options)).unwrap();
        assert_eq!(body["parallel_tool_calls"], json!(false));
        assert_eq!(body["max_completion_tokens"], json!(10));
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["seed"], json!(7));
        assert_eq!(body["tool_choice"], json!("auto"));
    }

    #[test]
    fn error_messages_name_type_and_code() {
        let e = json!({"message": "bad", "type": "invalid_request_error", "code": 400});
        assert_eq!(
            error_message(&e),
            "bad (type invalid_request_error, code 400)"
        );
        assert_eq!(error_message(&json!("plain")), "plain");
        assert_eq!(error_message(&json!({"message": "m"})), "m");
    }

    #[test]
    fn chunks_tolerate_nulls_and_unknown_fields() {
        let c: Chunk = serde_json::from_str(
            r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,
            "delta":{"role":"assistant","content":null,"refusal":null},"logprobs":null,
            "finish_reason":null}],"usage":null,"timings":{}}"#,
        )
        .unwrap();
        assert_eq!(c.choices.len(), 1);
        assert!(c.choices[0].delta.content.is_none());
        assert!(c.usage.is_none());
        let c: Chunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"tool_calls":null,"content":"a"},
            "finish_reason":null}],"usage":{"prompt_tokens":3,"completion_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(c.choices[0].delta.content.as_deref(), Some("a"));
        assert_eq!(c.usage.map(|u| u.prompt_tokens), Some(3));
    }
}

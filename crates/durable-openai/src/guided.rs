//! [`GuidedModel`]: request defaults that make small local models call tools reliably.

use async_trait::async_trait;
use durable_core::agent::{LanguageModel, Message, ModelRequest, ModelStream, Role, ToolChoice};
use durable_core::Result;

/// Wraps a [`LanguageModel`] for small local models (such as SmolLM2-135M under llama.cpp
/// `llama-server` with a tool-call chat template) that only call tools when told to:
///
/// - a call that offers tools with [`ToolChoice::Auto`] right after a **user** message is sent
///   with [`ToolChoice::Required`] (llama.cpp then constrains the output to a tool call); after
///   a tool result it stays `Auto`, so the model answers in text;
/// - optional few-shot [`examples`](Self::examples) (an earlier question, its tool call, the
///   result and the answer) are inserted after the leading system messages;
/// - [`temperature`](Self::temperature) and [`max_tokens`](Self::max_tokens) fill in what the
///   request leaves unset (`temperature: 0` makes a small model's output repeatable).
///
/// Everything else is passed through unchanged. Capable models (OpenAI, larger Ollama models)
/// do not need it.
///
/// ```no_run
/// use durable_core::agent::{Message, ToolCall};
/// use durable_openai::{GuidedModel, OpenAiModel};
///
/// # fn demo() -> durable_core::Result<()> {
/// let smol = OpenAiModel::builder()
///     .base_url("http://127.0.0.1:8080/v1")
///     .model("smollm2")
///     .parallel_tool_calls(false)
///     .build()?;
/// let model = GuidedModel::new(smol)
///     .temperature(0.0)
///     .max_tokens(200)
///     .examples(vec![
///         Message::user("What is the weather in Berlin?"),
///         Message::assistant("", vec![ToolCall {
///             id: "call_1".into(),
///             name: "get_weather".into(),
///             arguments: serde_json::json!({"city": "Berlin"}),
///         }]),
///         Message::tool("call_1", r#"{"temp_c": 12, "sky": "cloudy"}"#),
///         Message::assistant("It is 12°C and cloudy in Berlin.", vec![]),
///     ]);
/// # let _ = model; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GuidedModel<M> {
    inner: M,
    examples: Vec<Message>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
}

impl<M: LanguageModel> GuidedModel<M> {
    /// Guide `inner`: `required` tool choice after user messages, nothing else yet.
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            examples: Vec::new(),
            temperature: None,
            max_tokens: None,
        }
    }

    /// Few-shot messages inserted after the leading system messages of every call.
    #[must_use]
    pub fn examples(mut self, messages: Vec<Message>) -> Self {
        self.examples = messages;
        self
    }

    /// The temperature of calls that set none.
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// The token limit of calls that set none.
    #[must_use]
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The request as it is sent to the wrapped model.
    pub fn guide(&self, mut request: ModelRequest) -> ModelRequest {
        let after_user = request
            .messages
            .last()
            .is_some_and(|m| m.role == Role::User);
        if after_user && !request.tools.is_empty() && request.tool_choice == ToolChoice::Auto {
            request.tool_choice = ToolChoice::Required;
        }
        if !self.examples.is_empty() {
            let at = request
                .messages
                .iter()
                .take_while(|m| m.role == Role::System)
                .count();
            request
                .messages
                .splice(at..at, self.examples.iter().cloned());
        }
        request.temperature = request.temperature.or(self.temperature);
        request.max_tokens = request.max_tokens.or(self.max_tokens);
        request
    }
}

#[async_trait]
impl<M: LanguageModel> LanguageModel for GuidedModel<M> {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    async fn stream(&self, request: ModelRequest) -> Result<ModelStream> {
        self.inner.stream(self.guide(request)).await
    }
}

//! [`OpenAiModel`] and its builder.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use durable_core::agent::{LanguageModel, ModelRequest, ModelStream};
use durable_core::{Error, ErrorKind, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::http::{self, RetryPolicy};
use crate::wire::{ChatRequest, RequestOptions, RESERVED_FIELDS};
use crate::BACKEND;

/// The base URL used when none is configured.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A streaming chat model behind any OpenAI-compatible `/chat/completions` endpoint: OpenAI,
/// Ollama, vLLM, llama.cpp `llama-server`, and other servers that speak the same wire format.
///
/// Cheap to clone (the HTTP connection pool is shared).
#[derive(Clone)]
pub struct OpenAiModel {
    id: String,
    model: String,
    endpoint: reqwest::Url,
    base_url: String,
    has_api_key: bool,
    headers: HeaderMap,
    client: reqwest::Client,
    settings: http::Settings,
    options: RequestOptions,
}

impl OpenAiModel {
    /// A builder with the defaults documented on each of its methods.
    pub fn builder() -> OpenAiModelBuilder {
        OpenAiModelBuilder::default()
    }

    /// A model configured from the environment (see [`OpenAiModelBuilder::from_env`]).
    pub fn from_env() -> Result<Self> {
        OpenAiModelBuilder::from_env().build()
    }

    /// The model name sent in each request.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

impl fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &redacted(self.has_api_key))
            .field("headers", &header_names(&self.headers))
            .field("settings", &self.settings)
            .field("options", &self.options)
            .finish()
    }
}

#[async_trait]
impl LanguageModel for OpenAiModel {
    fn model_id(&self) -> &str {
        &self.id
    }

    /// POSTs the request with `stream: true` and returns once the server answered `2xx`,
    /// retrying 429, 5xx and connection failures before that point (never after).
    async fn stream(&self, request: ModelRequest) -> Result<ModelStream> {
        let body = serde_json::to_vec(&ChatRequest::new(&self.model, &request, &self.options))
            .map_err(|e| {
                Error::invalid_input("the request could not be encoded as JSON")
                    .with_backend(BACKEND)
                    .with_operation("stream")
                    .with_source(e)
            })?;
        let response = http::send(
            &self.client,
            &self.endpoint,
            &self.headers,
            body.into(),
            &self.settings,
        )
        .await?;
        Ok(http::decode(response, &self.settings))
    }
}

/// Configures an [`OpenAiModel`].
#[derive(Clone)]
pub struct OpenAiModelBuilder {
    base_url: String,
    api_key: Option<String>,
    model: Option<String>,
    headers: Vec<(String, String)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Option<Duration>,
    retry: RetryPolicy,
    options: RequestOptions,
}

impl Default for OpenAiModelBuilder {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            model: None,
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            idle_timeout: Some(Duration::from_secs(120)),
            retry: RetryPolicy::default(),
            options: RequestOptions::default(),
        }
    }
}

impl fmt::Debug for OpenAiModelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModelBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &redacted(self.api_key.is_some()))
            .field("model", &self.model)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("retry", &self.retry)
            .field("options", &self.options)
            .finish()
    }
}

impl OpenAiModelBuilder {
    /// A builder filled from the environment:
    ///
    /// - `OPENAI_API_KEY`: the API key (unset or empty: no `Authorization` header);
    /// - `OPENAI_BASE_URL`: the base URL (default [`DEFAULT_BASE_URL`]);
    /// - `OPENAI_MODEL`: the model name (required by [`build`](Self::build) unless set here).
    ///
    /// Empty variables count as unset. Everything can still be overridden on the builder.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut builder = Self::default();
        if let Some(key) = var("OPENAI_API_KEY") {
            builder = builder.api_key(key);
        }
        if let Some(url) = var("OPENAI_BASE_URL") {
            builder = builder.base_url(url);
        }
        if let Some(model) = var("OPENAI_MODEL") {
            builder = builder.model(model);
        }
        builder
    }

    /// The API base URL, up to and including the version (default [`DEFAULT_BASE_URL`];
    /// Ollama: `http://127.0.0.1:11434/v1`; llama.cpp and vLLM: `http://127.0.0.1:8080/v1`).
    /// Requests go to `{base_url}/chat/completions`.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The key sent as `Authorization: Bearer <key>` (default none: local servers need none).
    /// It is never printed by `Debug`.
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// The model name (`gpt-4o-mini`, `llama3.2`, …). Required.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// An extra header sent with every request (`OpenAI-Organization`, a proxy's auth, …).
    /// Names and values are validated by [`build`](Self::build); `Debug` prints names only.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Time allowed to open the TCP (and TLS) connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed from sending the request to the response headers, per attempt
    /// (default 120 s; a local model may process a long prompt before it answers).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Longest silence allowed between two pieces of the streamed body once it started
    /// (default 120 s); `None` waits forever. Expiry ends the stream with a `Timeout` error.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Retries after the first attempt, for 429, 5xx, timeouts and connection failures before
    /// the stream started (default 2, so at most 3 requests). `0` disables retries.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.retry.max_retries = max_retries;
        self
    }

    /// The backoff before retry `n` (from 0) is `initial * 2^n`, capped at `max`, with random
    /// jitter down to half of it (defaults 500 ms and 20 s). A `Retry-After` header replaces
    /// the computed delay and is capped at `max` too.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry.initial_backoff = initial;
        self.retry.max_backoff = max.max(initial);
        self
    }

    /// Send `parallel_tool_calls` with this value on requests that carry tools (default: not
    /// sent, the server decides). A small local model may need `false` to stop after one call.
    pub fn parallel_tool_calls(mut self, parallel: bool) -> Self {
        self.options.parallel_tool_calls = Some(parallel);
        self
    }

    /// Send [`ModelRequest::max_tokens`] as `max_completion_tokens` instead of `max_tokens`
    /// (default `false`). OpenAI's reasoning models accept only the former; local servers
    /// generally only the latter.
    pub fn max_completion_tokens(mut self, enabled: bool) -> Self {
        self.options.max_completion_tokens = enabled;
        self
    }

    /// An extra top-level field of every request body (`top_p`, `seed`, `user`, a server's
    /// own options such as vLLM's `chat_template_kwargs`). [`build`](Self::build) refuses the
    /// fields the provider sets itself (`model`, `messages`, `stream`, `tools`, …).
    pub fn body_field(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.options.extra.insert(name.into(), value);
        self
    }

    /// Validate the configuration and create the model (and its connection pool).
    ///
    /// Fails with [`ErrorKind::InvalidInput`] for a missing model, a base URL that is not an
    /// `http(s)` URL, or an invalid header name or value.
    pub fn build(self) -> Result<OpenAiModel> {
        let invalid = |message: String| {
            Error::new(ErrorKind::InvalidInput, message)
                .with_backend(BACKEND)
                .with_operation("build")
        };
        let model = self
            .model
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| invalid("no model name: set `model(..)` or OPENAI_MODEL".into()))?;
        let base_url = self.base_url.trim().trim_end_matches('/').to_owned();
        let endpoint = reqwest::Url::parse(&format!("{base_url}/chat/completions"))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| invalid(format!("base URL `{base_url}` is not an http(s) URL")))?;

        if let Some(name) = self
            .options
            .extra
            .keys()
            .find(|k| RESERVED_FIELDS.contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "body field `{name}` is set by the provider and cannot be overridden"
            )));
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(format!("invalid header name `{name}`: {e}")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|e| invalid(format!("invalid value for header `{name}`: {e}")))?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        let has_api_key = self.api_key.is_some();
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                .map_err(|_| invalid("the API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }

        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("durable-openai/", env!("CARGO_PKG_VERSION")))
            // A POST must not silently turn into a GET on a redirect: report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "could not create the HTTP client")
                    .with_backend(BACKEND)
                    .with_operation("build")
                    .with_source(e)
            })?;

        Ok(OpenAiModel {
            id: format!("openai:{model}"),
            model,
            endpoint,
            base_url,
            has_api_key,
            headers,
            client,
            settings: http::Settings {
                request_timeout: self.request_timeout,
                idle_timeout: self.idle_timeout,
                retry: self.retry,
            },
            options: self.options,
        })
    }
}

fn redacted(set: bool) -> Option<&'static str> {
    set.then_some("<redacted>")
}

fn header_names(headers: &HeaderMap) -> Vec<&str> {
    headers
        .keys()
        .filter(|n| *n != AUTHORIZATION)
        .map(HeaderName::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_key_or_header_values() {
        let builder = OpenAiModel::builder()
            .model("m")
            .api_key("sk-secret-123")
            .header("x-proxy-auth", "hunter2");
        let printed = format!("{builder:?}");
        assert!(
            !printed.contains("sk-secret") && !printed.contains("hunter2"),
            "{printed}"
        );
        let model = builder.build().unwrap();
        let printed = format!("{model:?}");
        assert!(
            !printed.contains("sk-secret") && !printed.contains("hunter2"),
            "{printed}"
        );
        assert!(printed.contains("<redacted>"));
        assert!(printed.contains("x-proxy-auth"));
    }

    #[test]
    fn build_validates_model_url_and_headers() {
        let err = OpenAiModel::builder().build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        for url in ["not a url", "ftp://x/v1", "127.0.0.1:8080"] {
            let err = OpenAiModel::builder()
                .model("m")
                .base_url(url)
                .build()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}");
        }
        let err = OpenAiModel::builder()
            .model("m")
            .header("bad header", "x")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = OpenAiModel::builder()
            .model("m")
            .body_field("stream", serde_json::Value::Bool(false))
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn base_url_is_trimmed_and_the_endpoint_appended() {
        let model = OpenAiModel::builder()
            .model("llama3.2")
            .base_url("http://127.0.0.1:11434/v1/")
            .build()
            .unwrap();
        assert_eq!(model.base_url(), "http://127.0.0.1:11434/v1");
        assert_eq!(
            model.endpoint.as_str(),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
        assert_eq!(model.model_id(), "openai:llama3.2");
        assert_eq!(OpenAiModel::builder().base_url, DEFAULT_BASE_URL);
    }
}

//! Sending the request (with retries before the stream starts), mapping HTTP failures to
//! [`Error`]s, and turning the response body into a [`ModelStream`].

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use durable_core::agent::{ModelChunk, ModelStream};
use durable_core::{Error, ErrorKind, Result};
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use crate::decode::{preview, Decoder, Progress};
use crate::sse::{SseEvent, SseParser};
use crate::wire::error_message;
use crate::BACKEND;

/// Longest SSE line or event accepted from the server.
const MAX_EVENT_BYTES: usize = 4 << 20;
/// What is read after `[DONE]` (normally only the end of the chunked body), and for how long.
const MAX_DRAIN_BYTES: usize = 64 << 10;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest error body read from a failed response.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Retry policy for the part of a call before the stream starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry `attempt` (0-based): the server's `Retry-After` when it sent one,
    /// else exponential backoff with jitter; capped at `max_backoff` either way.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_backoff);
        }
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max_backoff);
        // "Equal jitter": between half and all of the computed delay.
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Per-model settings used on every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message.into())
        .with_backend(BACKEND)
        .with_operation("stream")
}

/// One failed attempt: the error, and the server's `Retry-After` if it sent one.
struct Failure {
    error: Error,
    retry_after: Option<Duration>,
}

/// POST `body` to `endpoint`, retrying retryable failures until the server answers `2xx`.
pub(crate) async fn send(
    client: &reqwest::Client,
    endpoint: &reqwest::Url,
    headers: &HeaderMap,
    body: Bytes,
    settings: &Settings,
) -> Result<reqwest::Response> {
    let mut attempt = 0;
    loop {
        let failure = match attempt_once(client, endpoint, headers, body.clone(), settings).await {
            Ok(response) => return Ok(response),
            Err(failure) => failure,
        };
        if !failure.error.is_retryable() || attempt >= settings.retry.max_retries {
            return Err(failure.error);
        }
        let delay = settings.retry.delay(attempt, failure.retry_after);
        tracing::warn!(
            attempt = attempt + 1,
            max_retries = settings.retry.max_retries,
            ?delay,
            error = %failure.error,
            "chat completion request failed; retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

async fn attempt_once(
    client: &reqwest::Client,
    endpoint: &reqwest::Url,
    headers: &HeaderMap,
    body: Bytes,
    settings: &Settings,
) -> Result<reqwest::Response, Failure> {
    let request = client
        .post(endpoint.clone())
        .headers(headers.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::ACCEPT,
            "text/event-stream, application/json",
        )
        .body(body)
        .send();
    let response = match tokio::time::timeout(settings.request_timeout, request).await {
        Err(_) => {
            return Err(Failure {
                error: error(
                    ErrorKind::Timeout,
                    format!(
                        "no response from {endpoint} within {:?}",
                        settings.request_timeout
                    ),
                ),
                retry_after: None,
            })
        }
        Ok(Err(e)) => {
            return Err(Failure {
                error: transport_error(&e, endpoint).with_source(e),
                retry_after: None,
            })
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return match content_type(&response).as_deref() {
            Some(t) if t.starts_with("text/html") => Err(Failure {
                error: error(
                    ErrorKind::Unexpected,
                    format!(
                        "{endpoint} answered with an HTML page, not an event stream \
                         (check the base URL: it usually ends in /v1)"
                    ),
                ),
                retry_after: None,
            }),
            _ => Ok(response),
        };
    }
    let retry_after = retry_after(response.headers());
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_error_body(response, settings.request_timeout).await;
    Err(Failure {
        error: status_error(status, &body, location.as_deref()),
        retry_after,
    })
}

/// The response's media type, lowercased, without parameters.
fn content_type(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

fn transport_error(e: &reqwest::Error, endpoint: &reqwest::Url) -> Error {
    if e.is_timeout() {
        error(
            ErrorKind::Timeout,
            format!("request to {endpoint} timed out"),
        )
    } else if e.is_connect() {
        error(
            ErrorKind::Unavailable,
            format!("could not connect to {endpoint}"),
        )
    } else if e.is_builder() {
        error(
            ErrorKind::InvalidInput,
            format!("could not build a request to {endpoint}"),
        )
    } else {
        error(
            ErrorKind::Unavailable,
            format!("the request to {endpoint} failed"),
        )
    }
}

/// `Retry-After` in seconds (or OpenAI's `retry-after-ms`). HTTP dates are not honoured: the
/// computed backoff applies then.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    get("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms.min(1e9) / 1000.0))
        .or_else(|| get(RETRY_AFTER.as_str()).map(|s| Duration::from_secs_f64(s.min(1e6))))
}

async fn read_error_body(mut response: reqwest::Response, timeout: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ERROR_BODY_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ERROR_BODY_BYTES {
                break;
            }
        }
    };
    // A server that sends the status and then stalls still gets its status reported.
    let _ = tokio::time::timeout(timeout, read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The error for a non-2xx response. See the crate docs for the mapping.
pub(crate) fn status_error(status: StatusCode, body: &str, location: Option<&str>) -> Error {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let server_error = parsed.as_ref().and_then(|v| v.get("error"));
    let detail = match server_error {
        Some(e) => error_message(e),
        None if body.trim().is_empty() => status.canonical_reason().unwrap_or("").to_owned(),
        None => preview(body.trim()),
    };
    let quota = server_error
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        == Some("insufficient_quota");
    let code = status.as_u16();
    let (kind, retryable, what) = match code {
        401 | 403 => (
            ErrorKind::InvalidInput,
            false,
            "the server rejected the credentials",
        ),
        404 => (
            ErrorKind::NotFound,
            false,
            "not found (check the base URL and the model name)",
        ),
        408 => (ErrorKind::Timeout, true, "the server timed out"),
        429 if quota => (ErrorKind::LimitExceeded, false, "the quota is exhausted"),
        429 => (ErrorKind::Unavailable, true, "rate limited"),
        400..=499 => (
            ErrorKind::InvalidInput,
            false,
            "the server rejected the request",
        ),
        500..=599 => (ErrorKind::Unavailable, true, "server error"),
        300..=399 => (
            ErrorKind::Unexpected,
            false,
            "unexpected redirect (set the base URL to the final location)",
        ),
        _ => (ErrorKind::Unexpected, false, "unexpected status"),
    };
    let mut message = format!("{what} (HTTP {code}): {detail}");
    if let Some(location) = location.filter(|_| status.is_redirection()) {
        message.push_str(&format!(" [location: {location}]"));
    }
    error(kind, message).with_retryable(retryable)
}

struct BodyState {
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// The body after `[DONE]`, read to its end once the last chunk was taken.
    drain: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    parser: SseParser,
    /// Set when the server answered `application/json` instead of an event stream: the whole
    /// body is one chunk (a non-streaming completion or an error object).
    json_body: Option<Vec<u8>>,
    decoder: Decoder,
    events: Vec<SseEvent>,
    chunks: VecDeque<ModelChunk>,
    /// An error to yield once the chunks before it are out; the stream ends after it.
    error: Option<Error>,
    idle_timeout: Option<Duration>,
}

impl BodyState {
    /// Decode the parsed events. Returns whether the stream ended (`[DONE]` or an error), and
    /// then stops reading the body.
    fn decode_events(&mut self) -> bool {
        let mut ended = false;
        for event in self.events.drain(..) {
            match self.decoder.on_event(&event, &mut self.chunks) {
                Ok(Progress::More) => continue,
                // Read the rest (the chunked terminator) after `Finish` is out, so the
                // connection goes back to the pool instead of paying a new TLS handshake.
                Ok(Progress::Done) => self.drain = self.body.take(),
                Err(e) => self.error = Some(e),
            }
            ended = true;
            break;
        }
        self.events.clear();
        if ended {
            self.body = None;
        }
        ended
    }

    fn fail(&mut self, e: Error) {
        self.error = Some(e);
        self.body = None;
    }

    async fn next_item(&mut self) -> Option<Result<ModelChunk>> {
        loop {
            if let Some(chunk) = self.chunks.pop_front() {
                return Some(Ok(chunk));
            }
            if let Some(e) = self.error.take() {
                return Some(Err(e));
            }
            if let Some(mut rest) = self.drain.take() {
                let drain = async {
                    let mut left = MAX_DRAIN_BYTES;
                    while let Some(Ok(bytes)) = rest.next().await {
                        left = left.checked_sub(bytes.len())?;
                    }
                    Some(())
                };
                // Whatever happens, the stream is over; at worst the connection is not reused.
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
                return None;
            }
            let body = self.body.as_mut()?;
            let next = match self.idle_timeout {
                Some(limit) => match tokio::time::timeout(limit, body.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.fail(error(
                            ErrorKind::Timeout,
                            format!("the server sent nothing for {limit:?} mid-stream"),
                        ));
                        continue;
                    }
                },
                None => body.next().await,
            };
            match next {
                Some(Ok(bytes)) if self.json_body.is_some() => {
                    let buf = self.json_body.get_or_insert_with(Vec::new);
                    if buf.len() + bytes.len() > MAX_EVENT_BYTES {
                        self.fail(error(
                            ErrorKind::LimitExceeded,
                            format!("a JSON response is larger than {MAX_EVENT_BYTES} bytes"),
                        ));
                    } else {
                        buf.extend_from_slice(&bytes);
                    }
                }
                Some(Ok(bytes)) => {
                    let fed = self.parser.feed(&bytes, &mut self.events);
                    let ended = self.decode_events();
                    if let (Err(e), false) = (fed, ended) {
                        self.fail(error(ErrorKind::LimitExceeded, e.to_string()));
                    }
                }
                Some(Err(e)) => self.fail(
                    error(
                        ErrorKind::Unavailable,
                        "the connection failed while the response was streaming",
                    )
                    .with_source(e),
                ),
                None => {
                    self.body = None;
                    let (fed, sse) = match self.json_body.take() {
                        Some(data) => {
                            self.events.push(SseEvent { event: None, data });
                            (Ok(()), false)
                        }
                        None => (self.parser.finish(&mut self.events), true),
                    };
                    // The body ended inside an event. A complete one is a server that left out
                    // the last blank line; a cut-off one is a truncated stream, not bad JSON.
                    let cut_off = sse
                        && self.events.iter().any(|e| {
                            e.data.trim_ascii() != b"[DONE]"
                                && serde_json::from_slice::<serde::de::IgnoredAny>(&e.data).is_err()
                        });
                    if cut_off {
                        self.events.clear();
                    } else if self.decode_events() {
                        continue;
                    }
                    let end = match fed {
                        Ok(()) => self.decoder.on_end(&mut self.chunks),
                        Err(e) => Err(error(ErrorKind::LimitExceeded, e.to_string())),
                    };
                    if let Err(e) = end {
                        self.error = Some(e);
                    }
                }
            }
        }
    }
}

/// The model stream over a `2xx` response. Dropping it drops the response, which closes the
/// connection and so cancels the generation on the server.
pub(crate) fn decode(response: reqwest::Response, settings: &Settings) -> ModelStream {
    let json = content_type(&response).as_deref() == Some("application/json");
    let state = BodyState {
        body: Some(response.bytes_stream().boxed()),
        drain: None,
        parser: SseParser::new(MAX_EVENT_BYTES),
        json_body: json.then(Vec::new),
        decoder: Decoder::default(),
        events: Vec::new(),
        chunks: VecDeque::new(),
        error: None,
        idle_timeout: settings.idle_timeout,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next_item().await?;
        Some((item, state))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let body = r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#;
        let cases = [
            (400, ErrorKind::InvalidInput, false),
            (401, ErrorKind::InvalidInput, false),
            (403, ErrorKind::InvalidInput, false),
            (404, ErrorKind::NotFound, false),
            (408, ErrorKind::Timeout, true),
            (422, ErrorKind::InvalidInput, false),
            (429, ErrorKind::Unavailable, true),
            (500, ErrorKind::Unavailable, true),
            (503, ErrorKind::Unavailable, true),
            (302, ErrorKind::Unexpected, false),
        ];
        for (code, kind, retryable) in cases {
            let e = status_error(StatusCode::from_u16(code).unwrap(), body, None);
            assert_eq!((e.kind(), e.is_retryable()), (kind, retryable), "{code}");
            assert!(e.message().contains("bad model"), "{e}");
            assert_eq!(e.backend(), BACKEND);
        }
        let quota = r#"{"error":{"message":"no money","code":"insufficient_quota"}}"#;
        let e = status_error(StatusCode::TOO_MANY_REQUESTS, quota, None);
        assert_eq!(
            (e.kind(), e.is_retryable()),
            (ErrorKind::LimitExceeded, false)
        );
        let e = status_error(StatusCode::BAD_GATEWAY, "", None);
        assert!(e.message().contains("Bad Gateway"), "{e}");
        let e = status_error(StatusCode::BAD_GATEWAY, "<html>nginx</html>", None);
        assert!(e.message().contains("nginx"), "{e}");
    }

    #[test]
    fn retry_after_seconds_and_ms_are_read_and_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3600))),
            policy.max_backoff
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            let full = (Duration::from_millis(100) * 2u32.pow(attempt.min(10)))
                .min(Duration::from_secs(1));
            let d = policy.delay(attempt, None);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}

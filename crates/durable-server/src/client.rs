//! A Rust client of the native routes that reconnects from the last cursor it delivered, so a
//! consumer sees one exact sequence of events across dropped connections and server restarts.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{Event, EventKind, RunId};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde_json::Value;

/// Maximum size of one SSE frame the parser accepts (bounded allocation on hostile input).
pub const MAX_FRAME: usize = 16 << 20;

/// One SSE frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseFrame {
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental parser of `text/event-stream` bodies (the WHATWG rules the client needs:
/// `\n`, `\r\n` or `\r` line ends, comments, multi-line data, frames ended by a blank line).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    frame: SseFrame,
    has_field: bool,
    last_cr: bool,
    size: usize,
}

/// The parser met a frame larger than [`MAX_FRAME`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTooLarge;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; complete frames are appended to `out`.
    ///
    /// # Errors
    /// [`FrameTooLarge`] once a frame exceeds [`MAX_FRAME`] (the stream should be dropped).
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<SseFrame>) -> Result<(), FrameTooLarge> {
        // A line at a time (not a byte at a time): SSE frames are small and many.
        while let Some(&first) = bytes.first() {
            if std::mem::take(&mut self.last_cr) && first == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.extend(&bytes[..i])?;
                    self.last_cr = bytes[i] == b'\r';
                    self.end_line(out);
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.extend(bytes)?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn extend(&mut self, part: &[u8]) -> Result<(), FrameTooLarge> {
        self.size += part.len();
        if self.size > MAX_FRAME {
            return Err(FrameTooLarge);
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseFrame>) {
        if self.line.is_empty() {
            if self.has_field {
                out.push(std::mem::take(&mut self.frame));
            }
            self.has_field = false;
            self.size = 0;
            return;
        }
        // The buffer is handed back cleared: one allocation for the stream, not one per line.
        let mut line = std::mem::take(&mut self.line);
        if line[0] != b':' {
            self.field(&line);
        }
        line.clear();
        self.line = line;
    }

    fn field(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.find(':') {
            Some(i) => {
                let v = &text[i + 1..];
                (&text[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&text[..], ""),
        };
        match field {
            "data" => {
                if self.has_field && !self.frame.data.is_empty() {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
                self.has_field = true;
            }
            "event" => {
                self.frame.event = Some(value.to_owned());
                self.has_field = true;
            }
            "id" if !value.contains('\0') => {
                self.frame.id = Some(value.to_owned());
                self.has_field = true;
            }
            _ => {}
        }
    }
}

/// A client error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with a problem body (status, body).
    Status(u16, Value),
    /// Transport or decoding failure after the retries were used up.
    Transport(String),
    /// The stream's `event: error` frame (the server failed after its headers).
    Stream(Value),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Status(s, b) => write!(f, "HTTP {s}: {b}"),
            ClientError::Transport(e) => write!(f, "transport: {e}"),
            ClientError::Stream(b) => write!(f, "stream error: {b}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// How a [`RunStream`] reconnects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reconnect {
    /// First pause after a dropped connection (doubling up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
    /// Reconnects in a row without a new event before giving up.
    pub max_attempts: u32,
}

impl Reconnect {
    /// Pauses from `min_backoff` doubling to `max_backoff`; give up after `max_attempts`
    /// reconnects in a row without a new event.
    pub fn new(min_backoff: Duration, max_backoff: Duration, max_attempts: u32) -> Self {
        Self {
            min_backoff,
            max_backoff,
            max_attempts,
        }
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            max_attempts: 30,
        }
    }
}

/// A client of a durable server (the native routes).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    reconnect: Reconnect,
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:8080`; a nested router's
    /// prefix included).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base_url.into().trim_end_matches('/').to_owned(),
            token: None,
            reconnect: Reconnect::default(),
        }
    }

    /// Send `token` as `Authorization: Bearer` (a run token, with access control on).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Set the reconnect policy.
    #[must_use]
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = policy;
        self
    }

    fn url(&self, agent: &str, rest: &str) -> String {
        format!("{}/api/agents/{agent}{rest}", self.base)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn json(req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let res = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        let body: Value = res
            .json()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if status >= 400 {
            return Err(ClientError::Status(status, body));
        }
        Ok(body)
    }

    /// Start a run (`body` as for `POST …/stream`, for example `{"prompt": "hi"}`) and follow
    /// it to its end, reconnecting as needed. Returns the run id and its events.
    ///
    /// # Errors
    /// The server's problem, or a transport error.
    pub async fn stream(
        &self,
        agent: &str,
        body: &Value,
    ) -> Result<(RunId, RunStream), ClientError> {
        let res = self
            .auth(self.http.post(self.url(agent, "/stream")).json(body))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        if status != 201 {
            let body = res.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Status(status, body));
        }
        let run_id = res
            .headers()
            .get(crate::RUN_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| RunId::new(v).ok())
            .ok_or_else(|| ClientError::Transport("no run id header".to_owned()))?;
        let mut s = self.observe(agent, &run_id, 0);
        s.body = Some(res.bytes_stream().boxed());
        Ok((run_id, s))
    }

    /// Follow `run_id` from `offset` to its end (or a suspension), reconnecting from the last
    /// delivered cursor after a dropped connection.
    pub fn observe(&self, agent: &str, run_id: &RunId, offset: u64) -> RunStream {
        RunStream {
            client: self.clone(),
            url: self.url(agent, &format!("/runs/{run_id}/events")),
            next: offset,
            body: None,
            parser: SseParser::new(),
            ready: VecDeque::new(),
            failures: 0,
            reconnects: 0,
            done: false,
        }
    }

    /// The run's status (`{runId, status, nextCursor, owner, …}`).
    ///
    /// # Errors
    /// The server's problem, or a transport error.
    pub async fn status(&self, agent: &str, run_id: &RunId) -> Result<Value, ClientError> {
        Self::json(self.auth(self.http.get(self.url(agent, &format!("/runs/{run_id}"))))).await
    }

    /// The agent's runs, optionally in one status.
    ///
    /// # Errors
    /// The server's problem, or a transport error.
    pub async fn runs(&self, agent: &str, status: Option<&str>) -> Result<Value, ClientError> {
        let mut req = self.http.get(self.url(agent, "/runs"));
        if let Some(s) = status {
            req = req.query(&[("status", s)]);
        }
        Self::json(self.auth(req)).await
    }

    /// The server's mounted agents (`GET /health`).
    ///
    /// # Errors
    /// A transport error.
    pub async fn health(&self) -> Result<Value, ClientError> {
        Self::json(self.http.get(format!("{}/health", self.base))).await
    }

    /// Abort the run; returns the status it ended in.
    ///
    /// # Errors
    /// The server's problem, or a transport error.
    pub async fn abort(&self, agent: &str, run_id: &RunId) -> Result<String, ClientError> {
        let v = Self::json(
            self.auth(
                self.http
                    .post(self.url(agent, &format!("/runs/{run_id}/abort"))),
            ),
        )
        .await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    /// Approve (or decline) the suspended tool call; the run continues on the server. Follow
    /// it with [`observe`](Client::observe).
    ///
    /// # Errors
    /// The server's problem, or a transport error.
    pub async fn approve(
        &self,
        agent: &str,
        run_id: &RunId,
        tool_call_id: &str,
        approved: bool,
    ) -> Result<(), ClientError> {
        let route = if approved {
            "approve-tool-call"
        } else {
            "decline-tool-call"
        };
        let res = self
            .auth(
                self.http
                    .post(self.url(agent, &format!("/runs/{run_id}/{route}")))
                    .json(&serde_json::json!({"toolCallId": tool_call_id})),
            )
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        if status >= 400 {
            return Err(ClientError::Status(
                status,
                res.json().await.unwrap_or(Value::Null),
            ));
        }
        Ok(())
    }
}

/// The events of one run from an offset, across reconnects: each cursor exactly once, in
/// order. Ends after the run's terminal event or a suspension.
pub struct RunStream {
    client: Client,
    url: String,
    next: u64,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    parser: SseParser,
    ready: VecDeque<SseFrame>,
    failures: u32,
    reconnects: u64,
    done: bool,
}

impl fmt::Debug for RunStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunStream")
            .field("url", &self.url)
            .field("next", &self.next)
            .field("reconnects", &self.reconnects)
            .finish()
    }
}

enum Step {
    Event(Event),
    Error(ClientError),
    End,
}

impl RunStream {
    /// The next cursor this stream will deliver.
    pub fn next_cursor(&self) -> u64 {
        self.next
    }

    /// How many times it reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// As a `Stream` of events.
    pub fn into_stream(self) -> Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>> {
        stream::unfold(self, |mut s| async move {
            if s.done {
                return None;
            }
            match s.step().await {
                Step::Event(e) => Some((Ok(e), s)),
                Step::Error(e) => {
                    s.done = true;
                    Some((Err(e), s))
                }
                Step::End => None,
            }
        })
        .boxed()
    }

    async fn connect(&mut self) -> Result<bool, ClientError> {
        let req = self.client.auth(
            self.client
                .http
                .get(&self.url)
                .header("accept", "text/event-stream"),
        );
        // The resume point, as a browser would send it.
        let req = if self.next > 0 {
            req.header("last-event-id", (self.next - 1).to_string())
        } else {
            req
        };
        let res = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        if status == 204 {
            return Ok(false);
        }
        if status >= 400 {
            let body = res.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Status(status, body));
        }
        self.body = Some(res.bytes_stream().boxed());
        self.parser = SseParser::new();
        Ok(true)
    }

    async fn step(&mut self) -> Step {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                match frame.event.as_deref() {
                    Some("error") if frame.id.is_none() => {
                        // The connection failed server-side: reconnect from the last cursor.
                        self.body = None;
                        self.ready.clear();
                        continue;
                    }
                    _ => {}
                }
                let ev: Event = match serde_json::from_str(&frame.data) {
                    Ok(ev) => ev,
                    Err(e) => {
                        return Step::Error(ClientError::Transport(format!("bad event: {e}")))
                    }
                };
                if ev.cursor < self.next {
                    continue;
                }
                self.next = ev.cursor + 1;
                self.failures = 0;
                if ev.kind.is_terminal() || ev.kind == EventKind::Suspended {
                    self.done = true;
                }
                return Step::Event(ev);
            }
            if let Some(body) = &mut self.body {
                match body.next().await {
                    Some(Ok(bytes)) => {
                        let mut frames = Vec::new();
                        if self.parser.push(&bytes, &mut frames).is_err() {
                            self.body = None;
                        }
                        self.ready.extend(frames);
                        continue;
                    }
                    Some(Err(_)) | None => self.body = None,
                }
            }
            // No body: (re)connect with backoff.
            if self.failures > 0 {
                let exp = self.failures.min(16) - 1;
                let pause = self
                    .client
                    .reconnect
                    .min_backoff
                    .saturating_mul(1 << exp)
                    .min(self.client.reconnect.max_backoff);
                tokio::time::sleep(pause).await;
            }
            if self.failures >= self.client.reconnect.max_attempts {
                return Step::Error(ClientError::Transport(format!(
                    "gave up after {} reconnects without progress",
                    self.failures
                )));
            }
            self.failures += 1;
            match self.connect().await {
                Ok(true) => self.reconnects += 1,
                Ok(false) => return Step::End,
                Err(ClientError::Status(s, b)) if s < 500 => {
                    return Step::Error(ClientError::Status(s, b))
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn frames_split_anywhere_parse_the_same() {
        let text = b": ping\n\nid: 3\nevent: text-delta\ndata: {\"a\":1}\n\r\ndata: x\rdata: y\n\n";
        let whole = parse(&[text]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].id.as_deref(), Some("3"));
        assert_eq!(whole[0].event.as_deref(), Some("text-delta"));
        assert_eq!(whole[1].data, "x\ny");
        for split in 0..text.len() {
            assert_eq!(
                parse(&[&text[..split], &text[split..]]),
                whole,
                "split at {split}"
            );
        }
    }

    /// The byte-at-a-time parser this one replaced, as the reference.
    fn reference(bytes: &[u8]) -> Vec<SseFrame> {
        let (mut out, mut frame, mut line) = (Vec::new(), SseFrame::default(), Vec::new());
        let (mut has_field, mut last_cr) = (false, false);
        for &b in bytes {
            if last_cr && b == b'\n' {
                last_cr = false;
                continue;
            }
            last_cr = b == b'\r';
            if b != b'\n' && b != b'\r' {
                line.push(b);
                continue;
            }
            let l = std::mem::take(&mut line);
            if l.is_empty() {
                if has_field {
                    out.push(std::mem::take(&mut frame));
                }
                has_field = false;
                continue;
            }
            if l[0] == b':' {
                continue;
            }
            let text = String::from_utf8_lossy(&l);
            let (field, value) = match text.find(':') {
                Some(i) => (
                    &text[..i],
                    text[i + 1..].strip_prefix(' ').unwrap_or(&text[i + 1..]),
                ),
                None => (&text[..], ""),
            };
            match field {
                "data" => {
                    if has_field && !frame.data.is_empty() {
                        frame.data.push('\n');
                    }
                    frame.data.push_str(value);
                    has_field = true;
                }
                "event" => {
                    frame.event = Some(value.to_owned());
                    has_field = true;
                }
                "id" if !value.contains('\0') => {
                    frame.id = Some(value.to_owned());
                    has_field = true;
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn parses_like_the_byte_at_a_time_reference() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..3000 {
            let len = (next() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| b"data:id event\n\r: x\0\xff\n\n"[(next() % 22) as usize])
                .collect();
            let cut = (next() as usize) % (len + 1);
            assert_eq!(
                parse(&[&bytes[..cut], &bytes[cut..]]),
                reference(&bytes),
                "{bytes:?} cut at {cut}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut p = SseParser::new();
            let mut out = Vec::new();
            let len = (rng % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    b"data:id event\n\r: x\0\xff"[(rng % 20) as usize]
                })
                .collect();
            let _ = p.push(&bytes, &mut out);
        }
        let mut p = SseParser::new();
        let big = vec![b'a'; MAX_FRAME + 1];
        assert_eq!(p.push(&big, &mut Vec::new()), Err(FrameTooLarge));
    }
}

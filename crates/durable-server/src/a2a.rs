//! The A2A (Agent2Agent) protocol, v0.3, over JSON-RPC 2.0: an agent card and
//! `message/send`, `message/stream`, `tasks/get`, `tasks/cancel`, `tasks/resubscribe`.
//!
//! A task is a durable run (task id = run id) and its `contextId` is the run's
//! conversation-memory thread. Like the chat protocol, the mapping ([`TaskEncoder`]) is a pure
//! function of the run's log, so a replay rebuilds exactly what a live client saw:
//! - the run's text streams as the `response` artifact: the first chunk has `append: false`,
//!   the next ones `append: true`, and a last empty chunk has `lastChunk: true`; a step re-run
//!   after a crash (`step-restart`) sends the artifact again with `append: false` (the text
//!   before that step), so a client never keeps a duplicated step;
//! - at the end the final answer is the complete `result` artifact (text and a data part with
//!   the finish reason, usage and steps), then a `completed` status with `final: true`;
//! - a run waiting for a tool approval is `input-required` (`final: true`); a follow-up
//!   message on the task (`taskId`) with a data part `{"approved": true|false, "reason"?}`
//!   (or the text `approve` / `decline`) answers it and resumes the run;
//! - every event carries its position, `metadata: {"cursor", "index"}`, and the SSE `id:` of
//!   an event's last frame is its log cursor: `tasks/resubscribe` with
//!   `metadata: {"cursor", "index"}` of the last event received (or `Last-Event-ID`) resumes
//!   after it with no duplicate and no gap; without a position it replays the task from the
//!   start.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, OriginalUri, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use durable_core::agent::{ResumeData, StreamOptions};
use durable_core::{validate_name, Event, EventKind, ObserveOptions, RunId, RunRecord, RunStatus};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Map, Value};

use crate::problem::Problem;
use crate::routes::{authorize, owner_of_new_run, resume_offset, run_headers};
use crate::server::{DurableServer, Mounted};

/// The A2A protocol version served.
pub const PROTOCOL_VERSION: &str = "0.3.0";
/// Where agent cards are served (at the root, and under `/a2a/{agent_id}/`).
pub const AGENT_CARD_PATH: &str = ".well-known/agent-card.json";
/// The id of the artifact the run's text streams into.
pub const RESPONSE_ARTIFACT: &str = "response";
/// The id of the complete final artifact.
pub const RESULT_ARTIFACT: &str = "result";

/// JSON-RPC 2.0 and A2A error codes.
pub mod codes {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC 2.0 request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The method's parameters are invalid.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The server failed.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A2A: no such task.
    pub const TASK_NOT_FOUND: i64 = -32001;
    /// A2A: the task is already in a terminal state.
    pub const TASK_NOT_CANCELABLE: i64 = -32002;
    /// A2A: push notifications are not supported.
    pub const PUSH_NOTIFICATION_NOT_SUPPORTED: i64 = -32003;
    /// A2A: the operation is not supported.
    pub const UNSUPPORTED_OPERATION: i64 = -32004;
    /// A2A: a part's content type is not supported.
    pub const CONTENT_TYPE_NOT_SUPPORTED: i64 = -32005;
    /// A2A: no authenticated extended card is configured.
    pub const EXTENDED_CARD_NOT_CONFIGURED: i64 = -32007;
}

/// The A2A routes (state: the server): `GET /.well-known/agent-card.json` (the default
/// agent), `GET /a2a/{agent_id}/.well-known/agent-card.json` and `POST /a2a/{agent_id}`.
pub(crate) fn router() -> Router<DurableServer> {
    Router::new()
        .route("/.well-known/agent-card.json", get(default_card))
        .route("/a2a/{agent_id}", post(rpc))
        .route(
            "/a2a/{agent_id}/.well-known/agent-card.json",
            get(agent_card),
        )
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC envelope

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The error code ([`codes`]).
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

/// A parsed JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The request id (`None`: a notification, answered with no body).
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The parameters (an empty object when absent).
    pub params: Map<String, Value>,
}

/// Parse a JSON-RPC 2.0 request body. Never panics; the error carries the id to answer with
/// (`null` when the request's id could not be read).
///
/// # Errors
/// `-32700` for a body that is not JSON, `-32600` for anything but a single request object
/// (batches included), `-32602` for parameters that are not an object.
pub fn parse_request(body: &[u8]) -> Result<RpcRequest, (Value, RpcError)> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Value::Null,
            RpcError::new(codes::PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let Value::Object(mut o) = v else {
        return Err((
            Value::Null,
            RpcError::new(
                codes::INVALID_REQUEST,
                "the request must be one JSON-RPC 2.0 request object (batches are not supported)",
            ),
        ));
    };
    let id = match o.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::new(
                    codes::INVALID_REQUEST,
                    "`id` must be a string, a number or null",
                ),
            ))
        }
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            answer_id,
            RpcError::new(codes::INVALID_REQUEST, "`jsonrpc` must be \"2.0\""),
        ));
    }
    let method = match o.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => {
            return Err((
                answer_id,
                RpcError::new(
                    codes::INVALID_REQUEST,
                    "`method` must be a non-empty string",
                ),
            ))
        }
    };
    let params = match o.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err((answer_id, RpcError::params("`params` must be an object"))),
    };
    Ok(RpcRequest { id, method, params })
}

fn rpc_error_json(id: &Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()})
}

fn rpc_result_json(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// How a request fails: a JSON-RPC error (HTTP 200), or an HTTP problem (401/403/413/408, as
/// on every other route).
enum Failure {
    Rpc(RpcError),
    Http(Problem),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Self {
        Failure::Rpc(e)
    }
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        match p.status_code() {
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::REQUEST_TIMEOUT => Failure::Http(p),
            StatusCode::NOT_FOUND => Failure::Rpc(RpcError::new(codes::TASK_NOT_FOUND, p.detail)),
            StatusCode::BAD_REQUEST => Failure::Rpc(RpcError::params(p.detail)),
            _ => Failure::Rpc(RpcError::new(codes::INTERNAL_ERROR, p.detail)),
        }
    }
}

/// The raw body, read under the request timeout and the body limit (like [`JsonBody`]
/// (crate::routes::JsonBody), but a body that is not JSON is a JSON-RPC parse error).
struct RawBody(Bytes);

impl FromRequest<DurableServer> for RawBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &DurableServer) -> Result<Self, Self::Rejection> {
        let read = tokio::time::timeout(
            state.config().request_timeout,
            Bytes::from_request(req, state),
        );
        let bytes = read
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request body did not arrive within the request timeout",
                )
            })?
            .map_err(|r| {
                let status = r.status();
                let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "invalid_input"
                };
                Problem::new(status, kind, r.body_text())
            })?;
        Ok(RawBody(bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters

/// A user message of `message/send` / `message/stream`, validated.
#[derive(Debug, Clone, PartialEq)]
struct UserMessage {
    text: String,
    data: Vec<Map<String, Value>>,
    task_id: Option<RunId>,
    context_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct SendParams {
    message: UserMessage,
    blocking: bool,
}

fn opt_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, RpcError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params(format!("`{key}` must be a string"))),
    }
}

fn task_id(s: &str) -> Result<RunId, RpcError> {
    RunId::new(s).map_err(|e| RpcError::params(format!("invalid task id: {}", e.message())))
}

fn parse_send(params: &Map<String, Value>) -> Result<SendParams, RpcError> {
    let Some(Value::Object(m)) = params.get("message") else {
        return Err(RpcError::params("`message` (an object) is required"));
    };
    if let Some(kind) = opt_str(m, "kind")? {
        if kind != "message" {
            return Err(RpcError::params("`message.kind` must be \"message\""));
        }
    }
    match opt_str(m, "messageId")? {
        Some(id) if !id.is_empty() => {}
        _ => return Err(RpcError::params("`message.messageId` is required")),
    }
    if opt_str(m, "role")? != Some("user") {
        return Err(RpcError::params("`message.role` must be \"user\""));
    }
    let Some(Value::Array(parts)) = m.get("parts") else {
        return Err(RpcError::params("`message.parts` (an array) is required"));
    };
    if parts.is_empty() {
        return Err(RpcError::params("`message.parts` is empty"));
    }
    let mut text = Vec::new();
    let mut data = Vec::new();
    for p in parts {
        let Value::Object(p) = p else {
            return Err(RpcError::params("every part must be an object"));
        };
        match opt_str(p, "kind")? {
            Some("text") => match p.get("text") {
                Some(Value::String(t)) => text.push(t.clone()),
                _ => return Err(RpcError::params("a text part needs a string `text`")),
            },
            Some("data") => match p.get("data") {
                Some(Value::Object(d)) => data.push(d.clone()),
                _ => return Err(RpcError::params("a data part needs an object `data`")),
            },
            Some("file") => {
                return Err(RpcError::new(
                    codes::CONTENT_TYPE_NOT_SUPPORTED,
                    "file parts are not supported: send text or data parts",
                ))
            }
            _ => {
                return Err(RpcError::params(
                    "a part's `kind` must be \"text\", \"data\" or \"file\"",
                ))
            }
        }
    }
    let task_id = opt_str(m, "taskId")?.map(task_id).transpose()?;
    let context_id = match opt_str(m, "contextId")? {
        Some(c) => {
            validate_name("contextId", c).map_err(|e| RpcError::params(e.message().to_owned()))?;
            Some(c.to_owned())
        }
        None => None,
    };
    let blocking = match params.get("configuration") {
        None | Some(Value::Null) => true,
        Some(Value::Object(c)) => {
            if c.get("pushNotificationConfig")
                .is_some_and(|v| !v.is_null())
            {
                return Err(RpcError::new(
                    codes::PUSH_NOTIFICATION_NOT_SUPPORTED,
                    "push notifications are not supported",
                ));
            }
            match c.get("blocking") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(RpcError::params(
                        "`configuration.blocking` must be a boolean",
                    ))
                }
            }
        }
        Some(_) => return Err(RpcError::params("`configuration` must be an object")),
    };
    Ok(SendParams {
        message: UserMessage {
            text: text.join("\n"),
            data,
            task_id,
            context_id,
        },
        blocking,
    })
}

fn parse_task_id(params: &Map<String, Value>) -> Result<RunId, RpcError> {
    match opt_str(params, "id")? {
        Some(id) => task_id(id),
        None => Err(RpcError::params("`id` (the task id) is required")),
    }
}

/// The first position to send: `(cursor, index)` of A2A events, in order.
type Position = (u64, u64);

/// Where `tasks/resubscribe` starts: after `Last-Event-ID`, else after
/// `metadata: {cursor, index}` (the last event received), else from the start.
fn resubscribe_from(headers: &HeaderMap, params: &Map<String, Value>) -> Result<Position, Failure> {
    if headers.contains_key("last-event-id") {
        return Ok((resume_offset(headers, None)?, 0));
    }
    let Some(meta) = params.get("metadata").filter(|m| !m.is_null()) else {
        return Ok((0, 0));
    };
    let Value::Object(meta) = meta else {
        return Err(RpcError::params("`metadata` must be an object").into());
    };
    let num = |k: &str| match meta.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| RpcError::params(format!("`metadata.{k}` must be an unsigned integer"))),
    };
    match (num("cursor")?, num("index")?) {
        (None, None) => Ok((0, 0)),
        (Some(c), i) => match i.unwrap_or(u64::MAX).checked_add(1) {
            Some(i) => Ok((c, i)),
            None => c
                .checked_add(1)
                .map(|c| (c, 0))
                .ok_or_else(|| RpcError::params("`metadata.cursor` is out of range").into()),
        },
        (None, Some(_)) => Err(RpcError::params("`metadata.index` needs `metadata.cursor`").into()),
    }
}

/// The answer to a tool approval in a follow-up message: a data part `{approved, reason?,
/// toolCallId?}`, or the text `approve`/`yes` or `decline`/`no`.
fn approval_answer(m: &UserMessage) -> Option<ResumeData> {
    for d in &m.data {
        if let Some(approved) = d.get("approved").and_then(Value::as_bool) {
            let reason = d.get("reason").and_then(Value::as_str).map(str::to_owned);
            let mut r = if approved {
                ResumeData::approve()
            } else {
                ResumeData::decline(reason)
            };
            if let Some(call) = d.get("toolCallId").and_then(Value::as_str) {
                r = r.for_call(call);
            }
            return Some(r);
        }
    }
    match m.text.trim().to_ascii_lowercase().as_str() {
        "approve" | "approved" | "yes" | "y" | "ok" => Some(ResumeData::approve()),
        "decline" | "declined" | "deny" | "no" | "n" | "reject" => Some(ResumeData::decline(None)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The mapping of a run's events

/// ISO 8601 (UTC, milliseconds) of Unix milliseconds.
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The A2A task state of a run status.
pub fn task_state(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Pending => "submitted",
        RunStatus::Running => "working",
        RunStatus::Suspended => "input-required",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Aborted => "canceled",
        _ => "unknown",
    }
}

/// Turns a run's events into A2A stream events (`task`, `status-update`, `artifact-update`)
/// and folds them into the task's current state.
#[derive(Debug, Clone)]
pub struct TaskEncoder {
    task_id: String,
    context_id: String,
    /// The `response` artifact's text so far.
    text: String,
    /// Its length when the current step started (a restarted step truncates to it).
    step_base: usize,
    streamed: bool,
    suspended: bool,
    approval: Option<Value>,
    state: &'static str,
    status_message: Option<Value>,
    result: Option<Value>,
    at: u64,
}

impl TaskEncoder {
    /// An encoder for task `run_id` in context `context_id`.
    pub fn new(run_id: &RunId, context_id: &str) -> Self {
        Self {
            task_id: run_id.as_str().to_owned(),
            context_id: context_id.to_owned(),
            text: String::new(),
            step_base: 0,
            streamed: false,
            suspended: false,
            approval: None,
            state: "submitted",
            status_message: None,
            result: None,
            at: 0,
        }
    }

    fn status(&mut self, state: &'static str, message: Option<Value>, last: bool) -> Value {
        self.state = state;
        self.status_message = message.clone();
        let mut status = json!({"state": state, "timestamp": timestamp(self.at)});
        if let Some(m) = message {
            status["message"] = m;
        }
        json!({
            "kind": "status-update",
            "taskId": self.task_id,
            "contextId": self.context_id,
            "status": status,
            "final": last,
        })
    }

    fn agent_message(&self, cursor: u64, parts: Value) -> Value {
        json!({
            "kind": "message",
            "messageId": format!("{}-{cursor}", self.task_id),
            "role": "agent",
            "taskId": self.task_id,
            "contextId": self.context_id,
            "parts": parts,
        })
    }

    fn artifact(&self, id: &str, parts: Value, append: bool, last: bool) -> Value {
        json!({
            "kind": "artifact-update",
            "taskId": self.task_id,
            "contextId": self.context_id,
            "artifact": {"artifactId": id, "name": id, "parts": parts},
            "append": append,
            "lastChunk": last,
        })
    }

    /// After an answered approval, the first event of the continuation says `working`.
    fn resumed(&mut self, out: &mut Vec<Value>) {
        if self.suspended {
            self.suspended = false;
            self.approval = None;
            out.push(self.status("working", None, false));
        }
    }

    /// Append the A2A events of `ev` to `out`.
    pub fn encode(&mut self, ev: &Event, out: &mut Vec<Value>) {
        let d = ev.data.to_value();
        let s = |k: &str| {
            d.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let field = |k: &str| d.get(k).cloned().unwrap_or(Value::Null);
        self.at = ev.at;
        match &ev.kind {
            EventKind::Start => {
                out.push(json!({
                    "kind": "task",
                    "id": self.task_id,
                    "contextId": self.context_id,
                    "status": {"state": "submitted", "timestamp": timestamp(ev.at)},
                }));
                out.push(self.status("working", None, false));
            }
            EventKind::StepStart => {
                self.resumed(out);
                self.step_base = self.text.len();
            }
            EventKind::TextDelta => {
                self.resumed(out);
                let t = s("text");
                if !t.is_empty() {
                    let append = self.streamed;
                    self.text.push_str(&t);
                    self.streamed = true;
                    out.push(self.artifact(
                        RESPONSE_ARTIFACT,
                        json!([{"kind": "text", "text": t}]),
                        append,
                        false,
                    ));
                }
            }
            EventKind::StepRestart => {
                let mut base = self.step_base.min(self.text.len());
                while !self.text.is_char_boundary(base) {
                    base -= 1;
                }
                self.text.truncate(base);
                if self.streamed {
                    out.push(self.artifact(
                        RESPONSE_ARTIFACT,
                        json!([{"kind": "text", "text": self.text}]),
                        false,
                        false,
                    ));
                }
            }
            EventKind::ToolCall => {
                self.resumed(out);
                let data = json!({"type": "tool-call", "toolCallId": s("tool_call_id"), "toolName": s("tool_name"), "args": field("args")});
                let m = self.agent_message(ev.cursor, json!([{"kind": "data", "data": data}]));
                out.push(self.status("working", Some(m), false));
            }
            EventKind::ToolResult | EventKind::ToolError => {
                self.resumed(out);
                let mut data = json!({"toolCallId": s("tool_call_id")});
                if ev.kind == EventKind::ToolError {
                    data["type"] = "tool-error".into();
                    data["error"] = field("error");
                } else {
                    data["type"] = "tool-result".into();
                    data["result"] = field("result");
                    if d.get("declined").and_then(Value::as_bool) == Some(true) {
                        data["declined"] = true.into();
                    }
                }
                let m = self.agent_message(ev.cursor, json!([{"kind": "data", "data": data}]));
                out.push(self.status("working", Some(m), false));
            }
            EventKind::ToolCallApproval => {
                self.approval = Some(json!({
                    "type": "tool-approval",
                    "toolCallId": s("tool_call_id"),
                    "toolName": s("tool_name"),
                    "args": field("args"),
                }));
            }
            EventKind::Suspended => {
                self.suspended = true;
                let approval = self.approval.clone().unwrap_or_else(|| {
                    json!({"type": "tool-approval", "toolCallId": s("tool_call_id"), "toolName": s("tool_name"), "args": field("args")})
                });
                let tool = approval["toolName"].as_str().unwrap_or_default().to_owned();
                let hint = format!(
                    "The tool {tool:?} needs approval: send a message on this task with a data part {{\"approved\": true}} or {{\"approved\": false, \"reason\": \"…\"}}."
                );
                let m = self.agent_message(
                    ev.cursor,
                    json!([{"kind": "data", "data": approval}, {"kind": "text", "text": hint}]),
                );
                out.push(self.status("input-required", Some(m), true));
            }
            EventKind::Finish => {
                if self.streamed {
                    out.push(self.artifact(
                        RESPONSE_ARTIFACT,
                        json!([{"kind": "text", "text": ""}]),
                        true,
                        true,
                    ));
                }
                let parts = json!([
                    {"kind": "text", "text": s("text")},
                    {"kind": "data", "data": {"reason": field("reason"), "usage": field("usage"), "steps": field("steps")}},
                ]);
                let art = self.artifact(RESULT_ARTIFACT, parts, false, true);
                self.result = Some(art["artifact"].clone());
                out.push(art);
                out.push(self.status("completed", None, true));
            }
            EventKind::Error => {
                let m =
                    self.agent_message(ev.cursor, json!([{"kind": "text", "text": s("message")}]));
                out.push(self.status("failed", Some(m), true));
            }
            EventKind::Abort => out.push(self.status("canceled", None, true)),
            _ => {}
        }
    }

    /// The task as `tasks/get` answers it (`state`: the run record's, when known).
    pub fn task(&self, state: Option<&'static str>) -> Value {
        let state = state.unwrap_or(self.state);
        let mut status = json!({"state": state, "timestamp": timestamp(self.at)});
        if state == self.state {
            if let Some(m) = &self.status_message {
                status["message"] = m.clone();
            }
        }
        let mut artifacts = Vec::new();
        if self.streamed {
            artifacts.push(json!({"artifactId": RESPONSE_ARTIFACT, "name": RESPONSE_ARTIFACT, "parts": [{"kind": "text", "text": self.text}]}));
        }
        if let Some(r) = &self.result {
            artifacts.push(r.clone());
        }
        json!({
            "kind": "task",
            "id": self.task_id,
            "contextId": self.context_id,
            "status": status,
            "artifacts": artifacts,
        })
    }
}

/// Whether `v` is the final status of a task that is over. An `input-required` status is
/// final too, but a replay goes on past it when the run was resumed: the events stream ends
/// at a suspension only when it is the log's last event.
fn ends(v: &Value) -> bool {
    v.get("final").and_then(Value::as_bool) == Some(true)
        && v["status"]["state"].as_str() != Some("input-required")
}

/// The A2A stream of a run: JSON-RPC responses to request `id`, for events at or after
/// `from`; ends after the first final status (or an error).
fn a2a_stream<S>(
    id: Value,
    mut enc: TaskEncoder,
    events: S,
    from: Position,
) -> impl Stream<Item = Bytes> + Send + 'static
where
    S: Stream<Item = durable_core::Result<Event>> + Send + 'static,
{
    let mut ended = false;
    events
        .map(move |item| {
            let mut frames = Vec::new();
            if ended {
                return (frames, true);
            }
            match item {
                Ok(ev) => {
                    let mut out = Vec::new();
                    enc.encode(&ev, &mut out);
                    let n = out.len();
                    for (i, mut v) in out.into_iter().enumerate() {
                        let last = ends(&v);
                        let pos = (ev.cursor, i as u64);
                        if pos >= from {
                            v["metadata"] = json!({"cursor": ev.cursor, "index": i});
                            let data = rpc_result_json(&id, v).to_string();
                            let sse_id = (i + 1 == n || last).then_some(ev.cursor);
                            frames.push(frame(sse_id, &data));
                        }
                        if last {
                            ended = true;
                            break;
                        }
                    }
                }
                Err(e) => {
                    let err = RpcError::new(codes::INTERNAL_ERROR, e.to_string());
                    frames.push(frame(None, &rpc_error_json(&id, &err).to_string()));
                    ended = true;
                }
            }
            (frames, false)
        })
        .take_while(|(_, stop)| futures::future::ready(!stop))
        .flat_map(|(frames, _)| stream::iter(frames))
}

fn sse_response<S>(
    server: &DurableServer,
    id: Value,
    enc: TaskEncoder,
    events: S,
    from: Position,
) -> Response
where
    S: Stream<Item = durable_core::Result<Event>> + Send + 'static,
{
    // Every frame ready at one wake-up goes out in one body chunk (one write for many events),
    // and a `: ping` comment after `heartbeat` without a frame.
    let frames = a2a_stream(id, enc, events, from)
        .ready_chunks(MAX_BATCH)
        .map(|batch| batch.concat());
    let heartbeat = server.config().heartbeat;
    let body = stream::unfold(Box::pin(frames), move |mut frames| async move {
        match tokio::time::timeout(heartbeat, frames.next()).await {
            Ok(Some(b)) => Some((Ok::<_, Infallible>(Bytes::from(b)), frames)),
            Ok(None) => None,
            Err(_) => Some((Ok(Bytes::from_static(b": ping\n\n")), frames)),
        }
    });
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Most frames written in one body chunk.
const MAX_BATCH: usize = 256;

/// One SSE frame: `id: <cursor>` (on an event's last frame) and one `data:` line (JSON has no
/// raw line break).
fn frame(id: Option<u64>, data: &str) -> Bytes {
    let mut f = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        f.push_str("id: ");
        f.push_str(&id.to_string());
        f.push('\n');
    }
    f.push_str("data: ");
    f.push_str(data);
    f.push_str("\n\n");
    Bytes::from(f)
}

// ---------------------------------------------------------------------------------------------
// Handlers

fn base_url(headers: &HeaderMap, path: &str, suffix: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    let prefix = path.strip_suffix(suffix).unwrap_or("");
    format!("{scheme}://{host}{prefix}")
}

fn card(agent: &Mounted, base: &str) -> Value {
    let a = agent.durable().agent();
    let url = format!("{base}/a2a/{}", agent.id());
    let tools: Vec<&str> = a.tool_specs().iter().map(|t| t.name.as_str()).collect();
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "name": a.name(),
        "description": format!("Durable agent {:?}: runs survive restarts and streams resume exactly.", a.name()),
        "url": url,
        "preferredTransport": "JSONRPC",
        "additionalInterfaces": [{"url": url, "transport": "JSONRPC"}],
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": {"streaming": true, "pushNotifications": false, "stateTransitionHistory": false},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [{
            "id": agent.id(),
            "name": a.name(),
            "description": format!("Talk to {:?}", a.name()),
            "tags": tools,
        }],
    })
}

/// `GET /.well-known/agent-card.json`: the card of the default (chat) agent.
async fn default_card(
    State(server): State<DurableServer>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let agent = server
        .chat_agent()
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not_found", "no agent is mounted"))?;
    let base = base_url(&headers, uri.path(), "/.well-known/agent-card.json");
    Ok(Json(card(agent, &base)))
}

/// `GET /a2a/{agent_id}/.well-known/agent-card.json`.
async fn agent_card(
    State(server): State<DurableServer>,
    Path(agent_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let agent = server.agent_or_404(&agent_id)?;
    let suffix = format!("/a2a/{agent_id}/.well-known/agent-card.json");
    let base = base_url(&headers, uri.path(), &suffix);
    Ok(Json(card(agent, &base)))
}

/// `POST /a2a/{agent_id}`: one JSON-RPC request.
async fn rpc(
    State(server): State<DurableServer>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let agent = match server.agent_or_404(&agent_id) {
        Ok(a) => a,
        Err(p) => return p.into_response(),
    };
    let req = match parse_request(&body) {
        Ok(r) => r,
        Err((id, e)) => return Json(rpc_error_json(&id, &e)).into_response(),
    };
    let id = req.id.clone().unwrap_or(Value::Null);
    let out = dispatch(&server, agent, &headers, &req).await;
    match out {
        _ if req.id.is_none() => StatusCode::NO_CONTENT.into_response(),
        Ok(Reply::Result(v)) => Json(rpc_result_json(&id, v)).into_response(),
        Ok(Reply::Stream(r)) => r,
        Err(Failure::Rpc(e)) => Json(rpc_error_json(&id, &e)).into_response(),
        Err(Failure::Http(p)) => p.into_response(),
    }
}

enum Reply {
    Result(Value),
    Stream(Response),
}

async fn dispatch(
    server: &DurableServer,
    agent: &Mounted,
    headers: &HeaderMap,
    req: &RpcRequest,
) -> Result<Reply, Failure> {
    let id = req.id.clone().unwrap_or(Value::Null);
    match req.method.as_str() {
        "message/send" => {
            let p = parse_send(&req.params)?;
            send(server, agent, headers, id, p, false).await
        }
        "message/stream" => {
            let p = parse_send(&req.params)?;
            send(server, agent, headers, id, p, true).await
        }
        "tasks/get" => {
            let run_id = parse_task_id(&req.params)?;
            match req.params.get("historyLength") {
                None | Some(Value::Null) => {}
                Some(v) if v.as_u64().is_some() => {}
                Some(_) => {
                    return Err(
                        RpcError::params("`historyLength` must be an unsigned integer").into(),
                    )
                }
            }
            authorize(server, agent, &run_id, headers, None).await?;
            let record = task_record(server, agent, &run_id).await?;
            Ok(Reply::Result(task_now(server, agent, &record).await?))
        }
        "tasks/cancel" => {
            let run_id = parse_task_id(&req.params)?;
            authorize(server, agent, &run_id, headers, None).await?;
            let record = task_record(server, agent, &run_id).await?;
            if record.status.is_terminal() {
                return Err(not_cancelable(record.status).into());
            }
            let status = server.timed(agent.abort(&run_id)).await?;
            if status != RunStatus::Aborted && status.is_terminal() {
                return Err(not_cancelable(status).into());
            }
            tracing::info!(agent = %agent.id(), run_id = %run_id, "a2a task canceled");
            let record = task_record(server, agent, &run_id).await?;
            Ok(Reply::Result(task_now(server, agent, &record).await?))
        }
        "tasks/resubscribe" => {
            let run_id = parse_task_id(&req.params)?;
            let from = resubscribe_from(headers, &req.params)?;
            authorize(server, agent, &run_id, headers, None).await?;
            let record = task_record(server, agent, &run_id).await?;
            let run = server
                .timed(agent.observe(&run_id, ObserveOptions::from(0)))
                .await?;
            let enc = TaskEncoder::new(&run_id, &context_of(&record));
            Ok(Reply::Stream(sse_response(server, id, enc, run, from)))
        }
        "tasks/pushNotificationConfig/set"
        | "tasks/pushNotificationConfig/get"
        | "tasks/pushNotificationConfig/list"
        | "tasks/pushNotificationConfig/delete" => Err(RpcError::new(
            codes::PUSH_NOTIFICATION_NOT_SUPPORTED,
            "push notifications are not supported",
        )
        .into()),
        "agent/getAuthenticatedExtendedCard" => Err(RpcError::new(
            codes::EXTENDED_CARD_NOT_CONFIGURED,
            "no authenticated extended card is configured",
        )
        .into()),
        m => Err(RpcError::new(codes::METHOD_NOT_FOUND, format!("method not found: {m:?}")).into()),
    }
}

fn not_cancelable(status: RunStatus) -> RpcError {
    RpcError::new(
        codes::TASK_NOT_CANCELABLE,
        format!("the task is {} and cannot be canceled", task_state(status)),
    )
}

async fn task_record(
    server: &DurableServer,
    agent: &Mounted,
    run_id: &RunId,
) -> Result<RunRecord, Failure> {
    match server.timed(agent.record(run_id)).await {
        Ok(r) => Ok(r),
        Err(p) if p.status_code() == StatusCode::NOT_FOUND => {
            Err(RpcError::new(codes::TASK_NOT_FOUND, format!("task {run_id} not found")).into())
        }
        Err(p) => Err(p.into()),
    }
}

fn context_of(record: &RunRecord) -> String {
    record
        .data
        .get("thread_id")
        .and_then(Value::as_str)
        .map_or_else(|| record.run_id.as_str().to_owned(), str::to_owned)
}

async fn read_all(
    log: &durable_core::EventLog,
    run_id: &RunId,
    len: u64,
) -> durable_core::Result<Vec<Event>> {
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        let batch = log.read(run_id, out.len() as u64, 1024).await?;
        let before = out.len();
        out.extend(batch.into_iter().take_while(|e| e.cursor < len));
        if out.len() == before {
            break;
        }
    }
    Ok(out)
}

/// The encoder folded over the log's first `len` events.
async fn fold(
    server: &DurableServer,
    agent: &Mounted,
    record: &RunRecord,
    len: u64,
) -> Result<(TaskEncoder, Vec<Event>), Failure> {
    let log = agent.durable().log();
    let events = server.timed(read_all(log, &record.run_id, len)).await?;
    let mut enc = TaskEncoder::new(&record.run_id, &context_of(record));
    let mut sink = Vec::new();
    for ev in &events {
        enc.encode(ev, &mut sink);
        sink.clear();
    }
    Ok((enc, events))
}

async fn task_now(
    server: &DurableServer,
    agent: &Mounted,
    record: &RunRecord,
) -> Result<Value, Failure> {
    let log = agent.durable().log();
    let len = server.timed(log.len(&record.run_id)).await?.unwrap_or(0);
    let (enc, _) = fold(server, agent, record, len).await?;
    Ok(enc.task(Some(task_state(record.status))))
}

/// `message/send` (`stream: false`) and `message/stream`.
async fn send(
    server: &DurableServer,
    agent: &Mounted,
    headers: &HeaderMap,
    id: Value,
    p: SendParams,
    streaming: bool,
) -> Result<Reply, Failure> {
    let (enc, events, from, run_id) = match &p.message.task_id {
        Some(run_id) => {
            // A follow-up on a task: the answer to its tool approval.
            authorize(server, agent, run_id, headers, None).await?;
            let record = task_record(server, agent, run_id).await?;
            if let Some(c) = &p.message.context_id {
                if *c != context_of(&record) {
                    return Err(RpcError::params("`contextId` is not the task's context").into());
                }
            }
            if record.status != RunStatus::Suspended {
                return Err(RpcError::new(
                    codes::UNSUPPORTED_OPERATION,
                    format!(
                        "task {run_id} is {}: only an input-required task takes a follow-up message (start a new task in the same contextId instead)",
                        task_state(record.status)
                    ),
                )
                .into());
            }
            let data = approval_answer(&p.message).ok_or_else(|| {
                RpcError::params(
                    "the task waits for a tool approval: answer with a data part {\"approved\": true} or {\"approved\": false, \"reason\": \"…\"}",
                )
            })?;
            let len = server
                .timed(agent.durable().log().len(run_id))
                .await?
                .unwrap_or(0);
            let (_, prefix) = fold(server, agent, &record, len).await?;
            let run = server.timed(agent.resume(run_id, data)).await?;
            let enc = TaskEncoder::new(run_id, &context_of(&record));
            tracing::info!(agent = %agent.id(), run_id = %run_id, "a2a task resumed");
            let events = stream::iter(prefix.into_iter().map(Ok)).chain(run).boxed();
            (enc, events, (len, 0), run_id.clone())
        }
        None => {
            let text = if p.message.text.trim().is_empty() {
                p.message
                    .data
                    .iter()
                    .map(|d| Value::Object(d.clone()).to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                p.message.text.clone()
            };
            if text.trim().is_empty() {
                return Err(RpcError::params("the message has no text").into());
            }
            let context = p
                .message
                .context_id
                .clone()
                .unwrap_or_else(|| RunId::generate().as_str().to_owned());
            let mut options = StreamOptions::new().thread_id(context.clone());
            if let Some(owner) = owner_of_new_run(server, headers, None)? {
                options = options.resource_id(owner);
            }
            let run = server.timed(agent.stream(text.into(), options)).await?;
            let run_id = run.run_id().clone();
            server.inner.metrics.runs_started.inc();
            tracing::info!(agent = %agent.id(), run_id = %run_id, "a2a task started");
            (
                TaskEncoder::new(&run_id, &context),
                run.boxed(),
                (0, 0),
                run_id,
            )
        }
    };
    let mut res = if streaming {
        sse_response(server, id, enc, events, from)
    } else {
        let task = blocking_result(server, enc, events, p.blocking).await;
        Json(rpc_result_json(&id, task)).into_response()
    };
    for (k, v) in run_headers(server, &run_id) {
        res.headers_mut().insert(k, v);
    }
    Ok(Reply::Stream(res))
}

/// `message/send`: fold the run until it ends or needs input (or, `blocking: false`, until
/// it is started; bounded by the request timeout either way), then the task.
async fn blocking_result<S>(
    server: &DurableServer,
    mut enc: TaskEncoder,
    events: S,
    blocking: bool,
) -> Value
where
    S: Stream<Item = durable_core::Result<Event>> + Send + Unpin,
{
    let mut events = events;
    let deadline = tokio::time::Instant::now() + server.config().request_timeout;
    let mut sink = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(Ok(ev))) = next else { break };
        enc.encode(&ev, &mut sink);
        let done = sink.iter().any(ends);
        sink.clear();
        if done || (!blocking && ev.kind == EventKind::Start) {
            break;
        }
    }
    enc.task(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_core::Json as CoreJson;

    fn rand_bytes(seed: &mut u64, alphabet: &[u8], max: usize) -> Vec<u8> {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let len = (next() % max as u64) as usize;
        (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect()
    }

    #[test]
    fn the_json_rpc_parser_takes_any_bytes_without_panicking() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet = br#"{}[]":,0123456789.-+e truefalsnul jsonrpc 2.0 id method params message/send tasks/get kind parts text data \u00ff"#;
        let mut parsed = 0;
        for _ in 0..20_000 {
            let bytes = rand_bytes(&mut seed, alphabet, 120);
            match parse_request(&bytes) {
                Ok(r) => {
                    parsed += 1;
                    let _ = parse_send(&r.params);
                    let _ = parse_task_id(&r.params);
                    let _ = resubscribe_from(&HeaderMap::new(), &r.params);
                }
                Err((id, e)) => {
                    assert!(matches!(
                        e.code,
                        codes::PARSE_ERROR | codes::INVALID_REQUEST | codes::INVALID_PARAMS
                    ));
                    assert!(id.is_null() || id.is_string() || id.is_number());
                }
            }
        }
        let _ = parsed;
    }

    #[test]
    fn params_of_any_shape_are_validated_without_panicking() {
        let values = [
            json!(null),
            json!(1),
            json!("x"),
            json!([]),
            json!({}),
            json!({"kind": "text"}),
            json!({"kind": "text", "text": 3}),
            json!({"kind": "data", "data": []}),
            json!({"kind": "file", "file": {}}),
            json!({"kind": "text", "text": "hi"}),
            json!({"cursor": u64::MAX, "index": u64::MAX}),
            json!({"cursor": -1}),
            json!("bad id/../x"),
        ];
        let keys = [
            "message",
            "kind",
            "messageId",
            "role",
            "parts",
            "taskId",
            "contextId",
            "id",
            "configuration",
            "blocking",
            "metadata",
            "cursor",
            "index",
        ];
        for k1 in keys {
            for v1 in &values {
                for k2 in keys {
                    for v2 in &values {
                        let mut m = Map::new();
                        m.insert(k1.into(), v1.clone());
                        m.insert(k2.into(), v2.clone());
                        let _ = parse_send(&m);
                        let _ = parse_task_id(&m);
                        let _ = resubscribe_from(&HeaderMap::new(), &m);
                        let msg = json!({"message": {"messageId": "m", "role": "user", "parts": [v1], k2: v2}});
                        if let Value::Object(o) = msg {
                            if let Ok(p) = parse_send(&o) {
                                let _ = approval_answer(&p.message);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn envelopes_get_the_right_error_codes() {
        let code = |b: &[u8]| parse_request(b).err().map(|(_, e)| e.code);
        assert_eq!(code(b"{"), Some(codes::PARSE_ERROR));
        assert_eq!(code(b"[]"), Some(codes::INVALID_REQUEST));
        assert_eq!(
            code(br#"[{"jsonrpc":"2.0","id":1,"method":"tasks/get"}]"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            Some(codes::INVALID_PARAMS)
        );
        let ok = parse_request(
            br#"{"jsonrpc":"2.0","id":"a","method":"tasks/get","params":{"id":"t"}}"#,
        )
        .unwrap();
        assert_eq!(ok.id, Some(json!("a")));
        let (id, _) = parse_request(br#"{"jsonrpc":"1","id":"q","method":"x"}"#).unwrap_err();
        assert_eq!(id, json!("q"), "the id is echoed when it could be read");
    }

    #[test]
    fn resubscribe_positions() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        let h = HeaderMap::new();
        assert!(matches!(
            resubscribe_from(&h, &m(json!({"id": "t"}))),
            Ok((0, 0))
        ));
        assert!(matches!(
            resubscribe_from(&h, &m(json!({"metadata": {"cursor": 4, "index": 1}}))),
            Ok((4, 2))
        ));
        assert!(matches!(
            resubscribe_from(&h, &m(json!({"metadata": {"cursor": 4}}))),
            Ok((5, 0))
        ));
        assert!(resubscribe_from(&h, &m(json!({"metadata": {"cursor": u64::MAX}}))).is_err());
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_static("9"));
        assert!(matches!(resubscribe_from(&h, &m(json!({}))), Ok((10, 0))));
    }

    #[test]
    fn timestamps_are_iso_8601() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_796_558_400_123), "2026-12-06T12:00:00.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_encoder_takes_any_event_data_and_restarts_drop_the_step() {
        let run = RunId::new("r").unwrap();
        let mut enc = TaskEncoder::new(&run, "ctx");
        let mut out = Vec::new();
        let mut cursor = 0;
        let mut push = |enc: &mut TaskEncoder, kind: &str, d: Value, out: &mut Vec<Value>| {
            let ev = Event {
                run_id: run.clone(),
                cursor,
                kind: EventKind::parse(kind).unwrap(),
                data: CoreJson::from(d),
                at: 0,
            };
            cursor += 1;
            enc.encode(&ev, out);
        };
        push(&mut enc, "start", json!({}), &mut out);
        push(&mut enc, "step-start", json!({"step": 0}), &mut out);
        push(&mut enc, "text-delta", json!({"text": "héllo "}), &mut out);
        push(&mut enc, "step-start", json!({"step": 1}), &mut out);
        push(&mut enc, "text-delta", json!({"text": "wor"}), &mut out);
        push(&mut enc, "step-restart", json!({"step": 1}), &mut out);
        push(&mut enc, "step-start", json!({"step": 1}), &mut out);
        push(&mut enc, "text-delta", json!({"text": "world"}), &mut out);
        push(
            &mut enc,
            "finish",
            json!({"text": "world", "reason": "stop"}),
            &mut out,
        );
        // A client's reduction of the response artifact.
        let mut text = String::new();
        for v in out
            .iter()
            .filter(|v| v["kind"] == "artifact-update" && v["artifact"]["artifactId"] == "response")
        {
            let t = v["artifact"]["parts"][0]["text"].as_str().unwrap();
            if v["append"] == true {
                text.push_str(t);
            } else {
                text = t.to_owned();
            }
        }
        assert_eq!(text, "héllo world");
        assert_eq!(out.last().unwrap()["status"]["state"], "completed");
        let task = enc.task(None);
        assert_eq!(task["artifacts"][0]["parts"][0]["text"], "héllo world");
        assert_eq!(task["artifacts"][1]["parts"][0]["text"], "world");
        // Junk data of every kind.
        for k in [
            "start",
            "step-start",
            "text-delta",
            "tool-call",
            "tool-call-approval",
            "tool-result",
            "tool-error",
            "step-restart",
            "suspended",
            "finish",
            "error",
            "abort",
            "x-custom",
        ] {
            for d in [
                json!(null),
                json!(1),
                json!({"text": 5, "step": "a"}),
                json!({"tool_call_id": {}}),
            ] {
                push(&mut enc, k, d, &mut out);
            }
        }
    }
}

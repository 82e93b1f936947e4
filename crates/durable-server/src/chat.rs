//! The AI SDK UI message stream protocol (what `useChat` speaks): `POST /api/chat` and
//! `GET /api/chat/{chat_id}/stream`.
//!
//! A chat id is a conversation-memory thread id; each user turn is one run, and the run is one
//! assistant message (`msg-<run id>`), across approvals. The encoder ([`UiEncoder`]) is a pure
//! function of the run's log, so a replay from cursor 0 rebuilds exactly what a live client
//! saw:
//! - part ids are `text-<cursor>` / `reasoning-<cursor>` (the cursor of the part's first
//!   delta): unique in the message, never reused across steps, identical on every replay;
//! - exactly one `start` (from the run's `start` event);
//! - a `step-restart` (a step re-run after a crash) becomes `reset-step`, which removes what the
//!   client holds of that step, and the re-run's `start-step` is not sent again, so the message
//!   has the re-run's output once;
//! - the answer to an approval is sent as `tool-approval-response` before the tool's output, so
//!   a replayed message equals the one the approving client holds.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use durable_core::agent::{Message, ResumeData, StreamOptions};
use durable_core::{validate_name, Event, EventKind, ObserveOptions, RunId, RunRecord, RunStatus};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::problem::Problem;
use crate::routes::{owner_of_new_run, resume_offset, run_headers, JsonBody};
use crate::server::{DurableServer, Mounted};
use crate::sse::keep_alive;

/// The header that marks a UI message stream.
pub const UI_STREAM_HEADER: &str = "x-vercel-ai-ui-message-stream";

/// Turns a run's events into AI SDK UI message chunks.
#[derive(Debug, Clone)]
pub struct UiEncoder {
    message_id: String,
    text: Option<String>,
    reasoning: Option<String>,
    /// A `step-restart` of this step was sent: its next `start-step` is not sent again.
    restarted: Option<u64>,
    /// Approval ids of tool calls waiting for an answer.
    approvals: HashMap<String, String>,
}

impl UiEncoder {
    /// An encoder for the assistant message of `run_id`.
    pub fn new(run_id: &RunId) -> Self {
        Self {
            message_id: message_id(run_id),
            text: None,
            reasoning: None,
            restarted: None,
            approvals: HashMap::new(),
        }
    }

    fn close_parts(&mut self, out: &mut Vec<Value>) {
        if let Some(id) = self.reasoning.take() {
            out.push(json!({"type": "reasoning-end", "id": id}));
        }
        if let Some(id) = self.text.take() {
            out.push(json!({"type": "text-end", "id": id}));
        }
    }

    fn answer_approval(&mut self, call: &str, approved: bool, out: &mut Vec<Value>) {
        if let Some(approval) = self.approvals.remove(call) {
            out.push(
                json!({"type": "tool-approval-response", "approvalId": approval, "approved": approved}),
            );
        }
    }

    /// Append the chunks of `ev` to `out`.
    pub fn encode(&mut self, ev: &Event, out: &mut Vec<Value>) {
        let d = ev.data.to_value();
        let s = |k: &str| {
            d.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match &ev.kind {
            EventKind::Start => {
                out.push(json!({"type": "start", "messageId": self.message_id}));
            }
            EventKind::StepStart => {
                let step = d.get("step").and_then(Value::as_u64);
                if step.is_some() && self.restarted == step {
                    self.restarted = None;
                } else {
                    self.close_parts(out);
                    out.push(json!({"type": "start-step"}));
                }
            }
            EventKind::TextDelta => {
                if let Some(id) = self.reasoning.take() {
                    out.push(json!({"type": "reasoning-end", "id": id}));
                }
                let id = match &self.text {
                    Some(id) => id.clone(),
                    None => {
                        let id = format!("text-{}", ev.cursor);
                        out.push(json!({"type": "text-start", "id": id}));
                        self.text = Some(id.clone());
                        id
                    }
                };
                out.push(json!({"type": "text-delta", "id": id, "delta": s("text")}));
            }
            EventKind::ReasoningDelta => {
                if let Some(id) = self.text.take() {
                    out.push(json!({"type": "text-end", "id": id}));
                }
                let id = match &self.reasoning {
                    Some(id) => id.clone(),
                    None => {
                        let id = format!("reasoning-{}", ev.cursor);
                        out.push(json!({"type": "reasoning-start", "id": id}));
                        self.reasoning = Some(id.clone());
                        id
                    }
                };
                out.push(json!({"type": "reasoning-delta", "id": id, "delta": s("text")}));
            }
            EventKind::ToolCall => {
                self.close_parts(out);
                out.push(json!({
                    "type": "tool-input-available",
                    "toolCallId": s("tool_call_id"),
                    "toolName": s("tool_name"),
                    "input": d.get("args").cloned().unwrap_or(Value::Null),
                }));
            }
            EventKind::ToolCallApproval => {
                self.close_parts(out);
                let call = s("tool_call_id");
                let approval = format!("approval-{call}");
                self.approvals.insert(call.clone(), approval.clone());
                out.push(json!({"type": "tool-approval-request", "approvalId": approval, "toolCallId": call}));
            }
            EventKind::ToolResult => {
                self.close_parts(out);
                let call = s("tool_call_id");
                let declined = d.get("declined").and_then(Value::as_bool) == Some(true);
                self.answer_approval(&call, !declined, out);
                if declined {
                    out.push(json!({"type": "tool-output-denied", "toolCallId": call}));
                } else {
                    out.push(json!({
                        "type": "tool-output-available",
                        "toolCallId": call,
                        "output": d.get("result").cloned().unwrap_or(Value::Null),
                    }));
                }
            }
            EventKind::ToolError => {
                self.close_parts(out);
                let call = s("tool_call_id");
                self.answer_approval(&call, true, out);
                let error = match d.get("error") {
                    Some(Value::String(e)) => e.clone(),
                    Some(other) => other.to_string(),
                    None => "tool failed".to_owned(),
                };
                out.push(
                    json!({"type": "tool-output-error", "toolCallId": call, "errorText": error}),
                );
            }
            EventKind::StepFinish => {
                self.close_parts(out);
                out.push(json!({"type": "finish-step"}));
            }
            EventKind::StepRestart => {
                // The client drops the step's parts: open ones are not ended (it forgot them).
                self.text = None;
                self.reasoning = None;
                self.restarted = d.get("step").and_then(Value::as_u64);
                out.push(json!({"type": "reset-step"}));
            }
            EventKind::Suspended => {}
            EventKind::Finish => {
                self.close_parts(out);
                out.push(json!({"type": "finish", "finishReason": finish_reason(&s("reason"))}));
            }
            EventKind::Error => {
                self.close_parts(out);
                out.push(json!({"type": "error", "errorText": s("message")}));
            }
            EventKind::Abort => {
                self.close_parts(out);
                let reason = s("reason");
                out.push(json!({"type": "abort", "reason": reason}));
            }
            other => {
                out.push(json!({"type": format!("data-{other}"), "id": format!("data-{}", ev.cursor), "data": d}));
            }
        }
    }
}

/// The assistant message id of a run.
pub fn message_id(run_id: &RunId) -> String {
    format!("msg-{run_id}")
}

fn finish_reason(r: &str) -> &'static str {
    match r {
        "stop" => "stop",
        "length" => "length",
        "content-filter" => "content-filter",
        "tool-calls" => "tool-calls",
        "error" => "error",
        _ => "other",
    }
}

fn data_frame(chunk: &Value) -> SseEvent {
    SseEvent::default().data(chunk.to_string())
}

/// A run's events as a UI message stream: chunks of events from `emit_from` on (earlier events
/// only build the encoder's state), the id of each event's cursor on its last chunk; then
/// `finish` if the run stopped at a suspension, and `data: [DONE]`.
pub fn ui_stream<S>(
    run_id: &RunId,
    events: S,
    emit_from: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static
where
    S: Stream<Item = durable_core::Result<Event>> + Send + 'static,
{
    struct St {
        enc: UiEncoder,
        suspended: bool,
        ended: bool,
    }
    let st = St {
        enc: UiEncoder::new(run_id),
        suspended: false,
        ended: false,
    };
    events
        .map(Some)
        .chain(stream::iter([None]))
        .scan(st, move |st, item| {
            let mut frames = Vec::new();
            if st.ended {
                return futures::future::ready(None);
            }
            match item {
                Some(Ok(ev)) => {
                    let mut chunks = Vec::new();
                    st.enc.encode(&ev, &mut chunks);
                    st.suspended = ev.kind == EventKind::Suspended;
                    if ev.cursor >= emit_from {
                        let n = chunks.len();
                        for (i, c) in chunks.iter().enumerate() {
                            let f = data_frame(c);
                            frames.push(if i + 1 == n {
                                f.id(ev.cursor.to_string())
                            } else {
                                f
                            });
                        }
                    }
                    if ev.kind.is_terminal() {
                        frames.push(SseEvent::default().data("[DONE]"));
                        st.ended = true;
                    }
                }
                Some(Err(e)) => {
                    frames.push(data_frame(
                        &json!({"type": "error", "errorText": e.to_string()}),
                    ));
                    frames.push(SseEvent::default().data("[DONE]"));
                    st.ended = true;
                }
                None => {
                    if st.suspended {
                        frames.push(data_frame(&json!({"type": "finish"})));
                    }
                    frames.push(SseEvent::default().data("[DONE]"));
                    st.ended = true;
                }
            }
            futures::future::ready(Some(stream::iter(frames.into_iter().map(Ok))))
        })
        .flatten()
}

fn ui_response<S>(server: &DurableServer, run_id: &RunId, events: S, emit_from: u64) -> Response
where
    S: Stream<Item = durable_core::Result<Event>> + Send + 'static,
{
    let mut res = Sse::new(ui_stream(run_id, events, emit_from))
        .keep_alive(keep_alive(server.config().heartbeat))
        .into_response();
    let h = res.headers_mut();
    h.insert(UI_STREAM_HEADER, HeaderValue::from_static("v1"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    for (k, v) in run_headers(server, run_id) {
        h.insert(k, v);
    }
    res
}

/// Body of `POST /api/chat` (what `DefaultChatTransport` sends).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatBody {
    id: String,
    messages: Vec<Value>,
    #[serde(default)]
    trigger: Option<String>,
}

fn chat_agent(server: &DurableServer) -> Result<&Mounted, Problem> {
    server.chat_agent().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no agent is mounted for /api/chat",
        )
    })
}

fn valid_chat_id(id: &str) -> Result<(), Problem> {
    validate_name("chat id", id).map_err(|e| Problem::bad_request(e.message().to_owned()))
}

fn text_of(message: &Value) -> String {
    message
        .get("parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

/// The newest run of `chat_id` in one of `statuses`.
///
/// Core has no index of runs by thread: this lists the runs in each status and filters them,
/// O(runs in those statuses) per request. An efficient lookup needs a `WorkflowStore` query
/// that every adapter implements (a key per thread in Redis, an index in Postgres/SQLite), so
/// it is not an additive change to core; until then the active statuses are few and small.
async fn chat_run(
    server: &DurableServer,
    agent: &Mounted,
    chat_id: &str,
    statuses: &[RunStatus],
    owner: Option<&str>,
) -> Result<Option<RunRecord>, Problem> {
    let mut found: Option<RunRecord> = None;
    for st in statuses {
        let runs = server
            .timed(agent.durable().store().list_runs(Some(*st)))
            .await?;
        for r in runs {
            let ours = r.data.get("agent_id").and_then(Value::as_str) == Some(agent.id())
                && r.data.get("thread_id").and_then(Value::as_str) == Some(chat_id)
                && owner.is_none_or(|o| r.resource_id.as_deref() == Some(o));
            if ours && found.as_ref().is_none_or(|f| r.created_at >= f.created_at) {
                found = Some(r);
            }
        }
    }
    Ok(found)
}

/// With access control on, who may look a chat's runs up: credentials are required before
/// anything is looked up (401), and an identified caller only finds its own runs, so a chat's
/// existence never leaks. `None` when anyone may (no access control, or a run token that
/// [`authorize`](crate::routes::authorize) checks against the run found).
fn caller(server: &DurableServer, headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(access) = &server.config().access else {
        return Ok(None);
    };
    if crate::auth::bearer(headers, None).is_some() {
        return Ok(None);
    }
    access
        .authorizer
        .as_ref()
        .and_then(|a| a.resource(headers))
        .map(Some)
        .ok_or_else(Problem::unauthorized)
}

/// The answer to an approval in the client's last (assistant) message.
fn approval_answer(message: &Value) -> Option<ResumeData> {
    let parts = message.get("parts")?.as_array()?;
    parts.iter().rev().find_map(|p| {
        if p.get("state").and_then(Value::as_str) != Some("approval-responded") {
            return None;
        }
        let call = p.get("toolCallId")?.as_str()?;
        let approval = p.get("approval")?;
        let approved = approval.get("approved")?.as_bool()?;
        let reason = approval
            .get("reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let data = if approved {
            ResumeData::approve()
        } else {
            ResumeData::decline(reason)
        };
        Some(data.for_call(call))
    })
}

/// `POST /api/chat`: a user message starts a run on thread `id`; an assistant message with an
/// answered approval resumes the chat's suspended run. Either way the response is the UI
/// message stream of the run.
pub(crate) async fn post_chat(
    State(server): State<DurableServer>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ChatBody>,
) -> Result<Response, Problem> {
    let agent = chat_agent(&server)?;
    valid_chat_id(&body.id)?;
    if let Some(t) = body.trigger.as_deref() {
        if t != "submit-message" && t != "regenerate-message" {
            return Err(Problem::bad_request(format!("unknown trigger {t:?}")));
        }
    }
    let last = body
        .messages
        .last()
        .ok_or_else(|| Problem::bad_request("`messages` is empty"))?;
    match last.get("role").and_then(Value::as_str) {
        Some("user") => {
            let text = text_of(last);
            if text.is_empty() {
                return Err(Problem::bad_request("the last user message has no text"));
            }
            let mut options = StreamOptions::new().thread_id(body.id.clone());
            if let Some(owner) = owner_of_new_run(&server, &headers, None)? {
                options = options.resource_id(owner);
            }
            let run = server
                .timed(agent.stream(Message::user(text).into(), options))
                .await?;
            let run_id = run.run_id().clone();
            server.inner.metrics.runs_started.inc();
            tracing::info!(chat = %body.id, run_id = %run_id, "chat turn started");
            Ok(ui_response(&server, &run_id, run, 0))
        }
        Some("assistant") => {
            let data = approval_answer(last).ok_or_else(|| {
                Problem::bad_request(
                    "the last message is an assistant message without an answered approval",
                )
            })?;
            let owner = caller(&server, &headers)?;
            let record = chat_run(
                &server,
                agent,
                &body.id,
                &[RunStatus::Suspended],
                owner.as_deref(),
            )
            .await?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::CONFLICT,
                    "invalid_state",
                    "the chat has no run waiting for approval",
                )
            })?;
            let run_id = record.run_id.clone();
            crate::routes::authorize(&server, agent, &run_id, &headers, None).await?;
            let log = agent.durable().log();
            // The encoder's state (open approvals) comes from the log up to the suspension.
            let len = server.timed(log.len(&run_id)).await?.unwrap_or(0);
            let prefix = server.timed(read_all(log, &run_id, len)).await?;
            let run = server.timed(agent.resume(&run_id, data)).await?;
            let events = stream::iter(prefix.into_iter().map(Ok)).chain(run);
            Ok(ui_response(&server, &run_id, events, len))
        }
        _ => Err(Problem::bad_request(
            "the last message must be a user or assistant message",
        )),
    }
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

/// `GET /api/chat/{chat_id}/stream` (`useChat({ resume: true })` on mount): 204 if the chat
/// has no running turn, else its assistant message replayed from `start`, then live. With
/// `Last-Event-ID`, the chunks after that cursor only.
pub(crate) async fn resume_chat(
    State(server): State<DurableServer>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Path(chat_id) = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    let agent = chat_agent(&server)?;
    valid_chat_id(&chat_id)?;
    let owner = caller(&server, &headers)?;
    let Some(record) = chat_run(
        &server,
        agent,
        &chat_id,
        &[RunStatus::Running, RunStatus::Pending],
        owner.as_deref(),
    )
    .await?
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let run_id = record.run_id.clone();
    crate::routes::authorize(&server, agent, &run_id, &headers, None).await?;
    let emit_from = resume_offset(&headers, None)?;
    let run = server
        .timed(agent.observe(&run_id, ObserveOptions::from(0)))
        .await?;
    Ok(ui_response(&server, &run_id, run, emit_from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_core::Json;

    #[test]
    fn the_encoder_takes_any_event_data_without_panicking() {
        let run = RunId::new("r").unwrap();
        let kinds = [
            "start",
            "step-start",
            "text-delta",
            "reasoning-delta",
            "tool-call",
            "tool-call-approval",
            "tool-result",
            "tool-error",
            "step-finish",
            "step-restart",
            "suspended",
            "finish",
            "error",
            "abort",
            "my-kind",
        ];
        let datas = [
            json!(null),
            json!(1),
            json!("x"),
            json!({"text": 5}),
            json!({"step": "a"}),
            json!({"tool_call_id": null, "error": {"x": 1}}),
            json!({"declined": "yes"}),
        ];
        let mut enc = UiEncoder::new(&run);
        let mut out = Vec::new();
        let mut cursor = 0;
        for k in kinds {
            for d in &datas {
                let ev = Event {
                    run_id: run.clone(),
                    cursor,
                    kind: EventKind::parse(k).unwrap(),
                    data: Json::from(d.clone()),
                    at: 0,
                };
                enc.encode(&ev, &mut out);
                cursor += 1;
            }
        }
        assert!(out.iter().all(|c| c["type"].is_string()));
    }

    #[test]
    fn client_messages_of_any_shape_never_panic() {
        for m in [
            json!(null),
            json!({"parts": 1}),
            json!({"parts": [1, {"type": "text"}]}),
            json!({"parts": [{"state": "approval-responded"}]}),
            json!({"parts": [{"state": "approval-responded", "toolCallId": "c", "approval": {"approved": "no"}}]}),
        ] {
            let _ = text_of(&m);
            assert!(approval_answer(&m).is_none());
        }
        let ok = json!({"parts": [{"state": "approval-responded", "toolCallId": "c", "approval": {"id": "a", "approved": false, "reason": "no"}}]});
        let d = approval_answer(&ok).unwrap();
        assert!(!d.approved);
        assert_eq!(d.tool_call_id.as_deref(), Some("c"));
    }
}

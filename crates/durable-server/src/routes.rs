//! The native routes: `/api/agents/{agent_id}/…` and `/health`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, OriginalUri, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use durable_core::agent::{AgentInput, Message, ResumeData, StreamOptions};
use durable_core::{validate_name, ObserveOptions, OnSuspend, RunId, RunRecord, RunStatus};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::problem::Problem;
use crate::server::{DurableServer, Mounted};
use crate::sse;

/// The header naming the run a stream route started.
pub const RUN_ID_HEADER: &str = "x-run-id";
/// The header carrying the run token (when access control issues tokens).
pub const RUN_TOKEN_HEADER: &str = "x-run-token";

/// A JSON request body whose every rejection is a problem body: 413 over the size limit, 400
/// for anything that is not the expected JSON.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<DurableServer> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &DurableServer) -> Result<Self, Self::Rejection> {
        // A body trickled in slower than the request timeout is cut off (408).
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
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
    }
}

pub(crate) fn parse_run_id(s: &str) -> Result<RunId, Problem> {
    RunId::new(s).map_err(|e| Problem::bad_request(e.message().to_owned()))
}

fn path2(p: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), Problem> {
    p.map(|Path(v)| v)
        .map_err(|e| Problem::bad_request(e.body_text()))
}

fn parse_offset(s: &str, what: &str) -> Result<u64, Problem> {
    s.trim().parse::<u64>().map_err(|_| {
        Problem::bad_request(format!(
            "{what} must be a cursor (an unsigned integer), got {s:?}"
        ))
    })
}

/// The first cursor to send: `Last-Event-ID` + 1 (what a reconnecting `EventSource` sends;
/// it wins over the URL), else `offset`, else 0.
pub(crate) fn resume_offset(headers: &HeaderMap, offset: Option<&str>) -> Result<u64, Problem> {
    if let Some(v) = headers.get("last-event-id") {
        let s = v
            .to_str()
            .map_err(|_| Problem::bad_request("Last-Event-ID is not ASCII"))?;
        if !s.trim().is_empty() {
            return parse_offset(s, "Last-Event-ID")?
                .checked_add(1)
                .ok_or_else(|| Problem::bad_request("Last-Event-ID is out of range"));
        }
    }
    match offset {
        Some(o) => parse_offset(o, "offset"),
        None => Ok(0),
    }
}

/// Check the caller's access to `run_id` *before* anything is looked up (when the run's
/// existence matters, the lookup happens only for a caller with an identity, and a foreign or
/// unknown run both answer 403).
pub(crate) async fn authorize(
    server: &DurableServer,
    agent: &Mounted,
    run_id: &RunId,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), Problem> {
    let Some(access) = &server.config().access else {
        return Ok(());
    };
    if let Some(token) = bearer(headers, query_token) {
        return match &access.tokens {
            Some(t) if t.verify(token, run_id) => Ok(()),
            _ => Err(Problem::forbidden()),
        };
    }
    let Some(resource) = access.authorizer.as_ref().and_then(|a| a.resource(headers)) else {
        return Err(Problem::unauthorized());
    };
    match server.timed(agent.record(run_id)).await {
        Ok(r) if r.resource_id.as_deref() == Some(resource.as_str()) => Ok(()),
        Ok(_) => Err(Problem::forbidden()),
        Err(p) if p.status_code() == StatusCode::NOT_FOUND => Err(Problem::forbidden()),
        Err(p) => Err(p),
    }
}

/// The resource a new run belongs to: the caller's identity when access control knows it,
/// else what the body says. With an authorizer and no identity: 401.
pub(crate) fn owner_of_new_run(
    server: &DurableServer,
    headers: &HeaderMap,
    asked: Option<String>,
) -> Result<Option<String>, Problem> {
    match server
        .config()
        .access
        .as_ref()
        .and_then(|a| a.authorizer.as_ref())
    {
        Some(authorizer) => authorizer
            .resource(headers)
            .map(Some)
            .ok_or_else(Problem::unauthorized),
        None => Ok(asked),
    }
}

/// Headers naming a new run (and its token).
pub(crate) fn run_headers(
    server: &DurableServer,
    run_id: &RunId,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = Vec::new();
    if let Ok(v) = HeaderValue::from_str(run_id.as_str()) {
        h.push((HeaderName::from_static(RUN_ID_HEADER), v));
    }
    if let Some(tokens) = server
        .config()
        .access
        .as_ref()
        .and_then(|a| a.tokens.as_ref())
    {
        if let Ok(v) = HeaderValue::from_str(&tokens.issue(run_id)) {
            h.push((HeaderName::from_static(RUN_TOKEN_HEADER), v));
        }
    }
    h
}

/// `GET /health`.
pub(crate) async fn health(State(server): State<DurableServer>) -> Json<Value> {
    Json(json!({"status": "ok", "agents": server.inner.order}))
}

/// Unknown routes: a problem body, not an empty 404.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {}", uri.path()),
    )
}

/// A known route with another method: a problem body, not an empty 405.
pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Body of `POST /api/agents/{agent_id}/stream`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamBody {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default, alias = "run_id")]
    run_id: Option<String>,
    #[serde(default, alias = "thread_id")]
    thread_id: Option<String>,
    #[serde(default, alias = "resource_id")]
    resource_id: Option<String>,
    #[serde(default, alias = "require_tool_approval")]
    require_tool_approval: bool,
    /// `true` (default maximum idle time) or a maximum idle time in milliseconds.
    #[serde(default, alias = "until_idle")]
    until_idle: Option<Value>,
    #[serde(default, alias = "max_steps")]
    max_steps: Option<u32>,
}

fn stream_options(
    server: &DurableServer,
    headers: &HeaderMap,
    body: &StreamBody,
) -> Result<StreamOptions, Problem> {
    let mut o = StreamOptions::new().require_tool_approval(body.require_tool_approval);
    if let Some(id) = &body.run_id {
        o = o.run_id(parse_run_id(id)?);
    }
    if let Some(t) = &body.thread_id {
        validate_name("thread id", t).map_err(|e| Problem::bad_request(e.message().to_owned()))?;
        o = o.thread_id(t.clone());
    }
    if let Some(r) = owner_of_new_run(server, headers, body.resource_id.clone())? {
        validate_name("resource id", &r)
            .map_err(|e| Problem::bad_request(e.message().to_owned()))?;
        o = o.resource_id(r);
    }
    if let Some(n) = body.max_steps {
        o = o.max_steps(n);
    }
    match &body.until_idle {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => o = o.until_idle(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ms) => o = o.until_idle_for(Duration::from_millis(ms)),
            None => {
                return Err(Problem::bad_request(
                    "untilIdle must be true or milliseconds",
                ))
            }
        },
        Some(_) => {
            return Err(Problem::bad_request(
                "untilIdle must be true or milliseconds",
            ))
        }
    }
    Ok(o)
}

/// `POST /api/agents/{agent_id}/stream`: 201, `Location` of the run, the run's SSE.
pub(crate) async fn stream(
    State(server): State<DurableServer>,
    Path(agent_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StreamBody>,
) -> Result<Response, Problem> {
    let agent = server.agent_or_404(&agent_id)?;
    let input: AgentInput = match (&body.messages, &body.prompt) {
        (Some(m), None) if !m.is_empty() => m.clone().into(),
        (None, Some(p)) if !p.is_empty() => p.clone().into(),
        _ => {
            return Err(Problem::bad_request(
                "give exactly one of a non-empty `prompt` or non-empty `messages`",
            ))
        }
    };
    let options = stream_options(&server, &headers, &body)?;
    let run = server.timed(agent.stream(input, options)).await?;
    let run_id = run.run_id().clone();
    let base = uri.path().strip_suffix("/stream").unwrap_or(uri.path());
    let location = format!("{base}/runs/{run_id}");
    let mut res = sse::native(
        run,
        server.config().heartbeat,
        server.config().retry,
        server.inner.metrics.observer(),
    );
    *res.status_mut() = StatusCode::CREATED;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    for (k, v) in run_headers(&server, &run_id) {
        h.insert(k, v);
    }
    sse_headers(h);
    server.inner.metrics.runs_started.inc();
    tracing::info!(agent = %agent_id, run_id = %run_id, "run started");
    Ok(res)
}

fn sse_headers(h: &mut HeaderMap) {
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Query of the events route.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    offset: Option<String>,
    on_suspend: Option<String>,
    token: Option<String>,
}

/// `GET /api/agents/{agent_id}/runs/{run_id}/events`.
pub(crate) async fn events(
    State(server): State<DurableServer>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (agent_id, run_id) = path2(path)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let agent = server.agent_or_404(&agent_id)?;
    let run_id = parse_run_id(&run_id)?;
    authorize(&server, agent, &run_id, &headers, q.token.as_deref()).await?;
    let offset = resume_offset(&headers, q.offset.as_deref())?;
    let wait = match q.on_suspend.as_deref() {
        None | Some("end") => OnSuspend::End,
        Some("wait") => OnSuspend::Wait,
        Some(o) => {
            return Err(Problem::bad_request(format!(
                "on_suspend must be `end` or `wait`, got {o:?}"
            )))
        }
    };
    observe_response(&server, agent, &run_id, offset, wait).await
}

/// Observe `run_id` from `offset` as SSE; 204 when the client already has the run's last event
/// (a browser `EventSource` reconnecting after the terminal frame then stops).
async fn observe_response(
    server: &DurableServer,
    agent: &Mounted,
    run_id: &RunId,
    offset: u64,
    on_suspend: OnSuspend,
) -> Result<Response, Problem> {
    let run = server
        .timed(agent.observe(run_id, ObserveOptions::from(offset).on_suspend(on_suspend)))
        .await?;
    match server.timed(agent.record(run_id)).await {
        Ok(r) if offset > 0 && r.status.is_terminal() => {
            let len = server
                .timed(agent.durable().log().len(run_id))
                .await?
                .unwrap_or(0);
            if offset >= len {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
        Ok(_) => {}
        Err(p) if p.status_code() == StatusCode::NOT_FOUND => {
            // The log exists but the record is gone or belongs to another agent.
            if server.timed(agent.durable().status(run_id)).await.is_ok() {
                return Err(p);
            }
        }
        Err(p) => return Err(p),
    }
    let mut res = sse::native(
        run,
        server.config().heartbeat,
        server.config().retry,
        server.inner.metrics.observer(),
    );
    sse_headers(res.headers_mut());
    Ok(res)
}

/// Body of `POST /api/agents/{agent_id}/observe` (Mastra's shape).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObserveBody {
    #[serde(alias = "run_id")]
    run_id: String,
    #[serde(default)]
    offset: Option<u64>,
}

/// `POST /api/agents/{agent_id}/observe` with `{runId, offset}`.
pub(crate) async fn observe_post(
    State(server): State<DurableServer>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ObserveBody>,
) -> Result<Response, Problem> {
    let agent = server.agent_or_404(&agent_id)?;
    let run_id = parse_run_id(&body.run_id)?;
    authorize(&server, agent, &run_id, &headers, None).await?;
    let from_body = body.offset.map(|o| o.to_string());
    let offset = resume_offset(&headers, from_body.as_deref())?;
    observe_response(&server, agent, &run_id, offset, OnSuspend::End).await
}

/// Body of the approve and decline routes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolCallBody {
    #[serde(alias = "tool_call_id")]
    tool_call_id: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Body of the resume route: the answer, flat or under `resumeData`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResumeBody {
    #[serde(default)]
    approved: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, alias = "tool_call_id")]
    tool_call_id: Option<String>,
    #[serde(default, alias = "resume_data")]
    resume_data: Option<Box<ResumeBody>>,
}

async fn resume_response(
    server: &DurableServer,
    agent_id: &str,
    run_id: &str,
    headers: &HeaderMap,
    data: ResumeData,
) -> Result<Response, Problem> {
    let agent = server.agent_or_404(agent_id)?;
    let run_id = parse_run_id(run_id)?;
    authorize(server, agent, &run_id, headers, None).await?;
    server.timed(agent.record(&run_id)).await?;
    let run = server.timed(agent.resume(&run_id, data)).await?;
    let mut res = sse::native(
        run,
        server.config().heartbeat,
        server.config().retry,
        server.inner.metrics.observer(),
    );
    sse_headers(res.headers_mut());
    Ok(res)
}

/// `POST …/runs/{run_id}/approve-tool-call` with `{toolCallId}`: the continuation as SSE.
pub(crate) async fn approve(
    State(server): State<DurableServer>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ToolCallBody>,
) -> Result<Response, Problem> {
    let (agent_id, run_id) = path2(path)?;
    let data = ResumeData::approve().for_call(body.tool_call_id);
    resume_response(&server, &agent_id, &run_id, &headers, data).await
}

/// `POST …/runs/{run_id}/decline-tool-call` with `{toolCallId, reason?}`.
pub(crate) async fn decline(
    State(server): State<DurableServer>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ToolCallBody>,
) -> Result<Response, Problem> {
    let (agent_id, run_id) = path2(path)?;
    let data = ResumeData::decline(body.reason).for_call(body.tool_call_id);
    resume_response(&server, &agent_id, &run_id, &headers, data).await
}

/// `POST …/runs/{run_id}/resume-stream` with `{approved, reason?, toolCallId?}` (or the
/// same under `resumeData`).
pub(crate) async fn resume_stream(
    State(server): State<DurableServer>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ResumeBody>,
) -> Result<Response, Problem> {
    let (agent_id, run_id) = path2(path)?;
    let inner = body.resume_data.as_deref();
    let approved = body
        .approved
        .or(inner.and_then(|i| i.approved))
        .ok_or_else(|| Problem::bad_request("`approved` (true or false) is required"))?;
    let reason = body.reason.clone().or(inner.and_then(|i| i.reason.clone()));
    let mut data = if approved {
        ResumeData::approve()
    } else {
        ResumeData::decline(reason)
    };
    if let Some(id) = body
        .tool_call_id
        .clone()
        .or(inner.and_then(|i| i.tool_call_id.clone()))
    {
        data = data.for_call(id);
    }
    resume_response(&server, &agent_id, &run_id, &headers, data).await
}

/// `POST …/runs/{run_id}/abort`: `{runId, status}` once the run is aborted (or the terminal
/// status it reached first).
pub(crate) async fn abort(
    State(server): State<DurableServer>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let (agent_id, run_id) = path2(path)?;
    let agent = server.agent_or_404(&agent_id)?;
    let run_id = parse_run_id(&run_id)?;
    authorize(&server, agent, &run_id, &headers, None).await?;
    server.timed(agent.record(&run_id)).await?;
    let status = server.timed(agent.abort(&run_id)).await?;
    tracing::info!(agent = %agent_id, run_id = %run_id, status = status.as_str(), "abort requested");
    Ok(Json(
        json!({"runId": run_id.as_str(), "status": status.as_str()}),
    ))
}

/// The JSON of a run's status.
pub(crate) fn status_json(agent_id: &str, r: &RunRecord, next_cursor: Option<u64>) -> Value {
    json!({
        "runId": r.run_id.as_str(),
        "agentId": agent_id,
        "status": r.status.as_str(),
        "nextCursor": next_cursor,
        "owner": r.resource_id,
        "threadId": r.data.get("thread_id"),
        "createdAt": r.created_at,
        "updatedAt": r.updated_at,
    })
}

/// `GET …/runs/{run_id}`: status, next cursor, owner.
pub(crate) async fn run_status(
    State(server): State<DurableServer>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let (agent_id, run_id) = path2(path)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let agent = server.agent_or_404(&agent_id)?;
    let run_id = parse_run_id(&run_id)?;
    authorize(&server, agent, &run_id, &headers, q.token.as_deref()).await?;
    let r = server.timed(agent.record(&run_id)).await?;
    let next = server.timed(agent.durable().log().len(&run_id)).await?;
    Ok(Json(status_json(&agent_id, &r, next)))
}

/// Query of the run list.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
}

fn parse_status(s: &str) -> Result<RunStatus, Problem> {
    [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Suspended,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Aborted,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
    .ok_or_else(|| Problem::bad_request(format!("unknown status {s:?}")))
}

/// `GET /api/agents/{agent_id}/runs?status=`: this agent's runs (with access control: the
/// caller's own runs).
pub(crate) async fn list_runs(
    State(server): State<DurableServer>,
    Path(agent_id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let agent = server.agent_or_404(&agent_id)?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let caller = match &server.config().access {
        None => None,
        Some(a) => Some(
            a.authorizer
                .as_ref()
                .and_then(|z| z.resource(&headers))
                .ok_or_else(Problem::unauthorized)?,
        ),
    };
    let records = server
        .timed(agent.durable().store().list_runs(status))
        .await?;
    let runs: Vec<Value> = records
        .iter()
        .filter(|r| r.data.get("agent_id").and_then(|v| v.as_str()) == Some(agent.id()))
        .filter(|r| caller.is_none() || r.resource_id == caller)
        .map(|r| status_json(&agent_id, r, None))
        .collect();
    Ok(Json(json!({ "runs": runs })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_bytes(seed: &mut u64, alphabet: &[u8], max: usize) -> Vec<u8> {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let len = (*seed % max as u64) as usize;
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                alphabet[(*seed % alphabet.len() as u64) as usize]
            })
            .collect()
    }

    #[test]
    fn offsets_and_run_ids_from_any_input_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet = b"0123456789 -+x.*>/:%\t\xff\x00a";
        for _ in 0..5000 {
            let bytes = rand_bytes(&mut seed, alphabet, 40);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.insert("last-event-id", v);
            }
            match resume_offset(&h, Some(&text)) {
                Ok(_) => {}
                Err(p) => assert_eq!(p.status, 400),
            }
            if let Err(p) = parse_run_id(&text) {
                assert_eq!(p.status, 400);
            }
        }
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_static("7"));
        assert_eq!(
            resume_offset(&h, Some("2")).ok(),
            Some(8),
            "Last-Event-ID wins"
        );
        assert_eq!(resume_offset(&HeaderMap::new(), Some("2")).ok(), Some(2));
    }

    #[test]
    fn stream_bodies_from_any_json_never_panic() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let alphabet = br#"{}[]":,0123456789 truefalsn-prompt messages untilIdle"#;
        for _ in 0..5000 {
            let bytes = rand_bytes(&mut seed, alphabet, 80);
            let _ = serde_json::from_slice::<StreamBody>(&bytes);
            let _ = serde_json::from_slice::<ResumeBody>(&bytes);
            let _ = serde_json::from_slice::<ObserveBody>(&bytes);
        }
    }
}

//! The Restate workflow that executes runs: one workflow instance per run (the workflow key is
//! the run id), its `run` handler the agentic loop, its shared `decide` handler the answer to a
//! suspended tool call.
//!
//! **Journal.** Each model step is one `ctx.run` (`s{step}-model`) and each tool call another
//! (`s{step}-tool-{index}`); an approval is the durable promise `s{step}-approval-{index}`. After a
//! crash Restate replays these results instead of executing them again.
//!
//! **Events.** The run log is written from the handler, so it must not repeat what an earlier
//! attempt of the same invocation already appended. Every event outside a model step is a pure
//! function of journaled values, so its cursor is too: the handler counts cursors as it replays
//! and appends only past the log's length at the start of the attempt ([`Emitter`]). A model
//! step's events are not deterministic: the step appends them itself, inside its `ctx.run`, and
//! journals the cursor after them. A model step that finds events past its start cursor (an
//! attempt that crashed or failed before the step was journaled) announces `step-restart` first,
//! so observers drop what they saw of the abandoned attempt (SPEC G5). Terminal events (`error`,
//! `abort`) follow a step whose length is not journaled; they are appended unless the log already
//! ends with a terminal event.

#![allow(missing_docs, unreachable_pub)] // the service macro generates undocumented items

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_core::agent::{
    Agent, FinishReason, Message, ModelChunk, ModelRequest, ToolCall, ToolChoice, ToolContext,
    Usage,
};
use durable_core::{Cursor, Error, ErrorKind, EventKind, EventLog, NewEvent, RunId};
use futures::{FutureExt, StreamExt};
use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Events gathered from a model stream before one append (as in the local runner).
const MAX_BATCH: usize = 128;

/// The Restate service name of the workflow.
pub(crate) const SERVICE: &str = "DurableAgentRuns";

/// The text given to the model for a declined call (as in the local runner).
const DECLINED: &str = "Tool call was not approved by the user";

/// What the caller asks for: the `run` handler's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunInput {
    pub(crate) agent_id: String,
    pub(crate) messages: Vec<Message>,
    pub(crate) max_steps: u32,
    #[serde(default)]
    pub(crate) require_tool_approval: bool,
    #[serde(default)]
    pub(crate) tool_choice: ToolChoice,
}

/// The answer to a suspended call: the `decide` handler's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DecideInput {
    pub(crate) step: u32,
    pub(crate) index: u32,
    pub(crate) approved: bool,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// The value of an approval promise.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decision {
    approved: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// A model step as journaled: its complete output and the log's next cursor after its events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ModelStep {
    text: String,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<FinishReason>,
    #[serde(default)]
    usage: Usage,
    end: Cursor,
}

/// A tool call's outcome as journaled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ToolOutcome {
    Ok(Value),
    Error(String),
    Declined(Option<String>),
}

impl ToolOutcome {
    fn for_model(&self) -> String {
        match self {
            ToolOutcome::Ok(Value::String(s)) => s.clone(),
            ToolOutcome::Ok(v) => v.to_string(),
            ToolOutcome::Error(e) => format!("Error: {e}"),
            ToolOutcome::Declined(None) => DECLINED.to_owned(),
            ToolOutcome::Declined(Some(r)) => format!("{DECLINED}: {r}"),
        }
    }
}

/// What the `run` handler returns to Restate (shown in its UI/CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunEnd {
    pub(crate) reason: String,
    pub(crate) steps: u32,
    pub(crate) text: String,
}

/// The promise holding the decision for call `index` of step `step`.
pub(crate) fn approval_promise(step: u32, index: u32) -> String {
    format!("s{step}-approval-{index}")
}

/// Shared by every invocation this endpoint serves.
pub(crate) struct Runs {
    pub(crate) agents: HashMap<String, Agent>,
    pub(crate) log: EventLog,
    pub(crate) model_attempts: u32,
    pub(crate) retry_delay: Duration,
    /// The steps executing in this process, by run: an abort request cancels them at once
    /// (Restate's own cancellation only reaches a handler between steps).
    pub(crate) inflight: Mutex<HashMap<RunId, (u64, CancellationToken)>>,
    pub(crate) next_step_id: AtomicU64,
}

impl Runs {
    /// Cancel the step of `run_id` executing here, if any.
    pub(crate) fn interrupt(&self, run_id: &RunId) {
        if let Some((_, token)) = lock(&self.inflight).get(run_id) {
            token.cancel();
        }
    }

    fn enter(&self, run_id: &RunId) -> Inflight<'_> {
        let token = CancellationToken::new();
        let id = self.next_step_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inflight).insert(run_id.clone(), (id, token.clone()));
        Inflight {
            runs: self,
            run_id: run_id.clone(),
            id,
            token,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A step executing in this process; deregistered on drop.
struct Inflight<'a> {
    runs: &'a Runs,
    run_id: RunId,
    id: u64,
    token: CancellationToken,
}

impl Inflight<'_> {
    /// Run `work` unless the run is aborted first: then the step ends as a terminal failure
    /// with the code of a cancellation, journaled, so a replay ends the run the same way.
    async fn guard<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        tokio::select! {
            biased;
            () = self.token.cancelled() => Err(TerminalError::new_with_code(CODE_CANCELLED, "aborted").into()),
            r = work => r,
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.runs.inflight);
        if map.get(&self.run_id).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.run_id);
        }
    }
}

/// The workflow: see the module doc.
#[derive(Clone)]
pub(crate) struct DurableAgentRuns(pub(crate) Arc<Runs>);

#[restate_sdk::workflow]
impl DurableAgentRuns {
    /// Execute the run named by the workflow key.
    #[handler]
    async fn run(
        &self,
        ctx: WorkflowContext<'_>,
        input: Json<RunInput>,
    ) -> Result<Json<RunEnd>, HandlerError> {
        let input = input.into_inner();
        let run_id = RunId::new(ctx.key()).map_err(|e| TerminalError::new(e.to_string()))?;
        let emitter = Emitter::start(self.0.log.clone(), run_id.clone())
            .await
            .map_err(retryable)?;
        let Some(agent) = self.0.agents.get(&input.agent_id) else {
            // Observers wait for the run's end: give them one.
            let message = format!("agent {:?} is not served by this endpoint", input.agent_id);
            end_run(
                &self.0.log,
                &run_id,
                EventKind::Error,
                json!({"message": message, "kind": "not_found"}),
            )
            .await
            .map_err(retryable)?;
            return Err(TerminalError::new(message).into());
        };
        let mut exec = Execution {
            runs: &self.0,
            agent,
            run_id,
            input,
            out: emitter,
        };
        match exec.execute(&ctx).await {
            Ok(end) => Ok(Json(end)),
            Err(Stop::Cancelled) => {
                exec.end(EventKind::Abort, json!({"reason": "aborted"}))
                    .await
                    .map_err(retryable)?;
                Err(TerminalError::new_with_code(CODE_CANCELLED, "aborted").into())
            }
            Err(Stop::Failed(e)) => {
                let kind = if e.code() == CODE_NOT_RETRYABLE {
                    "unexpected"
                } else {
                    "unavailable"
                };
                exec.end(
                    EventKind::Error,
                    json!({"message": e.message(), "kind": kind}),
                )
                .await
                .map_err(retryable)?;
                Err(e.into())
            }
            Err(Stop::Retry(e)) => Err(e),
        }
    }

    /// Answer the suspended call `index` of step `step` (resolves its promise).
    #[handler]
    async fn decide(
        &self,
        ctx: SharedWorkflowContext<'_>,
        input: Json<DecideInput>,
    ) -> Result<(), HandlerError> {
        let d = input.into_inner();
        ctx.resolve_promise(
            &approval_promise(d.step, d.index),
            Json(Decision {
                approved: d.approved,
                reason: d.reason,
            }),
        );
        Ok(())
    }
}

/// The code of the terminal error for a model error that retrying cannot fix.
const CODE_NOT_RETRYABLE: u16 = 422;

/// The code Restate gives a cancelled invocation's awaits (and this crate an aborted step).
const CODE_CANCELLED: u16 = 409;

/// Why execution stopped before the end.
enum Stop {
    /// The invocation was cancelled (abort).
    Cancelled,
    /// The run failed for good (the model's retries are exhausted).
    Failed(TerminalError),
    /// This attempt cannot go on (the event log is unavailable): Restate retries it.
    Retry(HandlerError),
}

fn retryable(e: Error) -> HandlerError {
    HandlerError::from(e)
}

fn stop_on(e: TerminalError) -> Stop {
    if e.code() == CODE_CANCELLED {
        Stop::Cancelled
    } else {
        Stop::Failed(e)
    }
}

/// Appends the deterministic events of a run exactly once across attempts (module doc).
struct Emitter {
    log: EventLog,
    run_id: RunId,
    /// The log's length when this attempt started.
    known: Cursor,
    /// The cursor of the next event this execution produces.
    next: Cursor,
}

impl Emitter {
    async fn start(log: EventLog, run_id: RunId) -> durable_core::Result<Self> {
        let known = match log.len(&run_id).await? {
            Some(n) => n,
            None => log.create(&run_id, None).await?,
        };
        Ok(Self {
            log,
            run_id,
            known,
            next: 0,
        })
    }

    async fn emit(&mut self, events: &[NewEvent]) -> durable_core::Result<()> {
        let n = events.len() as Cursor;
        let at = self.next;
        self.next += n;
        if self.next <= self.known {
            return Ok(());
        }
        let skip = self.known.saturating_sub(at);
        let first = self
            .log
            .append(&self.run_id, &events[skip as usize..], None)
            .await?;
        self.known = self.next;
        if first != at + skip {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "run {}: expected to append at cursor {}, the log put it at {first}: another execution writes to this run",
                    self.run_id,
                    at + skip
                ),
            ));
        }
        Ok(())
    }

    async fn emit_one(&mut self, kind: EventKind, data: &Value) -> durable_core::Result<()> {
        self.emit(&[NewEvent::json(kind, data)?]).await
    }
}

struct Execution<'a> {
    runs: &'a Runs,
    agent: &'a Agent,
    run_id: RunId,
    input: RunInput,
    out: Emitter,
}

impl Execution<'_> {
    async fn emit(&mut self, kind: EventKind, data: Value) -> Result<(), Stop> {
        self.out
            .emit_one(kind, &data)
            .await
            .map_err(|e| Stop::Retry(retryable(e)))
    }

    async fn execute(&mut self, ctx: &WorkflowContext<'_>) -> Result<RunEnd, Stop> {
        self.emit(
            EventKind::Start,
            json!({"agent_id": self.agent.id(), "run_id": self.run_id}),
        )
        .await?;
        let mut conv = Vec::with_capacity(self.input.messages.len() + 1);
        if !self.agent.instructions().is_empty() {
            conv.push(Message::system(self.agent.instructions()));
        }
        conv.extend(self.input.messages.iter().cloned());
        let mut usage = Usage::default();
        let mut step = 0u32;
        let (reason, text) = loop {
            let out = self.model_step(ctx, step, &conv).await?;
            usage += out.usage;
            conv.push(Message::assistant(out.text.clone(), out.tool_calls.clone()));
            let calls = !out.tool_calls.is_empty();
            for (i, call) in out.tool_calls.iter().enumerate() {
                let index = i as u32;
                let outcome = self.tool_call(ctx, step, index, call).await?;
                conv.push(Message::tool(call.id.clone(), outcome.for_model()));
            }
            let finish = out.finish_reason.as_ref().map(reason_name);
            self.emit(
                EventKind::StepFinish,
                json!({"step": step, "reason": finish, "usage": out.usage}),
            )
            .await?;
            step += 1;
            if !calls {
                break (finish.unwrap_or_else(|| "stop".to_owned()), out.text);
            }
            if step >= self.input.max_steps {
                break ("max-steps".to_owned(), out.text);
            }
        };
        self.emit(
            EventKind::Finish,
            json!({"reason": reason, "usage": usage, "text": text, "steps": step}),
        )
        .await?;
        if let Err(e) = self.out.log.retire(&self.run_id).await {
            tracing::warn!(run_id = %self.run_id, error = %e, "retention not scheduled");
        }
        Ok(RunEnd {
            reason,
            steps: step,
            text,
        })
    }

    /// One model call as one journaled step; its events are appended inside it.
    async fn model_step(
        &mut self,
        ctx: &WorkflowContext<'_>,
        step: u32,
        conv: &[Message],
    ) -> Result<ModelStep, Stop> {
        let request = ModelRequest {
            messages: conv.to_vec(),
            tools: self.agent.tool_specs().to_vec(),
            tool_choice: self.input.tool_choice.clone(),
            ..ModelRequest::default()
        };
        let at = self.out.next;
        let log = self.out.log.clone();
        let run_id = self.run_id.clone();
        let agent = self.agent.clone();
        let policy = RunRetryPolicy::default()
            .initial_delay(self.runs.retry_delay)
            .max_attempts(self.runs.model_attempts);
        let runs = self.runs;
        let result = ctx
            .run(|| async move {
                let inflight = runs.enter(&run_id);
                inflight
                    .guard(stream_model(&log, &run_id, &agent, step, at, request))
                    .await
                    .map(Json)
            })
            .name(format!("s{step}-model"))
            .retry_policy(policy)
            .await;
        match result {
            Ok(Json(out)) => {
                self.out.next = out.end;
                Ok(out)
            }
            Err(e) => Err(stop_on(e)),
        }
    }

    /// One tool call: approval (if needed) on a durable promise, then execution as a journaled
    /// step, then its result event.
    async fn tool_call(
        &mut self,
        ctx: &WorkflowContext<'_>,
        step: u32,
        index: u32,
        call: &ToolCall,
    ) -> Result<ToolOutcome, Stop> {
        let tool = self.agent.tool(&call.name).cloned();
        let needs_approval = self.input.require_tool_approval
            || tool
                .as_ref()
                .is_some_and(|t| t.requires_approval(&call.arguments));
        let mut outcome = None;
        if needs_approval {
            // The fields of `Suspension`, as the local runner writes them.
            let mut data = json!({"step": step, "index": index, "tool_call_id": call.id,
                                  "tool_name": call.name, "args": call.arguments});
            self.emit(EventKind::ToolCallApproval, data.clone()).await?;
            data["reason"] = "approval".into();
            self.emit(EventKind::Suspended, data).await?;
            let key = approval_promise(step, index);
            let decision: Json<Decision> = ctx.promise(&key).await.map_err(stop_on)?;
            let d = decision.into_inner();
            if !d.approved {
                outcome = Some(ToolOutcome::Declined(d.reason));
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => {
                let run_id = self.run_id.clone();
                let call_id = call.id.clone();
                let name = call.name.clone();
                let args = call.arguments.clone();
                let runs = self.runs;
                let Json(o) = ctx
                    .run(|| async move {
                        let Some(tool) = tool else {
                            return Ok(Json(ToolOutcome::Error(format!("unknown tool {name:?}"))));
                        };
                        let inflight = runs.enter(&run_id);
                        let tctx = ToolContext::new(
                            run_id,
                            step,
                            index,
                            call_id,
                            1,
                            inflight.token.clone(),
                        );
                        inflight
                            .guard(async {
                                Ok(Json(match tool.execute(args, tctx).await {
                                    Ok(v) => ToolOutcome::Ok(v),
                                    Err(e) => ToolOutcome::Error(e.message().to_owned()),
                                }))
                            })
                            .await
                    })
                    .name(format!("s{step}-tool-{index}"))
                    .await
                    .map_err(stop_on)?;
                o
            }
        };
        let mut data = json!({"step": step, "index": index, "tool_call_id": call.id,
                              "tool_name": call.name});
        let kind = match &outcome {
            ToolOutcome::Ok(v) => {
                data["result"] = v.clone();
                EventKind::ToolResult
            }
            ToolOutcome::Error(e) => {
                data["error"] = e.clone().into();
                EventKind::ToolError
            }
            o @ ToolOutcome::Declined(_) => {
                data["result"] = o.for_model().into();
                data["declined"] = true.into();
                EventKind::ToolResult
            }
        };
        self.emit(kind, data).await?;
        Ok(outcome)
    }

    async fn end(&mut self, kind: EventKind, data: Value) -> durable_core::Result<()> {
        end_run(&self.out.log, &self.run_id, kind, data).await
    }
}

/// Append a terminal event unless the log already ends with one (an earlier attempt got this
/// far), then start the run's retention.
async fn end_run(
    log: &EventLog,
    run_id: &RunId,
    kind: EventKind,
    data: Value,
) -> durable_core::Result<()> {
    let len = log.len(run_id).await?.unwrap_or(0);
    let last = match len {
        0 => None,
        n => log.read(run_id, n - 1, 1).await?.pop(),
    };
    if !last.is_some_and(|e| e.kind.is_terminal()) {
        log.append(run_id, &[NewEvent::json(kind, &data)?], None)
            .await?;
    }
    if let Err(e) = log.retire(run_id).await {
        tracing::warn!(run_id = %run_id, error = %e, "retention not scheduled");
    }
    Ok(())
}

/// The body of a model step: `step-restart` if an abandoned attempt left events past `at`,
/// `step-start`, the model's deltas and tool calls (one append per batch), and the step's output
/// with the cursor after it.
async fn stream_model(
    log: &EventLog,
    run_id: &RunId,
    agent: &Agent,
    step: u32,
    at: Cursor,
    request: ModelRequest,
) -> Result<ModelStep, HandlerError> {
    let len = log
        .len(run_id)
        .await?
        .ok_or_else(|| TerminalError::new(format!("run {run_id} has no event log")))?;
    let mut batch = Vec::with_capacity(64);
    if len > at {
        batch.push(NewEvent::json(
            EventKind::StepRestart,
            &json!({ "step": step }),
        )?);
    }
    batch.push(NewEvent::json(
        EventKind::StepStart,
        &json!({ "step": step }),
    )?);
    let mut end = len;
    let mut out = ModelStep::default();
    let mut stream = match agent.model().stream(request).await {
        Ok(s) => s,
        Err(e) => {
            log.append(run_id, &batch, None).await?;
            return Err(model_error(e));
        }
    };
    let mut ended = false;
    while !ended {
        let mut next = stream.next().await;
        loop {
            match next {
                None => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => {
                    log.append(run_id, &batch, None).await?;
                    return Err(model_error(e));
                }
                Some(Ok(chunk)) => {
                    if absorb(step, chunk, &mut out, &mut batch)? {
                        ended = true;
                        break;
                    }
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            match stream.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
        if !batch.is_empty() {
            let first = log.append(run_id, &batch, None).await?;
            end = first + batch.len() as Cursor;
            batch.clear();
        }
    }
    out.end = end;
    Ok(out)
}

/// A model error: retried by Restate (up to the configured attempts) when retrying may help.
fn model_error(e: Error) -> HandlerError {
    if e.is_retryable() {
        HandlerError::from(e)
    } else {
        TerminalError::new_with_code(CODE_NOT_RETRYABLE, e.to_string()).into()
    }
}

/// Fold one chunk into the step; returns whether the model call finished.
fn absorb(
    step: u32,
    chunk: ModelChunk,
    out: &mut ModelStep,
    batch: &mut Vec<NewEvent>,
) -> durable_core::Result<bool> {
    match chunk {
        ModelChunk::TextDelta { text } => {
            batch.push(NewEvent::json(
                EventKind::TextDelta,
                &json!({ "text": text }),
            )?);
            out.text.push_str(&text);
        }
        ModelChunk::ReasoningDelta { text } => {
            batch.push(NewEvent::json(
                EventKind::ReasoningDelta,
                &json!({ "text": text }),
            )?);
        }
        ModelChunk::ToolCall(call) => {
            let index = out.tool_calls.len();
            batch.push(NewEvent::json(
                EventKind::ToolCall,
                &json!({"step": step, "index": index, "tool_call_id": call.id,
                        "tool_name": call.name, "args": call.arguments}),
            )?);
            out.tool_calls.push(call);
        }
        ModelChunk::Finish { reason, usage } => {
            out.finish_reason = Some(reason);
            out.usage = usage;
            return Ok(true);
        }
    }
    Ok(false)
}

fn reason_name(r: &FinishReason) -> String {
    match r {
        FinishReason::Stop => "stop".to_owned(),
        FinishReason::ToolCalls => "tool-calls".to_owned(),
        FinishReason::Length => "length".to_owned(),
        FinishReason::ContentFilter => "content-filter".to_owned(),
        FinishReason::Other(s) => s.clone(),
    }
}

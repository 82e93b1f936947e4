//! The agentic loop, shared by the plain [`Agent`](super::Agent) and durable execution.
//!
//! **Durability protocol** (SPEC G5). Per model step `s`:
//! 1. `step-start`, the model's deltas and tool calls are appended to the run log;
//! 2. the log is flushed, then the step's complete output is checkpointed as `s{s}-model`
//!    together with the log's next cursor;
//! 3. each tool call `i` runs; its outcome is checkpointed as `s{s}-tool-{i}` *before* its
//!    `tool-result` (or `tool-error`) event is appended;
//! 4. `step-finish`.
//!
//! A run continued after a crash loads the checkpoints, reads the log from the cursor of the
//! latest model checkpoint, and so knows exactly which of that step's events are already in the
//! log: steps before it are replayed from checkpoints without any event or execution, the
//! events of the current step are appended only if missing, and completed tool calls are never
//! executed again. A model step interrupted before its checkpoint is re-run, announced by
//! `step-restart {step}` so observers drop what they saw of it.
//!
//! Every state change is persisted before it is announced (G7): the `suspended` event follows
//! the `Suspended` status, and the terminal status follows the terminal event only so that a
//! crash in between is repaired by recovery, which finds the terminal event in the log.

mod background;
pub(crate) mod journal;
mod tools;

use self::background::*;
pub(crate) use self::journal::*;
use self::tools::*;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::model::{FinishReason, Message, ModelChunk, ModelRequest, ToolCall, Usage};
use super::spec::{AgentDef, RunSpec, Suspension};
use super::tool::{Tool, ToolContext};
use crate::cache::{Cursor, ServerCache};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventKind, Json, NewEvent};
use crate::id::RunId;
use crate::log::{EventLog, RunWriter};
use crate::store::{now_ms, Epoch, RunStatus, WorkflowStore};

/// Events gathered from a model stream before they are handed to the sink at once.
const MAX_BATCH: usize = 128;

/// Why a run's cancellation token fired.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopFlag(Arc<AtomicU8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    None,
    Abort,
    Fenced,
    Shutdown,
}

impl StopFlag {
    pub(crate) fn set(&self, reason: StopReason) {
        let v = match reason {
            StopReason::None => 0,
            StopReason::Abort => 1,
            StopReason::Fenced => 2,
            StopReason::Shutdown => 3,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn get(&self) -> StopReason {
        match self.0.load(Ordering::Acquire) {
            1 => StopReason::Abort,
            2 => StopReason::Fenced,
            3 => StopReason::Shutdown,
            _ => StopReason::None,
        }
    }
}

/// How a run's execution ended in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Finished,
    Suspended,
    Failed,
    Aborted,
    /// Execution stopped without a terminal state (fenced by a newer owner, shut down, the log
    /// deleted): the run stays resumable by recovery, if anything is left of it.
    Stopped,
    /// A backend failed with a retryable error past the writer's retries: the executing
    /// instance restarts the run from its last checkpoint once the backend answers again.
    Interrupted,
}

enum Halt {
    Cancelled,
    /// Storage failed or this owner was fenced: stop without touching the run.
    Fatal(Error),
    /// The run itself failed (the model failed): record it.
    Failed(Error),
}

type Step<T> = std::result::Result<T, Halt>;

fn fatal(e: Error) -> Halt {
    Halt::Fatal(e)
}

/// Where events go.
pub(crate) enum Sink {
    /// A plain in-process stream with local cursors.
    Local {
        tx: mpsc::Sender<Vec<Event>>,
        run_id: RunId,
        next: Cursor,
    },
    /// The run log.
    Log(RunWriter),
}

impl Sink {
    async fn send_batch(&mut self, events: Vec<NewEvent>) -> Result<()> {
        match self {
            Sink::Local { tx, run_id, next } => {
                let at = now_ms();
                let first = *next;
                *next += events.len() as u64;
                let batch = events
                    .into_iter()
                    .zip(first..)
                    .map(|(e, cursor)| Event {
                        run_id: run_id.clone(),
                        cursor,
                        kind: e.kind,
                        data: e.data,
                        at,
                    })
                    .collect();
                tx.send(batch)
                    .await
                    .map_err(|_| Error::new(ErrorKind::InvalidState, "the stream was dropped"))
            }
            Sink::Log(w) => w.send_batch(events).await,
        }
    }

    async fn flush(&mut self) -> Result<Cursor> {
        match self {
            Sink::Local { next, .. } => Ok(*next),
            Sink::Log(w) => w.flush().await,
        }
    }
}

/// The durable side of an execution.
pub(crate) struct DurableCtx {
    pub(crate) store: Arc<dyn WorkflowStore>,
    pub(crate) log: EventLog,
    pub(crate) epoch: Epoch,
    /// Held while the lease is renewed; set to false (under the lock) before a status change
    /// that releases the lease, so no renewal re-takes it afterwards.
    pub(crate) lease_active: Arc<tokio::sync::Mutex<bool>>,
    /// The run's abort marker (written by `abort` from any instance), checked at each step.
    pub(crate) abort_marker: Option<(Arc<dyn ServerCache>, String)>,
    /// Where the thread's messages are saved when the run finishes.
    pub(crate) memory: Option<(Arc<dyn super::memory::ConversationMemory>, String)>,
}

/// One execution of a run, from its start or from its checkpoints.
pub(crate) struct Runner {
    pub(crate) def: Arc<AgentDef>,
    pub(crate) run_id: RunId,
    pub(crate) spec: RunSpec,
    pub(crate) sink: Sink,
    pub(crate) journal: Journal,
    pub(crate) cancel: CancellationToken,
    pub(crate) stop: StopFlag,
    pub(crate) durable: Option<DurableCtx>,
    /// Background tool tasks (until idle). Dropped with the runner: they stop with the run.
    pub(crate) background: tokio::task::JoinSet<BgDone>,
    /// Events this execution handed to its sink (the `durable.events_appended` span field).
    pub(crate) appended: u64,
}

impl Runner {
    /// Execute until the run finishes, suspends, fails, is aborted, or must stop.
    pub(crate) async fn run(mut self) -> Outcome {
        let span = crate::telemetry::run_span(
            &self.def.id,
            &self.def.name,
            self.run_id.as_str(),
            self.spec.thread_id.as_deref(),
            self.spec.traceparent.as_deref(),
        );
        let outcome = self.run_traced().instrument(span.clone()).await;
        span.record("durable.outcome", tracing::field::debug(&outcome));
        span.record("durable.events_appended", self.appended);
        outcome
    }

    async fn run_traced(&mut self) -> Outcome {
        let result = self.run_inner().await;
        let outcome = match result {
            Ok(o) => Ok(o),
            Err(Halt::Cancelled) => match self.stop.get() {
                StopReason::Abort => self.end_aborted().await,
                _ => Ok(Outcome::Stopped),
            },
            Err(Halt::Failed(e)) => self.end_failed(e).await,
            Err(Halt::Fatal(e)) => Err(Halt::Fatal(e)),
        };
        match outcome {
            Ok(o) => o,
            Err(Halt::Fatal(e)) => {
                if e.kind() == ErrorKind::Fenced {
                    tracing::info!(run_id = %self.run_id, "fenced off by a newer owner; stopping");
                    Outcome::Stopped
                } else if matches!(self.sink, Sink::Local { .. }) {
                    Outcome::Stopped
                } else if e.is_retryable() && !self.cancel.is_cancelled() {
                    tracing::warn!(run_id = %self.run_id, error = %e, "backend unavailable; the run restarts from its last checkpoint when it is back");
                    Outcome::Interrupted
                } else {
                    tracing::warn!(run_id = %self.run_id, error = %e, "run stopped; recovery continues it from its last checkpoint");
                    Outcome::Stopped
                }
            }
            Err(_) => Outcome::Stopped,
        }
    }

    fn replaying(&self, step: u32) -> bool {
        self.journal.resume_step().is_some_and(|r| step < r)
    }

    async fn emit(&mut self, kind: EventKind, data: &(impl Serialize + Sync)) -> Step<()> {
        let ev = NewEvent::json(kind, data).map_err(fatal)?;
        self.send(vec![ev]).await
    }

    /// Hand a batch to the sink, counting it.
    async fn send(&mut self, batch: Vec<NewEvent>) -> Step<()> {
        self.appended += batch.len() as u64;
        self.sink.send_batch(batch).await.map_err(fatal)
    }

    /// Emit unless the log already holds this event (after a crash).
    async fn emit_once(&mut self, kind: EventKind, data: Value) -> Step<()> {
        if let Some(m) = mark_of(&kind, &data) {
            if !self.journal.marks.insert(m) {
                return Ok(());
            }
        }
        self.emit(kind, &data).await
    }

    async fn flush(&mut self) -> Step<Cursor> {
        self.sink.flush().await.map_err(fatal)
    }

    async fn checkpoint(&mut self, key: String, value: Value) -> Step<Value> {
        let stored = match &self.durable {
            Some(d) => d
                .store
                .checkpoint(&self.run_id, d.epoch, &key, value)
                .await
                .map_err(fatal)?,
            None => value,
        };
        self.journal.checkpoints.insert(key, stored.clone());
        Ok(stored)
    }

    async fn check_abort(&mut self) -> Step<()> {
        if let Some(d) = &self.durable {
            if let Some((cache, key)) = &d.abort_marker {
                if cache.get(key).await.map_err(fatal)?.is_some() {
                    self.stop.set(StopReason::Abort);
                    self.cancel.cancel();
                }
            }
        }
        if self.cancel.is_cancelled() {
            return Err(Halt::Cancelled);
        }
        Ok(())
    }

    fn conversation(&self) -> Vec<Message> {
        let mut conv = Vec::with_capacity(self.spec.messages.len() + 1);
        if !self.def.instructions.is_empty() {
            conv.push(Message::system(self.def.instructions.clone()));
        }
        conv.extend(self.spec.messages.iter().cloned());
        conv
    }

    async fn run_inner(&mut self) -> Step<Outcome> {
        if self.journal.resume_step().is_some() {
            self.journal.marks.insert("start".to_owned());
        }
        self.emit_once(
            EventKind::Start,
            json!({"agent_id": self.def.id, "run_id": self.run_id}),
        )
        .await?;
        let mut conv = self.conversation();
        let mut usage = Usage::default();
        let mut step = 0u32;
        let mut turn_start = 0u32;
        let mut pending = self.restore_background().await?;
        let (reason, text) = loop {
            self.check_abort().await?;
            let replay = self.replaying(step);
            let step_span = crate::telemetry::step_span(self.run_id.as_str(), step, replay);
            let appended_before = self.appended;
            let out = match self.journal.model(step) {
                Some(cp) => {
                    if !cp.injected.is_empty() {
                        turn_start = step;
                        conv.extend(cp.injected.into_iter().map(|i| i.message));
                    }
                    cp.output
                }
                None => {
                    let injected = std::mem::take(&mut pending);
                    conv.extend(injected.iter().map(|i| i.message.clone()));
                    self.model_step(step, &conv, injected)
                        .instrument(step_span.clone())
                        .await?
                }
            };
            usage += out.usage;
            conv.push(Message::assistant(out.text.clone(), out.tool_calls.clone()));
            let calls = !out.tool_calls.is_empty();
            if calls {
                match self
                    .tool_phase(step, &out.tool_calls, replay)
                    .instrument(step_span.clone())
                    .await?
                {
                    ToolPhase::Done(results) => conv.extend(results),
                    ToolPhase::Suspended => return Ok(Outcome::Suspended),
                }
            }
            if !replay {
                self.step_finish(step, &out).await?;
            }
            step_span.record("durable.events_appended", self.appended - appended_before);
            step += 1;
            let turn_over = !calls || step - turn_start >= self.spec.max_steps;
            if !turn_over {
                continue;
            }
            let reason = match &out.finish_reason {
                _ if calls => "max-steps".to_owned(),
                Some(r) => reason_name(r),
                None => "stop".to_owned(),
            };
            // A follow-up turn already ran before a crash: replay it.
            if self.journal.model(step).is_some() {
                turn_start = step;
                continue;
            }
            match self.next_turn(&mut pending).await? {
                Next::Turn => turn_start = step,
                Next::IdleTimeout => break ("idle-timeout".to_owned(), last_text(&conv)),
                Next::Done => break (reason, last_text(&conv)),
            }
        };
        let steps = step;
        self.emit(
            EventKind::Finish,
            &json!({"reason": reason, "usage": usage, "text": text, "steps": steps}),
        )
        .await?;
        self.flush().await?;
        self.save_memory(&conv).await;
        self.set_terminal(RunStatus::Completed).await?;
        Ok(Outcome::Finished)
    }

    async fn step_finish(&mut self, step: u32, out: &StepOutput) -> Step<()> {
        let reason = out.finish_reason.as_ref().map(reason_name);
        self.emit_once(
            EventKind::StepFinish,
            json!({"step": step, "reason": reason, "usage": out.usage}),
        )
        .await
    }

    async fn model_step(
        &mut self,
        step: u32,
        conv: &[Message],
        injected: Vec<Injection>,
    ) -> Step<StepOutput> {
        if self.journal.marks.contains(&format!("step-start:{step}")) {
            self.emit(EventKind::StepRestart, &json!({ "step": step }))
                .await?;
        }
        self.journal.marks.insert(format!("step-start:{step}"));
        self.emit(EventKind::StepStart, &json!({ "step": step }))
            .await?;
        let span =
            crate::telemetry::model_span(self.def.model.model_id(), self.run_id.as_str(), step);
        let result = self
            .model_call(step, conv, injected, &span)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(out) => {
                span.record("gen_ai.usage.input_tokens", out.usage.input_tokens);
                span.record("gen_ai.usage.output_tokens", out.usage.output_tokens);
                if let Some(r) = &out.finish_reason {
                    span.record(
                        "gen_ai.response.finish_reasons",
                        tracing::field::display(reason_name(r)),
                    );
                }
            }
            Err(Halt::Failed(e) | Halt::Fatal(e)) => {
                span.record("error.type", tracing::field::debug(e.kind()));
            }
            Err(Halt::Cancelled) => {
                span.record("error.type", "cancelled");
            }
        }
        result
    }

    /// The model call of a step, streamed into the log, then checkpointed.
    async fn model_call(
        &mut self,
        step: u32,
        conv: &[Message],
        injected: Vec<Injection>,
        span: &tracing::Span,
    ) -> Step<StepOutput> {
        let request = ModelRequest {
            messages: conv.to_vec(),
            tools: self.def.specs.clone(),
            tool_choice: self.spec.tool_choice.clone(),
            ..ModelRequest::default()
        };
        let chunks = self.def.trace_chunks;
        let model = self.def.model.clone();
        let cancel = self.cancel.clone();
        let mut stream = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Halt::Cancelled),
            s = model.stream(request) => s.map_err(Halt::Failed)?,
        };
        let mut out = StepOutput::default();
        let mut batch = Vec::with_capacity(64);
        let mut ended = false;
        while !ended {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(Halt::Cancelled),
                item = stream.next() => item,
            };
            let mut next = item;
            loop {
                match next {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => {
                        self.send(batch).await?;
                        return Err(Halt::Failed(e));
                    }
                    Some(Ok(chunk)) => {
                        if chunks {
                            tracing::trace!(target: "durable::chunk", parent: span, chunk = ?chunk);
                        }
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
                let full = std::mem::replace(&mut batch, Vec::with_capacity(64));
                self.send(full).await?;
            }
        }
        let cursor = self.flush().await?;
        let cp = ModelCheckpoint {
            output: out,
            injected,
            cursor,
        };
        let stored = self
            .checkpoint(
                model_key(step),
                serde_json::to_value(&cp).map_err(|e| fatal(e.into()))?,
            )
            .await?;
        let cp: ModelCheckpoint = serde_json::from_value(stored).map_err(|e| fatal(e.into()))?;
        Ok(cp.output)
    }

    async fn set_terminal(&mut self, status: RunStatus) -> Step<()> {
        let Some(d) = &self.durable else {
            return Ok(());
        };
        *d.lease_active.lock().await = false;
        // Status and retention together (G6): if this fails, the supervisor runs the run
        // again, finds its log ended and finishes it then.
        d.log
            .finish(d.store.as_ref(), &self.run_id, Some(d.epoch), status)
            .await
            .map_err(fatal)?;
        if let Some((cache, key)) = &d.abort_marker {
            let _ = cache.delete(key).await;
        }
        Ok(())
    }

    async fn end_aborted(&mut self) -> Step<Outcome> {
        self.emit(EventKind::Abort, &json!({"reason": "aborted"}))
            .await?;
        self.flush().await?;
        self.set_terminal(RunStatus::Aborted).await?;
        Ok(Outcome::Aborted)
    }

    async fn end_failed(&mut self, e: Error) -> Step<Outcome> {
        self.emit(
            EventKind::Error,
            &json!({"message": e.to_string(), "kind": e.kind().as_str()}),
        )
        .await?;
        self.flush().await?;
        self.set_terminal(RunStatus::Failed).await?;
        Ok(Outcome::Failed)
    }

    async fn save_memory(&self, conv: &[Message]) {
        let Some(d) = &self.durable else { return };
        let Some((memory, thread)) = &d.memory else {
            return;
        };
        let skip = usize::from(!self.def.instructions.is_empty());
        let msgs: Vec<Message> = conv.iter().skip(skip).cloned().collect();
        if let Err(e) = memory.save(thread, &self.run_id, msgs).await {
            tracing::warn!(run_id = %self.run_id, error = %e, "conversation not saved to memory");
        }
    }
}

/// Fold one model chunk into the step output and the events to append. Returns whether the
/// model call finished.
fn absorb(
    step: u32,
    chunk: ModelChunk,
    out: &mut StepOutput,
    batch: &mut Vec<NewEvent>,
) -> Step<bool> {
    match chunk {
        ModelChunk::TextDelta { text } => {
            batch.push(NewEvent::new(EventKind::TextDelta, text_json(&text)?));
            out.text.push_str(&text);
        }
        ModelChunk::ReasoningDelta { text } => {
            batch.push(NewEvent::new(EventKind::ReasoningDelta, text_json(&text)?));
            out.reasoning.push_str(&text);
        }
        ModelChunk::ToolCall(call) => {
            let index = out.tool_calls.len();
            batch.push(
                NewEvent::json(
                    EventKind::ToolCall,
                    &json!({"step": step, "index": index, "tool_call_id": call.id,
                            "tool_name": call.name, "args": call.arguments}),
                )
                .map_err(fatal)?,
            );
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

/// `{"text":"…"}` in one right-sized allocation (the per-delta hot path).
fn text_json(text: &str) -> Step<Json> {
    let mut buf = Vec::with_capacity(text.len() + 12);
    buf.extend_from_slice(b"{\"text\":");
    serde_json::to_writer(&mut buf, text).map_err(|e| fatal(e.into()))?;
    buf.push(b'}');
    Json::from_trusted(buf).map_err(fatal)
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

fn last_text(conv: &[Message]) -> String {
    conv.iter()
        .rev()
        .find(|m| m.role == super::model::Role::Assistant)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

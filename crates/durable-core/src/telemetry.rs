//! Tracing spans of runs, model calls and tool calls, with the attributes of OpenTelemetry's
//! GenAI semantic conventions, and the hooks that carry a run's trace across processes.
//!
//! Every execution of a run is one `durable.run` span (`gen_ai.operation.name =
//! "invoke_agent"`); inside it each step is a `durable.step` span holding the step's model call,
//! a `durable.model` span (`"chat"`, with `gen_ai.request.model` and, when the call ends,
//! `gen_ai.usage.input_tokens` / `output_tokens` and `gen_ai.response.finish_reasons`), and its
//! tool calls, each a `durable.tool` span (`"execute_tool"`, with `gen_ai.tool.name`,
//! `gen_ai.tool.call.id`, and `error.type` when it fails). Every span carries
//! `durable.run_id`; `otel.name` gives OpenTelemetry the span name the conventions ask for
//! (`invoke_agent <agent>`, `chat <model>`, `execute_tool <tool>`). When they close, the run
//! and step spans record `durable.events_appended`: the events that execution (or step) handed
//! to the run's log. Spans are at `INFO`; the library's own log events are `WARN` and above
//! unless something is wrong, so a subscriber filtering at `warn` sees no per-run noise.
//!
//! Per-chunk events (one `TRACE` event per streamed model chunk, target `durable::chunk`) are
//! off by default: they multiply the volume by the number of deltas. Turn them on per agent
//! with [`AgentBuilder::trace_chunks`](crate::agent::AgentBuilder::trace_chunks).
//!
//! # One trace across processes
//!
//! A run that is recovered by another process should continue the trace that started it. The
//! core does not depend on OpenTelemetry; an integration installs [`TraceHooks`] once: `capture`
//! returns the current context as a W3C `traceparent` when a run is created (it is stored in
//! the run record), and `attach` makes each execution's `durable.run` span a child of it, in
//! whichever process executes it. Without hooks the stored `traceparent` is still recorded on
//! the span as `durable.traceparent`.

use std::sync::OnceLock;

use tracing::field::Empty;
use tracing::Span;

/// How an OpenTelemetry integration carries a run's trace context (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct TraceHooks {
    /// The current trace context as a W3C `traceparent` (`00-<trace>-<span>-<flags>`), if any.
    pub capture: fn() -> Option<String>,
    /// Make `span` a child of the context `traceparent`.
    pub attach: fn(&Span, &str),
}

static HOOKS: OnceLock<TraceHooks> = OnceLock::new();

/// Install the trace hooks of this process. Returns false (and changes nothing) if hooks were
/// installed already.
pub fn set_trace_hooks(hooks: TraceHooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

/// The longest `traceparent` kept (W3C's version 00 is 55 bytes; later versions may add).
const MAX_TRACEPARENT: usize = 256;

/// The current trace context, through the installed hooks. Anything that is not a plausible
/// `traceparent` (printable ASCII, bounded) is dropped rather than stored.
pub(crate) fn capture() -> Option<String> {
    let tp = (HOOKS.get()?.capture)()?;
    (tp.len() <= MAX_TRACEPARENT && tp.bytes().all(|b| b.is_ascii_graphic())).then_some(tp)
}

/// The span of one execution of a run.
pub(crate) fn run_span(
    agent_id: &str,
    agent_name: &str,
    run_id: &str,
    thread_id: Option<&str>,
    traceparent: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        "durable.run",
        otel.name = %format_args!("invoke_agent {agent_id}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.id = %agent_id,
        gen_ai.agent.name = %agent_name,
        gen_ai.conversation.id = thread_id,
        durable.run_id = %run_id,
        durable.traceparent = traceparent,
        durable.outcome = Empty,
        durable.events_appended = Empty,
    );
    if let (Some(tp), Some(hooks)) = (traceparent, HOOKS.get()) {
        (hooks.attach)(&span, tp);
    }
    span
}

/// The span of one step: its model call and its tool calls (`durable.replayed` when the step
/// is only replayed from checkpoints after a restart).
pub(crate) fn step_span(run_id: &str, step: u32, replayed: bool) -> Span {
    tracing::info_span!(
        "durable.step",
        durable.run_id = %run_id,
        durable.step = step,
        durable.replayed = replayed,
        durable.events_appended = Empty,
    )
}

/// The span of one model call.
pub(crate) fn model_span(model: &str, run_id: &str, step: u32) -> Span {
    tracing::info_span!(
        "durable.model",
        otel.name = %format_args!("chat {model}"),
        gen_ai.operation.name = "chat",
        gen_ai.request.model = %model,
        durable.run_id = %run_id,
        durable.step = step,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        error.type = Empty,
    )
}

/// The span of one tool call.
pub(crate) fn tool_span(tool: &str, call_id: &str, run_id: &str, step: u32) -> Span {
    tracing::info_span!(
        "durable.tool",
        otel.name = %format_args!("execute_tool {tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %tool,
        gen_ai.tool.call.id = %call_id,
        durable.run_id = %run_id,
        durable.step = step,
        error.type = Empty,
    )
}

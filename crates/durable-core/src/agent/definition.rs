//! [`Agent`]: instructions, a model, tools; and the options of one run.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::{LanguageModel, ToolSpec, Usage};
use super::runner::{Journal, Runner, Sink, StopFlag};
use super::spec::{AgentDef, RunSpec};
pub use super::spec::{AgentInput, StreamOptions, Suspension, DEFAULT_MAX_IDLE};
use super::tool::Tool;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::id::RunId;

/// Default [`AgentBuilder::max_steps`].
pub const DEFAULT_MAX_STEPS: u32 = 5;
/// Default [`AgentBuilder::tool_concurrency`].
pub const DEFAULT_TOOL_CONCURRENCY: usize = 10;

/// An agent: instructions, a model and tools, run as an agentic loop (model call → tool calls →
/// model call …) until the model answers without calling tools or `max_steps` is reached.
///
/// [`Agent::stream`] runs in the caller's task and is not durable; wrap the agent in a
/// [`DurableAgent`](super::DurableAgent) for resumable, crash-surviving runs.
#[derive(Clone)]
pub struct Agent {
    pub(crate) def: Arc<AgentDef>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tools: Vec<&str> = self.def.tools.keys().map(String::as_str).collect();
        tools.sort_unstable();
        f.debug_struct("Agent")
            .field("id", &self.def.id)
            .field("model", &self.def.model.model_id())
            .field("tools", &tools)
            .field("max_steps", &self.def.max_steps)
            .finish()
    }
}

/// Builds an [`Agent`]; see [`Agent::builder`].
#[derive(Default)]
pub struct AgentBuilder {
    id: Option<String>,
    name: Option<String>,
    instructions: String,
    model: Option<Arc<dyn LanguageModel>>,
    tools: Vec<Arc<dyn Tool>>,
    max_steps: Option<u32>,
    tool_concurrency: Option<usize>,
    trace_chunks: bool,
}

impl fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("id", &self.id)
            .finish()
    }
}

impl AgentBuilder {
    /// The agent's id (`[A-Za-z0-9_-]`, 1 to 128 characters). Required. Durable runs record it,
    /// so an instance only recovers and resumes runs of its own agent.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A display name (defaults to the id).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The system instructions.
    #[must_use]
    pub fn instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = instructions.into();
        self
    }

    /// The model. Required.
    #[must_use]
    pub fn model(mut self, model: impl LanguageModel) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    /// The model, shared.
    #[must_use]
    pub fn model_arc(mut self, model: Arc<dyn LanguageModel>) -> Self {
        self.model = Some(model);
        self
    }

    /// Add a tool.
    #[must_use]
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools.push(Arc::new(tool));
        self
    }

    /// Add a shared tool.
    #[must_use]
    pub fn tool_arc(mut self, tool: Arc<dyn Tool>) -> Self {
        self.tools.push(tool);
        self
    }

    /// Maximum model calls per turn (default 5).
    #[must_use]
    pub fn max_steps(mut self, max_steps: u32) -> Self {
        self.max_steps = Some(max_steps);
        self
    }

    /// How many tool calls of one step run at once (default 10). Steps with a call that needs
    /// approval run their calls one by one.
    #[must_use]
    pub fn tool_concurrency(mut self, n: usize) -> Self {
        self.tool_concurrency = Some(n);
        self
    }

    /// Emit one `TRACE` event (target `durable::chunk`) per streamed model chunk inside the
    /// model call's span (default off: it multiplies trace volume by the number of deltas;
    /// see [`telemetry`](crate::telemetry)).
    #[must_use]
    pub fn trace_chunks(mut self, on: bool) -> Self {
        self.trace_chunks = on;
        self
    }

    /// Build the agent.
    ///
    /// # Errors
    /// `InvalidInput` for a missing or invalid id, a missing model, `max_steps` or
    /// `tool_concurrency` of 0, or tools with invalid or duplicate names.
    pub fn build(self) -> Result<Agent> {
        let id = self
            .id
            .ok_or_else(|| Error::invalid_input("an agent needs an id"))?;
        RunId::new(&id).map_err(|e| {
            Error::invalid_input(format!("agent id {id:?} is invalid: {}", e.message()))
        })?;
        let model = self
            .model
            .ok_or_else(|| Error::invalid_input(format!("agent {id} needs a model")))?;
        let max_steps = self.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
        let tool_concurrency = self.tool_concurrency.unwrap_or(DEFAULT_TOOL_CONCURRENCY);
        if max_steps == 0 || tool_concurrency == 0 {
            return Err(Error::invalid_input(
                "max_steps and tool_concurrency must be at least 1",
            ));
        }
        let mut tools = HashMap::new();
        let mut specs = Vec::new();
        for tool in self.tools {
            let name = tool.name().to_owned();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(Error::invalid_input(format!(
                    "tool name {name:?} must be [A-Za-z0-9_-]{{1,64}}"
                )));
            }
            specs.push(ToolSpec {
                name: name.clone(),
                description: tool.description().to_owned(),
                parameters: tool.parameters(),
            });
            if tools.insert(name.clone(), tool).is_some() {
                return Err(Error::invalid_input(format!("two tools are named {name}")));
            }
        }
        Ok(Agent {
            def: Arc::new(AgentDef {
                name: self.name.unwrap_or_else(|| id.clone()),
                id,
                instructions: self.instructions,
                model,
                tools,
                specs,
                max_steps,
                tool_concurrency,
                trace_chunks: self.trace_chunks,
            }),
        })
    }
}

impl Agent {
    /// Start building an agent.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.def.id
    }

    /// The display name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The tool called `name`.
    pub fn tool(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.def.tools.get(name)
    }

    /// The instructions (the system message of every model call; empty for none). With
    /// [`Agent::model`], [`Agent::tool_specs`] and [`Agent::max_steps`], what an execution
    /// strategy outside this crate (such as `durable-restate`) needs to run the loop itself.
    pub fn instructions(&self) -> &str {
        &self.def.instructions
    }

    /// The language model.
    pub fn model(&self) -> &Arc<dyn LanguageModel> {
        &self.def.model
    }

    /// The tools as offered to the model, in the order they were added.
    pub fn tool_specs(&self) -> &[ToolSpec] {
        &self.def.specs
    }

    /// The default maximum number of model steps of a run.
    pub fn max_steps(&self) -> u32 {
        self.def.max_steps
    }

    /// Run the agentic loop in a task of this process and stream its events. Not durable:
    /// nothing is stored, and dropping the stream stops the run. Cursors count from 0 as in a
    /// durable run, so the same client code consumes both.
    ///
    /// A tool call that needs approval ends this stream with `tool-call-approval` and
    /// `suspended`: resuming needs a [`DurableAgent`](super::DurableAgent).
    ///
    /// # Errors
    /// `InvalidInput` for an empty input.
    pub async fn stream(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<AgentStream> {
        let spec = RunSpec::new(&self.def, input.into(), &options)?;
        let run_id = options.run_id.unwrap_or_else(RunId::generate);
        // Bounded: at most 16 batches (of at most a few hundred events) wait for the consumer.
        let (tx, rx) = mpsc::channel(16);
        let runner = Runner {
            def: self.def.clone(),
            run_id: run_id.clone(),
            spec,
            sink: Sink::Local {
                tx,
                run_id: run_id.clone(),
                next: 0,
            },
            journal: Journal::ephemeral(),
            cancel: CancellationToken::new(),
            stop: StopFlag::default(),
            durable: None,
            background: tokio::task::JoinSet::new(),
            appended: 0,
        };
        let task = tokio::spawn(runner.run());
        Ok(AgentStream {
            run_id,
            rx,
            buf: std::collections::VecDeque::new(),
            _task: AbortOnDrop(task),
        })
    }

    /// Run to the end and return the final answer (see [`Agent::stream`]).
    ///
    /// # Errors
    /// As [`Agent::stream`], or the run's error.
    pub async fn generate(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<GenerateOutput> {
        let stream = self.stream(input, options).await?;
        let run_id = stream.run_id.clone();
        GenerateOutput::collect(run_id, stream).await
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The events of a non-durable [`Agent::stream`]. Dropping it stops the run.
pub struct AgentStream {
    run_id: RunId,
    rx: mpsc::Receiver<Vec<Event>>,
    buf: std::collections::VecDeque<Event>,
    _task: AbortOnDrop<super::runner::Outcome>,
}

impl AgentStream {
    /// The run's id.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }
}

impl fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentStream")
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl Stream for AgentStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(batch) => self.buf.extend(batch),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// The result of `generate`: the final answer of a run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GenerateOutput {
    /// The run.
    pub run_id: RunId,
    /// The text of the final step.
    pub text: String,
    /// `stop`, `max-steps`, `idle-timeout`, `suspended`, …
    pub finish_reason: String,
    /// Token usage summed over the run.
    pub usage: Usage,
    /// Model steps taken.
    pub steps: u32,
    /// Set when the run suspended for approval instead of finishing.
    pub suspended: Option<Suspension>,
}

impl GenerateOutput {
    /// Drain a run's event stream to its final answer: the `finish` event's, or the suspended
    /// call at `suspended`. Public for execution strategies outside this crate (such as
    /// `durable-restate`) whose runs write the same events.
    ///
    /// # Errors
    /// The run's `error` (`Unexpected`), `abort` (`InvalidState`), the stream's error, or
    /// `Unexpected` if the stream ends without a terminal event.
    pub async fn collect(
        run_id: RunId,
        mut stream: impl Stream<Item = Result<Event>> + Unpin,
    ) -> Result<Self> {
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            match ev.kind {
                EventKind::Finish => {
                    #[derive(Deserialize)]
                    struct Finish {
                        reason: String,
                        #[serde(default)]
                        usage: Usage,
                        #[serde(default)]
                        text: String,
                        #[serde(default)]
                        steps: u32,
                    }
                    let f: Finish = ev.data_as()?;
                    return Ok(Self {
                        run_id,
                        text: f.text,
                        finish_reason: f.reason,
                        usage: f.usage,
                        steps: f.steps,
                        suspended: None,
                    });
                }
                EventKind::Suspended => {
                    let s: Suspension = ev.data_as()?;
                    return Ok(Self {
                        run_id,
                        text: String::new(),
                        finish_reason: "suspended".to_owned(),
                        usage: Usage::default(),
                        steps: s.step + 1,
                        suspended: Some(s),
                    });
                }
                EventKind::Error => {
                    let v = ev.data.to_value();
                    let msg = v["message"].as_str().unwrap_or("the run failed").to_owned();
                    return Err(
                        Error::new(crate::ErrorKind::Unexpected, msg).with_operation("generate")
                    );
                }
                EventKind::Abort => {
                    return Err(Error::new(
                        crate::ErrorKind::InvalidState,
                        format!("run {run_id} was aborted"),
                    )
                    .with_operation("generate"))
                }
                _ => {}
            }
        }
        Err(Error::new(
            crate::ErrorKind::Unexpected,
            format!("run {run_id} ended without a terminal event"),
        )
        .with_operation("generate"))
    }
}

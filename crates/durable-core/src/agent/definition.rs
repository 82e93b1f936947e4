//! [`Agent`]: instructions, a model, tools; and the options of one run.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::{LanguageModel, Message, ToolChoice, ToolSpec, Usage};
use super::runner::{Journal, Runner, Sink, StopFlag};
use super::tool::Tool;
use crate::error::{Error, Result};
use crate::event::{Event, EventKind};
use crate::id::RunId;

/// Default [`AgentBuilder::max_steps`].
pub const DEFAULT_MAX_STEPS: u32 = 5;
/// Default [`AgentBuilder::tool_concurrency`].
pub const DEFAULT_TOOL_CONCURRENCY: usize = 10;
/// Default maximum idle time of [`StreamOptions::until_idle`] (5 minutes).
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(300);

pub(crate) struct AgentDef {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) instructions: String,
    pub(crate) model: Arc<dyn LanguageModel>,
    pub(crate) tools: HashMap<String, Arc<dyn Tool>>,
    pub(crate) specs: Vec<ToolSpec>,
    pub(crate) max_steps: u32,
    pub(crate) tool_concurrency: usize,
}

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
        let spec = RunSpec::new(self, input.into(), &options)?;
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

/// The input of a run: one user message, or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInput {
    /// The messages (without the agent's instructions, which are added at execution).
    pub messages: Vec<Message>,
}

impl From<&str> for AgentInput {
    fn from(s: &str) -> Self {
        Self {
            messages: vec![Message::user(s)],
        }
    }
}

impl From<String> for AgentInput {
    fn from(s: String) -> Self {
        Self {
            messages: vec![Message::user(s)],
        }
    }
}

impl From<Message> for AgentInput {
    fn from(m: Message) -> Self {
        Self { messages: vec![m] }
    }
}

impl From<Vec<Message>> for AgentInput {
    fn from(messages: Vec<Message>) -> Self {
        Self { messages }
    }
}

/// Options of one run.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Use this run id instead of a random one.
    pub run_id: Option<RunId>,
    /// Override the agent's `max_steps` for this run.
    pub max_steps: Option<u32>,
    /// Every tool call of this run needs approval.
    pub require_tool_approval: bool,
    /// Who the run belongs to: [`DurableAgent::observe_as`](super::DurableAgent::observe_as)
    /// only lets this resource observe it.
    pub resource_id: Option<String>,
    /// Conversation memory thread: earlier messages of the thread are loaded before the run and
    /// the run's messages are saved to it when it finishes.
    pub thread_id: Option<String>,
    /// Keep the run open after the model's answer while background tool tasks run; each
    /// completion starts a follow-up turn on the same run. The value is the maximum idle time
    /// waiting for a task (default 5 minutes with [`StreamOptions::until_idle`]).
    pub until_idle: Option<Duration>,
    /// Tool choice for every model call.
    pub tool_choice: ToolChoice,
}

impl StreamOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use `run_id`.
    #[must_use]
    pub fn run_id(mut self, run_id: RunId) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// Override `max_steps`.
    #[must_use]
    pub fn max_steps(mut self, n: u32) -> Self {
        self.max_steps = Some(n);
        self
    }

    /// Require approval for every tool call.
    #[must_use]
    pub fn require_tool_approval(mut self, yes: bool) -> Self {
        self.require_tool_approval = yes;
        self
    }

    /// Set the owning resource.
    #[must_use]
    pub fn resource_id(mut self, resource: impl Into<String>) -> Self {
        self.resource_id = Some(resource.into());
        self
    }

    /// Use conversation memory thread `thread`.
    #[must_use]
    pub fn thread_id(mut self, thread: impl Into<String>) -> Self {
        self.thread_id = Some(thread.into());
        self
    }

    /// Stay open for background tasks, up to the default maximum idle time (5 minutes).
    #[must_use]
    pub fn until_idle(self) -> Self {
        self.until_idle_for(DEFAULT_MAX_IDLE)
    }

    /// Stay open for background tasks, up to `max_idle` without progress.
    #[must_use]
    pub fn until_idle_for(mut self, max_idle: Duration) -> Self {
        self.until_idle = Some(max_idle);
        self
    }

    /// Set the tool choice.
    #[must_use]
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = choice;
        self
    }
}

/// A tool call waiting for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Suspension {
    /// The step that made the call.
    pub step: u32,
    /// The call's position in the step.
    pub index: u32,
    /// The provider's call id.
    pub tool_call_id: String,
    /// The tool.
    pub tool_name: String,
    /// The arguments.
    pub args: serde_json::Value,
}

/// Everything a run needs to execute, stored in its run record: serializable, so any process
/// can continue the run. Policies are data (no closures), so a resumed run behaves the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunSpec {
    pub(crate) agent_id: String,
    pub(crate) messages: Vec<Message>,
    pub(crate) max_steps: u32,
    #[serde(default)]
    pub(crate) require_tool_approval: bool,
    #[serde(default)]
    pub(crate) thread_id: Option<String>,
    #[serde(default)]
    pub(crate) until_idle_ms: Option<u64>,
    #[serde(default)]
    pub(crate) tool_choice: ToolChoice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) suspension: Option<Suspension>,
}

impl RunSpec {
    pub(crate) fn new(agent: &Agent, input: AgentInput, options: &StreamOptions) -> Result<Self> {
        if input.messages.is_empty() {
            return Err(Error::invalid_input(
                "a run needs at least one input message",
            ));
        }
        if options.max_steps == Some(0) {
            return Err(Error::invalid_input("max_steps must be at least 1"));
        }
        if let Some(thread) = &options.thread_id {
            crate::id::validate_name("thread id", thread)?;
        }
        if let Some(resource) = &options.resource_id {
            crate::id::validate_name("resource id", resource)?;
        }
        Ok(Self {
            agent_id: agent.def.id.clone(),
            messages: input.messages,
            max_steps: options.max_steps.unwrap_or(agent.def.max_steps),
            require_tool_approval: options.require_tool_approval,
            thread_id: options.thread_id.clone(),
            until_idle_ms: options
                .until_idle
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            tool_choice: options.tool_choice.clone(),
            suspension: None,
        })
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
    pub(crate) async fn collect(
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

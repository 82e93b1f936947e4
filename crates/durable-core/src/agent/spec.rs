//! What a run is: the agent's definition as the runner sees it, the caller's input and
//! options, and the serializable [`RunSpec`] stored in the run record so any process can
//! continue the run. The runner depends on this module, never on the builder API
//! ([`definition`](super::definition)), so the two have no cycle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{LanguageModel, Message, ToolChoice, ToolSpec};
use super::tool::Tool;
use crate::error::{Error, Result};
use crate::id::RunId;

/// Default maximum idle time of [`StreamOptions::until_idle`] (5 minutes).
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(300);

/// An agent's definition, shared by every run of it.
pub(crate) struct AgentDef {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) instructions: String,
    pub(crate) model: Arc<dyn LanguageModel>,
    pub(crate) tools: HashMap<String, Arc<dyn Tool>>,
    pub(crate) specs: Vec<ToolSpec>,
    pub(crate) max_steps: u32,
    pub(crate) tool_concurrency: usize,
    pub(crate) trace_chunks: bool,
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
    /// The trace context the run was created in (W3C `traceparent`), so every execution,
    /// in any process, continues that trace ([`telemetry`](crate::telemetry)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
}

impl RunSpec {
    pub(crate) fn new(def: &AgentDef, input: AgentInput, options: &StreamOptions) -> Result<Self> {
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
            agent_id: def.id.clone(),
            messages: input.messages,
            max_steps: options.max_steps.unwrap_or(def.max_steps),
            require_tool_approval: options.require_tool_approval,
            thread_id: options.thread_id.clone(),
            until_idle_ms: options
                .until_idle
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            tool_choice: options.tool_choice.clone(),
            suspension: None,
            traceparent: crate::telemetry::capture(),
        })
    }
}

//! The agent runtime: language models, tools, the agentic loop, durable execution.
//!
//! - [`Agent`]: instructions + [`LanguageModel`] + [`Tool`]s, run as a loop (model call → tool
//!   calls → model call …) in the caller's task.
//! - [`DurableAgent`]: the same loop as a durable run: events in the run log, steps
//!   checkpointed, observable from any offset, recoverable after a crash, resumable after
//!   approval, abortable from any instance.
//! - [`EventedAgent`]: fire-and-forget runs queued on PubSub and executed by a worker pool.
//! - [`ScriptedModel`]: a deterministic model for tests, demos and benchmarks.

mod definition;
mod durable;
mod evented;
mod memory;
pub mod model;
mod runner;

/// The names of a run's step checkpoints in the [`WorkflowStore`](crate::WorkflowStore): a
/// persisted format (a run checkpointed by one version is continued by the next), public so
/// tests and tools can inspect a run's progress.
pub mod checkpoints {
    pub use super::runner::journal::{approval_key, bg_key, model_key, tool_key, tool_start_key};
}
mod scripted;
mod spec;
mod tool;

pub use definition::{
    Agent, AgentBuilder, AgentInput, AgentStream, GenerateOutput, StreamOptions, Suspension,
    DEFAULT_MAX_IDLE, DEFAULT_MAX_STEPS, DEFAULT_TOOL_CONCURRENCY,
};
pub use durable::{DurableAgent, DurableAgentBuilder, DurableRun, ResumeData, DEFAULT_LEASE_TTL};
pub use evented::{EventedAgent, EventedAgentBuilder};
pub use memory::{ConversationMemory, InMemoryMemory};
pub use model::{
    FinishReason, LanguageModel, Message, ModelChunk, ModelRequest, ModelStream, Role, ToolCall,
    ToolChoice, ToolSpec, Usage,
};
pub use scripted::{ScriptItem, ScriptedModel, Turn};
pub use tool::{FnTool, Tool, ToolContext, ToolError};

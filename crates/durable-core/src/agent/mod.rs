//! The agent runtime: language models, tools, the agentic loop, durable execution.

pub mod model;

pub use model::{
    FinishReason, LanguageModel, Message, ModelChunk, ModelRequest, ModelStream, Role, ToolCall,
    ToolChoice, ToolSpec, Usage,
};

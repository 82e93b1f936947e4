//! Conversation memory: the messages of a thread, carried from one run to the next.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::model::Message;
use crate::error::Result;
use crate::id::{validate_name, RunId};

/// Thread id → messages. A run with a thread loads the thread's messages before it starts and
/// saves its whole conversation when it finishes.
#[async_trait]
pub trait ConversationMemory: Send + Sync + Debug + 'static {
    /// The thread's messages, oldest first (empty for a new thread).
    async fn load(&self, thread: &str) -> Result<Vec<Message>>;

    /// Replace the thread's messages with `messages`, the conversation of run `run_id`.
    /// Replacing (not appending) makes a repeated save after a crash harmless.
    async fn save(&self, thread: &str, run_id: &RunId, messages: Vec<Message>) -> Result<()>;
}

/// In-memory [`ConversationMemory`], the default.
#[derive(Debug, Clone, Default)]
pub struct InMemoryMemory {
    threads: Arc<Mutex<HashMap<String, Vec<Message>>>>,
}

impl InMemoryMemory {
    /// An empty memory.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConversationMemory for InMemoryMemory {
    async fn load(&self, thread: &str) -> Result<Vec<Message>> {
        validate_name("thread id", thread)?;
        Ok(crate::memory::lock(&self.threads)
            .get(thread)
            .cloned()
            .unwrap_or_default())
    }

    async fn save(&self, thread: &str, _run_id: &RunId, messages: Vec<Message>) -> Result<()> {
        validate_name("thread id", thread)?;
        crate::memory::lock(&self.threads).insert(thread.to_owned(), messages);
        Ok(())
    }
}

//! [`ScriptedModel`]: a deterministic [`LanguageModel`] for tests, demos and benchmarks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::model::{
    FinishReason, LanguageModel, ModelChunk, ModelRequest, ModelStream, Role, ToolCall, Usage,
};
use crate::error::{Error, ErrorKind, Result};

/// One scripted piece of a model answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ScriptItem {
    /// A text delta.
    Text(String),
    /// A reasoning delta.
    Reasoning(String),
    /// A complete tool call.
    ToolCall(ToolCall),
    /// The call fails here with this message (an `Err` item in the stream).
    Fail(String),
    /// The call stops producing here and never continues (a hung provider).
    Hang,
}

/// The scripted answer to one model call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    items: Vec<ScriptItem>,
    reason: Option<FinishReason>,
}

impl Turn {
    /// An empty turn (finishes with `stop` at once).
    pub fn new() -> Self {
        Self::default()
    }

    /// A turn that streams `text` word by word (each delta keeps its trailing space).
    pub fn text(text: &str) -> Self {
        Self::new().words(text)
    }

    /// Append `text` split into word deltas.
    #[must_use]
    pub fn words(mut self, text: &str) -> Self {
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c == ' ' {
                self.items
                    .push(ScriptItem::Text(text[start..=i].to_owned()));
                start = i + 1;
            }
        }
        if start < text.len() {
            self.items.push(ScriptItem::Text(text[start..].to_owned()));
        }
        self
    }

    /// Append one text delta.
    #[must_use]
    pub fn delta(mut self, text: impl Into<String>) -> Self {
        self.items.push(ScriptItem::Text(text.into()));
        self
    }

    /// Append `n` copies of the text delta `text` (benchmarks).
    #[must_use]
    pub fn deltas(mut self, n: usize, text: &str) -> Self {
        self.items
            .extend(std::iter::repeat_n(ScriptItem::Text(text.to_owned()), n));
        self
    }

    /// Append a reasoning delta.
    #[must_use]
    pub fn reasoning(mut self, text: impl Into<String>) -> Self {
        self.items.push(ScriptItem::Reasoning(text.into()));
        self
    }

    /// Append a tool call (the turn then finishes with `tool-calls`).
    #[must_use]
    pub fn tool_call(
        mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        args: Value,
    ) -> Self {
        self.items.push(ScriptItem::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args,
        }));
        self
    }

    /// Fail the call at this point.
    #[must_use]
    pub fn fail(mut self, message: impl Into<String>) -> Self {
        self.items.push(ScriptItem::Fail(message.into()));
        self
    }

    /// Hang the call at this point, forever.
    #[must_use]
    pub fn hang(mut self) -> Self {
        self.items.push(ScriptItem::Hang);
        self
    }

    /// Finish with `reason` instead of the default (`tool-calls` if the turn calls tools, else
    /// `stop`).
    #[must_use]
    pub fn finish(mut self, reason: FinishReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The scripted items.
    pub fn items(&self) -> &[ScriptItem] {
        &self.items
    }

    fn without_faults(&self) -> Self {
        Self {
            items: self
                .items
                .iter()
                .filter(|i| !matches!(i, ScriptItem::Fail(_) | ScriptItem::Hang))
                .cloned()
                .collect(),
            reason: self.reason.clone(),
        }
    }
}

/// A deterministic model that answers from a script.
///
/// The turn answering a request is chosen by the number of assistant messages already in the
/// request, so the same request gets the same answer in any process: a run recovered elsewhere
/// re-issues a model call and gets the identical output.
///
/// ```
/// use durable_core::agent::{ScriptedModel, Turn};
/// let model = ScriptedModel::new([
///     Turn::new().tool_call("c1", "weather", serde_json::json!({"city": "Paris"})),
///     Turn::text("It is sunny in Paris."),
/// ]);
/// ```
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    turns: Arc<[Turn]>,
    delay: Option<Duration>,
    calls: Arc<AtomicU64>,
}

impl ScriptedModel {
    /// A model answering call `i` (counted by assistant messages) with `turns[i]`.
    pub fn new(turns: impl IntoIterator<Item = Turn>) -> Self {
        Self {
            turns: turns.into_iter().collect(),
            delay: None,
            calls: Arc::default(),
        }
    }

    /// Wait `delay` before each chunk (to simulate a provider's pace).
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The same script with every `fail` and `hang` removed: what a healthy provider would have
    /// answered (used to recover a run whose first attempt hung).
    #[must_use]
    pub fn without_faults(&self) -> Self {
        Self {
            turns: self.turns.iter().map(Turn::without_faults).collect(),
            delay: self.delay,
            calls: Arc::default(),
        }
    }

    /// How many model calls were started on this model (and its clones).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl LanguageModel for ScriptedModel {
    fn model_id(&self) -> &str {
        "scripted"
    }

    async fn stream(&self, request: ModelRequest) -> Result<ModelStream> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let index = request
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let Some(turn) = self.turns.get(index) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "scripted model has {} turns; the request asks for turn {}",
                    self.turns.len(),
                    index + 1
                ),
            )
            .with_backend("scripted"));
        };
        let input_tokens = request
            .messages
            .iter()
            .map(|m| m.content.len() as u64 / 4 + 1)
            .sum();
        let has_calls = turn
            .items
            .iter()
            .any(|i| matches!(i, ScriptItem::ToolCall(_)));
        let reason = turn.reason.clone().unwrap_or(if has_calls {
            FinishReason::ToolCalls
        } else {
            FinishReason::Stop
        });
        Ok(ScriptStream {
            turns: self.turns.clone(),
            turn: index,
            next: 0,
            finish: Some((
                reason,
                Usage {
                    input_tokens,
                    output_tokens: turn.items.len() as u64,
                },
            )),
            delay: self.delay,
            sleep: None,
        }
        .boxed())
    }
}

/// Plays one turn: items are cloned only as they are yielded (no copy of the script per call).
struct ScriptStream {
    turns: Arc<[Turn]>,
    turn: usize,
    next: usize,
    finish: Option<(FinishReason, Usage)>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for ScriptStream {
    type Item = Result<ModelChunk>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(d) = this.delay {
            if this.finish.is_some() {
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                std::task::ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
        }
        let item = this.turns[this.turn].items.get(this.next);
        this.next = this.next.saturating_add(1);
        Poll::Ready(match item {
            Some(ScriptItem::Text(text)) => Some(Ok(ModelChunk::TextDelta { text: text.clone() })),
            Some(ScriptItem::Reasoning(text)) => {
                Some(Ok(ModelChunk::ReasoningDelta { text: text.clone() }))
            }
            Some(ScriptItem::ToolCall(call)) => Some(Ok(ModelChunk::ToolCall(call.clone()))),
            Some(ScriptItem::Fail(msg)) => {
                // The call ends with its error.
                this.finish = None;
                this.next = usize::MAX;
                Some(Err(
                    Error::new(ErrorKind::Unavailable, msg.clone()).with_backend("scripted")
                ))
            }
            Some(ScriptItem::Hang) => {
                // Never woken: a hung provider.
                this.next -= 1;
                return Poll::Pending;
            }
            None => this
                .finish
                .take()
                .map(|(reason, usage)| Ok(ModelChunk::Finish { reason, usage })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Message;

    fn req(assistant_turns: usize) -> ModelRequest {
        let mut messages = vec![Message::user("hi")];
        messages.extend((0..assistant_turns).map(|_| Message::assistant("", vec![])));
        ModelRequest {
            messages,
            ..ModelRequest::default()
        }
    }

    async fn collect(model: &ScriptedModel, turns: usize) -> Vec<Result<ModelChunk>> {
        model.stream(req(turns)).await.unwrap().collect().await
    }

    #[tokio::test]
    async fn turns_are_chosen_by_assistant_messages() {
        let m = ScriptedModel::new([
            Turn::new().tool_call("c", "t", serde_json::json!({})),
            Turn::text("a b"),
        ]);
        let first = collect(&m, 0).await;
        assert!(matches!(first[0], Ok(ModelChunk::ToolCall(_))));
        assert!(matches!(
            first[1],
            Ok(ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                ..
            })
        ));
        let second: Vec<_> = collect(&m, 1)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            second[..2],
            [
                ModelChunk::TextDelta { text: "a ".into() },
                ModelChunk::TextDelta { text: "b".into() }
            ]
        );
        assert_eq!(
            m.stream(req(2)).await.err().map(|e| e.kind()),
            Some(ErrorKind::InvalidInput)
        );
        assert_eq!(m.calls(), 3);
    }

    #[tokio::test]
    async fn faults_fail_and_can_be_removed() {
        let m = ScriptedModel::new([Turn::text("x").fail("boom").delta("never")]);
        let out = collect(&m, 0).await;
        assert_eq!(out.len(), 2);
        assert!(out[1].is_err());
        let healthy = collect(&m.without_faults(), 0).await;
        assert_eq!(healthy.len(), 3);
        assert!(healthy.iter().all(Result::is_ok));
    }
}

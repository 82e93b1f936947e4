//! The model every workload runs: `ScriptedModel` streaming 16-byte text deltas, wrapped to
//! note the instant each delta leaves the model (for model-emission → observer latency).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use durable_core::agent::{
    LanguageModel, ModelChunk, ModelRequest, ModelStream, ScriptedModel, Turn,
};
use futures::StreamExt;

/// The text of every delta: 16 bytes.
pub(crate) const DELTA: &str = "0123456789abcdef";

/// A scripted model that records when it emitted each text delta, in order.
#[derive(Debug, Clone)]
pub(crate) struct TimedModel {
    inner: ScriptedModel,
    emitted: Arc<Mutex<Vec<Instant>>>,
}

impl TimedModel {
    /// `turns` played by a [`ScriptedModel`], paced by `delay` before each chunk if given.
    pub(crate) fn new(turns: Vec<Turn>, delay: Option<Duration>) -> Self {
        let mut inner = ScriptedModel::new(turns);
        if let Some(d) = delay {
            inner = inner.with_delay(d);
        }
        Self {
            inner,
            emitted: Arc::default(),
        }
    }

    /// The emission instants of the text deltas so far.
    pub(crate) fn emitted(&self) -> Vec<Instant> {
        self.emitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl LanguageModel for TimedModel {
    fn model_id(&self) -> &str {
        "scripted-timed"
    }

    async fn stream(&self, request: ModelRequest) -> durable_core::Result<ModelStream> {
        let inner = self.inner.stream(request).await?;
        let emitted = self.emitted.clone();
        Ok(inner
            .map(move |chunk| {
                if let Ok(ModelChunk::TextDelta { .. }) = &chunk {
                    emitted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Instant::now());
                }
                chunk
            })
            .boxed())
    }
}

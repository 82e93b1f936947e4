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

/// A scripted model that records when it emitted each text delta, in order, optionally paced
/// by a `tokio::time::interval` (a fixed rate: `ScriptedModel::with_delay` sleeps before each
/// chunk, which the timer's 1 ms granularity stretches to about 2 ms).
#[derive(Debug, Clone)]
pub(crate) struct TimedModel {
    inner: ScriptedModel,
    pace: Option<Duration>,
    emitted: Arc<Mutex<Vec<Instant>>>,
}

impl TimedModel {
    /// `turns` played by a [`ScriptedModel`], one chunk per `pace` tick if given.
    pub(crate) fn new(turns: Vec<Turn>, pace: Option<Duration>) -> Self {
        Self {
            inner: ScriptedModel::new(turns),
            pace,
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
        let pace = self.pace.map(|p| {
            let mut every = tokio::time::interval(p);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every
        });
        let emitted = self.emitted.clone();
        Ok(futures::stream::unfold(
            (inner, pace, emitted),
            |(mut inner, mut pace, emitted)| async move {
                if let Some(every) = pace.as_mut() {
                    every.tick().await;
                }
                let chunk = inner.next().await?;
                if let Ok(ModelChunk::TextDelta { .. }) = &chunk {
                    emitted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Instant::now());
                }
                Some((chunk, (inner, pace, emitted)))
            },
        )
        .boxed())
    }
}

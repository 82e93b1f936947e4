//! The run handle a caller streams ([`DurableRun`]) and the answer to a suspension
//! ([`ResumeData`]).

use super::*;

/// The answer to a suspended tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumeData {
    /// Whether the call may run.
    pub approved: bool,
    /// Why (given to the model when declined).
    pub reason: Option<String>,
    /// The call being answered; checked against the suspended call when set.
    pub tool_call_id: Option<String>,
}

impl ResumeData {
    /// Approve the suspended call.
    pub fn approve() -> Self {
        Self {
            approved: true,
            ..Self::default()
        }
    }

    /// Decline the suspended call.
    pub fn decline(reason: Option<String>) -> Self {
        Self {
            approved: false,
            reason,
            tool_call_id: None,
        }
    }

    /// Only answer if the suspended call is `tool_call_id`.
    #[must_use]
    pub fn for_call(mut self, tool_call_id: impl Into<String>) -> Self {
        self.tool_call_id = Some(tool_call_id.into());
        self
    }
}

/// A run's event stream handed to a caller of `stream`, `observe` or `resume`.
///
/// Dropping it (or [`DurableRun::cleanup`]) only detaches this caller: the run goes on, and
/// other observers are not affected (SPEC G6).
pub struct DurableRun {
    pub(super) run_id: RunId,
    pub(super) output: EventStream,
    pub(super) end_on_suspend: bool,
    pub(super) done: bool,
}

impl DurableRun {
    /// The run's id: pass it to `observe` from any process to reconnect.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Detach this caller (the same as dropping the stream). Never deletes anything.
    pub fn cleanup(self) {}

    /// Events this observer holds in memory right now (bounded).
    pub fn buffered_events(&self) -> usize {
        self.output.buffered_events()
    }

    /// Drain the stream and return the final answer.
    ///
    /// # Errors
    /// The run's error, or the stream's.
    pub async fn output(self) -> Result<GenerateOutput> {
        let run_id = self.run_id.clone();
        GenerateOutput::collect(run_id, self).await
    }
}

impl fmt::Debug for DurableRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableRun")
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl Stream for DurableRun {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(Pin::new(&mut self.output).poll_next(cx));
        if let Some(Ok(ev)) = &item {
            if self.end_on_suspend && ev.kind == EventKind::Suspended {
                self.done = true;
            }
        }
        Poll::Ready(item)
    }
}

/// What [`DurableAgent::create`] found or made.
pub(crate) enum Created {
    /// A new run, its log ready (and leased to this instance when claimed).
    New {
        run_id: RunId,
        snapshot: RunSnapshot,
        lease: Option<Lease>,
    },
    /// The caller's run id names a run with the same input: a retried `stream`.
    Existing(RunRecord),
}

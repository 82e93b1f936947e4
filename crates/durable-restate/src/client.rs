//! [`RestateAgent`]: start, observe, resume and abort runs that Restate executes.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use durable_core::agent::{
    Agent, AgentInput, GenerateOutput, ResumeData, StreamOptions, Suspension,
};
use durable_core::{
    Error, ErrorKind, Event, EventKind, EventLog, EventStream, ObserveOptions, OnSuspend, PubSub,
    Result, RunId, RunStatus,
};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::http::{check_url, redact, unavailable, Http};
use crate::workflow::{DecideInput, RunInput, SERVICE};

/// Default time [`RestateAgent::abort`] waits for the run to end after cancelling it.
pub const DEFAULT_ABORT_TIMEOUT: Duration = Duration::from_secs(60);

/// The caller side of runs executed by Restate: the same `stream` / `observe` / `resume` /
/// `abort` API as [`DurableAgent`](durable_core::agent::DurableAgent), from any process.
///
/// A run is an invocation of the `DurableAgentRuns` workflow keyed by the run id, executed by
/// whichever process serves a [`RestateEndpoint`](crate::RestateEndpoint) for the agent; its
/// events are read from the shared [`EventLog`], so observers (and `durable-server`) see exactly
/// what they see of the other variants.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct RestateAgent {
    agent: Agent,
    log: EventLog,
    control: Option<Arc<dyn PubSub>>,
    ingress: String,
    admin: String,
    http: Http,
    abort_timeout: Duration,
}

impl fmt::Debug for RestateAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestateAgent")
            .field("agent", &self.agent.id())
            .field("ingress", &redact(&self.ingress))
            .field("admin", &redact(&self.admin))
            .field("log", &self.log)
            .finish()
    }
}

/// Builds a [`RestateAgent`]; see [`RestateAgent::builder`].
pub struct RestateAgentBuilder {
    agent: Agent,
    log: Option<EventLog>,
    control: Option<Arc<dyn PubSub>>,
    ingress: Option<String>,
    admin: Option<String>,
    abort_timeout: Duration,
}

impl fmt::Debug for RestateAgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestateAgentBuilder")
            .field("agent", &self.agent.id())
            .field("ingress", &self.ingress.as_deref().map(redact))
            .field("admin", &self.admin.as_deref().map(redact))
            .finish()
    }
}

impl RestateAgentBuilder {
    /// The run log shared with the endpoint (required; durable).
    #[must_use]
    pub fn log(mut self, log: EventLog) -> Self {
        self.log = Some(log);
        self
    }

    /// Publish abort requests on `pubsub` too, so an endpoint listening there
    /// ([`RestateEndpoint::control`](crate::RestateEndpoint::control)) interrupts the step
    /// executing at once instead of at the end of the step.
    #[must_use]
    pub fn control(mut self, pubsub: Arc<dyn PubSub>) -> Self {
        self.control = Some(pubsub);
        self
    }

    /// Restate's ingress, where runs are started and answered (required), e.g.
    /// `http://127.0.0.1:8080`.
    #[must_use]
    pub fn ingress_url(mut self, url: impl Into<String>) -> Self {
        self.ingress = Some(url.into());
        self
    }

    /// Restate's admin API, used by [`RestateAgent::abort`] (required), e.g.
    /// `http://127.0.0.1:9070`.
    #[must_use]
    pub fn admin_url(mut self, url: impl Into<String>) -> Self {
        self.admin = Some(url.into());
        self
    }

    /// How long [`RestateAgent::abort`] waits for the run to end (default
    /// [`DEFAULT_ABORT_TIMEOUT`]).
    #[must_use]
    pub fn abort_timeout(mut self, timeout: Duration) -> Self {
        self.abort_timeout = timeout;
        self
    }

    /// Build.
    ///
    /// # Errors
    /// `InvalidInput` for a missing or live-only log or a missing or malformed URL.
    pub fn build(self) -> Result<RestateAgent> {
        let log = self
            .log
            .ok_or_else(|| Error::invalid_input("a RestateAgent needs an event log"))?;
        if !log.is_durable() {
            return Err(Error::invalid_input(
                "a RestateAgent needs a durable event log: its runs execute in other processes",
            ));
        }
        let ingress = check_url("ingress URL", self.ingress.as_deref().unwrap_or_default())?;
        let admin = check_url("admin URL", self.admin.as_deref().unwrap_or_default())?;
        Ok(RestateAgent {
            agent: self.agent,
            log,
            control: self.control,
            ingress,
            admin,
            http: Http::new(),
            abort_timeout: self.abort_timeout,
        })
    }
}

impl RestateAgent {
    /// Configure the agent's Restate client: `log`, `ingress_url` and `admin_url` are required.
    pub fn builder(agent: Agent) -> RestateAgentBuilder {
        RestateAgentBuilder {
            agent,
            log: None,
            control: None,
            ingress: None,
            admin: None,
            abort_timeout: DEFAULT_ABORT_TIMEOUT,
        }
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The event log the runs write to.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Start a run on Restate and stream its events from cursor 0. The stream ends after the
    /// terminal event, or after `suspended` when a tool call waits for approval. Dropping it
    /// only detaches: the run goes on.
    ///
    /// Starting the same run id again does not start a second run (Restate runs a workflow
    /// once per key): while the run's log exists the stream shows that run, and after its
    /// retention the id is refused (`Conflict`).
    ///
    /// # Errors
    /// `InvalidInput` for an empty input or 0 `max_steps`, `Unsupported` for options this
    /// variant does not have (`thread_id`, `until_idle`, `resource_id`), `Unavailable` if
    /// Restate or the log cannot be reached.
    pub async fn stream(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<RestateRun> {
        let input = input.into();
        if input.messages.is_empty() {
            return Err(Error::invalid_input(
                "a run needs at least one input message",
            ));
        }
        if options.thread_id.is_some()
            || options.until_idle.is_some()
            || options.resource_id.is_some()
        {
            return Err(Error::unsupported(
                "thread_id, until_idle and resource_id are not supported by the Restate variant",
            )
            .with_operation("stream"));
        }
        let max_steps = options.max_steps.unwrap_or_else(|| self.agent.max_steps());
        if max_steps == 0 {
            return Err(Error::invalid_input("max_steps must be at least 1"));
        }
        let run_id = options.run_id.clone().unwrap_or_else(RunId::generate);
        let existed = self.log.len(&run_id).await?.is_some();
        self.log.create(&run_id, None).await?;
        let output = self
            .log
            .observe(&run_id, ObserveOptions::from(0).on_suspend(OnSuspend::Wait))
            .await?;
        let body = RunInput {
            agent_id: self.agent.id().to_owned(),
            messages: input.messages,
            max_steps,
            require_tool_approval: options.require_tool_approval,
            tool_choice: options.tool_choice,
        };
        let sent = self
            .ingress_post(&format!("{SERVICE}/{run_id}/run/send"), &body, "stream")
            .await
            .and_then(|answer| {
                // Restate keeps a workflow's key after its end: a key it already ran whose log
                // is gone (retention elapsed) would never get an event again.
                let again = answer.contains("PreviouslyAccepted");
                if again && !existed {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("run id {run_id} was used by an earlier run"),
                    )
                    .with_operation("stream"));
                }
                Ok(())
            });
        if let Err(e) = sent {
            // A caller told "it failed" must not find a run behind: remove the log this call
            // created (never one a retried `stream` found).
            if !existed {
                if let Err(d) = self.log.delete(&run_id).await {
                    tracing::warn!(run_id = %run_id, error = %d, "a failed stream left an empty run log behind");
                }
            }
            return Err(e);
        }
        Ok(RestateRun {
            run_id,
            output,
            end_on_suspend: true,
            done: false,
        })
    }

    /// Run to the end and return the final answer (or the suspended call).
    ///
    /// # Errors
    /// As [`RestateAgent::stream`], or the run's error.
    pub async fn generate(
        &self,
        input: impl Into<AgentInput>,
        options: StreamOptions,
    ) -> Result<GenerateOutput> {
        self.stream(input, options).await?.output().await
    }

    /// Observe a run from `options.offset`, from any process sharing the log.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `Gone` after retention, `OffsetAhead` past the end.
    pub async fn observe(&self, run_id: &RunId, options: ObserveOptions) -> Result<RestateRun> {
        let output = self.log.observe(run_id, options).await?;
        Ok(RestateRun {
            run_id: run_id.clone(),
            output,
            end_on_suspend: false,
            done: false,
        })
    }

    /// The suspended call a run waits for, if its log ends with `suspended`.
    async fn suspension(&self, run_id: &RunId) -> Result<(Option<Suspension>, u64)> {
        let len = self
            .log
            .len(run_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("run {run_id} does not exist")))?;
        let last = match len {
            0 => None,
            n => self.log.read(run_id, n - 1, 1).await?.pop(),
        };
        let s = match last {
            Some(e) if e.kind == EventKind::Suspended => Some(e.data_as::<Suspension>()?),
            _ => None,
        };
        Ok((s, len))
    }

    /// Answer the suspended tool call of `run_id`, from any process. The returned stream starts
    /// after the `suspended` event.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `InvalidState` if it does not wait for approval,
    /// `InvalidInput` if `data.tool_call_id` names another call, `Unavailable` if Restate
    /// cannot be reached.
    pub async fn resume(&self, run_id: &RunId, data: ResumeData) -> Result<RestateRun> {
        let (s, len) = self.suspension(run_id).await?;
        let s = s.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                format!("run {run_id} does not wait for approval: nothing to resume"),
            )
            .with_operation("resume")
        })?;
        if let Some(id) = &data.tool_call_id {
            if *id != s.tool_call_id {
                return Err(Error::invalid_input(format!(
                    "run {run_id} waits for tool call {}, not {id}",
                    s.tool_call_id
                ))
                .with_operation("resume"));
            }
        }
        let output = self
            .log
            .observe(
                run_id,
                ObserveOptions::from(len).on_suspend(OnSuspend::Wait),
            )
            .await?;
        let body = DecideInput {
            step: s.step,
            index: s.index,
            approved: data.approved,
            reason: data.reason,
        };
        self.ingress_post(&format!("{SERVICE}/{run_id}/decide"), &body, "resume")
            .await?;
        Ok(RestateRun {
            run_id: run_id.clone(),
            output,
            end_on_suspend: true,
            done: false,
        })
    }

    /// Approve the suspended call `tool_call_id` (see [`RestateAgent::resume`]).
    ///
    /// # Errors
    /// As [`RestateAgent::resume`].
    pub async fn approve_tool_call(
        &self,
        run_id: &RunId,
        tool_call_id: &str,
    ) -> Result<RestateRun> {
        self.resume(run_id, ResumeData::approve().for_call(tool_call_id))
            .await
    }

    /// Decline the suspended call `tool_call_id`: the model gets a "not approved" result.
    ///
    /// # Errors
    /// As [`RestateAgent::resume`].
    pub async fn decline_tool_call(
        &self,
        run_id: &RunId,
        tool_call_id: &str,
        reason: Option<String>,
    ) -> Result<RestateRun> {
        self.resume(run_id, ResumeData::decline(reason).for_call(tool_call_id))
            .await
    }

    /// Abort a run from any process: its Restate invocation is cancelled, and the run ends with
    /// an `abort` event. A run waiting for approval stops at once; a model step or tool call
    /// executing stops at once when client and endpoint share a
    /// [`control`](RestateAgentBuilder::control) PubSub, else when it finishes. Returns the run's final
    /// status; aborting a finished run changes nothing.
    ///
    /// # Errors
    /// `NotFound` for an unknown run, `Timeout` if it does not end within the abort timeout,
    /// `Unavailable` if Restate cannot be reached.
    pub async fn abort(&self, run_id: &RunId) -> Result<RunStatus> {
        let len = self
            .log
            .len(run_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("run {run_id} does not exist")))?;
        if len > 0 {
            if let Some(e) = self.log.read(run_id, len - 1, 1).await?.pop() {
                if let Some(status) = terminal_status(e.kind) {
                    return Ok(status);
                }
            }
        }
        let mut waiter = self
            .log
            .observe(
                run_id,
                ObserveOptions::from(len).on_suspend(OnSuspend::Wait),
            )
            .await?;
        let invocation = self.invocation_id(run_id).await?;
        let resp = self
            .http
            .client
            .patch(format!("{}/invocations/{invocation}/cancel", self.admin))
            .send()
            .await
            .map_err(|e| unavailable("abort", e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("Restate did not cancel run {run_id}: {status} {body}"),
            )
            .with_operation("abort"));
        }
        if let Some(pubsub) = &self.control {
            let topic = self.log.names().control_topic(self.agent.id());
            let payload = Bytes::copy_from_slice(run_id.as_str().as_bytes());
            if let Err(e) = pubsub.publish(&topic, payload).await {
                tracing::warn!(run_id = %run_id, error = %e, "abort not announced; the run stops at its next step");
            }
        }
        let ended = tokio::time::timeout(self.abort_timeout, async {
            while let Some(ev) = waiter.next().await {
                if let Some(status) = terminal_status(ev?.kind) {
                    return Ok(status);
                }
            }
            Err(Error::new(
                ErrorKind::Unexpected,
                format!("run {run_id} ended without a terminal event"),
            ))
        })
        .await;
        ended.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("run {run_id} did not stop within {:?}", self.abort_timeout),
            )
            .with_operation("abort"))
        })
    }

    /// The id of the run's workflow invocation, from Restate's SQL introspection.
    async fn invocation_id(&self, run_id: &RunId) -> Result<String> {
        #[derive(Deserialize)]
        struct Rows {
            rows: Vec<Row>,
        }
        #[derive(Deserialize)]
        struct Row {
            id: String,
        }
        // Safe to splice: a RunId is [A-Za-z0-9_-] only.
        let query = format!(
            "SELECT id FROM sys_invocation WHERE target_service_name = '{SERVICE}' \
             AND target_service_key = '{run_id}' AND target_handler_name = 'run'"
        );
        let resp = self
            .http
            .client
            .post(format!("{}/query", self.admin))
            .header("accept", "application/json")
            .json(&serde_json::json!({ "query": query }))
            .send()
            .await
            .map_err(|e| unavailable("abort", e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("Restate query failed: {status} {body}"),
            )
            .with_operation("abort"));
        }
        let rows: Rows = resp.json().await.map_err(|e| {
            Error::new(ErrorKind::Unexpected, "unreadable Restate query answer").with_source(e)
        })?;
        rows.rows.into_iter().next().map(|r| r.id).ok_or_else(|| {
            Error::not_found(format!("run {run_id} has no Restate invocation"))
                .with_operation("abort")
        })
    }

    async fn ingress_post(
        &self,
        path: &str,
        body: &(impl serde::Serialize + Sync),
        op: &'static str,
    ) -> Result<String> {
        let resp = self
            .http
            .client
            .post(format!("{}/{path}", self.ingress))
            .json(body)
            .send()
            .await
            .map_err(|e| unavailable(op, e))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(text);
        }
        let kind = match status.as_u16() {
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            400 => ErrorKind::InvalidInput,
            502..=504 => ErrorKind::Unavailable,
            _ => ErrorKind::Unexpected,
        };
        Err(
            Error::new(kind, format!("Restate answered {status}: {text}"))
                .with_backend("restate")
                .with_operation(op),
        )
    }
}

fn terminal_status(kind: EventKind) -> Option<RunStatus> {
    match kind {
        EventKind::Finish => Some(RunStatus::Completed),
        EventKind::Error => Some(RunStatus::Failed),
        EventKind::Abort => Some(RunStatus::Aborted),
        _ => None,
    }
}

/// A run's event stream handed to a caller of `stream`, `observe` or `resume`. Dropping it only
/// detaches this caller.
pub struct RestateRun {
    run_id: RunId,
    output: EventStream,
    end_on_suspend: bool,
    done: bool,
}

impl RestateRun {
    /// The run's id: pass it to `observe` from any process to reconnect.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
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

impl fmt::Debug for RestateRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestateRun")
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl Stream for RestateRun {
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

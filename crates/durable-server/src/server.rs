//! [`DurableServer`]: the agents mounted by id, the configuration, and the axum [`Router`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use durable_core::agent::{
    AgentInput, DurableAgent, DurableRun, EventedAgent, ResumeData, StreamOptions,
};
use durable_core::{Error, ErrorKind, ObserveOptions, RunId, RunRecord, RunStatus};

use crate::auth::AccessControl;
use crate::problem::Problem;
use crate::{chat, routes};

/// Default heartbeat comment interval on SSE responses (proxies cut idle streams at ~16 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default SSE `retry:` (how soon a browser's `EventSource` reconnects).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Default maximum request body (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
/// Default time a request may take before its response starts.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const ABORT_SETTLE_POLLS: u32 = 200;
const ABORT_SETTLE_PAUSE: Duration = Duration::from_millis(5);

/// A mounted agent: executed in this process ([`DurableAgent`]) or queued to workers
/// ([`EventedAgent`]).
#[derive(Clone, Debug)]
pub enum Mounted {
    /// Runs execute in the serving process.
    Durable(DurableAgent),
    /// Runs are queued on PubSub and executed by a worker pool.
    Evented(Arc<EventedAgent>),
}

impl From<DurableAgent> for Mounted {
    fn from(a: DurableAgent) -> Self {
        Mounted::Durable(a)
    }
}

impl From<EventedAgent> for Mounted {
    fn from(a: EventedAgent) -> Self {
        Mounted::Evented(Arc::new(a))
    }
}

impl From<Arc<EventedAgent>> for Mounted {
    fn from(a: Arc<EventedAgent>) -> Self {
        Mounted::Evented(a)
    }
}

impl Mounted {
    /// The underlying durable agent (observe, status, store).
    pub fn durable(&self) -> &DurableAgent {
        match self {
            Mounted::Durable(a) => a,
            Mounted::Evented(a) => a.durable(),
        }
    }

    /// The agent's id.
    pub fn id(&self) -> &str {
        self.durable().agent().id()
    }

    pub(crate) async fn stream(
        &self,
        input: AgentInput,
        options: StreamOptions,
    ) -> durable_core::Result<DurableRun> {
        match self {
            Mounted::Durable(a) => a.stream(input, options).await,
            Mounted::Evented(a) => a.stream(input, options).await,
        }
    }

    pub(crate) async fn resume(
        &self,
        run_id: &RunId,
        data: ResumeData,
    ) -> durable_core::Result<DurableRun> {
        match self {
            Mounted::Durable(a) => a.resume(run_id, data).await,
            Mounted::Evented(a) => a.resume(run_id, data).await,
        }
    }

    pub(crate) async fn observe(
        &self,
        run_id: &RunId,
        options: ObserveOptions,
    ) -> durable_core::Result<DurableRun> {
        self.durable().observe(run_id, options).await
    }

    pub(crate) async fn abort(&self, run_id: &RunId) -> durable_core::Result<RunStatus> {
        let status = match self {
            Mounted::Durable(a) => a.abort(run_id).await?,
            Mounted::Evented(a) => a.abort(run_id).await?,
        };
        if status.is_terminal() {
            return Ok(status);
        }
        // Core's `abort` returns once the run's terminal event is in the log, which the
        // executor writes just before the terminal status: wait (bounded) for the record.
        for _ in 0..ABORT_SETTLE_POLLS {
            tokio::time::sleep(ABORT_SETTLE_PAUSE).await;
            let now = self.durable().status(run_id).await?.status;
            if now.is_terminal() {
                return Ok(now);
            }
        }
        Ok(status)
    }

    /// The run's record, only if it is a run of this agent (another agent's run is `NotFound`).
    pub(crate) async fn record(&self, run_id: &RunId) -> durable_core::Result<RunRecord> {
        let r = self.durable().status(run_id).await?;
        if r.data.get("agent_id").and_then(|v| v.as_str()) != Some(self.id()) {
            return Err(Error::not_found(format!(
                "run {run_id} is not a run of agent {}",
                self.id()
            )));
        }
        Ok(r)
    }
}

/// Configuration of a [`DurableServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// SSE heartbeat comment interval (default 15 s).
    pub heartbeat: Duration,
    /// The SSE `retry:` sent to clients: how soon a browser reconnects (default 1 s).
    pub retry: Duration,
    /// Maximum request body in bytes (default 1 MiB); larger bodies get 413.
    pub body_limit: usize,
    /// Time a request may take before its response starts (default 30 s); then 504.
    pub request_timeout: Duration,
    /// Access control; `None` (the default) lets every client use every run.
    pub access: Option<AccessControl>,
    /// The agent answering `/api/chat` (default: the first mounted).
    pub chat_agent: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat: DEFAULT_HEARTBEAT,
            retry: DEFAULT_RETRY,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            access: None,
            chat_agent: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) agents: BTreeMap<String, Mounted>,
    pub(crate) order: Vec<String>,
    pub(crate) config: ServerConfig,
}

/// Durable agents served over HTTP. Cheap to clone; [`router`](DurableServer::router) gives
/// the routes to nest into an application or to [`serve`](crate::serve) alone.
#[derive(Clone)]
pub struct DurableServer {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for DurableServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableServer")
            .field("agents", &self.inner.order)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Builds a [`DurableServer`].
#[derive(Debug, Default)]
pub struct DurableServerBuilder {
    agents: Vec<Mounted>,
    config: ServerConfig,
}

impl DurableServerBuilder {
    /// Mount an agent under its id.
    #[must_use]
    pub fn agent(mut self, agent: impl Into<Mounted>) -> Self {
        self.agents.push(agent.into());
        self
    }

    /// Set the heartbeat interval.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// Set the SSE `retry:` hint.
    #[must_use]
    pub fn retry(mut self, retry: Duration) -> Self {
        self.config.retry = retry;
        self
    }

    /// Set the maximum request body.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// Set the request timeout (time before the response starts).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Turn access control on.
    #[must_use]
    pub fn access(mut self, access: AccessControl) -> Self {
        self.config.access = Some(access);
        self
    }

    /// The agent answering `/api/chat`.
    #[must_use]
    pub fn chat_agent(mut self, id: impl Into<String>) -> Self {
        self.config.chat_agent = Some(id.into());
        self
    }

    /// Build the server.
    ///
    /// # Errors
    /// `InvalidInput` for two agents with one id, a chat agent that is not mounted, or a zero
    /// heartbeat.
    pub fn build(self) -> durable_core::Result<DurableServer> {
        let mut agents = BTreeMap::new();
        let mut order = Vec::new();
        for a in self.agents {
            let id = a.id().to_owned();
            if agents.insert(id.clone(), a).is_some() {
                return Err(Error::invalid_input(format!(
                    "two agents are mounted as {id:?}"
                )));
            }
            order.push(id);
        }
        if let Some(chat) = &self.config.chat_agent {
            if !agents.contains_key(chat) {
                return Err(Error::invalid_input(format!(
                    "chat agent {chat:?} is not mounted"
                )));
            }
        }
        if self.config.heartbeat.is_zero() {
            return Err(Error::invalid_input("the heartbeat must be positive"));
        }
        Ok(DurableServer {
            inner: Arc::new(Inner {
                metrics: crate::metrics::Metrics::new(),
                agents,
                order,
                config: self.config,
            }),
        })
    }
}

impl DurableServer {
    /// Start building.
    pub fn builder() -> DurableServerBuilder {
        DurableServerBuilder::default()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// A mounted agent.
    pub fn agent(&self, id: &str) -> Option<&Mounted> {
        self.inner.agents.get(id)
    }

    pub(crate) fn agent_or_404(&self, id: &str) -> Result<&Mounted, Problem> {
        self.agent(id).ok_or_else(|| {
            Problem::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                format!("no agent {id:?} is mounted"),
            )
        })
    }

    pub(crate) fn chat_agent(&self) -> Option<&Mounted> {
        match &self.inner.config.chat_agent {
            Some(id) => self.agent(id),
            None => self.inner.order.first().and_then(|id| self.agent(id)),
        }
    }

    /// Run `fut` under the request timeout (the part of a request before its response starts).
    pub(crate) async fn timed<T>(
        &self,
        fut: impl Future<Output = durable_core::Result<T>>,
    ) -> Result<T, Problem> {
        match tokio::time::timeout(self.inner.config.request_timeout, fut).await {
            Ok(r) => r.map_err(Problem::from),
            Err(_) => Err(Problem::from(Error::new(
                ErrorKind::Timeout,
                "the backend did not answer within the request timeout",
            ))),
        }
    }

    /// Every route, with this server as state: nest it (`Router::new().nest("/durable",
    /// server.router())`) or [`serve`](crate::serve) it.
    pub fn router(&self) -> Router {
        let agents = Router::new()
            .route("/{agent_id}/stream", post(routes::stream))
            .route("/{agent_id}/observe", post(routes::observe_post))
            .route("/{agent_id}/runs", get(routes::list_runs))
            .route("/{agent_id}/runs/{run_id}", get(routes::run_status))
            .route("/{agent_id}/runs/{run_id}/events", get(routes::events))
            .route(
                "/{agent_id}/runs/{run_id}/approve-tool-call",
                post(routes::approve),
            )
            .route(
                "/{agent_id}/runs/{run_id}/decline-tool-call",
                post(routes::decline),
            )
            .route(
                "/{agent_id}/runs/{run_id}/resume-stream",
                post(routes::resume_stream),
            )
            .route("/{agent_id}/runs/{run_id}/abort", post(routes::abort));
        Router::new()
            .nest("/api/agents", agents)
            .route("/api/chat", post(chat::post_chat))
            .route("/api/chat/{chat_id}/stream", get(chat::resume_chat))
            .route("/health", get(routes::health))
            .route("/metrics", get(crate::metrics::metrics))
            .merge(crate::a2a::router())
            .fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.inner.config.body_limit))
            .with_state(self.clone())
    }
}

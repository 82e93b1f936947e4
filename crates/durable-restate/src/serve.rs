//! Serving the workflow to Restate and registering the deployment with its admin API.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use durable_core::agent::Agent;
use durable_core::{Delivery, Error, ErrorKind, EventLog, PubSub, Result, RunId, Subscription};
use futures::StreamExt;
use restate_sdk::endpoint::Endpoint;
use restate_sdk::http_server::HttpServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{check_url, redact, unavailable, Http};
use crate::workflow::{DurableAgentRuns, Runs};

/// Default number of attempts of a model step (the first call and its retries) before the run
/// fails with an `error` event.
pub const DEFAULT_MODEL_ATTEMPTS: u32 = 3;

/// Default pause before the first retry of a failed model step (doubling after each attempt).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The handler side: serves the `DurableAgentRuns` workflow for a set of agents, writing their
/// runs' events to one [`EventLog`].
///
/// ```no_run
/// # async fn f(agent: durable_core::agent::Agent, log: durable_core::EventLog) -> durable_core::Result<()> {
/// use durable_restate::RestateEndpoint;
/// let served = RestateEndpoint::new(log)
///     .agent(agent)
///     .bind("127.0.0.1:9080".parse().unwrap())
///     .await?;
/// served.register("http://127.0.0.1:9070").await?;
/// # Ok(()) }
/// ```
pub struct RestateEndpoint {
    log: EventLog,
    control: Option<Arc<dyn PubSub>>,
    agents: Vec<Agent>,
    model_attempts: u32,
    retry_delay: Duration,
}

impl fmt::Debug for RestateEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestateEndpoint")
            .field(
                "agents",
                &self.agents.iter().map(Agent::id).collect::<Vec<_>>(),
            )
            .field("log", &self.log)
            .field("model_attempts", &self.model_attempts)
            .finish()
    }
}

impl RestateEndpoint {
    /// An endpoint writing run events to `log` (a durable log: any `ServerCache` + `PubSub`
    /// shared with the processes that observe the runs).
    pub fn new(log: EventLog) -> Self {
        Self {
            log,
            control: None,
            agents: Vec::new(),
            model_attempts: DEFAULT_MODEL_ATTEMPTS,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }

    /// Serve runs of `agent` (by its id).
    #[must_use]
    pub fn agent(mut self, agent: Agent) -> Self {
        self.agents.push(agent);
        self
    }

    /// Listen for abort requests on `pubsub` (the one the log wakes observers on), so that
    /// [`RestateAgent::abort`](crate::RestateAgent::abort) from a client configured with the same
    /// [`control`](crate::RestateAgentBuilder::control) interrupts a model step or tool call
    /// executing here at once (the tool's `ToolContext::cancel` fires). Without it, or if the
    /// message is missed, Restate's cancellation still ends the run at its next step.
    /// Only [`RestateEndpoint::bind`] listens.
    #[must_use]
    pub fn control(mut self, pubsub: Arc<dyn PubSub>) -> Self {
        self.control = Some(pubsub);
        self
    }

    /// Attempts of a failing model step before the run fails (default
    /// [`DEFAULT_MODEL_ATTEMPTS`]; at least 1). Each retry is announced by `step-restart`.
    #[must_use]
    pub fn model_attempts(mut self, attempts: u32) -> Self {
        self.model_attempts = attempts;
        self
    }

    /// Pause before the first retry of a failed model step (default [`DEFAULT_RETRY_DELAY`]).
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    fn runs(self) -> Result<(Runs, Option<Arc<dyn PubSub>>)> {
        if !self.log.is_durable() {
            return Err(Error::invalid_input(
                "a Restate endpoint needs a durable event log (with a cache): its handlers may run in any process",
            ));
        }
        if self.model_attempts == 0 {
            return Err(Error::invalid_input("model_attempts must be at least 1"));
        }
        if self.agents.is_empty() {
            return Err(Error::invalid_input("a Restate endpoint needs an agent"));
        }
        let mut agents = HashMap::new();
        for a in self.agents {
            let id = a.id().to_owned();
            if agents.insert(id.clone(), a).is_some() {
                return Err(Error::invalid_input(format!("two agents are named {id}")));
            }
        }
        Ok((
            Runs {
                agents,
                log: self.log,
                model_attempts: self.model_attempts,
                retry_delay: self.retry_delay,
                inflight: Mutex::new(HashMap::new()),
                next_step_id: AtomicU64::new(0),
            },
            self.control,
        ))
    }

    /// The Restate endpoint, to serve with any of the SDK's servers.
    ///
    /// # Errors
    /// `InvalidInput` for no agent, two agents with one id, a live-only log, or 0 attempts.
    pub fn into_endpoint(self) -> Result<Endpoint> {
        let (runs, _) = self.runs()?;
        Ok(Endpoint::builder()
            .bind(DurableAgentRuns(Arc::new(runs)))
            .build())
    }

    /// Listen on `addr` (port 0 for a spare one) and serve in a background task.
    ///
    /// # Errors
    /// As [`RestateEndpoint::into_endpoint`], or `Unavailable` if `addr` cannot be bound.
    pub async fn bind(self, addr: SocketAddr) -> Result<ServedEndpoint> {
        let (runs, control) = self.runs()?;
        let runs = Arc::new(runs);
        let stop = CancellationToken::new();
        if let Some(pubsub) = control {
            let mut ids: Vec<&String> = runs.agents.keys().collect();
            ids.sort();
            for id in ids {
                let topic = runs.log.names().control_topic(id);
                let sub = pubsub.subscribe(&topic).await?;
                tokio::spawn(listen_control(sub, Arc::downgrade(&runs), stop.clone()));
            }
        }
        let endpoint = Endpoint::builder().bind(DurableAgentRuns(runs)).build();
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("cannot listen on {addr}"))
                .with_source(e)
                .with_operation("bind")
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::new(ErrorKind::Unavailable, "no local address").with_source(e))?;
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            HttpServer::new(endpoint)
                .serve_with_cancel(listener, cancelled.cancelled_owned())
                .await;
        });
        Ok(ServedEndpoint {
            addr: local,
            stop,
            task,
        })
    }
}

/// A [`RestateEndpoint`] serving in a background task. Dropping it stops serving.
#[derive(Debug)]
pub struct ServedEndpoint {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ServedEndpoint {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the deployment URI to register.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Register this endpoint with the Restate admin API at `admin_url` (see
    /// [`register_deployment`]).
    ///
    /// # Errors
    /// As [`register_deployment`].
    pub async fn register(&self, admin_url: &str) -> Result<()> {
        register_deployment(admin_url, &self.url()).await
    }

    /// Stop serving and wait until the server has stopped.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for ServedEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Register the deployment at `endpoint_uri` with the Restate admin API at `admin_url`
/// (`POST /deployments`, forced, so a redeployment at the same URI replaces the old one). After
/// it, Restate knows the `DurableAgentRuns` workflow and sends invocations to the endpoint.
///
/// # Errors
/// `InvalidInput` for URLs that are not `http(s)://`, `Unavailable` if the admin API cannot be
/// reached, or its answer (as `Unexpected`) when it refuses the deployment.
pub async fn register_deployment(admin_url: &str, endpoint_uri: &str) -> Result<()> {
    let admin = check_url("admin URL", admin_url)?;
    let uri = check_url("endpoint URI", endpoint_uri)?;
    let http = Http::new();
    let resp = http
        .client
        .post(format!("{admin}/deployments"))
        .json(&serde_json::json!({ "uri": uri, "force": true }))
        .send()
        .await
        .map_err(|e| unavailable("register", e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!(
                "Restate refused deployment {}: {status} {body}",
                redact(&uri)
            ),
        )
        .with_operation("register"));
    }
    Ok(())
}

/// Interrupt the steps named by abort requests (the payload is the run id) until the endpoint
/// stops or is dropped. Dropping `sub` on return unsubscribes.
async fn listen_control(mut sub: Subscription, runs: Weak<Runs>, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        let Some(runs) = runs.upgrade() else { return };
        let Delivery::Message(m) = msg else { continue };
        let Some(run_id) = std::str::from_utf8(&m)
            .ok()
            .and_then(|s| RunId::new(s).ok())
        else {
            continue;
        };
        runs.interrupt(&run_id);
    }
}

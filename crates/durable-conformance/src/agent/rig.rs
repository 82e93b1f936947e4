//! Running agent scenarios: the [`Rig`] a scenario gets (backends shared by every instance, a
//! main runtime, names unique to the run), the fixtures they share, and the `#[test]` driver
//! behind [`agent_suite!`](crate::agent_suite).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use durable_core::agent::{Agent, DurableAgent, ScriptedModel, Tool, ToolContext, ToolError, Turn};
use durable_core::LogConfig;
use serde_json::{json, Value};

use super::SharedBackends;
use crate::harness::{judge, outcome, CaseResult, Declarations, SkipCause, Skipped, Stop};
use crate::{Backend, Outcome};

/// How long one agent scenario may take before it fails as hung.
pub(crate) const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);
/// Lease of every instance: short, so takeovers are quick, long enough for a loaded machine.
const LEASE: Duration = Duration::from_millis(500);

/// A named agent scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// The scenario name (a sentence in snake case).
    pub name: &'static str,
    /// The scenario body.
    pub run: fn(&Rig) -> CaseResult,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// What a scenario runs on: the backend under test with every missing part filled by an
/// in-memory one that all instances share, the main runtime the backend was made on (crash
/// scenarios run the doomed "process" on a runtime of its own, [`process_runtime`]), and a tag
/// that makes agent ids, worker ids and the log namespace unique to this run, so scenarios
/// running at once on one server never see each other's runs.
pub struct Rig {
    backend: Backend,
    shared: SharedBackends,
    tag: String,
    main: tokio::runtime::Runtime,
}

impl fmt::Debug for Rig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rig")
            .field("backend", &self.backend)
            .field("tag", &self.tag)
            .finish()
    }
}

/// A runtime standing for one process: dropping it kills every task the process runs.
///
/// # Panics
/// When the OS refuses the threads.
pub fn process_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"))
}

impl Rig {
    /// A rig over `backend`, made on `main`.
    pub fn new(backend: Backend, main: tokio::runtime::Runtime) -> Self {
        Self {
            shared: SharedBackends::from_backend(&backend),
            backend,
            tag: format!("{:012x}", fastrand::u64(..) >> 16),
            main,
        }
    }

    /// The backend under test.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The backends every instance of this rig shares.
    pub fn shared(&self) -> &SharedBackends {
        &self.shared
    }

    /// Run `fut` on the main runtime.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.main.block_on(fut)
    }

    /// `base` made unique to this rig.
    pub fn unique(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// The log configuration of every instance: a namespace unique to this rig.
    pub fn log_config(&self) -> LogConfig {
        let mut config = LogConfig::default();
        config.namespace = self.unique("agents");
        config
    }

    /// An instance ("process") running `agent` as `worker` over the shared backends.
    ///
    /// # Errors
    /// The builder's error.
    pub fn instance(&self, agent: Agent, worker: &str) -> Result<DurableAgent, Stop> {
        self.instance_with(agent, worker, self.log_config())
    }

    /// [`instance`](Self::instance) with another log configuration.
    ///
    /// # Errors
    /// The builder's error.
    pub fn instance_with(
        &self,
        agent: Agent,
        worker: &str,
        config: LogConfig,
    ) -> Result<DurableAgent, Stop> {
        Ok(self
            .shared
            .builder(agent)
            .log_config(config)
            .worker_id(self.unique(worker))
            .lease_ttl(LEASE)
            .build()?)
    }

    /// The forecaster agent of the scenarios: `model` with the [`Weather`] tool.
    pub(crate) fn forecaster(
        &self,
        model: ScriptedModel,
        done: &Completions,
        hang_on: Option<&str>,
    ) -> Result<Agent, Stop> {
        Ok(Agent::builder()
            .id(self.unique("forecaster"))
            .instructions("You report the weather.")
            .model(model)
            .tool(Weather {
                done: done.clone(),
                hang_on: hang_on.map(str::to_owned),
            })
            .build()?)
    }
}

/// Completed executions per tool call id, shared by every instance of a scenario.
#[derive(Clone, Default)]
pub(crate) struct Completions(Arc<Mutex<HashMap<String, u32>>>);

impl Completions {
    pub(crate) fn snapshot(&self) -> HashMap<String, u32> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, call: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(call)
            .or_default() += 1;
    }
}

/// A weather tool that counts completed executions; with `hang_on`, it never completes the
/// call with that id (an executor that dies inside the tool).
struct Weather {
    done: Completions,
    hang_on: Option<String>,
}

#[async_trait]
impl Tool for Weather {
    fn name(&self) -> &str {
        "weather"
    }

    fn description(&self) -> &str {
        "Current weather of a city"
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        })
    }

    async fn execute(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolError> {
        if self.hang_on.as_deref() == Some(ctx.tool_call_id.as_str()) {
            futures::future::pending::<()>().await;
        }
        self.done.record(ctx.tool_call_id);
        Ok(json!({"city": args["city"], "sky": "sunny"}))
    }
}

/// Three tool-calling steps, then an answer.
pub(crate) fn script() -> Vec<Turn> {
    let mut turns: Vec<Turn> = ["Paris", "Oslo", "Lima"]
        .iter()
        .enumerate()
        .map(|(i, city)| {
            Turn::new()
                .words(&format!("Looking up {city} now."))
                .tool_call(format!("call-{i}"), "weather", json!({ "city": city }))
        })
        .collect();
    turns.push(Turn::text("It is sunny in Paris, Oslo and Lima."));
    turns
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Run `scenario` on the backend `factory` makes, on a thread of its own: a panic in it is a
/// failure like any other, and one that does not finish within `limit` fails as hung (its
/// thread is left behind) instead of stalling the test run.
pub fn run_scenario<F, Fut>(scenario: &'static Scenario, factory: F, limit: Duration) -> Outcome
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Backend, String>>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(scenario.name.to_owned())
        .spawn(move || {
            let main = process_runtime();
            let outcome = match main.block_on(factory()) {
                Ok(backend) => {
                    let rig = Rig::new(backend, main);
                    outcome((scenario.run)(&rig))
                }
                Err(why) => Outcome::Skipped(Skipped {
                    cause: SkipCause::Unavailable,
                    why: format!("backend unavailable: {why}"),
                }),
            };
            let _ = tx.send(outcome);
        });
    let thread = match spawned {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("cannot start the scenario's thread: {e}")),
    };
    match rx.recv_timeout(limit) {
        Ok(o) => o,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Outcome::Failed(format!("scenario did not finish within {limit:?}"))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(payload) => Outcome::Failed(format!("panicked: {}", panic_message(&*payload))),
            Ok(()) => Outcome::Failed("the scenario's thread ended without an outcome".into()),
        },
    }
}

/// The `#[test]` body generated by [`agent_suite!`](crate::agent_suite) for one scenario:
/// [`run_scenario`] with a five-minute limit, then [`judge`].
///
/// # Panics
/// As [`judge`] says, and for a name that is not a scenario.
pub fn run_scenario_test<F, Fut>(name: &str, factory: F, declared: &Declarations<'_>)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Backend, String>>,
{
    let Some(scenario) = super::scenarios::find(name) else {
        panic!("unknown agent scenario {name}");
    };
    let outcome = run_scenario(scenario, factory, SCENARIO_TIMEOUT);
    judge(name, &outcome, declared);
}

//! Runs on a real Restate server, their handlers in a separate process (this test binary started
//! again as `child_endpoint`), their events in a Redis run log observed from this process.
//!
//! Needs `DURABLE_TEST_RESTATE_URL` (ingress), `DURABLE_TEST_RESTATE_ADMIN_URL` and
//! `DURABLE_TEST_REDIS_URL`; `cargo xtask test` starts both servers.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_conformance::agent::{assert_contiguous, client_view};
use durable_core::agent::{
    Agent, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError, Turn,
};
use durable_core::{
    Event, EventKind, EventLog, LogConfig, ObserveOptions, PubSub, RunId, RunStatus,
};
use durable_restate::{RestateAgent, RestateEndpoint, RestateRun};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
const CHILD_ENV: &str = "DURABLE_RESTATE_TEST_CHILD";

/// Restate routes a service to its latest registered deployment: the tests of this binary take
/// turns, each with its own handler process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    ingress: String,
    admin: String,
    redis: String,
}

fn env() -> Option<Env> {
    let get = |v: &str| durable_conformance::services::env_url_var(v);
    match (
        get("DURABLE_TEST_RESTATE_URL"),
        get("DURABLE_TEST_RESTATE_ADMIN_URL"),
        get("DURABLE_TEST_REDIS_URL"),
    ) {
        (Some(ingress), Some(admin), Some(redis)) => Some(Env {
            ingress,
            admin,
            redis,
        }),
        _ => {
            assert!(
                !durable_conformance::harness::require_backends(),
                "DURABLE_TEST_RESTATE_URL, DURABLE_TEST_RESTATE_ADMIN_URL and DURABLE_TEST_REDIS_URL must be set when DURABLE_TEST_REQUIRE=1"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: DURABLE_TEST_RESTATE_URL, DURABLE_TEST_RESTATE_ADMIN_URL or DURABLE_TEST_REDIS_URL is not set"
            );
            None
        }
    }
}

/// The run log on Redis, and its PubSub (also the channel of abort requests).
async fn log(redis_url: &str, ns: &str) -> (EventLog, Arc<dyn PubSub>) {
    let redis = durable_redis::RedisConfig::new(redis_url)
        .key_prefix("durable-restate-test:")
        .connect()
        .await
        .unwrap();
    let mut config = LogConfig::default();
    config.namespace = ns.to_owned();
    let pubsub: Arc<dyn PubSub> = Arc::new(redis.pubsub().await.unwrap());
    let log = EventLog::new(Arc::new(redis.server_cache()), pubsub.clone()).with_config(config);
    (log, pubsub)
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Args {
    #[serde(default)]
    #[allow(dead_code)]
    amount: u32,
}

fn record(dir: &Path, name: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap();
    writeln!(f, "x").unwrap();
    f.sync_all().unwrap();
}

fn count(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(name))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Every agent of these tests. Tools record each execution in a file of `dir`; `slow` never
/// returns in a process started with `hang`.
fn agents(dir: &Path, hang: bool) -> Vec<Agent> {
    let d = dir.to_owned();
    let fast = FnTool::new("fast", "Fast", move |_: Args, _: ToolContext| {
        let d = d.clone();
        async move {
            record(&d, "fast");
            Ok::<_, ToolError>(json!({"fast": true}))
        }
    });
    let d = dir.to_owned();
    let slow = FnTool::new("slow", "Slow", move |_: Args, _: ToolContext| {
        let d = d.clone();
        async move {
            record(&d, "slow-start");
            if hang {
                futures::future::pending::<()>().await;
            }
            Ok::<_, ToolError>(json!({"slow": true}))
        }
    });
    let d = dir.to_owned();
    let pay = FnTool::new("pay", "Pay", move |_: Args, _: ToolContext| {
        let d = d.clone();
        async move {
            record(&d, "pay");
            Ok::<_, ToolError>("paid")
        }
    })
    .require_approval();
    vec![
        Agent::builder()
            .id("tooler")
            .model(ScriptedModel::new([
                Turn::new()
                    .words("Calling both tools.")
                    .tool_call("c-fast", "fast", json!({}))
                    .tool_call("c-slow", "slow", json!({})),
                Turn::text("All done."),
            ]))
            .tool(fast)
            .tool(slow)
            .build()
            .unwrap(),
        Agent::builder()
            .id("payer")
            .model(ScriptedModel::new([
                Turn::new().tool_call("c-pay", "pay", json!({"amount": 5})),
                Turn::text("Payment handled."),
            ]))
            .tool(pay)
            .build()
            .unwrap(),
        Agent::builder()
            .id("failing")
            .model(ScriptedModel::new([
                Turn::text("partial answer").fail("provider down")
            ]))
            .build()
            .unwrap(),
    ]
}

/// The handler process: serves every agent on the port it is given, until killed.
#[test]
fn child_endpoint() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (port, ns, dir, hang, redis) = (parts[0], parts[1], parts[2], parts[3] == "1", parts[4]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (log, pubsub) = log(redis, ns).await;
        let mut endpoint = RestateEndpoint::new(log)
            .control(pubsub)
            .model_attempts(3)
            .retry_delay(Duration::from_millis(20));
        for a in agents(Path::new(dir), hang) {
            endpoint = endpoint.agent(a);
        }
        let _served = endpoint
            .bind(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        println!("child-ready");
        futures::future::pending::<()>().await;
    });
}

/// A handler process of this test; killed (SIGKILL) on drop.
struct Handler {
    child: Child,
}

impl Handler {
    fn start(port: u16, ns: &str, dir: &Path, hang: bool, redis: &str) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_endpoint",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{port}|{ns}|{}|{}|{redis}",
                    dir.display(),
                    if hang { "1" } else { "0" }
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let ready = durable_conformance::services::wait_until(Duration::from_secs(20), || {
            durable_conformance::services::tcp_ready(port)
        });
        assert!(ready, "the handler process did not listen on {port}");
        Self { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Rig {
    env: Env,
    ns: String,
    dir: PathBuf,
    port: u16,
    handler: Handler,
    log: EventLog,
    pubsub: Arc<dyn PubSub>,
}

impl Rig {
    async fn new(hang: bool) -> Option<Self> {
        let env = env()?;
        let ns = format!("t{}", RunId::generate().as_str().replace('-', ""));
        let dir = durable_conformance::services::services_dir().join(format!("restate-test-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = durable_conformance::services::spare_port().unwrap();
        let handler = Handler::start(port, &ns, &dir, hang, &env.redis);
        durable_restate::register_deployment(&env.admin, &format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let (log, pubsub) = log(&env.redis, &ns).await;
        Some(Self {
            env,
            ns,
            dir,
            port,
            handler,
            log,
            pubsub,
        })
    }

    /// A client of agent `id` (the agent itself only lends its id and defaults here).
    fn client(&self, id: &str) -> RestateAgent {
        let agent = agents(&self.dir, false)
            .into_iter()
            .find(|a| a.id() == id)
            .unwrap();
        RestateAgent::builder(agent)
            .log(self.log.clone())
            .control(self.pubsub.clone())
            .ingress_url(&self.env.ingress)
            .admin_url(&self.env.admin)
            .abort_timeout(DEADLINE)
            .build()
            .unwrap()
    }

    async fn full_log(&self, run_id: &RunId) -> Vec<Event> {
        let n = self.log.len(run_id).await.unwrap().unwrap();
        self.log.read(run_id, 0, n as usize + 1).await.unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.ns;
    }
}

/// Drain `run` until it ends (or `DEADLINE` passes: a failure).
async fn collect(mut run: RestateRun) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, run.next()).await {
            Ok(Some(ev)) => out.push(ev.unwrap()),
            Ok(None) => return out,
            Err(_) => panic!(
                "run did not end within {DEADLINE:?}; got {:?}",
                out.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>()
            ),
        }
    }
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_tool_calling_run_completes() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(rig) = Rig::new(false).await else {
            return;
        };
        let agent = rig.client("tooler");
        let run = agent
            .stream("use your tools", StreamOptions::new())
            .await
            .unwrap();
        let run_id = run.run_id().clone();
        let events = collect(run).await;
        assert_eq!(events.last().unwrap().kind, EventKind::Finish);
        assert_contiguous(&events);
        assert_eq!(events, rig.full_log(&run_id).await);
        assert_eq!(count(&rig.dir, "fast"), 1);
        assert_eq!(count(&rig.dir, "slow-start"), 1);
        let view = client_view(&events);
        let k: Vec<&str> = view.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            k,
            [
                "start",
                "step-start",
                "text-delta",
                "text-delta",
                "text-delta",
                "tool-call",
                "tool-call",
                "tool-result",
                "tool-result",
                "step-finish",
                "step-start",
                "text-delta",
                "text-delta",
                "step-finish",
                "finish"
            ]
        );
        let finish = events.last().unwrap().data.to_value();
        assert_eq!(finish["text"], "All done.");
        assert_eq!(finish["steps"], 2);
        // A DurableAgent on the same backends (what durable-server serves) observes it too.
        let redis = durable_redis::RedisConfig::new(&rig.env.redis)
            .key_prefix("durable-restate-test:")
            .connect()
            .await
            .unwrap();
        let mut config = LogConfig::default();
        config.namespace = rig.ns.clone();
        let local = durable_core::agent::DurableAgent::builder(agent.agent().clone())
            .cache(redis.server_cache())
            .pubsub(redis.pubsub().await.unwrap())
            .log_config(config)
            .build()
            .unwrap();
        let seen = durable_conformance::agent::collect(
            local
                .observe(&run_id, ObserveOptions::from(0))
                .await
                .unwrap(),
            DEADLINE,
        )
        .await;
        assert_eq!(seen, events);
        // And durable-server serves it unchanged: SSE with cursors, from any offset.
        let server = durable_server::DurableServer::builder()
            .agent(local)
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(durable_server::serve(listener, server.router(), shutdown));
        let client = durable_server::client::Client::new(base);
        let mut sse = client.observe("tooler", &run_id, 3).into_stream();
        let mut over_http = Vec::new();
        while let Some(ev) = tokio::time::timeout(DEADLINE, sse.next()).await.unwrap() {
            over_http.push(ev.unwrap());
        }
        assert_eq!(over_http, events[3..]);
        stop.cancel();
        // Restate shows the run with one journal entry per step.
        let query = format!(
            "SELECT j.name FROM sys_journal j JOIN sys_invocation i ON j.id = i.id \
             WHERE i.target_service_key = '{run_id}' AND i.target_handler_name = 'run' \
             AND j.entry_type = 'Command: Run' ORDER BY j.index"
        );
        let rows: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/query", rig.env.admin))
            .header("accept", "application/json")
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let steps: Vec<&str> = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["s0-model", "s0-tool-0", "s0-tool-1", "s1-model"]);
        // A retried stream with the same run id shows that run; it does not start another.
        let again = agent
            .stream(
                "use your tools",
                StreamOptions::new().run_id(run_id.clone()),
            )
            .await
            .unwrap();
        assert_eq!(collect(again).await, events);
        assert_eq!(count(&rig.dir, "fast"), 1);
        // A late observer from any offset sees exactly the rest.
        for k in [0, 5, events.len() as u64] {
            let late = collect(
                agent
                    .observe(&run_id, ObserveOptions::from(k))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(late, events[k as usize..]);
        }
        // Once its log is gone, the run id is refused, and nothing is left behind.
        rig.log.delete(&run_id).await.unwrap();
        let err = agent
            .stream(
                "use your tools",
                StreamOptions::new().run_id(run_id.clone()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), durable_core::ErrorKind::Conflict);
        assert_eq!(rig.log.len(&run_id).await.unwrap(), None);
    });
}

#[test]
fn a_killed_handler_process_resumes_without_repeating_completed_tools() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(mut rig) = Rig::new(true).await else {
            return;
        };
        let agent = rig.client("tooler");
        let run = agent
            .stream("use your tools", StreamOptions::new())
            .await
            .unwrap();
        let run_id = run.run_id().clone();
        let observer = tokio::spawn(collect(run));
        // A second client reads the first events, disconnects, and comes back after the crash.
        let mut early = agent
            .observe(&run_id, ObserveOptions::from(0))
            .await
            .unwrap();
        let mut prefix = Vec::new();
        for _ in 0..3 {
            prefix.push(early.next().await.unwrap().unwrap());
        }
        drop(early);
        let started = durable_conformance::services::wait_until(DEADLINE, || {
            count(&rig.dir, "slow-start") == 1
        });
        assert!(started, "the slow tool never started");
        // kill -9 the handler process inside the slow tool, start a new one on the same URI.
        rig.handler.kill9();
        let before = rig.log.len(&run_id).await.unwrap().unwrap();
        rig.handler = Handler::start(rig.port, &rig.ns, &rig.dir, false, &rig.env.redis);
        let events = observer.await.unwrap();
        assert_eq!(
            events.last().unwrap().kind,
            EventKind::Finish,
            "{:?}",
            kinds(&events)
        );
        assert_contiguous(&events);
        assert_eq!(events, rig.full_log(&run_id).await);
        assert!(before >= 8, "the crash came after the fast tool's result");
        let rest = collect(
            agent
                .observe(&run_id, ObserveOptions::from(prefix.len() as u64))
                .await
                .unwrap(),
        )
        .await;
        prefix.extend(rest);
        assert_eq!(
            prefix, events,
            "the reconnected client's stitched sequence is exact"
        );
        assert_eq!(count(&rig.dir, "fast"), 1, "a completed tool ran again");
        assert_eq!(
            count(&rig.dir, "slow-start"),
            2,
            "the interrupted tool ran again"
        );
        // Nothing duplicated, nothing restarted: the model steps were journaled.
        let view = client_view(&events);
        let k: Vec<&str> = view.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            k,
            [
                "start",
                "step-start",
                "text-delta",
                "text-delta",
                "text-delta",
                "tool-call",
                "tool-call",
                "tool-result",
                "tool-result",
                "step-finish",
                "step-start",
                "text-delta",
                "text-delta",
                "step-finish",
                "finish"
            ]
        );
        assert!(!kinds(&events).contains(&"step-restart"));
    });
}

#[test]
fn approval_is_answered_from_another_process() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(rig) = Rig::new(false).await else {
            return;
        };
        let agent = rig.client("payer");
        let run = agent
            .stream("pay the bill", StreamOptions::new())
            .await
            .unwrap();
        let run_id = run.run_id().clone();
        let first = collect(run).await;
        assert_eq!(
            kinds(&first)[first.len() - 2..],
            ["tool-call-approval", "suspended"]
        );
        assert_eq!(count(&rig.dir, "pay"), 0);
        // Another client instance with its own connections (the handler runs in a third process).
        let other = Rig::client(&rig, "payer");
        let err = other
            .approve_tool_call(&run_id, "c-other")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), durable_core::ErrorKind::InvalidInput);
        let rest = collect(other.approve_tool_call(&run_id, "c-pay").await.unwrap()).await;
        assert_eq!(
            kinds(&rest),
            [
                "tool-result",
                "step-finish",
                "step-start",
                "text-delta",
                "text-delta",
                "step-finish",
                "finish"
            ]
        );
        assert_eq!(rest[0].cursor, first.len() as u64);
        assert_eq!(count(&rig.dir, "pay"), 1);
        let err = other.approve_tool_call(&run_id, "c-pay").await.unwrap_err();
        assert_eq!(err.kind(), durable_core::ErrorKind::InvalidState);
    });
}

#[test]
fn abort_cancels_a_suspended_run() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(rig) = Rig::new(false).await else {
            return;
        };
        let agent = rig.client("payer");
        let run = agent
            .stream("pay the bill", StreamOptions::new())
            .await
            .unwrap();
        let run_id = run.run_id().clone();
        let first = collect(run).await;
        assert_eq!(first.last().unwrap().kind, EventKind::Suspended);
        assert_eq!(agent.abort(&run_id).await.unwrap(), RunStatus::Aborted);
        let all = rig.full_log(&run_id).await;
        assert_eq!(all.len(), first.len() + 1);
        assert_eq!(all.last().unwrap().kind, EventKind::Abort);
        assert_eq!(count(&rig.dir, "pay"), 0);
        // Aborting again changes nothing; resuming is refused.
        assert_eq!(agent.abort(&run_id).await.unwrap(), RunStatus::Aborted);
        let err = agent.approve_tool_call(&run_id, "c-pay").await.unwrap_err();
        assert_eq!(err.kind(), durable_core::ErrorKind::InvalidState);
    });
}

#[test]
fn abort_interrupts_a_running_tool() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(rig) = Rig::new(true).await else {
            return;
        };
        let agent = rig.client("tooler");
        let run = agent
            .stream("use your tools", StreamOptions::new())
            .await
            .unwrap();
        let run_id = run.run_id().clone();
        let observer = tokio::spawn(collect(run));
        let started = durable_conformance::services::wait_until(DEADLINE, || {
            count(&rig.dir, "slow-start") == 1
        });
        assert!(started, "the slow tool never started");
        // The slow tool never returns by itself: only the abort request can end it.
        assert_eq!(agent.abort(&run_id).await.unwrap(), RunStatus::Aborted);
        let events = observer.await.unwrap();
        assert_contiguous(&events);
        assert_eq!(events, rig.full_log(&run_id).await);
        let k = kinds(&events);
        assert_eq!(k[k.len() - 2..], ["tool-result", "abort"], "{k:?}");
        assert_eq!(count(&rig.dir, "fast"), 1);
        assert_eq!(count(&rig.dir, "slow-start"), 1);
    });
}

#[test]
fn a_failing_model_is_retried_then_the_run_ends_with_error() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(rig) = Rig::new(false).await else {
            return;
        };
        let agent = rig.client("failing");
        let run = agent.stream("hello", StreamOptions::new()).await.unwrap();
        let run_id = run.run_id().clone();
        let events = collect(run).await;
        assert_contiguous(&events);
        assert_eq!(events, rig.full_log(&run_id).await);
        let k = kinds(&events);
        assert_eq!(*k.last().unwrap(), "error", "{k:?}");
        let restarts = k.iter().filter(|k| **k == "step-restart").count();
        let starts = k.iter().filter(|k| **k == "step-start").count();
        assert!(restarts >= 1, "the failed step was retried: {k:?}");
        assert_eq!(starts, restarts + 1, "{k:?}");
        let err = events.last().unwrap().data.to_value();
        assert!(
            err["message"].as_str().unwrap().contains("provider down"),
            "{err}"
        );
        // What a client shows: one attempt of the step, then the error.
        let view = client_view(&events);
        let v: Vec<&str> = view.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            v,
            ["start", "step-start", "text-delta", "text-delta", "error"]
        );
        let out = agent
            .observe(&run_id, ObserveOptions::from(0))
            .await
            .unwrap()
            .output()
            .await;
        assert!(out.is_err());
        // An agent no endpoint serves: the run ends with an error instead of leaving its
        // observers waiting.
        let unserved = Agent::builder()
            .id("unserved")
            .model(ScriptedModel::new([Turn::text("never")]))
            .build()
            .unwrap();
        let unserved = RestateAgent::builder(unserved)
            .log(rig.log.clone())
            .ingress_url(&rig.env.ingress)
            .admin_url(&rig.env.admin)
            .build()
            .unwrap();
        let run = unserved
            .stream("hello", StreamOptions::new())
            .await
            .unwrap();
        let events = collect(run).await;
        assert_eq!(kinds(&events), ["error"]);
        assert_eq!(events[0].data.to_value()["kind"], "not_found");
    });
}

/// The per-step overhead of Restate against the local `DurableAgent` on the same scripted run
/// (2 model steps, 2 tool calls), both with their run log on the same Redis. Prints, asserts
/// nothing: `cargo test -p durable-restate --test restate -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn per_step_overhead_against_the_local_variant() {
    rt().block_on(async {
        let _turn = SERIAL.lock().await;
        let Some(rig) = Rig::new(false).await else {
            return;
        };
        const RUNS: u32 = 30;
        const STEPS: u32 = 2;
        let restate = rig.client("tooler");
        let redis = durable_redis::RedisConfig::new(&rig.env.redis)
            .key_prefix("durable-restate-test:")
            .connect()
            .await
            .unwrap();
        let mut config = LogConfig::default();
        config.namespace = format!("{}local", rig.ns);
        let local = durable_core::agent::DurableAgent::builder(restate.agent().clone())
            .cache(redis.server_cache())
            .pubsub(redis.pubsub().await.unwrap())
            .store(redis.workflow_store())
            .log_config(config)
            .build()
            .unwrap();
        // Warm up both.
        local.generate("go", StreamOptions::new()).await.unwrap();
        restate.generate("go", StreamOptions::new()).await.unwrap();
        let t = Instant::now();
        for _ in 0..RUNS {
            local.generate("go", StreamOptions::new()).await.unwrap();
        }
        let local_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS);
        let t = Instant::now();
        for _ in 0..RUNS {
            restate.generate("go", StreamOptions::new()).await.unwrap();
        }
        let restate_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS);
        println!(
            "per run ({STEPS} model steps + 2 tool calls, {RUNS} runs): local DurableAgent {local_ms:.2} ms, Restate {restate_ms:.2} ms; overhead per model step {:.2} ms",
            (restate_ms - local_ms) / f64::from(STEPS)
        );
    });
}

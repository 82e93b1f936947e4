//! Fault test: `kill -9` of a worker *process* of an evented run on NATS. The process (this
//! test binary re-executed as `worker_process`, with its own connections) executes `call-0`, then
//! hangs inside `call-1`, where it is killed with SIGKILL. A second worker process takes the run
//! over once the lease expires and finishes it: every event once and in order, the run
//! completed with a bumped epoch, and no completed tool executed again (the tool log written by
//! both processes shows `done call-0` once and `done call-1` once).

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use durable_conformance::agent::{assert_contiguous, collect, settled_status};
use durable_core::agent::{
    Agent, DurableAgent, EventedAgent, FnTool, ScriptedModel, StreamOptions, ToolContext,
    ToolError, Turn,
};
use durable_core::{EventKind, LogConfig, ObserveOptions, RunId, RunStatus};
use durable_nats::NatsConfig;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
/// Set in a re-executed test binary: `<url> <namespace> <worker id> <tool log> [<hang id>]`.
const WORKER_ENV: &str = "DURABLE_NATS_TEST_WORKER";

fn script() -> Vec<Turn> {
    let mut turns: Vec<Turn> = ["Paris", "Oslo"]
        .iter()
        .enumerate()
        .map(|(i, city)| {
            Turn::new()
                .words(&format!("Looking up {city} now."))
                .tool_call(format!("call-{i}"), "weather", json!({ "city": city }))
        })
        .collect();
    turns.push(Turn::text("Sunny in Paris and Oslo."));
    turns
}

fn note(path: &str, line: &str) {
    // One write of a whole line in append mode: lines of two processes never interleave.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
    f.sync_all().unwrap();
}

async fn instance(
    url: &str,
    ns: &str,
    worker: &str,
    tool_log: &str,
    hang_on: Option<String>,
) -> DurableAgent {
    let nats = NatsConfig::new(url)
        .lease(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let log_path = tool_log.to_owned();
    let tool = FnTool::new(
        "weather",
        "Weather",
        move |a: serde_json::Value, ctx: ToolContext| {
            let log_path = log_path.clone();
            let hang = hang_on.as_deref() == Some(ctx.tool_call_id.as_str());
            async move {
                note(&log_path, &format!("start {}", ctx.tool_call_id));
                if hang {
                    futures::future::pending::<()>().await;
                }
                note(&log_path, &format!("done {}", ctx.tool_call_id));
                Ok::<_, ToolError>(json!({"city": a["city"], "sky": "sunny"}))
            }
        },
    );
    let agent = Agent::builder()
        .id("forecaster")
        .model(ScriptedModel::new(script()).with_delay(Duration::from_micros(200)))
        .tool(tool)
        .build()
        .unwrap();
    let mut config = LogConfig::default();
    config.namespace = ns.to_owned();
    DurableAgent::builder(agent)
        .cache(nats.server_cache())
        .pubsub(nats.pubsub())
        .store(nats.workflow_store())
        .log_config(config)
        .worker_id(worker)
        .lease_ttl(Duration::from_millis(800))
        .build()
        .unwrap()
}

/// The worker process: idle unless re-executed with [`WORKER_ENV`]; then it runs one worker
/// until it is killed.
#[test]
fn worker_process() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let args: Vec<String> = spec.split(' ').map(str::to_owned).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = instance(&args[0], &args[1], &args[2], &args[3], args.get(4).cloned()).await;
        let _worker = EventedAgent::builder(a)
            .workers(1)
            .sweep_every(Duration::from_millis(100))
            .start()
            .await
            .unwrap();
        futures::future::pending::<()>().await;
    });
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(url: &str, ns: &str, id: &str, tool_log: &str, hang: Option<&str>) -> Worker {
    let mut spec = format!("{url} {ns} {id} {tool_log}");
    if let Some(h) = hang {
        spec.push(' ');
        spec.push_str(h);
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Worker(child)
}

fn lines(path: &std::path::Path, line: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == line)
        .count()
}

#[test]
fn a_killed_worker_process_is_taken_over_and_no_tool_runs_twice() {
    if std::env::var(WORKER_ENV).is_ok() {
        return;
    }
    let Some(url) = durable_conformance::harness::backend_url("nats") else {
        return;
    };
    let ns = format!("k{}", RunId::generate().as_str().replace('-', ""));
    let dir = std::env::temp_dir().join(format!("durable-nats-kill-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let tool_log = dir.join("tools.log");
    let tool_log_s = tool_log.to_string_lossy().into_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The API instance only queues and observes.
        let api = instance(&url, &ns, "api", &tool_log_s, None).await;
        let api = EventedAgent::builder(api).workers(0).start().await.unwrap();
        let mut doomed = spawn_worker(&url, &ns, "worker-1", &tool_log_s, Some("call-1"));
        let run = api.stream("Weather?", StreamOptions::new()).await.unwrap();
        let run_id = run.run_id().clone();
        // Until worker 1 is inside call-1 (it noted the start), having completed call-0.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while lines(&tool_log, "start call-1") == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker 1 never reached call-1"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let owner = api.durable().status(&run_id).await.unwrap().owner;
        assert_eq!(owner.as_deref(), Some("worker-1"));
        doomed.0.kill().unwrap(); // SIGKILL
        doomed.0.wait().unwrap();
        let _second = spawn_worker(&url, &ns, "worker-2", &tool_log_s, None);
        let events = collect(run, DEADLINE).await;
        assert_contiguous(&events);
        assert_eq!(
            events.last().map(|e| e.kind.clone()),
            Some(EventKind::Finish)
        );
        let status = settled_status(api.durable(), &run_id, DEADLINE).await;
        assert_eq!(status, RunStatus::Completed);
        let record = api.durable().status(&run_id).await.unwrap();
        assert!(record.epoch >= 2, "the takeover did not bump the epoch");
        // An observer from cursor 0 after the fact sees the same events.
        let again = collect(
            api.observe(&run_id, ObserveOptions::from(0)).await.unwrap(),
            DEADLINE,
        )
        .await;
        assert_eq!(again.len(), events.len());
        api.shutdown();
    });
    assert_eq!(
        lines(&tool_log, "done call-0"),
        1,
        "call-0 completed more than once"
    );
    assert_eq!(
        lines(&tool_log, "start call-0"),
        1,
        "call-0 was executed again"
    );
    assert_eq!(
        lines(&tool_log, "done call-1"),
        1,
        "call-1 did not complete exactly once"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Crash test with real processes: this test binary re-executes itself as a child that runs
//! durable agents (with tools) on PostgreSQL (`DURABLE_TEST_POSTGRES_URL`, a schema of this
//! test's own); the parent kills it with SIGKILL at random
//! points, each chosen by waiting for the runs' logs to reach a random number of events (never
//! by sleeping), and starts a new child, which calls `recover()`. At the end:
//! - every run completed;
//! - no tool call whose result was checkpointed ran again (each child records which tool
//!   checkpoints existed when it started; the tools record each execution in a side file);
//! - the parent's observer, stitched across every child from its last cursor, is exact:
//!   contiguous cursors, equal to `observe(0)` of the final log, and its client view equals
//!   that of an uninterrupted run;
//! - no run is left `Running`.

#![allow(clippy::unwrap_used)] // test code panics on purpose

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use durable_conformance::agent::{assert_contiguous, client_view, collect, settled_status};
use durable_core::agent::{
    Agent, DurableAgent, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError, Turn,
};
use durable_core::{Event, ObserveOptions, RunId, RunStatus, WorkflowStore};
use durable_postgres::{Postgres, PostgresConfig};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

/// Set in the child's environment: the directory holding the side file.
const CHILD_ENV: &str = "DURABLE_PG_CRASH_CHILD";
/// Set in the child's environment: the schema of the runs.
const SCHEMA_ENV: &str = "DURABLE_PG_CRASH_SCHEMA";
/// Set in the child's environment: the cursor each run's observer starts from.
const OFFSETS_ENV: &str = "DURABLE_PG_CRASH_OFFSETS";
const RUNS: usize = 4;
const KILLS: usize = 10;
const INPUT: &str = "Weather report, please.";
const STALL: Duration = Duration::from_secs(30);
/// Starts each event line the child prints (libtest may print its own text before it).
const MARK: &str = "@@event ";

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

fn run_ids() -> Vec<RunId> {
    (0..RUNS)
        .map(|i| RunId::new(format!("crash-run-{i}")).unwrap())
        .collect()
}

fn script() -> Vec<Turn> {
    let cities = ["Paris", "Oslo", "Lima"];
    let mut turns: Vec<Turn> = cities
        .iter()
        .enumerate()
        .map(|(i, city)| {
            Turn::new()
                .words(&format!(
                    "Let me look up the weather in {city} for you, one moment while the tool answers."
                ))
                .tool_call(format!("call-{i}"), "weather", json!({ "city": city }))
        })
        .collect();
    turns.push(Turn::text(
        "Sunny in Paris, Oslo and Lima today, with a light breeze in the afternoon and clear \
         skies all evening long, so enjoy the walk.",
    ));
    turns
}

/// The agent; its tool appends `start`/`done` lines to `side` (when given).
fn agent(side: Option<PathBuf>) -> Agent {
    let tool = FnTool::new("weather", "Weather", move |a: Lookup, ctx: ToolContext| {
        let side = side.clone();
        async move {
            let key = format!("{} s{}-tool-{}", ctx.run_id, ctx.step, ctx.index);
            record(
                side.as_deref(),
                &format!("start {} {key}", std::process::id()),
            );
            let out = json!({ "city": a.city, "sky": "sunny" });
            record(
                side.as_deref(),
                &format!("done {} {key}", std::process::id()),
            );
            Ok::<_, ToolError>(out)
        }
    });
    Agent::builder()
        .id("crash")
        .model(ScriptedModel::new(script()).with_delay(Duration::from_millis(1)))
        .tool(tool)
        .build()
        .unwrap()
}

/// One line to the side file, in one `write` on an `O_APPEND` file: whole lines survive a
/// SIGKILL (they are in the page cache once `write` returned).
fn record(side: Option<&Path>, line: &str) {
    if let Some(path) = side {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

/// The child's entry point: does nothing unless run by `killed_processes_recover_every_run_exactly`
/// with `DURABLE_SQLITE_CRASH_CHILD` set (it is a process role, not a test of its own).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let offsets: Vec<u64> = std::env::var(OFFSETS_ENV)
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child(PathBuf::from(dir), offsets));
}

async fn child(dir: PathBuf, offsets: Vec<u64>) {
    let side = dir.join("tools.log");
    let pg = connect(&std::env::var(SCHEMA_ENV).unwrap()).await;
    let store = pg.workflow_store();
    let pid = std::process::id();
    // What was checkpointed before this process executes anything: none of these tool calls
    // may start here.
    for run in run_ids() {
        if let Some(snap) = store.load(&run).await.unwrap() {
            for (key, _) in &snap.checkpoints {
                if key.contains("-tool-") && !key.contains("-start-") {
                    record(Some(&side), &format!("seen {pid} {run} {key}"));
                }
            }
        }
    }
    let agent = durable_agent(&pg, agent(Some(side)))
        .await
        .worker_id("crash-worker")
        .build()
        .unwrap();
    agent.recover().await.unwrap();
    let mut observers = Vec::new();
    for (i, run) in run_ids().into_iter().enumerate() {
        // Starts the run, or (already there) returns it: `stream` with a run id is idempotent.
        drop(
            agent
                .stream(INPUT, StreamOptions::new().run_id(run.clone()))
                .await
                .unwrap(),
        );
        let mut events = agent
            .observe(&run, ObserveOptions::from(offsets[i]))
            .await
            .unwrap();
        observers.push(tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let e = e.unwrap();
                println!("{MARK}{i} {}", serde_json::to_string(&e).unwrap());
            }
        }));
    }
    for o in observers {
        o.await.unwrap();
    }
    for run in run_ids() {
        assert_eq!(
            settled_status(&agent, &run, STALL).await,
            RunStatus::Completed
        );
    }
}

/// Start a child observing from `offsets`; read its events into `stitched` and kill it with
/// SIGKILL once they reach `kill_at` in total (if given). Returns whether it was killed.
fn run_child(
    dir: &Path,
    schema: &str,
    stitched: &mut [Vec<Event>],
    kill_at: Option<usize>,
) -> bool {
    let offsets: Vec<String> = stitched.iter().map(|s| s.len().to_string()).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, dir)
        .env(SCHEMA_ENV, schema)
        .env(OFFSETS_ENV, offsets.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut killed = false;
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // A line cut by the kill has no newline: the child never finished printing it.
        let Some(at) = line.find(MARK).filter(|_| line.ends_with('\n')) else {
            continue;
        };
        let rest = &line[at + MARK.len()..];
        let (i, json) = rest.trim_end().split_once(' ').unwrap();
        let i: usize = i.parse().unwrap();
        let e: Event = serde_json::from_str(json).unwrap();
        assert_eq!(
            e.cursor,
            stitched[i].len() as u64,
            "run {i}: the stitched observer got cursor {} after {} events",
            e.cursor,
            stitched[i].len()
        );
        stitched[i].push(e);
        let total: usize = stitched.iter().map(Vec::len).sum();
        if !killed && kill_at.is_some_and(|k| total >= k) {
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    if !killed {
        assert!(status.success(), "the child failed: {status}");
    }
    killed
}

#[test]
fn killed_processes_recover_every_run_exactly() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    if support::url().is_none() {
        assert!(
            !durable_conformance::harness::require_backends(),
            "DURABLE_TEST_POSTGRES_URL is not set"
        );
        return eprintln!("skipped: DURABLE_TEST_POSTGRES_URL is not set");
    }
    let schema = support::schema("crash");
    let dir = std::env::temp_dir().join(format!("durable-pg-{schema}"));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::env::var("DURABLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "crash test seed {seed} (DURABLE_TEST_SEED to replay), dir {}",
        dir.display()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut stitched: Vec<Vec<Event>> = vec![Vec::new(); RUNS];
    let mut kills = 0;
    while kills < KILLS {
        let total: usize = stitched.iter().map(Vec::len).sum();
        let kill_at = total + rng.usize(1..=25);
        if run_child(&dir, &schema, &mut stitched, Some(kill_at)) {
            kills += 1;
        } else {
            break;
        }
    }
    assert!(
        kills >= 10,
        "only {kills} kills landed before the runs ended"
    );
    // The last child is left alone: it recovers and finishes every run.
    if stitched
        .iter()
        .any(|s| !s.last().is_some_and(|e| e.kind.is_terminal()))
    {
        run_child(&dir, &schema, &mut stitched, None);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(verify(&schema, &stitched));
    verify_tools(&dir.join("tools.log"));
    eprintln!("{kills} kills; every run recovered exactly");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn verify(schema: &str, stitched: &[Vec<Event>]) {
    let reference = {
        let agent = DurableAgent::new(agent(None));
        let run = agent.stream(INPUT, StreamOptions::new()).await.unwrap();
        client_view(&collect(run, STALL).await)
    };
    let pg = connect(schema).await;
    let agent = durable_agent(&pg, agent(None)).await.build().unwrap();
    for (i, run) in run_ids().iter().enumerate() {
        assert_eq!(
            settled_status(&agent, run, STALL).await,
            RunStatus::Completed,
            "run {i}"
        );
        let full = collect(
            agent.observe(run, ObserveOptions::from(0)).await.unwrap(),
            STALL,
        )
        .await;
        assert_contiguous(&full);
        assert_eq!(
            stitched[i], full,
            "run {i}: stitched observer differs from the log"
        );
        assert_eq!(
            client_view(&full),
            reference,
            "run {i}: client view differs"
        );
    }
    let store = pg.workflow_store();
    assert_eq!(store.list_runs(Some(RunStatus::Running)).await.unwrap(), []);
}

async fn connect(schema: &str) -> Postgres {
    PostgresConfig::new(support::url().unwrap())
        .schema(schema)
        .max_connections(4)
        .connect()
        .await
        .unwrap()
}

/// A durable agent on PostgreSQL only: run log with NOTIFY wake-ups, pubsub and store.
async fn durable_agent(pg: &Postgres, agent: Agent) -> durable_core::agent::DurableAgentBuilder {
    DurableAgent::builder(agent)
        .cache(pg.server_cache().with_announce())
        .pubsub(pg.pubsub().await.unwrap())
        .store(pg.workflow_store())
}

/// No tool call ran in a process that had already seen its result checkpointed, and no
/// process ran one call twice; every call completed at least once.
fn verify_tools(side: &Path) {
    let text = std::fs::read_to_string(side).unwrap();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut started: HashMap<(String, String), usize> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut reruns = 0;
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (what, pid, key) = (
            parts.next().unwrap(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        );
        match what {
            "seen" => {
                seen.insert((pid, key));
            }
            "start" => {
                assert!(
                    !seen.contains(&(pid.clone(), key.clone())),
                    "tool call {key} ran again in process {pid} after its result was checkpointed"
                );
                let n = started.entry((pid, key.clone())).or_default();
                *n += 1;
                assert_eq!(*n, 1, "tool call {key} ran twice in one process");
                if !done.insert(key) {
                    reruns += 1;
                }
            }
            "done" => {}
            other => panic!("unexpected side-file line {other:?}"),
        }
    }
    assert_eq!(done.len(), RUNS * 3, "every tool call ran");
    eprintln!(
        "{} tool calls, {reruns} re-run after an interrupted attempt",
        done.len()
    );
}

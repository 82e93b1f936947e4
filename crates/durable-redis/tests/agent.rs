//! Durable agents on Redis only (run log, wake-ups, work queue and run records), each
//! "process" with its own connections: reconnect from an offset, approval on another instance,
//! crash and recovery, an evented run taken over from a dead worker.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_conformance::agent::{self as support, assert_contiguous, client_view};
use durable_core::agent::{
    Agent, DurableAgent, DurableRun, EventedAgent, FnTool, ScriptedModel, StreamOptions,
    ToolContext, ToolError, Turn,
};
use durable_core::{Event, EventKind, ObserveOptions, RunId, RunStatus};
use durable_redis::RedisConfig;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

type Completions = Arc<Mutex<HashMap<String, u32>>>;

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

fn url() -> Option<String> {
    let url = durable_conformance::services::env_url("redis");
    if url.is_none() {
        assert!(
            !durable_conformance::harness::require_backends(),
            "DURABLE_TEST_REDIS_URL is not set and DURABLE_TEST_REQUIRE=1"
        );
        eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    }
    url
}

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

fn weather(done: Completions, hang_on: Option<&str>) -> FnTool<Lookup> {
    let hang_on = hang_on.map(str::to_owned);
    FnTool::new("weather", "Weather", move |a: Lookup, ctx: ToolContext| {
        let done = done.clone();
        let hang = hang_on.as_deref() == Some(ctx.tool_call_id.as_str());
        async move {
            if hang {
                futures::future::pending::<()>().await;
            }
            *done.lock().unwrap().entry(ctx.tool_call_id).or_default() += 1;
            Ok::<_, ToolError>(json!({"city": a.city, "sky": "sunny"}))
        }
    })
}

/// One "process": its own Redis connections, under a namespace unique to the test.
async fn instance(
    url: &str,
    ns: &str,
    worker: &str,
    done: &Completions,
    hang_on: Option<&str>,
    require_approval: bool,
) -> DurableAgent {
    let redis = RedisConfig::new(url)
        .key_prefix("durable-agent-test:")
        .connect()
        .await
        .unwrap();
    let mut tool = weather(done.clone(), hang_on);
    if require_approval {
        tool = tool.require_approval();
    }
    let agent = Agent::builder()
        .id("forecaster")
        .model(ScriptedModel::new(script()).with_delay(Duration::from_micros(200)))
        .tool(tool)
        .build()
        .unwrap();
    let mut config = durable_core::LogConfig::default();
    config.namespace = ns.to_owned();
    DurableAgent::builder(agent)
        .cache(redis.server_cache())
        .pubsub(redis.pubsub().await.unwrap())
        .store(redis.workflow_store())
        .log_config(config)
        .worker_id(worker)
        .lease_ttl(Duration::from_millis(600))
        .build()
        .unwrap()
}

fn ns() -> String {
    format!("t{}", RunId::generate().as_str().replace('-', ""))
}

async fn collect(run: DurableRun) -> Vec<Event> {
    support::collect(run, DEADLINE).await
}

async fn settled(agent: &DurableAgent, run_id: &RunId) -> RunStatus {
    support::settled_status(agent, run_id, DEADLINE).await
}

#[tokio::test]
async fn reconnect_and_approval_across_instances() {
    let Some(url) = url() else { return };
    let ns = ns();
    let done = Completions::default();
    let a = instance(&url, &ns, "a", &done, None, false).await;
    let mut run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(run.next().await.unwrap().unwrap());
    }
    drop(run);
    let b = instance(&url, &ns, "b", &done, None, false).await;
    let offset = seen.last().unwrap().cursor + 1;
    seen.extend(
        collect(
            b.observe(&run_id, ObserveOptions::from(offset))
                .await
                .unwrap(),
        )
        .await,
    );
    let full = collect(b.observe(&run_id, ObserveOptions::from(0)).await.unwrap()).await;
    assert_eq!(seen, full);
    assert_eq!(full.last().unwrap().kind, EventKind::Finish);
    assert_eq!(settled(&b, &run_id).await, RunStatus::Completed);

    assert!(done.lock().unwrap().values().all(|n| *n == 1));

    // Approval: suspended on A, approved on C (a third process).
    let done = Completions::default();
    let a = instance(&url, &ns, "a2", &done, None, true).await;
    let run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
    let run_id = run.run_id().clone();
    let first = collect(run).await;
    assert_eq!(first.last().unwrap().kind, EventKind::Suspended);
    assert_eq!(
        a.status(&run_id).await.unwrap().status,
        RunStatus::Suspended
    );
    assert!(
        done.lock().unwrap().is_empty(),
        "nothing runs before approval"
    );
    let c = instance(&url, &ns, "c", &done, None, true).await;
    let resumed = collect(c.approve_tool_call(&run_id, "call-0").await.unwrap()).await;
    assert_eq!(resumed.first().unwrap().cursor, first.len() as u64);
    // The second call needs approval too.
    assert_eq!(resumed.last().unwrap().kind, EventKind::Suspended);
    let end = collect(c.approve_tool_call(&run_id, "call-1").await.unwrap()).await;
    assert_eq!(end.last().unwrap().kind, EventKind::Finish);
    assert!(done.lock().unwrap().values().all(|n| *n == 1));
}

#[test]
fn crashed_run_recovers_on_redis_without_repeating_tools() {
    let Some(url) = url() else { return };
    let reference = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let a = instance(&url, &ns(), "ref", &Completions::default(), None, false).await;
            client_view(&collect(a.stream("Weather?", StreamOptions::new()).await.unwrap()).await)
        })
    };
    for hang in ["call-0", "call-1"] {
        let ns = ns();
        let done = Completions::default();
        let main = tokio::runtime::Runtime::new().unwrap();
        let doomed = tokio::runtime::Runtime::new().unwrap();
        let run_id = doomed.block_on(async {
            let a = instance(&url, &ns, "node-1", &done, Some(hang), false).await;
            let mut run = a.stream("Weather?", StreamOptions::new()).await.unwrap();
            loop {
                let ev = tokio::time::timeout(DEADLINE, run.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                if ev.kind == EventKind::ToolCall && ev.data.to_value()["tool_call_id"] == hang {
                    break run.run_id().clone();
                }
            }
        });
        drop(doomed); // the process dies inside the tool call
        main.block_on(async {
            let b = instance(&url, &ns, "node-1", &done, None, false).await;
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while !b.recover().await.unwrap().contains(&run_id) {
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::task::yield_now().await;
            }
            let events = collect(b.observe(&run_id, ObserveOptions::from(0)).await.unwrap()).await;
            assert_contiguous(&events);
            assert_eq!(client_view(&events), reference);
            assert_eq!(settled(&b, &run_id).await, RunStatus::Completed);
        });
        let done = done.lock().unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done.values().all(|n| *n == 1), "{done:?}");
    }
}

#[test]
fn evented_run_on_redis_streams_survives_its_worker() {
    let Some(url) = url() else { return };
    let ns = ns();
    let done = Completions::default();
    let main = tokio::runtime::Runtime::new().unwrap();
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let api = main.block_on(async {
        let d = instance(&url, &ns, "api", &done, None, false).await;
        EventedAgent::builder(d).workers(0).start().await.unwrap()
    });
    let w1 = doomed.block_on(async {
        let d = instance(&url, &ns, "worker-1", &done, Some("call-1"), false).await;
        EventedAgent::builder(d).workers(1).start().await.unwrap()
    });
    let run = main
        .block_on(api.stream("Weather?", StreamOptions::new()))
        .unwrap();
    let run_id = run.run_id().clone();
    main.block_on(async {
        let mut s = api.observe(&run_id, ObserveOptions::from(0)).await.unwrap();
        loop {
            let ev = tokio::time::timeout(DEADLINE, s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.kind == EventKind::ToolCall && ev.data.to_value()["tool_call_id"] == "call-1" {
                break;
            }
        }
    });
    drop(w1);
    drop(doomed);
    let w2 = main.block_on(async {
        let d = instance(&url, &ns, "worker-2", &done, None, false).await;
        EventedAgent::builder(d)
            .workers(1)
            .sweep_every(Duration::from_millis(100))
            .start()
            .await
            .unwrap()
    });
    main.block_on(async {
        let events = collect(run).await;
        assert_eq!(events.last().unwrap().kind, EventKind::Finish);
        assert_eq!(settled(api.durable(), &run_id).await, RunStatus::Completed);
    });
    assert!(done.lock().unwrap().values().all(|n| *n == 1));
    w2.shutdown();
}

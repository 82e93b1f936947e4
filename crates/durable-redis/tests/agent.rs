//! Durable agents on Redis only (run log, wake-ups, work queue and run records): every
//! durable-agent scenario of the conformance suite via `agent_suite!`, plus a crash in which the
//! dying process takes its own Redis connections with it.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_conformance::agent::{self as support, assert_contiguous, client_view};
use durable_core::agent::{
    Agent, DurableAgent, DurableRun, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError,
    Turn,
};
use durable_core::{Event, EventKind, ObserveOptions, RunId, RunStatus};
use durable_redis::RedisConfig;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

/// Cache, pubsub and store all on the Redis at `DURABLE_TEST_REDIS_URL`.
async fn redis() -> Result<durable_conformance::Backend, String> {
    let url = durable_conformance::services::env_url("redis")
        .ok_or("DURABLE_TEST_REDIS_URL is not set")?;
    let redis = RedisConfig::new(url)
        .key_prefix("durable-agent-test:")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let pubsub = redis.pubsub().await.map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("redis")
        .cache(redis.server_cache())
        .pubsub(pubsub)
        .store(redis.workflow_store()))
}

durable_conformance::agent_suite!(redis);

const DEADLINE: Duration = Duration::from_secs(30);

type Completions = Arc<Mutex<HashMap<String, u32>>>;

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

fn url() -> Option<String> {
    durable_conformance::harness::backend_url("redis")
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
) -> DurableAgent {
    let redis = RedisConfig::new(url)
        .key_prefix("durable-agent-test:")
        .connect()
        .await
        .unwrap();
    let tool = weather(done.clone(), hang_on);
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

#[test]
fn a_crashed_process_takes_its_connections_along_and_recovery_repeats_no_tool() {
    let Some(url) = url() else { return };
    let reference = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let a = instance(&url, &ns(), "ref", &Completions::default(), None).await;
            client_view(&collect(a.stream("Weather?", StreamOptions::new()).await.unwrap()).await)
        })
    };
    for hang in ["call-0", "call-1"] {
        let ns = ns();
        let done = Completions::default();
        let main = tokio::runtime::Runtime::new().unwrap();
        let doomed = tokio::runtime::Runtime::new().unwrap();
        let run_id = doomed.block_on(async {
            let a = instance(&url, &ns, "node-1", &done, Some(hang)).await;
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
            let b = instance(&url, &ns, "node-1", &done, None).await;
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

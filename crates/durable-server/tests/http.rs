//! The native routes over real HTTP (reqwest against a server on 127.0.0.1:0).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durable_core::agent::{Agent, DurableAgent, ScriptedModel, Turn};
use durable_core::{
    Epoch, Lease, NewRun, RunId, RunRecord, RunSnapshot, RunStatus, StoreCapabilities,
    WorkflowStore,
};
use durable_server::{DurableServer, RUN_ID_HEADER};
use serde_json::{json, Value};
use support::*;

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn server_with(agent: DurableAgent) -> (DurableServer, String) {
    let server = DurableServer::builder().agent(agent).build().unwrap();
    let url = start(&server).await;
    (server, url)
}

async fn post_stream(url: &str, agent: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/api/agents/{agent}/stream"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status, "{}", res.url());
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], status);
    assert!(v["detail"].is_string() && v["kind"].is_string(), "{v}");
    v
}

#[tokio::test]
async fn stream_answers_201_with_location_and_cursor_frames() {
    let (_s, url) = server_with(agent(
        "a",
        ScriptedModel::new([Turn::text("one two three")]),
    ))
    .await;
    let res = post_stream(&url, "a", json!({"prompt": "hi"})).await;
    assert_eq!(res.status().as_u16(), 201);
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    assert_eq!(
        res.headers()["location"].to_str().unwrap(),
        format!("/api/agents/a/runs/{run_id}")
    );
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let frames = frames(res).await;
    for (i, f) in frames.iter().enumerate() {
        let ev: Value = serde_json::from_str(&f.data).unwrap();
        assert_eq!(f.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(f.event.as_deref(), ev["kind"].as_str());
        assert_eq!(ev["cursor"], i);
        assert_eq!(ev["run_id"], run_id.as_str());
    }
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("finish"));
    // The same frames from the events route.
    let again = reqwest::get(format!("{url}/api/agents/a/runs/{run_id}/events"))
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    assert_eq!(support::frames(again).await, frames);
    // And from Mastra's observe route.
    let observed = reqwest::Client::new()
        .post(format!("{url}/api/agents/a/observe"))
        .json(&json!({"runId": run_id, "offset": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(support::frames(observed).await, frames[2..]);
    // Prometheus metrics: what this test did, and no observer left connected.
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    for line in [
        "durable_runs_started_total 1",
        "durable_runs_active 0",
        "durable_observers_connected 0",
        &format!(
            "durable_events_delivered_total {}",
            frames.len() * 2 + frames.len() - 2
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // One lag sample per write (a write carries every frame ready at once).
    let lag_samples: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("durable_delivery_lag_seconds_count "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        (3..=frames.len() * 3 - 2).contains(&lag_samples),
        "{lag_samples} lag samples"
    );
}

#[tokio::test]
async fn router_nests_under_a_prefix() {
    let server = DurableServer::builder()
        .agent(agent("a", ScriptedModel::new([Turn::text("x")])))
        .build()
        .unwrap();
    let url = serve(axum::Router::new().nest("/durable", server.router())).await;
    let res = post_stream(&format!("{url}/durable"), "a", json!({"prompt": "hi"})).await;
    assert_eq!(res.status().as_u16(), 201);
    let loc = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("/durable/api/agents/a/runs/"), "{loc}");
    frames(res).await;
    let status: Value = reqwest::get(format!("{url}{loc}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    let health = reqwest::get(format!("{url}/durable/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Resume with `Last-Event-ID: k` while the run is live, for every `k`: the first connection's
/// frames up to `k` plus the resumed frames equal the uninterrupted stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resume_at_every_offset_of_a_live_run_is_exact() {
    let model = ScriptedModel::new([Turn::text(&words(40))]).with_delay(Duration::from_millis(2));
    let (_s, url) = server_with(agent("a", model)).await;
    let res = post_stream(&url, "a", json!({"prompt": "hi"})).await;
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    let mut reader = FrameReader::new(res);
    let mut full = Vec::new();
    let mut resumed = Vec::new();
    while let Some(f) = reader.next().await {
        let k = f.id.clone().unwrap();
        full.push(f);
        let url = format!("{url}/api/agents/a/runs/{run_id}/events");
        resumed.push(tokio::spawn(async move {
            let res = reqwest::Client::new()
                .get(url)
                .header("last-event-id", k)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), frames(res).await)
        }));
    }
    assert!(full.len() > 40);
    for (k, task) in resumed.into_iter().enumerate() {
        let (status, rest) = task.await.unwrap();
        if k + 1 == full.len() {
            assert_eq!(status, 204, "nothing after the terminal frame");
            continue;
        }
        assert_eq!(status, 200);
        let mut stitched = full[..=k].to_vec();
        stitched.extend(rest);
        assert_eq!(stitched, full, "resume after {k}");
    }
    // `?offset=` resumes the same way (Last-Event-ID wins when both are given).
    let res = reqwest::Client::new()
        .get(format!("{url}/api/agents/a/runs/{run_id}/events?offset=1"))
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(frames(res).await, full[5..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_by_another_client_ends_every_stream_with_a_terminal_frame() {
    let (_s, url) = server_with(agent(
        "a",
        ScriptedModel::new([Turn::text("first ").hang()]),
    ))
    .await;
    let res = post_stream(&url, "a", json!({"prompt": "hi"})).await;
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    let mut starter = FrameReader::new(res);
    let watcher = reqwest::get(format!("{url}/api/agents/a/runs/{run_id}/events"))
        .await
        .unwrap();
    let mut watcher = FrameReader::new(watcher);
    // Both see the run live before the abort.
    for r in [&mut starter, &mut watcher] {
        while r.next().await.unwrap().event.as_deref() != Some("text-delta") {}
    }
    let res = reqwest::Client::new()
        .post(format!("{url}/api/agents/a/runs/{run_id}/abort"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "aborted");
    for r in [&mut starter, &mut watcher] {
        let mut last = None;
        while let Some(f) = r.next().await {
            last = Some(f);
        }
        assert_eq!(last.unwrap().event.as_deref(), Some("abort"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_suspended_run_gets_heartbeats() {
    let a = DurableAgent::new(
        Agent::builder()
            .id("a")
            .model(ScriptedModel::new([
                Turn::new().tool_call("c1", "weather", json!({"city": "Oslo"})),
                Turn::text("done"),
            ]))
            .tool_arc(
                durable_server::demo::agent(Duration::ZERO)
                    .unwrap()
                    .tool("weather")
                    .unwrap()
                    .clone(),
            )
            .build()
            .unwrap(),
    );
    let server = DurableServer::builder()
        .agent(a)
        .heartbeat(Duration::from_millis(50))
        .build()
        .unwrap();
    let url = start(&server).await;
    let res = post_stream(
        &url,
        "a",
        json!({"prompt": "hi", "requireToolApproval": true}),
    )
    .await;
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    let frames = frames(res).await;
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("suspended"));
    let res = reqwest::get(format!(
        "{url}/api/agents/a/runs/{run_id}/events?on_suspend=wait"
    ))
    .await
    .unwrap();
    let mut r = FrameReader::new(res);
    r.until_raw(b": ping\n\n").await;
    let status: Value = reqwest::get(format!("{url}/api/agents/a/runs/{run_id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "suspended");
    assert_eq!(status["nextCursor"], frames.len());
    // Approving continues the run; the waiting observer sees it to the end.
    let res = reqwest::Client::new()
        .post(format!(
            "{url}/api/agents/a/runs/{run_id}/approve-tool-call"
        ))
        .json(&json!({"toolCallId": "c1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut last = None;
    while let Some(f) = r.next().await {
        last = Some(f);
    }
    assert_eq!(last.unwrap().event.as_deref(), Some("finish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_never_stops_the_run() {
    let model = ScriptedModel::new([Turn::text(&words(30))]).with_delay(Duration::from_millis(1));
    let (_s, url) = server_with(agent("a", model)).await;
    let res = post_stream(&url, "a", json!({"prompt": "hi"})).await;
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    let mut r = FrameReader::new(res);
    r.next().await.unwrap();
    drop(r);
    let status_url = format!("{url}/api/agents/a/runs/{run_id}");
    eventually("the run completes", || async {
        let v: Value = reqwest::get(&status_url)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["status"] == "completed"
    })
    .await;
}

/// A store that counts every call: a bad run id must never reach it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn WorkflowStore>,
    calls: Arc<AtomicU64>,
}

#[async_trait]
impl WorkflowStore for Counting {
    fn backend(&self) -> &'static str {
        "counting"
    }
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
    async fn create_run(&self, run: NewRun) -> durable_core::Result<RunRecord> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.create_run(run).await
    }
    async fn get_run(&self, run_id: &RunId) -> durable_core::Result<Option<RunRecord>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.get_run(run_id).await
    }
    async fn load(&self, run_id: &RunId) -> durable_core::Result<Option<RunSnapshot>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.load(run_id).await
    }
    async fn claim(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> durable_core::Result<Lease> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(run_id, owner, ttl).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> durable_core::Result<Lease> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> durable_core::Result<()> {
        self.inner.release(lease).await
    }
    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> durable_core::Result<Value> {
        self.inner.checkpoint(run_id, epoch, key, output).await
    }
    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> durable_core::Result<RunRecord> {
        self.inner.set_status(run_id, epoch, status, data).await
    }
    async fn list_runs(&self, status: Option<RunStatus>) -> durable_core::Result<Vec<RunRecord>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list_runs(status).await
    }
    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> durable_core::Result<bool> {
        self.inner.expire_run(run_id, ttl).await
    }
    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> durable_core::Result<RunRecord> {
        self.inner.finish_run(run_id, epoch, status, ttl).await
    }
    async fn delete_run(&self, run_id: &RunId) -> durable_core::Result<bool> {
        self.inner.delete_run(run_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_has_a_problem_body() {
    let calls = Arc::new(AtomicU64::new(0));
    let store = Counting {
        inner: Arc::new(durable_core::memory::InMemoryWorkflowStore::new()),
        calls: calls.clone(),
    };
    let a = DurableAgent::builder(
        Agent::builder()
            .id("a")
            .model(ScriptedModel::new([Turn::text("one two")]))
            .build()
            .unwrap(),
    )
    .store(store)
    .retention(Duration::from_millis(200))
    .build()
    .unwrap();
    let server = DurableServer::builder()
        .agent(a)
        .body_limit(4096)
        .build()
        .unwrap();
    let url = start(&server).await;
    let http = reqwest::Client::new();
    let runs = format!("{url}/api/agents/a/runs");

    // 200 /health; 404 for an unknown agent and an unknown route.
    assert_eq!(
        reqwest::get(format!("{url}/health"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    problem(
        post_stream(&url, "nobody", json!({"prompt": "x"})).await,
        404,
    )
    .await;
    problem(reqwest::get(format!("{url}/nowhere")).await.unwrap(), 404).await;
    problem(
        reqwest::get(format!("{url}/api/agents/a/stream"))
            .await
            .unwrap(),
        405,
    )
    .await;

    // 400: bad bodies. 413: oversized body.
    for body in [
        json!({}),
        json!({"prompt": ""}),
        json!({"prompt": "x", "messages": []}),
        json!({"prompt": 5}),
        json!({"prompt": "x", "runId": "a.b"}),
        json!({"prompt": "x", "threadId": "a b"}),
    ] {
        problem(post_stream(&url, "a", body).await, 400).await;
    }
    let res = http
        .post(format!("{url}/api/agents/a/stream"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;
    let big = json!({"prompt": "x".repeat(8192)});
    let v = problem(post_stream(&url, "a", big).await, 413).await;
    assert_eq!(v["kind"], "payload_too_large");

    // A bad run id never reaches the store, on every route.
    let before = calls.load(Ordering::SeqCst);
    for bad in ["a.b", "a%20b", "x%2Ay", "a%2Fb", "%3E", &"r".repeat(129)] {
        problem(
            reqwest::get(format!("{runs}/{bad}/events")).await.unwrap(),
            400,
        )
        .await;
        problem(reqwest::get(format!("{runs}/{bad}")).await.unwrap(), 400).await;
        problem(
            http.post(format!("{runs}/{bad}/abort"))
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        let res = http
            .post(format!("{runs}/{bad}/approve-tool-call"))
            .json(&json!({"toolCallId": "c"}))
            .send()
            .await
            .unwrap();
        problem(res, 400).await;
        let res = http
            .post(format!("{url}/api/agents/a/observe"))
            .json(&json!({"runId": bad}))
            .send()
            .await
            .unwrap();
        problem(res, 400).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "a bad run id reached the store"
    );

    // 404 for an unknown run, on every route.
    problem(
        reqwest::get(format!("{runs}/missing/events"))
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(reqwest::get(format!("{runs}/missing")).await.unwrap(), 404).await;
    problem(
        http.post(format!("{runs}/missing/abort"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // A finished run: 400 for a bad or too large offset, 204 after its last event, 409 to
    // approve what does not wait; then 410 once its retention elapsed.
    let res = post_stream(&url, "a", json!({"prompt": "hi"})).await;
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    let n = frames(res).await.len();
    let events = format!("{runs}/{run_id}/events");
    problem(
        reqwest::get(format!("{events}?offset=abc")).await.unwrap(),
        400,
    )
    .await;
    problem(
        reqwest::get(format!("{events}?offset=-1")).await.unwrap(),
        400,
    )
    .await;
    problem(
        reqwest::get(format!("{events}?offset={}", n + 1))
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        reqwest::get(format!("{events}?on_suspend=maybe"))
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        http.get(&events)
            .header("last-event-id", "x")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        http.get(&events)
            .header("last-event-id", u64::MAX.to_string())
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        reqwest::get(format!("{runs}?status=sleepy")).await.unwrap(),
        400,
    )
    .await;
    let res = http
        .get(&events)
        .header("last-event-id", (n - 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let res = http
        .post(format!("{runs}/{run_id}/approve-tool-call"))
        .json(&json!({"toolCallId": "c"}))
        .send()
        .await
        .unwrap();
    problem(res, 409).await;
    let res = http
        .post(format!("{runs}/{run_id}/resume-stream"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(res, 400).await;
    let listed: Value = reqwest::get(format!("{runs}?status=completed"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["runId"] == run_id.as_str()));
    eventually("retention elapses", || async {
        reqwest::get(&events).await.unwrap().status().as_u16() == 410
    })
    .await;
    problem(reqwest::get(&events).await.unwrap(), 410).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evented_agent_is_served_the_same_way() {
    let durable = agent("ev", ScriptedModel::new([Turn::text("queued then run")]));
    let evented = durable_core::agent::EventedAgent::builder(durable)
        .workers(1)
        .start()
        .await
        .unwrap();
    let server = DurableServer::builder().agent(evented).build().unwrap();
    let url = start(&server).await;
    let res = post_stream(&url, "ev", json!({"prompt": "hi"})).await;
    assert_eq!(res.status().as_u16(), 201);
    let frames = frames(res).await;
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("finish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_request_timeout_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = DurableServer::builder()
        .agent(agent("a", ScriptedModel::new([Turn::text("x")])))
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let url = start(&server).await;
    let mut conn = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    // Headers announce 100 bytes; only 10 ever come.
    conn.write_all(
        b"POST /api/agents/a/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    within("the 408", async {
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
}

#[tokio::test]
async fn a_failing_run_ends_with_an_error_frame() {
    let model = ScriptedModel::new([Turn::new().words("half an ").fail("the provider broke")]);
    let (_s, url) = server_with(agent("a", model)).await;
    let res = post_stream(&url, "a", json!({"prompt": "hi"})).await;
    assert_eq!(res.status().as_u16(), 201);
    let frames = frames(res).await;
    let last = frames.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert!(
        last.id.is_some(),
        "the run's own error event has its cursor"
    );
    let ev: Value = serde_json::from_str(&last.data).unwrap();
    assert!(ev["data"]["message"]
        .as_str()
        .unwrap()
        .contains("the provider broke"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_call_records_the_reason_in_its_event() {
    let a = DurableAgent::new(
        Agent::builder()
            .id("a")
            .model(ScriptedModel::new([
                Turn::new().tool_call("c1", "weather", json!({"city": "Oslo"})),
                Turn::text("done"),
            ]))
            .tool_arc(
                durable_server::demo::agent(Duration::ZERO)
                    .unwrap()
                    .tool("weather")
                    .unwrap()
                    .clone(),
            )
            .build()
            .unwrap(),
    );
    let (_s, url) = server_with(a).await;
    let res = post_stream(
        &url,
        "a",
        json!({"prompt": "hi", "requireToolApproval": true}),
    )
    .await;
    let run_id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    assert_eq!(
        frames(res).await.last().unwrap().event.as_deref(),
        Some("suspended")
    );
    let res = reqwest::Client::new()
        .post(format!(
            "{url}/api/agents/a/runs/{run_id}/decline-tool-call"
        ))
        .json(&json!({"toolCallId": "c1", "reason": "too far north"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let frames = frames(res).await;
    let result = frames
        .iter()
        .find(|f| f.event.as_deref() == Some("tool-result"))
        .expect("a tool-result frame");
    let data: Value = serde_json::from_str(&result.data).unwrap();
    assert_eq!(data["data"]["declined"], true, "{data}");
    assert_eq!(data["data"]["reason"], "too far north", "{data}");
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("finish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431_and_the_server_goes_on() {
    let (_server, url) = server_with(agent("a", ScriptedModel::new([Turn::text("x")]))).await;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{url}/health"))
        .header("x-big", "y".repeat(durable_server::MAX_REQUEST_HEAD))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 431);
    // Just under the limit is served, and so is the next client.
    let res = http
        .get(format!("{url}/health"))
        .header("x-big", "y".repeat(durable_server::MAX_REQUEST_HEAD - 512))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = reqwest::get(format!("{url}/health")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

//! `durable serve` as a real process, configured by a TOML file: every backend URL kind
//! (memory; SQLite always; Redis and Postgres when `DURABLE_TEST_REDIS_URL` /
//! `DURABLE_TEST_POSTGRES_URL` are set), a SIGKILL mid-run recovered by the restarted process,
//! and bad configurations refused with a clear message.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use durable_core::{Event, EventKind, RunId};
use durable_server::client::{Client, Reconnect};
use futures::StreamExt;
use serde_json::json;
use support::process::{namespace, serve_fails, server_url, Serve, TempDir};
use support::{eventually, within};

fn client(url: &str) -> Client {
    Client::new(url).reconnect(Reconnect::new(
        Duration::from_millis(10),
        Duration::from_millis(200),
        1000,
    ))
}

/// Follow `run_id` from 0 to its end through `url`.
async fn all_events(url: &str, run_id: &RunId) -> Vec<Event> {
    within("the whole run", async {
        let mut s = client(url).observe("demo", run_id, 0).into_stream();
        let mut out = Vec::new();
        while let Some(ev) = s.next().await {
            out.push(ev.unwrap());
        }
        out
    })
    .await
}

fn assert_exact(events: &[Event]) {
    let cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
    let expected: Vec<u64> = (0..events.len() as u64).collect();
    assert_eq!(cursors, expected, "one contiguous sequence from cursor 0");
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::Finish)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_serves_its_agents_on_memory() {
    let dir = TempDir::new("memory");
    let config = dir.file(
        "durable.toml",
        r#"
        listen = "127.0.0.1:0"
        backend = "memory"
        [[agents]]
        id = "demo"
        model = "demo"
        delay_ms = 1
        [[agents]]
        id = "other"
        model = "demo"
        delay_ms = 1
        "#,
    );
    let serve = Serve::start(&config, &[]);
    let health = client(&serve.url).health().await.unwrap();
    assert_eq!(health["agents"], json!(["demo", "other"]));
    let (run_id, run) = client(&serve.url)
        .stream("other", &json!({"prompt": "weather?"}))
        .await
        .unwrap();
    let events: Vec<Event> = within("run", run.into_stream().map(|e| e.unwrap()).collect()).await;
    assert_exact(&events);
    assert!(events.iter().all(|e| e.run_id == run_id));
}

/// Start a long run, SIGKILL the server mid-answer, start it again with the same file: the
/// restarted process recovers the run and `observe` from 0 shows one exact sequence that
/// extends what was delivered before the kill.
async fn killed_mid_run_and_recovered(backend: &str) {
    let dir = TempDir::new("recover");
    let ns = namespace("recover");
    let config = dir.file(
        "durable.toml",
        &format!(
            r#"
            listen = "127.0.0.1:0"
            backend = "{backend}"
            namespace = "{ns}"
            lease_ms = 1500
            workers = 2
            [[agents]]
            id = "demo"
            model = "demo"
            delay_ms = 5
            repeat = 3
            "#
        ),
    );
    let first = Serve::start(&config, &[]);
    let (run_id, run) = client(&first.url)
        .stream("demo", &json!({"prompt": "weather?"}))
        .await
        .unwrap();
    let mut run = run.into_stream();
    let mut before = Vec::new();
    within("a few deltas before the kill", async {
        while before.len() < 10 {
            before.push(run.next().await.unwrap().unwrap());
        }
    })
    .await;
    drop(run);
    first.kill();
    let second = Serve::start(&config, &[]);
    // Recovery waits for the dead executor's lease (1.5 s: long enough that a worker starved
    // of CPU on a loaded machine keeps its lease).
    let events = all_events(&second.url, &run_id).await;
    assert_exact(&events);
    assert_eq!(
        &events[..before.len()],
        &before[..],
        "the log kept what was delivered"
    );
    // The executor records the terminal status just after the terminal event.
    let c = client(&second.url);
    eventually("the run is completed", || async {
        c.status("demo", &run_id).await.unwrap()["status"] == "completed"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bare_path_is_an_sqlite_store_that_survives_a_kill() {
    let dir = TempDir::new("sqlite");
    let db = dir.0.join("runs.db");
    killed_mid_run_and_recovered(db.to_str().unwrap()).await;
    assert!(db.exists(), "the bare path is the SQLite file");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sqlite_url_survives_a_kill() {
    let dir = TempDir::new("sqlite-url");
    let db = dir.0.join("runs.db");
    killed_mid_run_and_recovered(&format!("sqlite:{}", db.display())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_url_survives_a_kill() {
    if let Some(url) = server_url("DURABLE_TEST_REDIS_URL") {
        killed_mid_run_and_recovered(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_url_survives_a_kill() {
    if let Some(url) = server_url("DURABLE_TEST_POSTGRES_URL") {
        killed_mid_run_and_recovered(&url).await;
    }
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let dir = TempDir::new("bad");
    for (text, needle) in [
        (
            "backend = \"mysql://u:hunter2@h/db\"",
            "\"mysql\" is not supported",
        ),
        ("lisen = \"127.0.0.1:0\"", "unknown field"),
        (
            "listen = \"127.0.0.1:0\"\nbackend = \"redis://127.0.0.1:1\"",
            "redis://127.0.0.1:1",
        ),
        ("[[agents]]\nid = \"a\"\nmodel = \"openai\"", "needs `url`"),
        (
            "listen = \"not an address\"",
            "cannot listen on not an address",
        ),
        ("listen = [", "invalid config"),
    ] {
        let config = dir.file("bad.toml", text);
        let stderr = serve_fails(&config);
        assert!(stderr.contains(needle), "{text:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "a password leaked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = dir.0.join("missing.toml");
    let stderr = serve_fails(&missing);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_override_the_file() {
    let dir = TempDir::new("flags");
    let config = dir.file(
        "durable.toml",
        "listen = \"127.0.0.1:1\"\nbackend = \"memory\"\n",
    );
    let serve = Serve::start(&config, &["--listen", "127.0.0.1:0", "--delay-ms", "1"]);
    assert_ne!(serve.port(), 1);
    let c = client(&serve.url);
    eventually("health", || async { c.health().await.is_ok() }).await;
}

//! Server restarts on a shared Redis backend: a Rust client follows a run through instance B
//! while B is SIGKILLed and restarted (a real OS process) over 20 times, and the executing
//! instance A is killed once and recovers the run after a restart. The client must see one
//! exact sequence: every cursor once, in order, equal to the stored log.
//!
//! Needs `DURABLE_TEST_REDIS_URL` (skipped without it unless `DURABLE_TEST_REQUIRE=1`).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_core::{Event, EventKind, RunId};
use durable_server::client::{Client, Reconnect};
use futures::StreamExt;
use serde_json::json;
use support::eventually;
use support::process::{namespace, server_url, Serve, TempDir};

const B_RESTARTS: usize = 21;

fn client(url: &str) -> Client {
    Client::new(url).reconnect(Reconnect::new(
        Duration::from_millis(10),
        Duration::from_millis(100),
        10_000,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sees_one_exact_sequence_across_server_restarts_on_redis() {
    let Some(url) = server_url("DURABLE_TEST_REDIS_URL") else {
        return;
    };
    let dir = TempDir::new("restart");
    let ns = namespace("restart");
    let common = format!(
        r#"
        backend = "{url}"
        namespace = "{ns}"
        lease_ms = 1500
        [[agents]]
        id = "demo"
        model = "demo"
        delay_ms = 5
        repeat = 80
        "#
    );
    // A executes runs; B only serves observers (no workers): killing B never touches the run.
    let a_config = dir.file(
        "a.toml",
        &format!("listen = \"127.0.0.1:0\"\nworkers = 1\n{common}"),
    );
    let b_config = dir.file(
        "b.toml",
        &format!("listen = \"127.0.0.1:0\"\nworkers = 0\n{common}"),
    );
    let mut a = Serve::start(&a_config, &[]);
    let mut b = Serve::start(&b_config, &[]);
    let b_listen = format!("127.0.0.1:{}", b.port());

    // Start the run on A, then follow it through B only.
    let res = reqwest::Client::new()
        .post(format!("{}/api/agents/demo/stream", a.url))
        .json(&json!({"prompt": "weather?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let run_id = RunId::new(res.headers()["x-run-id"].to_str().unwrap()).unwrap();
    drop(res);

    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let follower = {
        let seen = seen.clone();
        let mut stream = client(&b.url).observe("demo", &run_id, 0).into_stream();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                seen.lock().unwrap().push(ev.unwrap());
            }
        })
    };
    let count = || seen.lock().unwrap().len();
    let finished = || {
        seen.lock()
            .unwrap()
            .last()
            .is_some_and(|e| e.kind.is_terminal())
    };

    for i in 0..B_RESTARTS {
        let before = count();
        eventually("new events through B", || async {
            count() >= before + 3 || finished()
        })
        .await;
        assert!(!finished(), "the run ended after only {i} restarts of B");
        b.kill();
        if i == B_RESTARTS / 2 {
            // Kill the executor too: the restarted A recovers the run once its lease expires.
            a.kill();
            a = Serve::start(&a_config, &[]);
        }
        b = Serve::start(&b_config, &["--listen", &b_listen]);
    }
    tokio::time::timeout(Duration::from_secs(120), follower)
        .await
        .expect("the follower reaches the end of the run")
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let cursors: Vec<u64> = seen.iter().map(|e| e.cursor).collect();
    assert_eq!(
        cursors,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "every cursor exactly once, in order"
    );
    assert_eq!(seen.last().map(|e| e.kind.clone()), Some(EventKind::Finish));
    assert!(
        seen.iter().any(|e| e.kind == EventKind::StepRestart),
        "the killed executor's step was restarted by the recovering instance"
    );
    // What the client saw is exactly the stored log.
    let mut stored = Vec::new();
    let mut all = client(&a.url).observe("demo", &run_id, 0).into_stream();
    while let Some(ev) = all.next().await {
        stored.push(ev.unwrap());
    }
    assert_eq!(seen, stored);
    drop((a, b));
}

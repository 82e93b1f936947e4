//! The reconnecting Rust client through a loopback proxy that cuts every connection after a
//! few hundred bytes, and the `durable` binary as a real process.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durable_core::agent::{ScriptedModel, Turn};
use durable_core::EventKind;
use durable_server::client::{Client, Reconnect};
use durable_server::DurableServer;
use futures::StreamExt;
use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A proxy to `upstream` that forwards each response's first `budget(n)` bytes on its `n`-th
/// connection, then cuts it. Returns its address and the number of connections cut.
async fn cutting_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = Arc::new(AtomicU64::new(0));
    let counter = cuts.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((client, _)) = listener.accept().await {
            n += 1;
            // 300..2300 bytes: cuts land in headers, between frames and inside frames; the
            // largest budgets fit the final frame (it carries the whole answer).
            let budget = 300 + (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 2000;
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut sent = 0u64;
                let mut buf = [0u8; 512];
                while let Ok(k @ 1..) = sr.read(&mut buf).await {
                    let take = (k as u64).min(budget - sent) as usize;
                    if cw.write_all(&buf[..take]).await.is_err() {
                        break;
                    }
                    sent += take as u64;
                    if sent >= budget {
                        counter.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (addr, cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sees_one_exact_sequence_across_many_cut_connections() {
    let words = (0..250)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let model = ScriptedModel::new([Turn::text(&words)]).with_delay(Duration::from_micros(500));
    let server = DurableServer::builder()
        .agent(agent("a", model))
        .build()
        .unwrap();
    let url = start(&server).await;
    let upstream: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let (proxy, cuts) = cutting_proxy(upstream).await;
    let direct = Client::new(&url);
    let (run_id, first) = direct.stream("a", &json!({"prompt": "hi"})).await.unwrap();
    drop(first);
    let through = Client::new(format!("http://{proxy}")).reconnect(Reconnect::new(
        Duration::from_millis(1),
        Duration::from_millis(50),
        1000,
    ));
    let mut s = through.observe("a", &run_id, 0).into_stream();
    let mut seen = Vec::new();
    while let Some(ev) = within("event through the proxy", s.next()).await {
        seen.push(ev.unwrap());
    }
    let mut reference = Vec::new();
    let mut all = direct.observe("a", &run_id, 0).into_stream();
    while let Some(ev) = within("direct event", all.next()).await {
        reference.push(ev.unwrap());
    }
    assert!(
        cuts.load(Ordering::SeqCst) >= 20,
        "only {} cuts",
        cuts.load(Ordering::SeqCst)
    );
    assert_eq!(seen, reference);
    assert_eq!(seen.last().unwrap().kind, EventKind::Finish);
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(e.cursor, i as u64);
    }
    let text: String = seen
        .iter()
        .filter(|e| e.kind == EventKind::TextDelta)
        .map(|e| e.data.to_value()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, words);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_binary_serves_observes_and_lists() {
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_durable"))
        .args(["serve", "--listen", "127.0.0.1:0", "--delay-ms", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let line = within("the listening line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let url = line.strip_prefix("listening on ").unwrap().to_owned();
    let page = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("EventSource"));
    let client = Client::new(&url);
    let (run_id, run) = client
        .stream("demo", &json!({"prompt": "Weather?"}))
        .await
        .unwrap();
    let streamed: Vec<_> = within("demo run", run.into_stream().collect::<Vec<_>>()).await;
    let observe = within(
        "durable observe",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_durable"))
            .args(["observe", &url, run_id.as_str(), "--offset", "2"])
            .output(),
    )
    .await
    .unwrap();
    assert!(observe.status.success());
    let printed: Vec<durable_core::Event> = String::from_utf8_lossy(&observe.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let streamed: Vec<_> = streamed.into_iter().map(Result::unwrap).collect();
    assert_eq!(printed, streamed[2..]);
    let runs = within(
        "durable runs",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_durable"))
            .args(["runs", &url, "--status", "completed"])
            .output(),
    )
    .await
    .unwrap();
    assert!(runs.status.success());
    assert!(String::from_utf8_lossy(&runs.stdout).contains(run_id.as_str()));
}

/// A proxy that sends each new connection to the next upstream in turn and cuts it after
/// `budget` response bytes: every reconnect lands on another server instance.
async fn rotating_proxy(upstreams: Vec<SocketAddr>, budget: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstreams[n % upstreams.len()];
            n += 1;
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut sent = 0u64;
                let mut buf = [0u8; 512];
                while let Ok(k @ 1..) = sr.read(&mut buf).await {
                    let take = (k as u64).min(budget - sent) as usize;
                    if cw.write_all(&buf[..take]).await.is_err() {
                        break;
                    }
                    sent += take as u64;
                    if sent >= budget {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_across_server_instances_on_shared_backends_are_exact() {
    use durable_core::agent::{Agent, DurableAgent};
    use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
    use durable_core::{PubSub, ServerCache, WorkflowStore};

    let words = (0..120)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let model = ScriptedModel::new([Turn::text(&words)]).with_delay(Duration::from_micros(300));
    let cache: Arc<dyn ServerCache> = Arc::new(InMemoryCache::new());
    let pubsub: Arc<dyn PubSub> = Arc::new(InMemoryPubSub::new());
    let store: Arc<dyn WorkflowStore> = Arc::new(InMemoryWorkflowStore::new());
    let mut urls = Vec::new();
    for worker in ["instance-a", "instance-b", "instance-c"] {
        let agent = DurableAgent::builder(
            Agent::builder()
                .id("a")
                .model(model.clone())
                .build()
                .unwrap(),
        )
        .cache_arc(cache.clone())
        .pubsub_arc(pubsub.clone())
        .store_arc(store.clone())
        .worker_id(worker)
        .build()
        .unwrap();
        let server = DurableServer::builder().agent(agent).build().unwrap();
        urls.push(start(&server).await);
    }
    let addrs: Vec<SocketAddr> = urls
        .iter()
        .map(|u| u.trim_start_matches("http://").parse().unwrap())
        .collect();
    let proxy = rotating_proxy(addrs, 1500).await;
    let (run_id, first) = Client::new(&urls[0])
        .stream("a", &json!({"prompt": "hi"}))
        .await
        .unwrap();
    drop(first);
    let client = Client::new(format!("http://{proxy}")).reconnect(Reconnect::new(
        Duration::from_millis(1),
        Duration::from_millis(50),
        1000,
    ));
    let mut s = client.observe("a", &run_id, 0).into_stream();
    let mut seen = Vec::new();
    while let Some(ev) = within("event through the rotating proxy", s.next()).await {
        seen.push(ev.unwrap());
    }
    let mut reference = Vec::new();
    let mut all = Client::new(&urls[2]).observe("a", &run_id, 0).into_stream();
    while let Some(ev) = within("direct event", all.next()).await {
        reference.push(ev.unwrap());
    }
    assert_eq!(seen, reference);
    assert_eq!(seen.last().unwrap().kind, EventKind::Finish);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_serve_mounts_an_openai_compatible_assistant() {
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_durable"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--openai-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
        ])
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let line = within("the listening line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let url = line.strip_prefix("listening on ").unwrap().to_owned();
    let health = Client::new(&url).health().await.unwrap();
    assert_eq!(health["agents"], json!(["demo", "assistant"]));
    let missing_model = tokio::process::Command::new(env!("CARGO_BIN_EXE_durable"))
        .args(["serve", "--openai-url", "http://127.0.0.1:9/v1"])
        .output()
        .await
        .unwrap();
    assert!(
        !missing_model.status.success(),
        "--openai-url needs --model"
    );
}

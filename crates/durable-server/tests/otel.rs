//! `durable serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` set exports its runs' spans over
//! OTLP/HTTP: a receiver in this test (a plain HTTP/1.1 server on a loopback port, JSON
//! bodies) gets the `invoke_agent`, `chat` and `execute_tool` spans of a run streamed over HTTP.

#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use durable_server::client::Client;
use futures::StreamExt;
use serde_json::json;
use support::process::{Serve, TempDir};
use support::within;

type Bodies = Arc<Mutex<Vec<String>>>;

/// Bodies received on `/v1/traces`; the watch counts them.
fn receiver() -> (u16, Bodies, tokio::sync::watch::Receiver<usize>) {
    let (count, counted) = tokio::sync::watch::channel(0usize);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Bodies = Arc::default();
    let store = got.clone();
    let count = Arc::new(count);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let store = store.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if request.contains("/v1/traces") {
                        store
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                        count.send_modify(|n| *n += 1);
                    }
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    );
                }
            });
        }
    });
    (port, got, counted)
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_serve_exports_run_spans_over_otlp() {
    let (port, got, mut bodies) = receiver();
    let dir = TempDir::new("otel");
    let config = dir.file(
        "durable.toml",
        r#"
        listen = "127.0.0.1:0"
        backend = "memory"
        [[agents]]
        id = "demo"
        model = "demo"
        delay_ms = 1
        "#,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let serve = Serve::try_start_with_env(
        &config,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "durable-serve-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .unwrap();
    let (run_id, run) = Client::new(&serve.url)
        .stream("demo", &json!({"prompt": "weather?"}))
        .await
        .unwrap();
    within("run", run.into_stream().for_each(|_| async {})).await;
    within("the run's spans", async {
        loop {
            let all = got.lock().unwrap().join("\n");
            if all.contains("invoke_agent demo") && all.contains(run_id.as_str()) {
                assert!(all.contains("chat "), "{all}");
                assert!(all.contains("durable-serve-test"), "{all}");
                return;
            }
            bodies.changed().await.unwrap();
        }
    })
    .await;
}

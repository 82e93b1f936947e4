//! `durable serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` set exports its runs' spans and metrics
//! over OTLP/HTTP: a receiver in this test (`durable_services::OtlpReceiver`, JSON bodies)
//! gets the `invoke_agent` and `chat` spans of a run streamed over HTTP, and the run and
//! delivery metrics (events appended and delivered, observers connected, delivery lag).

#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use durable_server::client::Client;
use durable_services::{otlp_bodies, OtlpReceiver};
use futures::StreamExt;
use serde_json::json;
use support::process::{Serve, TempDir};
use support::within;

#[tokio::test(flavor = "multi_thread")]
async fn durable_serve_exports_run_spans_over_otlp() {
    let got = OtlpReceiver::start().unwrap();
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
    let endpoint = got.endpoint();
    let serve = Serve::try_start_with_env(
        &config,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "durable-serve-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    )
    .unwrap();
    let (run_id, run) = Client::new(&serve.url)
        .stream("demo", &json!({"prompt": "weather?"}))
        .await
        .unwrap();
    within("run", run.into_stream().for_each(|_| async {})).await;
    let run_id = run_id.to_string();
    let (spans, metrics) = tokio::task::spawn_blocking(move || {
        let spans = got.wait_until(Duration::from_secs(30), |r| {
            let all = otlp_bodies(r, "/v1/traces").join("\n");
            all.contains("invoke_agent demo") && all.contains(&run_id)
        });
        let names = [
            "durable.runs.started",
            "durable.events.appended",
            "durable.events.delivered",
            "durable.observers.connected",
            "durable.delivery.lag",
        ];
        let metrics = got.wait_until(Duration::from_secs(30), |r| {
            let all = otlp_bodies(r, "/v1/metrics").join("\n");
            names.iter().all(|n| all.contains(n))
        });
        (
            (spans, got.bodies("/v1/traces").join("\n")),
            (metrics, got.bodies("/v1/metrics").join("\n")),
        )
    })
    .await
    .unwrap();
    assert!(spans.0, "no run span exported: {}", spans.1);
    assert!(spans.1.contains("chat "), "{}", spans.1);
    assert!(spans.1.contains("durable-serve-test"), "{}", spans.1);
    assert!(metrics.0, "delivery metrics not exported: {}", metrics.1);
}

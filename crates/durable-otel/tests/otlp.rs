//! A durable agent with a tool runs under the OTLP layer; an OTLP/HTTP endpoint in this test
//! (JSON bodies, a plain HTTP/1.1 server on a loopback port) receives what the exporters send:
//! the GenAI spans with the run id, one trace from the request that created the run through
//! every execution, and the metrics derived from the spans.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code panics on purpose

use durable_core::agent::{Agent, DurableAgent, FnTool, ScriptedModel, StreamOptions, ToolContext};
use durable_core::agent::{ToolError, Turn};
use durable_otel::{Otel, OtelConfig};
use durable_services::OtlpReceiver;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Deserialize, schemars::JsonSchema)]
struct Lookup {
    city: String,
}

fn agent() -> Agent {
    let tool = FnTool::new(
        "weather",
        "Weather",
        |a: Lookup, _ctx: ToolContext| async move {
            Ok::<_, ToolError>(json!({ "city": a.city, "sky": "sunny" }))
        },
    );
    Agent::builder()
        .id("weather-agent")
        .model(ScriptedModel::new([
            Turn::new().words("Let me look.").tool_call(
                "call-0",
                "weather",
                json!({ "city": "Paris" }),
            ),
            Turn::text("Sunny in Paris."),
        ]))
        .tool(tool)
        .build()
        .unwrap()
}

/// Every span of every `/v1/traces` body.
fn spans(got: &OtlpReceiver) -> Vec<Value> {
    got.bodies("/v1/traces")
        .iter()
        .map(|b| serde_json::from_str::<Value>(b).expect("OTLP JSON body"))
        .flat_map(|v| {
            v["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
                .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        })
        .collect()
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test(flavor = "current_thread")]
async fn spans_and_metrics_reach_an_otlp_receiver_in_one_trace() {
    let got = OtlpReceiver::start().unwrap();
    let otel = Otel::init(
        &OtelConfig::new(got.endpoint())
            .service_name("durable-otel-test")
            .json(true),
    )
    .unwrap();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(otel.layer()));

    let durable = DurableAgent::new(agent());
    let request = tracing::info_span!("request");
    let (run_id, event_count) = async {
        let run = durable
            .stream("Weather in Paris?", StreamOptions::new())
            .await
            .unwrap();
        let id = run.run_id().to_string();
        let events: Vec<_> = run.collect().await;
        assert!(events.iter().all(Result::is_ok));
        (id, events.len())
    }
    .instrument(request)
    .await;
    // The run's span closes when its execution returns, right after the last event.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        otel.flush().unwrap();
        if spans(&got)
            .iter()
            .any(|s| s["name"] == "invoke_agent weather-agent")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run span exported"
        );
        tokio::task::yield_now().await;
    }
    otel.shutdown().unwrap();

    let spans = spans(&got);
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let request = named("request");
    assert_eq!(request.len(), 1, "{spans:#?}");
    let trace = &request[0]["traceId"];
    let run = named("invoke_agent weather-agent");
    assert_eq!(run.len(), 1);
    assert_eq!(
        &run[0]["traceId"], trace,
        "the run continues the request's trace"
    );
    assert_eq!(run[0]["parentSpanId"], request[0]["spanId"]);
    let chats = named("chat scripted");
    assert_eq!(chats.len(), 2);
    let tools = named("execute_tool weather");
    assert_eq!(tools.len(), 1);
    for s in chats.iter().chain(&tools).chain(&run) {
        assert_eq!(&s["traceId"], trace);
        assert_eq!(attr(s, "durable.run_id").unwrap()["stringValue"], run_id);
    }
    assert_eq!(
        attr(chats[0], "gen_ai.operation.name").unwrap()["stringValue"],
        "chat"
    );
    assert_eq!(
        attr(chats[0], "gen_ai.request.model").unwrap()["stringValue"],
        "scripted"
    );
    assert!(attr(chats[0], "gen_ai.usage.output_tokens").is_some());
    assert_eq!(
        attr(tools[0], "gen_ai.tool.call.id").unwrap()["stringValue"],
        "call-0"
    );

    let all = got.bodies("/v1/metrics").join("\n");
    for name in [
        "durable.runs.started",
        "durable.runs.finished",
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "durable.tool.duration",
        "durable.events.appended",
    ] {
        assert!(all.contains(name), "metric {name} not exported: {all}");
    }
    assert!(all.contains("durable-otel-test"), "service.name");
    // Cumulative: the last export counts every event of the run once (steps and the rest).
    let appended = last_sum(&got, "durable.events.appended").expect("an events.appended point");
    assert_eq!(appended, event_count as u64);
}

/// The value of the last data point of the sum metric `name` exported to `/v1/metrics`.
fn last_sum(got: &OtlpReceiver, name: &str) -> Option<u64> {
    got.bodies("/v1/metrics")
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .flat_map(|v| v["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|rm| rm["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == name)
        .filter_map(|m| {
            let points = m["sum"]["dataPoints"].as_array()?.clone();
            points
                .iter()
                .map(|p| {
                    p["asInt"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| p["asInt"].as_u64())
                })
                .sum::<Option<u64>>()
        })
        .next_back()
}

#[test]
fn bad_endpoints_are_rejected_and_debug_hides_credentials() {
    assert!(Otel::init(&OtelConfig::new("127.0.0.1:4318")).is_err());
    let c = OtelConfig::new("https://user:secret@collector.example:4318/base");
    let shown = format!("{c:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("collector.example:4318"), "{shown}");
}

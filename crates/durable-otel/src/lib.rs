#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use durable_core::telemetry::{set_trace_hooks, TraceHooks};
use durable_core::{Error, ErrorKind, Result};
/// The OpenTelemetry API this crate exports through, for instruments of your own (they reach
/// the same OTLP export through the global meter provider [`Otel::init`] installs).
pub use opentelemetry;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _, UpDownCounter};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Settings of the OTLP export.
#[derive(Clone)]
#[non_exhaustive]
pub struct OtelConfig {
    /// Base URL of the OTLP/HTTP receiver (a collector), e.g. `http://127.0.0.1:4318`; traces
    /// go to `/v1/traces`, metrics to `/v1/metrics`.
    pub endpoint: String,
    /// `service.name` of the exported resource (default `durable`).
    pub service_name: String,
    /// JSON instead of protobuf bodies (default false: protobuf, OTLP's default).
    pub json: bool,
    /// How often metrics are exported (default 10 s).
    pub metrics_interval: Duration,
}

impl fmt::Debug for OtelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoint may carry credentials in its userinfo: show only scheme and host.
        let shown = self
            .endpoint
            .split_once("://")
            .map(|(scheme, rest)| {
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{}", host.split('/').next().unwrap_or_default())
            })
            .unwrap_or_else(|| "<invalid>".to_owned());
        f.debug_struct("OtelConfig")
            .field("endpoint", &shown)
            .field("service_name", &self.service_name)
            .field("json", &self.json)
            .field("metrics_interval", &self.metrics_interval)
            .finish()
    }
}

impl OtelConfig {
    /// Export to the OTLP/HTTP receiver at `endpoint` (its base URL).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            service_name: "durable".to_owned(),
            json: false,
            metrics_interval: Duration::from_secs(10),
        }
    }

    /// From the standard variables `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `http/json`) and
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds).
    ///
    /// # Errors
    /// `InvalidInput` if `OTEL_EXPORTER_OTLP_ENDPOINT` is not set, the protocol is not one
    /// of those, or the interval is not a positive number of milliseconds.
    pub fn from_env() -> Result<Self> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid_input("set OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let mut c = Self::new(endpoint);
        if let Ok(name) = std::env::var("OTEL_SERVICE_NAME") {
            if !name.is_empty() {
                c.service_name = name;
            }
        }
        match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/json") => c.json = true,
            Ok("http/protobuf") | Ok("") | Err(_) => {}
            Ok(other) => {
                return Err(Error::invalid_input(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported (http/protobuf or http/json)"
                )))
            }
        }
        if let Ok(ms) = std::env::var("OTEL_METRIC_EXPORT_INTERVAL") {
            match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => c.metrics_interval = Duration::from_millis(ms),
                _ => {
                    return Err(Error::invalid_input(format!(
                    "OTEL_METRIC_EXPORT_INTERVAL {ms:?} is not a positive number of milliseconds"
                )))
                }
            }
        }
        Ok(c)
    }

    /// Set `service.name`.
    #[must_use]
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Send JSON bodies instead of protobuf.
    #[must_use]
    pub fn json(mut self, yes: bool) -> Self {
        self.json = yes;
        self
    }

    /// Set the metrics export interval.
    #[must_use]
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = every;
        self
    }
}

/// The OTLP exporters of this process: hand [`Otel::layer`] to your `tracing` subscriber, and
/// call [`Otel::shutdown`] (or drop it) before exit so the last batch is sent.
pub struct Otel {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
}

impl fmt::Debug for Otel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otel").finish_non_exhaustive()
    }
}

fn otel_error(what: &str, e: impl fmt::Display) -> Error {
    Error::invalid_input(format!("{what}: {e}"))
}

impl Otel {
    /// Build the exporters and install the trace hooks that carry a run's trace across
    /// processes ([`durable_core::telemetry`]). Nothing is sent until spans end.
    ///
    /// # Errors
    /// `InvalidInput` if an exporter cannot be built (a malformed endpoint).
    pub fn init(config: &OtelConfig) -> Result<Self> {
        if !(config.endpoint.starts_with("http://") || config.endpoint.starts_with("https://")) {
            return Err(Error::invalid_input(
                "the OTLP endpoint must be an http:// or https:// URL",
            ));
        }
        let protocol = if config.json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        };
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(format!("{}/v1/traces", config.endpoint))
            .build()
            .map_err(|e| otel_error("OTLP span exporter", e))?;
        let traces = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(format!("{}/v1/metrics", config.endpoint))
            .build()
            .map_err(|e| otel_error("OTLP metric exporter", e))?;
        let reader = PeriodicReader::builder(metric_exporter)
            .with_interval(config.metrics_interval)
            .build();
        let metrics = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        // Instruments of other crates (the server's delivery metrics) reach the same export.
        opentelemetry::global::set_meter_provider(metrics.clone());
        // Once per process; a second `Otel` keeps the first one's (identical) hooks.
        let _ = set_trace_hooks(TraceHooks {
            capture: capture_traceparent,
            attach: attach_traceparent,
        });
        Ok(Self { traces, metrics })
    }

    /// The `tracing` layer exporting durable's spans as OpenTelemetry spans (and any other
    /// span of the application), plus the metrics derived from them:
    ///
    /// | metric | kind | attributes |
    /// |---|---|---|
    /// | `durable.runs.started` | counter | `gen_ai.agent.id` |
    /// | `durable.runs.active` | up-down counter | `gen_ai.agent.id` |
    /// | `durable.runs.finished` | counter | `gen_ai.agent.id`, `durable.outcome` |
    /// | `gen_ai.client.operation.duration` (s) | histogram | `gen_ai.operation.name`, `gen_ai.request.model`, `error.type` |
    /// | `gen_ai.client.token.usage` | histogram | `gen_ai.token.type`, `gen_ai.request.model` |
    /// | `durable.tool.duration` (s) | histogram | `gen_ai.tool.name`, `error.type` |
    /// | `durable.tool.errors` | counter | `gen_ai.tool.name` |
    /// | `durable.events.appended` | counter | `gen_ai.agent.id` |
    ///
    /// A server built with `durable-server`'s `otel` feature adds its delivery metrics to the
    /// same export (`durable.observers.connected`, `durable.events.delivered`,
    /// `durable.delivery.lag`): [`Otel::init`] installs its meter provider as OpenTelemetry's
    /// global one, so call it before building the server.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.traces.tracer("durable");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .and_then(MetricsLayer::new(&self.metrics))
    }

    /// Send everything buffered now.
    ///
    /// # Errors
    /// `Unavailable` if the receiver could not be reached.
    pub fn flush(&self) -> Result<()> {
        let t = self.traces.force_flush();
        let m = self.metrics.force_flush();
        t.and(m)
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("OTLP export failed: {e}")))
    }

    /// Flush and stop the exporters.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn shutdown(self) -> Result<()> {
        let flushed = self.flush();
        let _ = self.traces.shutdown();
        let _ = self.metrics.shutdown();
        flushed
    }
}

/// The current span's context as a W3C `traceparent`.
fn capture_traceparent() -> Option<String> {
    let cx = Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Make `span` a child of the remote context `traceparent`.
fn attach_traceparent(span: &Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// Metrics from durable's spans: their duration and fields, when they close.
struct MetricsLayer {
    runs_started: Counter<u64>,
    runs_active: UpDownCounter<i64>,
    runs_finished: Counter<u64>,
    operation: Histogram<f64>,
    tokens: Histogram<u64>,
    tool_duration: Histogram<f64>,
    tool_errors: Counter<u64>,
    events_appended: Counter<u64>,
}

impl MetricsLayer {
    fn new(provider: &SdkMeterProvider) -> Self {
        let m = provider.meter("durable");
        Self {
            runs_started: m
                .u64_counter("durable.runs.started")
                .with_description("Executions of durable runs started")
                .build(),
            runs_active: m
                .i64_up_down_counter("durable.runs.active")
                .with_description("Executions of durable runs in progress")
                .build(),
            runs_finished: m
                .u64_counter("durable.runs.finished")
                .with_description("Executions of durable runs ended, by outcome")
                .build(),
            operation: m
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("GenAI operation duration")
                .build(),
            tokens: m
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Tokens used per model call")
                .build(),
            tool_duration: m
                .f64_histogram("durable.tool.duration")
                .with_unit("s")
                .with_description("Tool call duration")
                .build(),
            tool_errors: m
                .u64_counter("durable.tool.errors")
                .with_description("Tool calls that returned an error")
                .build(),
            events_appended: m
                .u64_counter("durable.events.appended")
                .with_unit("{event}")
                .with_description("Events appended to run logs")
                .build(),
        }
    }
}

/// What the metrics layer keeps per durable span.
struct Timing {
    start: Instant,
    fields: HashMap<&'static str, String>,
    /// Of a run span: the events its closed steps counted already.
    counted: u64,
}

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

fn kv(fields: &HashMap<&'static str, String>, key: &'static str) -> Option<KeyValue> {
    fields.get(key).map(|v| KeyValue::new(key, v.clone()))
}

impl<S> Layer<S> for MetricsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        if !matches!(
            name,
            "durable.run" | "durable.step" | "durable.model" | "durable.tool"
        ) {
            return;
        }
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        if name == "durable.run" {
            let agent: Vec<KeyValue> = kv(&fields, "gen_ai.agent.id").into_iter().collect();
            self.runs_started.add(1, &agent);
            self.runs_active.add(1, &agent);
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Timing {
                start: Instant::now(),
                fields,
                counted: 0,
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(t) = span.extensions_mut().get_mut::<Timing>() {
                values.record(&mut Fields(&mut t.fields));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(t) = span.extensions_mut().remove::<Timing>() else {
            return;
        };
        let secs = t.start.elapsed().as_secs_f64();
        let f = &t.fields;
        match span.name() {
            "durable.run" => {
                let agent: Vec<KeyValue> = kv(f, "gen_ai.agent.id").into_iter().collect();
                // Events appended outside any step (start, finish) or in a step that ended
                // early (suspended, failed).
                let total: u64 = f
                    .get("durable.events_appended")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let rest = total.saturating_sub(t.counted);
                if rest > 0 {
                    self.events_appended.add(rest, &agent);
                }
                self.runs_active.add(-1, &agent);
                let mut attrs = agent;
                attrs.extend(kv(f, "durable.outcome"));
                self.runs_finished.add(1, &attrs);
            }
            "durable.model" => {
                let mut attrs = vec![KeyValue::new("gen_ai.operation.name", "chat")];
                attrs.extend(kv(f, "gen_ai.request.model"));
                attrs.extend(kv(f, "error.type"));
                self.operation.record(secs, &attrs);
                for (field, kind) in [
                    ("gen_ai.usage.input_tokens", "input"),
                    ("gen_ai.usage.output_tokens", "output"),
                ] {
                    if let Some(n) = f.get(field).and_then(|v| v.parse().ok()) {
                        let mut attrs = vec![KeyValue::new("gen_ai.token.type", kind)];
                        attrs.extend(kv(f, "gen_ai.request.model"));
                        self.tokens.record(n, &attrs);
                    }
                }
            }
            "durable.step" => {
                let n: u64 = f
                    .get("durable.events_appended")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if n == 0 {
                    return;
                }
                // Counted per step, so the counter moves while a long run streams.
                let mut agent = Vec::new();
                if let Some(run) = span.parent().filter(|p| p.name() == "durable.run") {
                    if let Some(rt) = run.extensions_mut().get_mut::<Timing>() {
                        rt.counted += n;
                        agent.extend(kv(&rt.fields, "gen_ai.agent.id"));
                    }
                }
                self.events_appended.add(n, &agent);
            }
            "durable.tool" => {
                let tool: Vec<KeyValue> = kv(f, "gen_ai.tool.name").into_iter().collect();
                let mut attrs = tool.clone();
                attrs.extend(kv(f, "error.type"));
                self.tool_duration.record(secs, &attrs);
                if f.contains_key("error.type") {
                    self.tool_errors.add(1, &tool);
                }
            }
            _ => {}
        }
    }
}

//! `GET /metrics` in the Prometheus text format: runs active, runs started, events delivered,
//! observers connected, and the append→deliver lag.
//!
//! With the `otel` feature the delivery metrics are also recorded on OpenTelemetry instruments
//! of the global meter provider (installed by `durable_otel::Otel::init`, which must run before
//! the server is built): `durable.observers.connected`, `durable.events.delivered` and
//! `durable.delivery.lag` (seconds), exported over OTLP with the run metrics.

use std::fmt;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use durable_core::now_ms;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::problem::Problem;
use crate::server::DurableServer;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    runs_active: Gauge,
    pub(crate) runs_started: Counter,
    events: Counter,
    observers: Gauge,
    lag: Histogram,
    #[cfg(feature = "otel")]
    otel: otel::Instruments,
}

/// The same delivery metrics on OpenTelemetry instruments.
#[cfg(feature = "otel")]
mod otel {
    use durable_otel::opentelemetry::global;
    use durable_otel::opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

    #[derive(Clone)]
    pub(super) struct Instruments {
        pub(super) observers: UpDownCounter<i64>,
        pub(super) events: Counter<u64>,
        pub(super) lag: Histogram<f64>,
    }

    impl Instruments {
        /// From the global meter provider as it is now (a no-op one if none is installed).
        pub(super) fn new() -> Self {
            let m = global::meter("durable");
            Self {
                observers: m
                    .i64_up_down_counter("durable.observers.connected")
                    .with_description("SSE observers connected now")
                    .build(),
                events: m
                    .u64_counter("durable.events.delivered")
                    .with_unit("{event}")
                    .with_description("Events written to SSE observers")
                    .build(),
                lag: m
                    .f64_histogram("durable.delivery.lag")
                    .with_unit("s")
                    .with_description(
                        "Time from an event's append to its write to an observer (one sample per write)",
                    )
                    .with_boundaries(
                        (0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect(),
                    )
                    .build(),
            }
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("observers", &self.observers.get())
            .field("events", &self.events.get())
            .finish()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("durable");
        let runs_active = Gauge::default();
        let runs_started = Counter::default();
        let events = Counter::default();
        let observers = Gauge::default();
        // 1 ms … ~16 s.
        let lag = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "runs_active",
            "Runs of the mounted agents not in a terminal state (at the last scrape)",
            runs_active.clone(),
        );
        registry.register(
            "runs_started",
            "Runs started through this server",
            runs_started.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to SSE observers",
            events.clone(),
        );
        registry.register(
            "observers_connected",
            "SSE observers connected now",
            observers.clone(),
        );
        registry.register(
            "delivery_lag_seconds",
            "Time from an event's append to its write to an observer (one sample per write: the oldest event of the write)",
            lag.clone(),
        );
        Self {
            registry,
            runs_active,
            runs_started,
            events,
            observers,
            lag,
            #[cfg(feature = "otel")]
            otel: otel::Instruments::new(),
        }
    }

    /// Count one connected observer until the returned meter is dropped.
    pub(crate) fn observer(&self) -> Meter {
        self.observers.inc();
        #[cfg(feature = "otel")]
        self.otel.observers.add(1, &[]);
        Meter {
            events: self.events.clone(),
            observers: self.observers.clone(),
            lag: self.lag.clone(),
            #[cfg(feature = "otel")]
            otel: self.otel.clone(),
        }
    }
}

/// What one observer's stream records.
pub(crate) struct Meter {
    events: Counter,
    observers: Gauge,
    lag: Histogram,
    #[cfg(feature = "otel")]
    otel: otel::Instruments,
}

impl Meter {
    /// `events` written in one chunk, the oldest appended at `oldest_at` (Unix ms): one
    /// counter add and one lag sample per write, not per event (the histogram takes a lock).
    pub(crate) fn delivered(&self, events: u64, oldest_at: u64) {
        let lag = now_ms().saturating_sub(oldest_at) as f64 / 1000.0;
        self.events.inc_by(events);
        self.lag.observe(lag);
        #[cfg(feature = "otel")]
        {
            self.otel.events.add(events, &[]);
            self.otel.lag.record(lag, &[]);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.observers.dec();
        #[cfg(feature = "otel")]
        self.otel.observers.add(-1, &[]);
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(server): State<DurableServer>) -> Result<Response, Problem> {
    let mut active = 0i64;
    for id in &server.inner.order {
        if let Some(a) = server.agent(id) {
            let runs = server.timed(a.durable().list_active_runs()).await?;
            active += i64::try_from(runs.len()).unwrap_or(i64::MAX);
        }
    }
    let m = &server.inner.metrics;
    m.runs_active.set(active);
    let mut text = String::new();
    encode(&mut text, &m.registry).map_err(|_| {
        Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "unexpected",
            "metrics could not be encoded",
        )
    })?;
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}

//! The workloads, each run through the public `DurableAgent` API on one backend.

use std::time::{Duration, Instant};

use durable_core::agent::{
    Agent, DurableAgent, DurableRun, FnTool, StreamOptions, ToolContext, ToolError, Turn,
};
use durable_core::{EventKind, ObserveOptions, RunId};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::backends::{Kind, Setup};
use crate::model::{TimedModel, DELTA};
use crate::report::{ms, Measured, Percentiles};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// One run × 10k deltas end to end.
    E2e,
    /// Replay a finished 10k-delta run from offset 0.
    Replay,
    /// 100 runs × 1,000 deltas at once: aggregate rate and peak RSS.
    Runs,
    /// 1,000 concurrent runs × 100 deltas.
    Concurrent,
    /// One run × 1,000 observers.
    Observers,
    /// Emission → observer latency at 1 ms pacing, and time to first event.
    Latency,
    /// Backend round trips of one agent turn (3 steps, 2 tool calls, 1,000 deltas).
    RoundTrips,
}

/// Every workload, in run order.
pub(crate) const ALL: &[Workload] = &[
    Workload::E2e,
    Workload::Replay,
    Workload::Runs,
    Workload::Concurrent,
    Workload::Observers,
    Workload::Latency,
    Workload::RoundTrips,
];

/// The sizes of a workload, full or `--quick`.
struct Sizes {
    runs: u64,
    deltas: u64,
    observers: u64,
    reps: usize,
}

impl Workload {
    /// The id on the command line and in the JSON.
    pub(crate) fn id(self) -> &'static str {
        match self {
            Workload::E2e => "e2e",
            Workload::Replay => "replay",
            Workload::Runs => "runs",
            Workload::Concurrent => "concurrent",
            Workload::Observers => "observers",
            Workload::Latency => "latency",
            Workload::RoundTrips => "round_trips",
        }
    }

    /// Parse an id.
    pub(crate) fn parse(id: &str) -> Result<Workload, String> {
        ALL.iter()
            .copied()
            .find(|w| w.id() == id)
            .ok_or_else(|| format!("unknown workload {id:?}"))
    }

    fn sizes(self, quick: bool) -> Sizes {
        let s = |runs, deltas, observers, reps| Sizes {
            runs,
            deltas,
            observers,
            reps,
        };
        match (self, quick) {
            (Workload::E2e | Workload::Replay, false) => s(1, 10_000, 1, 3),
            (Workload::E2e | Workload::Replay, true) => s(1, 500, 1, 1),
            (Workload::Runs, false) => s(100, 1_000, 1, 1),
            (Workload::Runs, true) => s(10, 100, 1, 1),
            (Workload::Concurrent, false) => s(1_000, 100, 1, 1),
            (Workload::Concurrent, true) => s(50, 10, 1, 1),
            (Workload::Observers, false) => s(1, 1_000, 1_000, 1),
            (Workload::Observers, true) => s(1, 50, 20, 1),
            (Workload::Latency, false) => s(1, 2_000, 1, 1),
            (Workload::Latency, true) => s(1, 100, 1, 1),
            (Workload::RoundTrips, _) => s(1, 1_000, 1, 1),
        }
    }

    /// A short label with its sizes, for the table and the chart.
    pub(crate) fn label(self, quick: bool) -> String {
        let Sizes {
            runs,
            deltas,
            observers,
            ..
        } = self.sizes(quick);
        let k = |n: u64| {
            if n >= 1_000 && n.is_multiple_of(1_000) {
                format!("{}k", n / 1_000)
            } else {
                n.to_string()
            }
        };
        match self {
            Workload::E2e => format!("1×{} e2e", k(deltas)),
            Workload::Replay => format!("replay {}", k(deltas)),
            Workload::Runs | Workload::Concurrent => format!("{}×{} runs", runs, k(deltas)),
            Workload::Observers => format!("{observers} observers"),
            Workload::Latency => "latency".to_owned(),
            Workload::RoundTrips => "round trips / turn".to_owned(),
        }
    }

    /// What it measures, with its sizes.
    pub(crate) fn description(self, quick: bool) -> String {
        let Sizes {
            runs,
            deltas,
            observers,
            reps,
        } = self.sizes(quick);
        match self {
            Workload::E2e => format!(
                "1 run × {deltas} deltas end to end: from the stream call to the run's own \
                 observer holding `finish` (deltas/s, median of {reps})"
            ),
            Workload::Replay => format!(
                "observe(0) of a finished {deltas}-delta run to its end (events/s, median of {reps})"
            ),
            Workload::Runs => format!(
                "{runs} runs × {deltas} deltas started at once, each drained by its observer \
                 (aggregate deltas/s; peak RSS of the process)"
            ),
            Workload::Concurrent => format!(
                "{runs} concurrent runs × {deltas} deltas, each drained by its observer \
                 (aggregate deltas/s)"
            ),
            Workload::Observers => format!(
                "1 run × {deltas} deltas at 1 ms pacing watched by {observers} observers \
                 attached before the first delta (emission → each observer latency; deliveries/s)"
            ),
            Workload::Latency => format!(
                "1 run × {deltas} deltas at 1 ms pacing: model emission → observer latency \
                 (p50/p99/max) and time from the stream call to the first event"
            ),
            Workload::RoundTrips => format!(
                "one agent turn of 3 model steps, 2 tool calls, {deltas} deltas: backend round \
                 trips (or SQL statements) counted by the backend"
            ),
        }
    }
}

/// Run `workload` on `kind` in this process, under a deadline.
pub(crate) fn run_one(kind: Kind, workload: Workload, quick: bool) -> Measured {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Measured::failed(kind, workload, format!("runtime: {e}")),
    };
    let deadline = if quick {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(600)
    };
    let result = rt.block_on(async {
        let setup = Setup::connect(kind).await?;
        let mut m = Measured::new(kind, workload);
        m.connected_rss_mib = rss_mib("VmRSS:");
        let sizes = workload.sizes(quick);
        m.runs = sizes.runs;
        m.deltas_per_run = sizes.deltas;
        m.observers = sizes.observers;
        let work = async {
            match workload {
                Workload::E2e => e2e(&setup, &sizes, &mut m).await,
                Workload::Replay => replay(&setup, &sizes, &mut m).await,
                Workload::Runs | Workload::Concurrent => many(&setup, &sizes, &mut m).await,
                Workload::Observers => observers(&setup, &sizes, &mut m).await,
                Workload::Latency => latency(&setup, &sizes, &mut m).await,
                Workload::RoundTrips => round_trips(&setup, &sizes, &mut m).await,
            }
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r.map(|()| m),
            Err(_) => Err(format!("did not finish within {deadline:?}")),
        }
    });
    // Shut down without waiting for tasks parked on a server (a stuck run must not hang the
    // child: its result is what matters).
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(mut m) => {
            m.peak_rss_mib = rss_mib("VmHWM:");
            m
        }
        Err(e) => Measured::failed(kind, workload, e),
    }
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM:` is the peak resident
/// set, `VmRSS:` the current one), MiB.
fn rss_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn agent(model: TimedModel, tools: Vec<FnTool<Value>>) -> Result<Agent, String> {
    let mut b = Agent::builder().id("bench").model(model).max_steps(8);
    for t in tools {
        b = b.tool(t);
    }
    b.build().map_err(|e| e.to_string())
}

/// A durable agent streaming `deltas` deltas in one step, unpaced.
fn streaming(setup: &Setup, deltas: u64) -> Result<DurableAgent, String> {
    let model = TimedModel::new(vec![Turn::new().deltas(deltas as usize, DELTA)], None);
    setup.durable(agent(model, Vec::new())?)
}

/// What one observer saw.
struct Observed {
    events: u64,
    deltas: u64,
    /// When each text delta arrived, if asked for.
    delta_times: Vec<Instant>,
    first_event: Option<Instant>,
    /// Cursors 0, 1, 2, … and a `finish` last.
    exact: bool,
}

/// Drain an observer from offset 0 to its end.
async fn drain(mut run: DurableRun, times: bool) -> Result<Observed, String> {
    let mut seen = Observed {
        events: 0,
        deltas: 0,
        delta_times: Vec::new(),
        first_event: None,
        exact: true,
    };
    let mut last = None;
    while let Some(ev) = run.next().await {
        let at = Instant::now();
        let ev = ev.map_err(|e| format!("observer: {e}"))?;
        seen.first_event.get_or_insert(at);
        if ev.cursor != seen.events {
            seen.exact = false;
        }
        seen.events += 1;
        if ev.kind == EventKind::TextDelta {
            seen.deltas += 1;
            if times {
                seen.delta_times.push(at);
            }
        }
        last = Some(ev.kind);
    }
    if last != Some(EventKind::Finish) {
        seen.exact = false;
    }
    Ok(seen)
}

/// Wait (at most 30 s) until the runs' records are terminal. A run's last writes (its log's
/// retention, its tombstone, then its status) come after the `finish` its observer ended on;
/// a workload that returned at once would let the runtime's shutdown cut them off (its
/// backend connection first: "channel closed" warnings), and the next workload would share
/// the backend with their leftovers.
async fn settle(durable: &DurableAgent, ids: &[RunId]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        while Instant::now() < deadline {
            match durable.status(id).await {
                Ok(r) if r.status.is_terminal() => break,
                // Pacing of the poll, not synchronisation: the deadline bounds it.
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn per_second(n: u64, d: Duration) -> Option<f64> {
    (d > Duration::ZERO).then(|| n as f64 / d.as_secs_f64())
}

async fn e2e(setup: &Setup, s: &Sizes, m: &mut Measured) -> Result<(), String> {
    let durable = streaming(setup, s.deltas)?;
    let mut times = Vec::new();
    m.exact = true;
    for _ in 0..s.reps {
        let started = Instant::now();
        let run = durable
            .stream("go", StreamOptions::new())
            .await
            .map_err(|e| e.to_string())?;
        let id = run.run_id().clone();
        let seen = drain(run, false).await?;
        times.push(started.elapsed());
        m.events_observed += seen.events;
        m.exact &= seen.exact && seen.deltas == s.deltas;
        settle(&durable, &[id]).await;
    }
    let t = median(times);
    m.elapsed_ms = ms(t);
    m.rate = per_second(s.deltas, t);
    m.rate_unit = Some("deltas/s".to_owned());
    Ok(())
}

async fn replay(setup: &Setup, s: &Sizes, m: &mut Measured) -> Result<(), String> {
    let durable = streaming(setup, s.deltas)?;
    let run = durable
        .stream("go", StreamOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    let id = run.run_id().clone();
    let written = drain(run, false).await?;
    settle(&durable, std::slice::from_ref(&id)).await;
    let mut times = Vec::new();
    m.exact = written.exact;
    for _ in 0..s.reps {
        let started = Instant::now();
        let run = durable
            .observe(&id, ObserveOptions::from(0))
            .await
            .map_err(|e| e.to_string())?;
        let seen = drain(run, false).await?;
        times.push(started.elapsed());
        m.events_observed += seen.events;
        m.exact &= seen.exact && seen.events == written.events;
    }
    let t = median(times);
    m.elapsed_ms = ms(t);
    m.rate = per_second(written.events, t);
    m.rate_unit = Some("events/s".to_owned());
    Ok(())
}

/// `runs` runs at once, each drained by its own stream.
async fn many(setup: &Setup, s: &Sizes, m: &mut Measured) -> Result<(), String> {
    let durable = streaming(setup, s.deltas)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..s.runs)
        .map(|_| {
            let durable = durable.clone();
            tokio::spawn(async move {
                let run = durable
                    .stream("go", StreamOptions::new())
                    .await
                    .map_err(|e| e.to_string())?;
                let id = run.run_id().clone();
                drain(run, false).await.map(|seen| (id, seen))
            })
        })
        .collect();
    m.exact = true;
    let mut ids = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (id, seen) = t.await.map_err(|e| format!("run task: {e}"))??;
        m.events_observed += seen.events;
        m.exact &= seen.exact && seen.deltas == s.deltas;
        ids.push(id);
    }
    let t = started.elapsed();
    settle(&durable, &ids).await;
    m.elapsed_ms = ms(t);
    m.rate = per_second(s.runs * s.deltas, t);
    m.rate_unit = Some("deltas/s".to_owned());
    Ok(())
}

/// A tool that returns once the gate opens: the run waits in it while observers attach.
fn gate(open: tokio::sync::watch::Receiver<bool>) -> FnTool<Value> {
    FnTool::new(
        "gate",
        "Waits for the observers",
        move |_: Value, _: ToolContext| {
            let mut open = open.clone();
            async move {
                open.wait_for(|o| *o)
                    .await
                    .map_err(|_| ToolError::new("the gate was dropped"))?;
                Ok::<_, ToolError>(json!({ "open": true }))
            }
        },
    )
}

async fn observers(setup: &Setup, s: &Sizes, m: &mut Measured) -> Result<(), String> {
    let (open, gate_rx) = tokio::sync::watch::channel(false);
    let model = TimedModel::new(
        vec![
            Turn::new().tool_call("gate-0", "gate", json!({})),
            Turn::new().deltas(s.deltas as usize, DELTA),
        ],
        Some(Duration::from_millis(1)),
    );
    let durable = setup.durable(agent(model.clone(), vec![gate(gate_rx)])?)?;
    let run = durable
        .stream("go", StreamOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    let id = run.run_id().clone();
    let mut tasks = vec![tokio::spawn(drain(run, true))];
    for _ in 1..s.observers {
        let o = durable
            .observe(&id, ObserveOptions::from(0))
            .await
            .map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(drain(o, true)));
    }
    let started = Instant::now();
    open.send_replace(true);
    let mut seen = Vec::with_capacity(tasks.len());
    for t in tasks {
        seen.push(t.await.map_err(|e| format!("observer task: {e}"))??);
    }
    let t = started.elapsed();
    settle(&durable, std::slice::from_ref(&id)).await;
    let emitted = model.emitted();
    let mut lat = Vec::new();
    m.exact = true;
    for o in &seen {
        m.events_observed += o.events;
        m.exact &= o.exact && o.deltas == s.deltas && o.delta_times.len() == emitted.len();
        lat.extend(
            o.delta_times
                .iter()
                .zip(&emitted)
                .map(|(got, sent)| got.saturating_duration_since(*sent)),
        );
    }
    m.elapsed_ms = ms(t);
    m.rate = per_second(s.deltas * s.observers, t);
    m.rate_unit = Some("deliveries/s".to_owned());
    m.latency = Percentiles::of(lat);
    Ok(())
}

async fn latency(setup: &Setup, s: &Sizes, m: &mut Measured) -> Result<(), String> {
    let model = TimedModel::new(
        vec![Turn::new().deltas(s.deltas as usize, DELTA)],
        Some(Duration::from_millis(1)),
    );
    let durable = setup.durable(agent(model.clone(), Vec::new())?)?;
    let started = Instant::now();
    let run = durable
        .stream("go", StreamOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    let id = run.run_id().clone();
    let seen = drain(run, true).await?;
    let t = started.elapsed();
    settle(&durable, &[id]).await;
    let emitted = model.emitted();
    m.exact = seen.exact && seen.deltas == s.deltas && emitted.len() == seen.delta_times.len();
    m.events_observed = seen.events;
    m.elapsed_ms = ms(t);
    m.first_event_ms = seen.first_event.map(|f| ms(f - started));
    m.first_delta_ms = seen.delta_times.first().map(|f| ms(*f - started));
    m.latency = Percentiles::of(
        seen.delta_times
            .iter()
            .zip(&emitted)
            .map(|(got, sent)| got.saturating_duration_since(*sent))
            .collect(),
    );
    Ok(())
}

async fn round_trips(setup: &Setup, s: &Sizes, m: &mut Measured) -> Result<(), String> {
    let weather = FnTool::new(
        "weather",
        "Weather",
        |a: Value, _: ToolContext| async move {
            Ok::<_, ToolError>(json!({ "city": a.get("city").cloned().unwrap_or(Value::Null) }))
        },
    );
    let (first, second) = (s.deltas / 2, s.deltas / 4);
    let model = TimedModel::new(
        vec![
            Turn::new().deltas(first as usize, DELTA).tool_call(
                "c0",
                "weather",
                json!({ "city": "Paris" }),
            ),
            Turn::new().deltas(second as usize, DELTA).tool_call(
                "c1",
                "weather",
                json!({ "city": "Oslo" }),
            ),
            Turn::new().deltas((s.deltas - first - second) as usize, DELTA),
        ],
        None,
    );
    let durable = setup.durable(agent(model, vec![weather])?)?;
    let counting = setup.counter.start().await?;
    let started = Instant::now();
    let run = durable
        .stream("go", StreamOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    let id = run.run_id().clone();
    let seen = drain(run, false).await?;
    m.elapsed_ms = ms(started.elapsed());
    m.events_observed = seen.events;
    m.exact = seen.exact && seen.deltas == s.deltas;
    let counted = setup.counter.finish(counting).await?;
    // After the count: the settling polls are round trips of their own.
    settle(&durable, &[id]).await;
    match counted {
        Ok(count) => {
            m.round_trips = Some(count.total);
            m.round_trip_method = Some(count.method);
            m.round_trip_unit = Some(count.unit.to_owned());
            m.round_trip_detail = count.detail;
        }
        Err(why) => m.round_trip_method = Some(format!("n/a: {why}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for w in ALL {
            assert_eq!(Workload::parse(w.id()), Ok(*w));
        }
    }

    #[test]
    fn round_trip_turn_streams_every_delta() {
        let s = Workload::RoundTrips.sizes(false);
        assert_eq!(
            s.deltas / 2 + s.deltas / 4 + (s.deltas - s.deltas / 2 - s.deltas / 4),
            s.deltas
        );
    }
}

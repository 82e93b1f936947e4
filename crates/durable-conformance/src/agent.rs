//! Helpers for end-to-end tests of durable agents on any backend: drain a run with a deadline,
//! wait for a settled status, and compare runs the way a client sees them. They panic on
//! failure, as test code does.

use std::time::Duration;

use durable_core::agent::{DurableAgent, DurableRun};
use durable_core::{Event, EventKind, ObserveOptions, RunId, RunStatus};
use futures::StreamExt;
use serde_json::Value;

/// Drain `run` to its end; panics if the stream errs or stalls for `stall` between events.
pub async fn collect(mut run: DurableRun, stall: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(stall, run.next())
        .await
        .unwrap_or_else(|_| panic!("run {} stalled for {stall:?}", run.run_id()))
    {
        out.push(ev.unwrap_or_else(|e| panic!("observe failed: {e}")));
    }
    out
}

/// Every event of the run, from cursor 0 to its end.
pub async fn observe_all(agent: &DurableAgent, run_id: &RunId, stall: Duration) -> Vec<Event> {
    let run = agent
        .observe(run_id, ObserveOptions::from(0))
        .await
        .unwrap_or_else(|e| panic!("observe {run_id}: {e}"));
    collect(run, stall).await
}

/// The run's status once it is terminal (or whatever it is after `limit`). The terminal status
/// is written right after the terminal event, so a client that saw the event may briefly still
/// read `running`.
pub async fn settled_status(agent: &DurableAgent, run_id: &RunId, limit: Duration) -> RunStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = agent
            .status(run_id)
            .await
            .unwrap_or_else(|e| panic!("status {run_id}: {e}"))
            .status;
        if status.is_terminal() || tokio::time::Instant::now() >= deadline {
            return status;
        }
        tokio::task::yield_now().await;
    }
}

/// What a client shows: each `step-restart` drops the events since that step's `step-start`;
/// cursors, timestamps and run ids are left out. Two runs of the same script compare equal.
pub fn client_view(events: &[Event]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for e in events {
        let mut data = e.data.to_value();
        if e.kind == EventKind::StepRestart {
            let start = out
                .iter()
                .rposition(|(k, d)| k == "step-start" && d["step"] == data["step"])
                .unwrap_or_else(|| panic!("step-restart at {} names no started step", e.cursor));
            out.truncate(start);
            continue;
        }
        if let Value::Object(m) = &mut data {
            m.remove("run_id");
        }
        out.push((e.kind.as_str().to_owned(), data));
    }
    out
}

/// Panics unless the cursors are exactly 0, 1, 2, …
pub fn assert_contiguous(events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.cursor, i as u64, "cursors are contiguous from 0");
    }
}

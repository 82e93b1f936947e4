//! What every iteration checks: stitched observers are exact, tools ran once, nothing is left
//! behind. The checks panic on failure, as test code does.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use durable_conformance::agent::{assert_contiguous, client_view};
use durable_core::{Event, RunId};
use serde_json::Value;

use crate::backend::Connected;

/// One client's view of one run, stitched across reconnections: each reconnection observes
/// from [`Stitched::next`].
#[derive(Debug, Clone, Default)]
pub struct Stitched {
    /// The cursor it first observed from.
    pub from: u64,
    /// What it received, in order.
    pub events: Vec<Event>,
}

impl Stitched {
    /// A client observing from `from`.
    pub fn from(from: u64) -> Self {
        Self {
            from,
            events: Vec::new(),
        }
    }

    /// The cursor to observe from after a reconnection.
    pub fn next(&self) -> u64 {
        self.from + self.events.len() as u64
    }

    /// Add a received event; panics unless it is the next cursor (`who` names the client).
    pub fn push(&mut self, event: Event, who: &str) {
        assert_eq!(
            event.cursor,
            self.next(),
            "{who}: got cursor {} where {} was next (a gap or a duplicate)",
            event.cursor,
            self.next()
        );
        self.events.push(event);
    }

    /// Keep only the events before cursor `cursor` (a client that lost what it had not yet
    /// processed when it disconnected).
    pub fn truncate_at(&mut self, cursor: u64) {
        self.events
            .truncate(cursor.saturating_sub(self.from) as usize);
    }

    /// Whether it received the run's terminal event.
    pub fn ended(&self) -> bool {
        self.events.last().is_some_and(|e| e.kind.is_terminal())
    }

    /// Panics unless it is exactly `full[from..]`.
    pub fn assert_suffix_of(&self, full: &[Event], who: &str) {
        let from = self.from as usize;
        assert!(
            from <= full.len(),
            "{who}: observed from {from} past the log's end"
        );
        assert!(
            self.events == full[from..],
            "{who}: observed {} events from {from}, not the log's {} (first difference at cursor {:?})",
            self.events.len(),
            full.len() - from,
            self.events
                .iter()
                .zip(&full[from..])
                .position(|(a, b)| a != b)
                .map(|i| i + from)
        );
    }
}

/// The full log of a run as one observer from cursor 0 saw it: contiguous, ended, and as a
/// client shows it equal to an uninterrupted run (`reference`).
pub fn assert_complete(full: &Stitched, reference: &[(String, Value)], who: &str) {
    assert_eq!(full.from, 0, "{who}: not observed from 0");
    assert_contiguous(&full.events);
    assert!(full.ended(), "{who}: the run did not end");
    assert_eq!(
        full.events.last().map(|e| e.kind.as_str()),
        Some("finish"),
        "{who}: the run did not finish"
    );
    assert!(
        client_view(&full.events) == reference,
        "{who}: the client view differs from an uninterrupted run's"
    );
}

/// What the side file says about tool executions.
#[derive(Debug, Clone, Copy)]
pub struct Tools {
    /// Distinct tool calls that completed.
    pub calls: usize,
    /// Executions of a call whose earlier attempt was interrupted before its result was
    /// checkpointed (tools are at-least-once: by a killed worker, or by an outage that outlasted
    /// the executing instance's retries, which then restarted the step itself).
    pub reruns: usize,
}

/// Check the side file: no tool call started in a process that had seen its result
/// checkpointed (workers write `seen <pid> <run> <key>` for each checkpointed call when they
/// start), a call started again in one process only as a later attempt (`ToolContext::attempt`),
/// and each of `calls` calls completed.
pub fn verify_tools(side: &Path, calls: usize) -> Tools {
    let text =
        std::fs::read_to_string(side).unwrap_or_else(|e| panic!("read {}: {e}", side.display()));
    // A call is named `<run> <step key>`.
    let mut seen: HashSet<(&str, String)> = HashSet::new();
    let mut attempts: HashMap<(&str, String), u32> = HashMap::new();
    let mut started: HashMap<String, usize> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    for line in text.lines() {
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["seen", pid, run, key] => {
                seen.insert((pid, format!("{run} {key}")));
            }
            ["start", pid, run, key, attempt] => {
                let call = format!("{run} {key}");
                assert!(
                    !seen.contains(&(pid, call.clone())),
                    "tool call {call} ran again in process {pid} after its result was checkpointed"
                );
                let attempt: u32 = attempt.parse().expect("attempt");
                let last = attempts.insert((pid, call.clone()), attempt);
                assert!(
                    last.is_none_or(|last| attempt > last),
                    "tool call {call} started twice in process {pid} as attempt {attempt}"
                );
                *started.entry(call).or_default() += 1;
            }
            ["done", _, run, key] => {
                done.insert(format!("{run} {key}"));
            }
            _ => panic!("unexpected side-file line {line:?}"),
        }
    }
    assert_eq!(done.len(), calls, "not every tool call completed");
    Tools {
        calls: done.len(),
        reruns: started.values().map(|n| n - 1).sum(),
    }
}

/// Wait (up to `limit`) until nothing of `runs` is left in the backend; panics with what is
/// left otherwise. Retention elapses on the backend's clock: this polls. A failed listing (a
/// timeout on a loaded machine) is tried again until the deadline.
pub async fn assert_nothing_left(conn: &Connected, runs: &[RunId], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = conn.leftovers(runs).await;
        if left.as_ref().is_ok_and(Vec::is_empty) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after retention: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

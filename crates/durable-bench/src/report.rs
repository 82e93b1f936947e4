//! Results: one [`Measured`] per (backend, workload), the JSON document and the table.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backends::Kind;
use crate::workloads::{self, Workload};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) samples: u64,
}

impl Percentiles {
    /// Percentiles of `samples` (nearest rank); `None` when there are none.
    pub(crate) fn of(mut samples: Vec<Duration>) -> Option<Percentiles> {
        samples.sort_unstable();
        let last = samples.len().checked_sub(1)?;
        let at = |p: f64| {
            let i = ((last as f64) * p).round() as usize;
            ms(samples[i.min(last)])
        };
        Some(Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: ms(samples[last]),
            samples: samples.len() as u64,
        })
    }
}

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What one workload measured on one backend. Fields a workload does not measure are absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Measured {
    /// The workload id.
    pub(crate) workload: String,
    /// The backend name.
    pub(crate) backend: String,
    /// Concurrent runs.
    pub(crate) runs: u64,
    /// Text deltas each run streams.
    pub(crate) deltas_per_run: u64,
    /// Observers of each run (the run's own stream included).
    pub(crate) observers: u64,
    /// Events the observers received, all together.
    pub(crate) events_observed: u64,
    /// Wall time of the measured part (the median repetition where repeated).
    pub(crate) elapsed_ms: f64,
    /// The headline rate, in `rate_unit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<f64>,
    /// `deltas/s` (model output through the log to the observer) or `events/s` (replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate_unit: Option<String>,
    /// Peak resident memory of the process that ran this workload alone (`VmHWM`), MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peak_rss_mib: Option<f64>,
    /// Resident memory of that process once connected, before the workload, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connected_rss_mib: Option<f64>,
    /// Delay from the model emitting a delta to an observer receiving it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency: Option<Percentiles>,
    /// From the `stream` call to the observer's first event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_event_ms: Option<f64>,
    /// From the `stream` call to the observer's first text delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_delta_ms: Option<f64>,
    /// Backend round trips (or statements) of one agent turn, when the backend can count them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) round_trips: Option<u64>,
    /// How `round_trips` was counted, or why it was not ("n/a: …").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) round_trip_method: Option<String>,
    /// What `round_trips` counts, short (`statements`, `commands`, `messages`, `commits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) round_trip_unit: Option<String>,
    /// The count broken down (count, statement or command).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) round_trip_detail: Vec<(u64, String)>,
    /// Every observer saw cursors 0, 1, 2, … without gap or duplicate, ending with `finish`,
    /// and the expected number of deltas.
    pub(crate) exact: bool,
    /// Why the workload failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Measured {
    /// An empty result for `workload` on `backend`.
    pub(crate) fn new(kind: Kind, workload: Workload) -> Measured {
        Measured {
            workload: workload.id().to_owned(),
            backend: kind.name().to_owned(),
            ..Measured::default()
        }
    }

    /// A failed result.
    pub(crate) fn failed(kind: Kind, workload: Workload, why: String) -> Measured {
        Measured {
            error: Some(why),
            ..Measured::new(kind, workload)
        }
    }
}

/// One backend's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BackendReport {
    pub(crate) name: String,
    /// Which backend holds the run log.
    pub(crate) log: String,
    /// Which carries the wake-ups.
    pub(crate) pubsub: String,
    /// Which holds the run records and checkpoints.
    pub(crate) store: String,
    /// Why the backend was not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) skipped: Option<String>,
    pub(crate) results: Vec<Measured>,
}

impl BackendReport {
    pub(crate) fn new(kind: Kind) -> BackendReport {
        let [log, pubsub, store] = kind.roles();
        BackendReport {
            name: kind.name().to_owned(),
            log: log.to_owned(),
            pubsub: pubsub.to_owned(),
            store: store.to_owned(),
            skipped: None,
            results: Vec::new(),
        }
    }

    fn get(&self, workload: Workload) -> Option<&Measured> {
        self.results
            .iter()
            .find(|m| m.workload == workload.id() && m.error.is_none())
    }
}

/// The machine and its load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cpus: u64,
    pub(crate) kernel: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started.
    pub(crate) load_average_start: String,
    /// … and when it ended.
    pub(crate) load_average_end: String,
}

/// A workload's id and what it measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkloadInfo {
    pub(crate) id: String,
    pub(crate) description: String,
}

/// The whole JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) tool: String,
    /// Unix seconds at the start.
    pub(crate) started_at: u64,
    pub(crate) duration_s: f64,
    pub(crate) quick: bool,
    pub(crate) machine: Machine,
    pub(crate) workloads: Vec<WorkloadInfo>,
    pub(crate) backends: Vec<BackendReport>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Report {
    pub(crate) fn new(quick: bool) -> Report {
        Report {
            tool: format!("durable-bench {}", env!("CARGO_PKG_VERSION")),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            duration_s: 0.0,
            quick,
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default(),
                load_average_start: loadavg(),
                load_average_end: String::new(),
            },
            workloads: workloads::ALL
                .iter()
                .map(|w| WorkloadInfo {
                    id: w.id().to_owned(),
                    description: w.description(quick),
                })
                .collect(),
            backends: Vec::new(),
        }
    }

    /// Note the end of the run.
    pub(crate) fn finish(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.duration_s = (now - self.started_at as f64).max(0.0);
        self.machine.load_average_end = loadavg();
    }

    /// Write the JSON to `json` (creating `out` and the file's directory).
    pub(crate) fn write(&self, json: &Path, out: &Path) -> Result<(), String> {
        for dir in [Some(out), json.parent()].into_iter().flatten() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(json, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", json.display()))
    }

    /// The table printed on stdout: one row per backend, one column per workload.
    pub(crate) fn table(&self) -> String {
        let q = self.quick;
        let cols = [
            "backend (log / pubsub / store)".to_owned(),
            Workload::E2e.label(q),
            Workload::Replay.label(q),
            Workload::Runs.label(q),
            "peak RSS (connected)".to_owned(),
            Workload::Concurrent.label(q),
            format!("{} p50/p99", Workload::Observers.label(q)),
            "latency p50/p99/max".to_owned(),
            "first event".to_owned(),
            Workload::RoundTrips.label(q),
        ];
        let mut rows: Vec<Vec<String>> = Vec::new();
        for b in &self.backends {
            let name = format!("{} ({} / {} / {})", b.name, b.log, b.pubsub, b.store);
            if let Some(why) = &b.skipped {
                rows.push(vec![name, format!("skipped: {why}")]);
                continue;
            }
            let rate = |w| cell(b.get(w), |m| m.rate.map(|r| si(r, m.rate_unit.as_deref())));
            let lat = |w| {
                cell(b.get(w), |m| {
                    m.latency
                        .map(|l| format!("{:.2}/{:.2} ms", l.p50_ms, l.p99_ms))
                })
            };
            rows.push(vec![
                name,
                rate(Workload::E2e),
                rate(Workload::Replay),
                rate(Workload::Runs),
                cell(b.get(Workload::Runs), |m| {
                    m.peak_rss_mib.map(|r| match m.connected_rss_mib {
                        Some(c) => format!("{r:.0} MiB ({c:.0})"),
                        None => format!("{r:.0} MiB"),
                    })
                }),
                rate(Workload::Concurrent),
                lat(Workload::Observers),
                cell(b.get(Workload::Latency), |m| {
                    m.latency
                        .map(|l| format!("{:.2}/{:.2}/{:.1} ms", l.p50_ms, l.p99_ms, l.max_ms))
                }),
                cell(b.get(Workload::Latency), |m| {
                    m.first_event_ms.map(|t| format!("{t:.2} ms"))
                }),
                match b.get(Workload::RoundTrips) {
                    Some(Measured {
                        round_trips: Some(n),
                        round_trip_unit,
                        ..
                    }) => format!("{n} {}", round_trip_unit.as_deref().unwrap_or("")),
                    Some(_) => "n/a".to_owned(),
                    None => "FAILED".to_owned(),
                },
            ]);
            for m in b.results.iter().filter(|m| m.error.is_some() || !m.exact) {
                let why = m
                    .error
                    .as_deref()
                    .unwrap_or("an observer's sequence was not exact");
                rows.push(vec![format!("  ! {} {}: {why}", b.name, m.workload)]);
            }
        }
        render(&cols, &rows, self)
    }
}

fn cell(m: Option<&Measured>, f: impl Fn(&Measured) -> Option<String>) -> String {
    match m {
        Some(m) => f(m).unwrap_or_else(|| "-".to_owned()),
        None => "FAILED".to_owned(),
    }
}

/// `123456.0` → `123k deltas/s`.
pub(crate) fn si(v: f64, unit: Option<&str>) -> String {
    let unit = unit.unwrap_or("");
    if v >= 1e6 {
        format!("{:.2}M {unit}", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k {unit}", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

fn render(cols: &[String], rows: &[Vec<String>], report: &Report) -> String {
    let mut widths: Vec<usize> = cols.iter().map(|c| c.chars().count()).collect();
    for row in rows.iter().filter(|r| r.len() == cols.len()) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(s, " {c}{} |", " ".repeat(w - c.chars().count().min(*w)));
        }
        s.push('\n');
        s
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "durable-bench{}: {} CPUs, load average {} → {}",
        if report.quick { " --quick" } else { "" },
        report.machine.cpus,
        report.machine.load_average_start,
        report.machine.load_average_end
    );
    out.push_str(&line(cols));
    out.push('|');
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for row in rows {
        if row.len() == cols.len() {
            out.push_str(&line(row));
        } else {
            let _ = writeln!(out, "| {} |", row.join(" "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let d: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(d).expect("some");
        assert_eq!((p.p50_ms.round(), p.p99_ms, p.max_ms), (51.0, 99.0, 100.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }
}

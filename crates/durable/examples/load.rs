//! Load tool: many concurrent durable runs of the scripted model on the in-memory backends,
//! each drained by an observer. Prints aggregate deltas/s and the process's peak RSS.
//!
//! ```sh
//! cargo run --release --example load -- --runs 100 --deltas 1000
//! cargo run --release --example load -- --runs 1 --deltas 10000 --plain   # no durability
//! ```
//!
//! Peak RSS is the kernel's high-water mark (`VmHWM`) of this process, so it includes the
//! runtime and allocator; run one configuration per process.

use std::time::{Duration, Instant};

use durable::agent::{Agent, DurableAgent, ScriptedModel, StreamOptions, Turn};
use futures::StreamExt;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs = arg("--runs", 100);
    let deltas = arg("--deltas", 1000);
    let plain = std::env::args().any(|a| a == "--plain");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let agent = Agent::builder()
        .id("load")
        .model(ScriptedModel::new([
            Turn::new().deltas(deltas, "0123456789abcdef")
        ]))
        .build()?;
    let mut config = durable::LogConfig::default();
    config.retention = Duration::from_secs(60);
    if let Some(b) = std::env::var("WAKE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.max_wake_bytes = b;
    }
    let durable = DurableAgent::builder(agent.clone())
        .log_config(config)
        .build()?;
    let baseline = peak_rss_kib();
    let started = Instant::now();
    let events: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0..runs)
            .map(|_| {
                let (agent, durable) = (agent.clone(), durable.clone());
                tokio::spawn(async move {
                    let count = |n: u64, e: durable::Result<durable::Event>| async move {
                        e.expect("event");
                        n + 1
                    };
                    if plain {
                        let s = agent
                            .stream("go", StreamOptions::new())
                            .await
                            .expect("stream");
                        s.fold(0u64, count).await
                    } else {
                        let s = durable
                            .stream("go", StreamOptions::new())
                            .await
                            .expect("stream");
                        s.fold(0u64, count).await
                    }
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("run");
        }
        total
    });
    let elapsed = started.elapsed();
    let total_deltas = (runs * deltas) as f64;
    println!(
        "{} runs × {} deltas ({}): {:.0} deltas/s aggregate, {} events in {:.1} ms",
        runs,
        deltas,
        if plain {
            "plain Agent::stream"
        } else {
            "DurableAgent, in-memory backends"
        },
        total_deltas / elapsed.as_secs_f64(),
        events,
        elapsed.as_secs_f64() * 1e3
    );
    if let (Some(before), Some(peak)) = (baseline, peak_rss_kib()) {
        println!(
            "peak RSS {:.1} MiB (process at start: {:.1} MiB)",
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        );
    }
    Ok(())
}

//! SSE fan-out benchmark (a binary, not a test): the server runs in a child process on the
//! in-memory backends; this process is the clients.
//!
//! - `one-run`: 1,000 observers of one run (`GET …/events`).
//! - `many-runs`: 1,000 runs, each followed by its own `POST …/stream` response.
//!
//! Each scenario runs twice: a burst (the model emits as fast as it can: delivery rate) and a
//! paced run (one delta every `--pace-ms`: append→client latency). The model writes the wall
//! clock in microseconds into each delta; a client's latency is its receive time minus that.
//! Usage: `cargo run --release -p durable-server --bin durable-server-bench [-- --clients N]`.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::routing::post;
use clap::Parser;
use durable_core::agent::{
    Agent, DurableAgent, FinishReason, LanguageModel, ModelChunk, ModelRequest, ModelStream, Usage,
};
use durable_server::client::SseParser;
use durable_server::DurableServer;
use futures::StreamExt;
use tokio::sync::watch;

#[derive(Parser, Clone)]
struct Args {
    /// Internal: be the server (the parent spawns it).
    #[arg(long)]
    serve: bool,
    /// Observers (one-run) and runs (many-runs).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Text deltas per run, one-run scenario.
    #[arg(long, default_value_t = 500)]
    deltas_one: usize,
    /// Text deltas per run, many-runs scenario.
    #[arg(long, default_value_t = 200)]
    deltas_many: usize,
    /// Pause between deltas in the paced runs, milliseconds.
    #[arg(long, default_value_t = 10)]
    pace_ms: u64,
    /// Scenarios to run: `one-run`, `many-runs` or `all`.
    #[arg(long, default_value = "all")]
    only: String,
    /// Modes to run: `burst`, `paced` or `all`.
    #[arg(long, default_value = "all")]
    modes: String,
    /// Internal: deltas per run.
    #[arg(long, default_value_t = 0)]
    deltas: usize,
    /// Internal: pause between deltas, microseconds.
    #[arg(long, default_value_t = 0)]
    pause_us: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Emits `deltas` text deltas holding the wall clock, once the gate opens.
#[derive(Debug)]
struct ClockModel {
    gate: watch::Receiver<bool>,
    deltas: usize,
    pause: Duration,
}

#[async_trait]
impl LanguageModel for ClockModel {
    fn model_id(&self) -> &str {
        "clock"
    }

    async fn stream(&self, _request: ModelRequest) -> durable_core::Result<ModelStream> {
        // Pulled by the agent like a real model's HTTP stream: no task or channel per run
        // (they cost the server process ~8 MiB at 1,000 runs, which is not the server's).
        let (deltas, pause) = (self.deltas, self.pause);
        let gate = Some(self.gate.clone());
        Ok(
            futures::stream::unfold((0, gate), move |(i, gate)| async move {
                if let Some(mut gate) = gate {
                    let _ = gate.wait_for(|open| *open).await;
                }
                let chunk = match i {
                    i if i < deltas => {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        ModelChunk::TextDelta {
                            text: now_us().to_string(),
                        }
                    }
                    i if i == deltas => ModelChunk::Finish {
                        reason: FinishReason::Stop,
                        usage: Usage::default(),
                    },
                    _ => return None,
                };
                Some((Ok(chunk), (i + 1, None)))
            })
            .boxed(),
        )
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let (open, gate) = watch::channel(false);
    let agent = Agent::builder()
        .id("bench")
        .model(ClockModel {
            gate,
            deltas: args.deltas,
            pause: Duration::from_micros(args.pause_us),
        })
        .build()
        .map_err(|e| e.to_string())?;
    let server = DurableServer::builder()
        .agent(DurableAgent::new(agent))
        .build()
        .map_err(|e| e.to_string())?;
    let open = Arc::new(open);
    let app = server.router().route(
        "/bench/go",
        post(move || {
            let open = open.clone();
            async move {
                let _ = open.send(true);
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "listening on http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    durable_server::serve(listener, app, std::future::pending())
        .await
        .map_err(|e| e.to_string())
}

struct Child {
    child: std::process::Child,
    url: String,
}

impl Child {
    fn spawn(deltas: usize, pause: Duration) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // `DURABLE_BENCH_WRAP="perf record -o server.data --"` profiles the server alone.
        let wrap = std::env::var("DURABLE_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .args([
                "--serve",
                "--deltas",
                &deltas.to_string(),
                "--pause-us",
                &pause.as_micros().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or("no address")?
            .to_owned();
        Ok(Self { child, url })
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }

    fn rss_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if std::env::var_os("DURABLE_BENCH_WRAP").is_some() {
            // A profiler writes its data on SIGINT.
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of a process, from its `/proc/<pid>/stat` (clock ticks of 10 ms,
/// the Linux default).
fn cpu_secs(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let after = text.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Follow one SSE body: (events delivered, latencies in µs of the text deltas).
async fn follow(res: reqwest::Response, ready: tokio::sync::mpsc::Sender<()>) -> (u64, Vec<u32>) {
    let mut body = res.bytes_stream();
    let mut p = SseParser::new();
    let mut frames = Vec::new();
    let (mut n, mut lat) = (0u64, Vec::new());
    let mut signalled = false;
    while let Some(Ok(chunk)) = body.next().await {
        if p.push(&chunk, &mut frames).is_err() {
            break;
        }
        let now = now_us();
        for f in frames.drain(..) {
            n += 1;
            if !signalled {
                signalled = true;
                let _ = ready.send(()).await;
            }
            if f.event.as_deref() == Some("text-delta") {
                if let Some(sent) = f
                    .data
                    .split("\"text\":\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    lat.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                }
            }
        }
    }
    (n, lat)
}

struct Outcome {
    events: u64,
    elapsed: Duration,
    lat: Vec<u32>,
    rss_kib: u64,
    peak_kib: u64,
    server_cpu: f64,
    client_cpu: f64,
}

async fn scenario(
    many: bool,
    clients: usize,
    deltas: usize,
    pause: Duration,
) -> Result<Outcome, String> {
    let child = Child::spawn(deltas, pause)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .build()
        .map_err(|e| e.to_string())?;
    let stream_url = format!("{}/api/agents/bench/stream", child.url);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(clients);
    let mut tasks = Vec::new();
    let mut one_run = None;
    for i in 0..clients {
        let res = if many || i == 0 {
            let res = http
                .post(&stream_url)
                .json(&serde_json::json!({"prompt": "go"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            one_run = res
                .headers()
                .get("x-run-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            res
        } else {
            let run = one_run.clone().ok_or("no run id")?;
            http.get(format!("{}/api/agents/bench/runs/{run}/events", child.url))
                .send()
                .await
                .map_err(|e| e.to_string())?
        };
        tasks.push(tokio::spawn(follow(res, ready_tx.clone())));
    }
    for _ in 0..clients {
        ready_rx.recv().await.ok_or("a client ended early")?;
    }
    let idle_kib = child.rss_kib("VmRSS");
    let (server_cpu0, client_cpu0) = (child.cpu_secs(), cpu_secs("/proc/self/stat"));
    let started = Instant::now();
    http.post(format!("{}/bench/go", child.url))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let (mut events, mut lat) = (0, Vec::new());
    let mut rss_kib = idle_kib;
    for t in tasks {
        let (n, l) = t.await.map_err(|e| e.to_string())?;
        events += n;
        lat.extend(l);
        rss_kib = rss_kib.max(child.rss_kib("VmRSS"));
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    Ok(Outcome {
        events,
        elapsed,
        lat,
        rss_kib,
        peak_kib: child.rss_kib("VmHWM"),
        server_cpu: child.cpu_secs() - server_cpu0,
        client_cpu: cpu_secs("/proc/self/stat") - client_cpu0,
    })
}

fn pct(lat: &[u32], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    f64::from(lat[i]) / 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.serve {
        return serve(args).await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| scenario | mode | events delivered | time | delivered/s | p50 ms | p99 ms | server RSS MiB (peak) | CPU s server / clients | server µs CPU per delivered event |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (key, name, many, deltas) in [
        ("one-run", "1 run x N observers", false, args.deltas_one),
        ("many-runs", "N runs x 1 observer", true, args.deltas_many),
    ] {
        if args.only != "all" && args.only != key {
            continue;
        }
        for (mode, pause) in [
            ("burst", Duration::ZERO),
            ("paced", Duration::from_millis(args.pace_ms)),
        ] {
            if args.modes != "all" && args.modes != mode {
                continue;
            }
            let o = scenario(many, args.clients, deltas, pause).await?;
            println!(
                "| {name} (N={}) | {mode} | {} | {:.2} s | {:.0} | {:.2} | {:.2} | {:.1} ({:.1}) | {:.1} / {:.1} | {:.2} |",
                args.clients,
                o.events,
                o.elapsed.as_secs_f64(),
                o.events as f64 / o.elapsed.as_secs_f64(),
                pct(&o.lat, 0.5),
                pct(&o.lat, 0.99),
                o.rss_kib as f64 / 1024.0,
                o.peak_kib as f64 / 1024.0,
                o.server_cpu,
                o.client_cpu,
                o.server_cpu * 1e6 / o.events.max(1) as f64,
            );
        }
    }
    Ok(())
}

//! `durable`: serve durable agents over HTTP, follow a run, list runs.
//!
//! - `durable serve [--config FILE] [--backend URL] [--listen ADDR] [--delay-ms N]
//!   [--openai-url URL --model NAME]`: the agents of the configuration (default: the built-in
//!   demo agent on the scripted model) on the backend it names (default in memory; a path is an
//!   SQLite file), the demo page at `/`, the routes under `/api`. See
//!   [`durable_server::config`].
//! - `durable observe URL RUN_ID [--agent ID] [--offset N]`: print a run's events (one JSON
//!   envelope per line) as they arrive, reconnecting from the last cursor.
//! - `durable runs URL [--agent ID] [--status S]`: list runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use durable_core::RunId;
use durable_server::client::Client;
use durable_server::config::{AgentConfig, ModelKind, ServeConfig};
use durable_server::demo;
use futures::StreamExt;

#[derive(Parser)]
#[command(
    name = "durable",
    version,
    about = "Durable AI-agent runs over HTTP/SSE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve agents over HTTP: the demo agent on in-memory backends unless configured.
    Serve(ServeArgs),
    /// Print a run's events as they arrive, reconnecting from the last cursor.
    Observe {
        /// The server (`http://127.0.0.1:8080`).
        url: String,
        /// The run.
        run_id: String,
        /// The agent.
        #[arg(long, default_value = "demo")]
        agent: String,
        /// First cursor.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// A run token (with access control on).
        #[arg(long)]
        token: Option<String>,
    },
    /// List an agent's runs.
    Runs {
        /// The server.
        url: String,
        /// The agent.
        #[arg(long, default_value = "demo")]
        agent: String,
        /// Only runs in this status (pending, running, suspended, completed, failed, aborted).
        #[arg(long)]
        status: Option<String>,
    },
}

/// `durable serve` flags: each overrides the configuration file's setting.
#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML configuration file (see the README: backend, listen, agents).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// The backend: `memory` (default), `sqlite:<path>` or a bare path (SQLite),
    /// `redis://…`, `postgres://…`.
    #[arg(long)]
    backend: Option<String>,
    /// Prefix of every key and topic (instances sharing a backend and namespace share runs).
    #[arg(long)]
    namespace: Option<String>,
    /// Worker tasks per agent on a durable backend (default 4).
    #[arg(long)]
    workers: Option<usize>,
    /// Lease of a run's executor in milliseconds: how soon another instance continues a run
    /// whose process died.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Pause of the demo agents' scripted model before each chunk, in milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// SSE heartbeat interval, in seconds.
    #[arg(long)]
    heartbeat_secs: Option<u64>,
    /// Require run tokens, signed with the key in this environment variable (≥ 32 bytes).
    #[arg(long)]
    token_key_env: Option<String>,
    /// Also serve `assistant`, an agent on an OpenAI-compatible chat-completions server at
    /// this base URL (`http://127.0.0.1:11434/v1`); the key comes from `OPENAI_API_KEY`. It
    /// answers `/api/chat`.
    #[arg(long, requires = "model")]
    openai_url: Option<String>,
    /// The model name for `--openai-url`.
    #[arg(long)]
    model: Option<String>,
}

impl ServeArgs {
    /// The configuration: the file's, then the flags over it.
    fn config(self) -> Result<ServeConfig, String> {
        let mut c = match &self.config {
            Some(path) => ServeConfig::load(path).map_err(|e| e.to_string())?,
            None => ServeConfig::default(),
        };
        c.listen = self.listen.or(c.listen);
        c.backend = self.backend.or(c.backend);
        c.namespace = self.namespace.or(c.namespace);
        c.workers = self.workers.or(c.workers);
        c.lease_ms = self.lease_ms.or(c.lease_ms);
        c.heartbeat_secs = self.heartbeat_secs.or(c.heartbeat_secs);
        c.token_key_env = self.token_key_env.or(c.token_key_env);
        if c.agents.is_empty() {
            c.agents.push(AgentConfig::demo("demo", 40));
        }
        if let Some(ms) = self.delay_ms {
            for a in c.agents.iter_mut().filter(|a| a.model == ModelKind::Demo) {
                a.delay_ms = Some(ms);
            }
        }
        if let (Some(url), Some(model)) = (self.openai_url, self.model) {
            let mut assistant = AgentConfig::openai("assistant", url, model);
            assistant.chat = !c.agents.iter().any(|a| a.chat);
            c.agents.push(assistant);
        }
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// `RUST_LOG`, else the library crates' own events from `warn` up and this binary's from
/// `info` (where it listens, what it recovered).
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,durable=info,durable_server=info")
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter());
    #[cfg(feature = "otel")]
    let otel = match std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(_) => {
            match durable_otel::OtelConfig::from_env().and_then(|c| durable_otel::Otel::init(&c)) {
                Ok(o) => Some(o),
                Err(e) => {
                    eprintln!("durable: OpenTelemetry export disabled: {e}");
                    None
                }
            }
        }
        None => None,
    };
    #[cfg(feature = "otel")]
    let registry = tracing_subscriber::registry()
        .with(fmt)
        .with(otel.as_ref().map(durable_otel::Otel::layer));
    #[cfg(not(feature = "otel"))]
    let registry = tracing_subscriber::registry().with(fmt);
    registry.init();
    let code = match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("durable: {e}");
            ExitCode::FAILURE
        }
    };
    #[cfg(feature = "otel")]
    if let Some(o) = otel {
        if let Err(e) = o.shutdown() {
            eprintln!("durable: {e}");
        }
    }
    code
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            let backend = config.backend().map_err(|e| e.to_string())?;
            let server = config.build().await.map_err(|e| e.to_string())?;
            let mut app = server.router();
            if config.demo_page.unwrap_or(true) {
                app = app.merge(demo::page());
            }
            let listen = config.listen();
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let agents: Vec<&str> = config.agents.iter().map(|a| a.id.as_str()).collect();
            tracing::info!(
                backend = %backend.describe(),
                agents = ?agents,
                "durable serving on http://{addr} (demo page at /)"
            );
            println!("listening on http://{addr}");
            durable_server::serve(listener, app, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| e.to_string())
        }
        Command::Observe {
            url,
            run_id,
            agent,
            offset,
            token,
        } => {
            let run_id = RunId::new(&run_id).map_err(|e| e.to_string())?;
            let mut client = Client::new(url);
            if let Some(t) = token {
                client = client.token(t);
            }
            let mut events = client.observe(&agent, &run_id, offset).into_stream();
            while let Some(ev) = events.next().await {
                let ev = ev.map_err(|e| e.to_string())?;
                println!("{}", String::from_utf8_lossy(&ev.to_json()));
            }
            Ok(())
        }
        Command::Runs { url, agent, status } => {
            let runs = Client::new(url)
                .runs(&agent, status.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?
            );
            Ok(())
        }
    }
}

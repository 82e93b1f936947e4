//! `durable`: serve durable agents over HTTP, follow a run, list runs.
//!
//! - `durable serve [--listen ADDR] [--delay-ms N] [--openai-url URL --model NAME]`: the
//!   built-in demo agent (scripted model) on in-memory backends, optionally an `assistant` on an
//!   OpenAI-compatible server, the demo page at `/`, the routes under `/api`.
//! - `durable observe URL RUN_ID [--agent ID] [--offset N]`: print a run's events (one JSON
//!   envelope per line) as they arrive, reconnecting from the last cursor.
//! - `durable runs URL [--agent ID] [--status S]`: list runs.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use durable_core::agent::DurableAgent;
use durable_core::RunId;
use durable_server::client::Client;
use durable_server::{demo, AccessControl, DurableServer, RunTokens};
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
    /// Serve the demo agent on in-memory backends.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Pause of the scripted model before each chunk, in milliseconds.
        #[arg(long, default_value_t = 40)]
        delay_ms: u64,
        /// SSE heartbeat interval, in seconds.
        #[arg(long, default_value_t = 15)]
        heartbeat_secs: u64,
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
    },
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

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("durable: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            listen,
            delay_ms,
            heartbeat_secs,
            token_key_env,
            openai_url,
            model,
        } => {
            let agent = demo::agent(Duration::from_millis(delay_ms)).map_err(|e| e.to_string())?;
            let mut builder = DurableServer::builder()
                .agent(DurableAgent::new(agent))
                .heartbeat(Duration::from_secs(heartbeat_secs.max(1)));
            if let (Some(url), Some(model)) = (openai_url, model) {
                let llm = durable_openai::OpenAiModel::builder()
                    .base_url(url)
                    .model(model);
                let llm = match std::env::var("OPENAI_API_KEY") {
                    Ok(key) if !key.is_empty() => llm.api_key(key),
                    _ => llm,
                };
                let assistant = durable_core::agent::Agent::builder()
                    .id("assistant")
                    .instructions("You are a helpful assistant.")
                    .model(llm.build().map_err(|e| e.to_string())?)
                    .build()
                    .map_err(|e| e.to_string())?;
                builder = builder
                    .agent(DurableAgent::new(assistant))
                    .chat_agent("assistant");
            }
            if let Some(var) = token_key_env {
                let key = std::env::var(&var).map_err(|_| format!("{var} is not set"))?;
                let tokens = RunTokens::new(key, Duration::from_secs(3600))?;
                builder = builder.access(AccessControl::new().tokens(tokens));
            }
            let server = builder.build().map_err(|e| e.to_string())?;
            let app = server.router().merge(demo::page());
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!("durable serving the demo agent on http://{addr} (demo page at /)");
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

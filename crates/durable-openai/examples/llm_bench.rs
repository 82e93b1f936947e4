//! Tokens per second on a real model stream: straight from the server vs. through a
//! [`DurableAgent`](durable_core::agent::DurableAgent) (every delta appended to the run's event
//! log and published, then read back by the client), on the in-memory backends.
//!
//! ```sh
//! cargo xtask services            # prints DURABLE_TEST_LLM_URL=http://127.0.0.1:PORT/v1
//! DURABLE_TEST_LLM_URL=… cargo run --release -p durable-openai --example llm_bench -- [runs] [tokens]
//! ```
//!
//! Each run generates exactly `tokens` tokens (`ignore_eos`, llama.cpp) at `temperature: 0`;
//! the two paths alternate, and the medians are printed.

use std::time::{Duration, Instant};

use durable_core::agent::{
    Agent, DurableAgent, LanguageModel, Message, ModelChunk, ModelRequest, StreamOptions,
};
use durable_core::EventKind;
use durable_openai::{GuidedModel, OpenAiModel};
use futures::StreamExt;
use serde_json::json;

const PROMPT: &str = "Tell me a long story about a dragon.";

struct Sample {
    first: Duration,
    total: Duration,
    deltas: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn direct(model: &OpenAiModel, tokens: u32) -> Result<Sample, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut first = None;
    let mut deltas = 0;
    let request = ModelRequest {
        messages: vec![Message::user(PROMPT)],
        max_tokens: Some(tokens),
        temperature: Some(0.0),
        ..Default::default()
    };
    let mut stream = model.stream(request).await?;
    while let Some(chunk) = stream.next().await {
        if let ModelChunk::TextDelta { .. } = chunk? {
            first.get_or_insert_with(|| started.elapsed());
            deltas += 1;
        }
    }
    Ok(Sample {
        first: first.unwrap_or_default(),
        total: started.elapsed(),
        deltas,
    })
}

async fn durable(agent: &DurableAgent) -> Result<Sample, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut first = None;
    let mut deltas = 0;
    let mut run = agent.stream(PROMPT, StreamOptions::new()).await?;
    while let Some(ev) = run.next().await {
        let ev = ev?;
        if ev.kind == EventKind::TextDelta {
            first.get_or_insert_with(|| started.elapsed());
            deltas += 1;
        }
    }
    Ok(Sample {
        first: first.unwrap_or_default(),
        total: started.elapsed(),
        deltas,
    })
}

fn report(name: &str, samples: &[Sample]) {
    let rate = median(
        samples
            .iter()
            .map(|s| s.deltas as f64 / s.total.as_secs_f64())
            .collect(),
    );
    let first = median(
        samples
            .iter()
            .map(|s| s.first.as_secs_f64() * 1e3)
            .collect(),
    );
    let total = median(
        samples
            .iter()
            .map(|s| s.total.as_secs_f64() * 1e3)
            .collect(),
    );
    let deltas = samples.first().map_or(0, |s| s.deltas);
    println!(
        "{name:<8} {rate:>7.1} deltas/s   first delta {first:>6.1} ms   total {total:>7.1} ms   ({deltas} deltas, median of {})",
        samples.len()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DURABLE_TEST_LLM_URL")
        .map_err(|_| "set DURABLE_TEST_LLM_URL (cargo xtask services starts a local model)")?;
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let tokens: u32 = args.next().map_or(Ok(256), |a| a.parse())?;
    let model = OpenAiModel::builder()
        .base_url(&url)
        .model("smollm2")
        .body_field("ignore_eos", json!(true))
        .build()?;
    let agent = DurableAgent::new(
        Agent::builder()
            .id("bench")
            .model(
                GuidedModel::new(model.clone())
                    .temperature(0.0)
                    .max_tokens(tokens),
            )
            .build()?,
    );
    // Warm up both paths (prompt cache, connections).
    direct(&model, 8).await?;
    durable(&agent).await?;
    let (mut d, mut a) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        d.push(direct(&model, tokens).await?);
        a.push(durable(&agent).await?);
    }
    println!("{} at {url}, {tokens} tokens per run", model.model_id());
    report("direct", &d);
    report("durable", &a);
    let rd = median(
        d.iter()
            .map(|s| s.deltas as f64 / s.total.as_secs_f64())
            .collect(),
    );
    let ra = median(
        a.iter()
            .map(|s| s.deltas as f64 / s.total.as_secs_f64())
            .collect(),
    );
    println!("durable/direct throughput: {:.3}", ra / rd);
    Ok(())
}

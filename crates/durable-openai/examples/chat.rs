//! Stream one answer from an OpenAI-compatible server.
//!
//! ```sh
//! OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_MODEL=llama3.2 \
//!     cargo run -p durable-openai --example chat -- "Why is the sky blue?"
//! ```

use std::io::Write;

use durable_core::agent::{LanguageModel, Message, ModelChunk, ModelRequest};
use durable_openai::OpenAiModel;
use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> durable_core::Result<()> {
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let prompt = if prompt.is_empty() {
        "Say hello in five words.".to_owned()
    } else {
        prompt
    };
    let model = OpenAiModel::from_env()?;
    let request = ModelRequest {
        messages: vec![Message::user(prompt)],
        ..Default::default()
    };
    let mut stream = model.stream(request).await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        match chunk? {
            ModelChunk::TextDelta { text } => {
                let _ = write!(out, "{text}");
                let _ = out.flush();
            }
            ModelChunk::ReasoningDelta { .. } => {}
            ModelChunk::ToolCall(call) => {
                println!("\n[tool call] {} {}", call.name, call.arguments)
            }
            ModelChunk::Finish { reason, usage } => println!(
                "\n[{reason:?}: {} prompt + {} completion tokens]",
                usage.input_tokens, usage.output_tokens
            ),
        }
    }
    Ok(())
}

#![doc = include_str!("../README.md")]

mod decode;
mod guided;
mod http;
mod model;
mod sse;
mod wire;

pub use guided::GuidedModel;
pub use model::{OpenAiModel, OpenAiModelBuilder, DEFAULT_BASE_URL};

/// The backend name carried by every [`durable_core::Error`] of this crate.
pub const BACKEND: &str = "openai";

#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod client;
mod http;
mod serve;
mod workflow;

pub use client::{RestateAgent, RestateAgentBuilder, RestateRun, DEFAULT_ABORT_TIMEOUT};
pub use serve::{
    register_deployment, RestateEndpoint, ServedEndpoint, DEFAULT_MODEL_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
};

/// The Restate service name of the workflow that executes runs (its key is the run id).
pub const SERVICE_NAME: &str = workflow::SERVICE;

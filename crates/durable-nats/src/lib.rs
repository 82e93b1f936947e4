#![doc = include_str!("../README.md")]

mod cache;
mod config;
mod error;
mod fanout;
mod js;
mod pubsub;
mod store;
mod subject;

pub use cache::NatsServerCache;
pub use config::{Nats, NatsConfig, DEFAULT_SUBJECT_PREFIX, URL_ENV_VARS};
pub use pubsub::NatsPubSub;
pub use store::NatsWorkflowStore;

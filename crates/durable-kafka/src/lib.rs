#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
mod error;
pub mod names;
mod pubsub;

pub use config::{KafkaConfig, DEFAULT_TOPIC_PREFIX, URL_ENV_VARS};
pub use pubsub::{KafkaPubSub, ATTEMPT_HEADER};

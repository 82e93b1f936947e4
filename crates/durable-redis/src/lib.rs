#![doc = include_str!("../README.md")]

mod cache;
mod config;
mod error;
mod keys;
mod pubsub;
mod scripts;
mod store;
mod transport;
#[cfg(feature = "upstash")]
pub mod upstash;

pub use cache::RedisServerCache;
pub use config::{Redis, RedisConfig, DEFAULT_KEY_PREFIX, URL_ENV_VARS};
pub use pubsub::RedisPubSub;
pub use store::RedisWorkflowStore;
#[cfg(feature = "upstash")]
pub use upstash::{UpstashConfig, UpstashServerCache};

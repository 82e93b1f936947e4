#![doc = include_str!("../README.md")]

mod cache;
mod config;
mod error;
mod keys;
mod pubsub;
mod scripts;
mod store;
mod transport;
pub mod upstash;

pub use cache::RedisServerCache;
pub use config::{Redis, RedisConfig, DEFAULT_KEY_PREFIX, URL_ENV_VARS};
pub use pubsub::RedisPubSub;
pub use store::RedisWorkflowStore;
pub use upstash::{UpstashConfig, UpstashServerCache};

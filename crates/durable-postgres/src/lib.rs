#![doc = include_str!("../README.md")]

mod cache;
mod config;
mod conns;
mod error;
mod exec;
mod notify;
mod pubsub;
mod store;

pub use cache::PostgresServerCache;
pub use config::{Postgres, PostgresConfig, Wake, DEFAULT_SCHEMA, URL_ENV_VARS};
pub use pubsub::PostgresPubSub;
pub use store::PostgresWorkflowStore;

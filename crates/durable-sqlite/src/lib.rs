#![doc = include_str!("../README.md")]

mod backend;
mod cache;
mod config;
mod db;
mod error;
mod store;
mod sweep;
mod writer;

pub use backend::{DurableAgentBuilderExt, SqliteBackend};
pub use cache::SqliteServerCache;
pub use config::{SqliteConfig, Synchronous, PATH_ENV_VAR, SYNCHRONOUS_ENV_VAR};
pub use store::SqliteWorkflowStore;
pub use writer::WriterStats;

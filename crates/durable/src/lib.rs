#![doc = include_str!("../README.md")]

pub use durable_core::*;
// Named as well as globbed, so the modules read as this crate's own in its docs.
pub use durable_core::{agent, memory, names, telemetry};

#[cfg(feature = "kafka")]
#[doc(inline)]
pub use durable_kafka as kafka;
#[cfg(feature = "nats")]
#[doc(inline)]
pub use durable_nats as nats;
#[cfg(feature = "openai")]
#[doc(inline)]
pub use durable_openai as openai;
#[cfg(feature = "otel")]
#[doc(inline)]
pub use durable_otel as otel;
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use durable_postgres as postgres;
#[cfg(feature = "redis")]
#[doc(inline)]
pub use durable_redis as redis;
#[cfg(feature = "restate")]
#[doc(inline)]
pub use durable_restate as restate;
#[cfg(feature = "server")]
#[doc(inline)]
pub use durable_server as server;
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use durable_sqlite as sqlite;

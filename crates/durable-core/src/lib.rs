#![doc = include_str!("../README.md")]

pub mod agent;
mod cache;
mod error;
mod event;
mod id;
mod log;
pub mod memory;
pub mod names;
mod pubsub;
mod store;
pub mod telemetry;

pub use cache::{
    Announce, AnnounceDomain, AppendOptions, CacheCapabilities, Cursor, LogSlice, ServerCache,
    ServerCacheExt,
};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use event::{Event, EventKind, Json, NewEvent};
pub use id::{validate_name, validate_prefix, RunId, MAX_NAME_LEN, MAX_RUN_ID_LEN};
pub use log::{frame, EventLog, EventStream, LogConfig, ObserveOptions, OnSuspend, RunWriter};
pub use pubsub::{
    Delivery, GroupSubscription, Job, JobAcker, PubSub, PubSubCapabilities, Subscription,
};
pub use store::{
    check_terminal, now_ms, ttl_ms, Epoch, Lease, NewRun, RunRecord, RunSnapshot, RunStatus,
    StoreCapabilities, WorkflowStore,
};

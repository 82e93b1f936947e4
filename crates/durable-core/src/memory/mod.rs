//! In-memory backends: the reference implementations of every trait, for one process and tests.
//!
//! All three are cheap to clone handles over shared state; clones see the same data, so two
//! agents built over clones behave like two instances sharing a server.

mod cache;
mod pubsub;
mod store;

pub use cache::InMemoryCache;
pub use pubsub::{InMemoryPubSub, DEFAULT_GROUP_CAPACITY, DEFAULT_SUBSCRIBER_CAPACITY};
pub use store::InMemoryWorkflowStore;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) const BACKEND: &str = "memory";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

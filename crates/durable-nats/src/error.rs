//! The one place where NATS client errors become [`durable_core::Error`].

use durable_core::{Error, ErrorKind};

/// Backend name of every type of this crate.
pub(crate) const NATS: &str = "nats";

/// An error of `kind` raised by this crate's own checks.
pub(crate) fn err(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
        .with_backend(NATS)
        .with_operation(op)
}

/// The server or the connection failed: retryable `Unavailable`.
pub(crate) fn unavailable(op: &'static str, source: impl Into<durable_core::BoxError>) -> Error {
    Error::new(ErrorKind::Unavailable, "cannot reach the NATS server")
        .with_backend(NATS)
        .with_operation(op)
        .with_retryable(true)
        .with_source(source)
}

/// The server did not answer in time: retryable `Timeout`.
pub(crate) fn timeout(op: &'static str) -> Error {
    Error::new(ErrorKind::Timeout, "the NATS server did not answer in time")
        .with_backend(NATS)
        .with_operation(op)
        .with_retryable(true)
}

/// An answer this crate cannot make sense of.
pub(crate) fn unexpected(op: &'static str, what: impl Into<String>) -> Error {
    err(ErrorKind::Unexpected, op, what)
}

/// Stored data that does not decode.
pub(crate) fn corrupt(op: &'static str, what: impl Into<String>) -> Error {
    err(ErrorKind::Corrupt, op, what)
}

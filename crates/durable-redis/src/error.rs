//! The one place where driver errors become [`durable_core::Error`].

use durable_core::{Error, ErrorKind};
use redis::{ErrorKind as RedisKind, RedisError, ServerErrorKind};

/// Backend name of the Redis types.
pub(crate) const REDIS: &str = "redis";
/// Backend name of the Upstash types.
#[cfg(feature = "upstash")]
pub(crate) const UPSTASH: &str = "upstash";

/// An error of `kind` raised by this crate's own checks.
pub(crate) fn err(
    backend: &'static str,
    kind: ErrorKind,
    op: &'static str,
    msg: impl Into<String>,
) -> Error {
    Error::new(kind, msg.into())
        .with_backend(backend)
        .with_operation(op)
}

/// Map a `redis` crate error: connection problems are retryable `Unavailable`, timeouts
/// retryable `Timeout`, a wrong key type `InvalidInput`, the rest `Unexpected`.
pub(crate) fn from_redis(op: &'static str, e: RedisError) -> Error {
    let (kind, retryable) = if e.is_timeout() {
        (ErrorKind::Timeout, true)
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        (ErrorKind::Unavailable, true)
    } else {
        match e.kind() {
            RedisKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            ) => (ErrorKind::Unavailable, true),
            // A transaction whose every command was refused because the server is not ready
            // (loading its data after a restart, a failover) is as retryable as one command.
            RedisKind::Server(ServerErrorKind::ExecAbort)
                if e.clone().into_server_errors().is_some_and(|errors| {
                    !errors.is_empty()
                        && errors.iter().all(|(_, error)| {
                            matches!(
                                error.kind(),
                                Some(
                                    ServerErrorKind::BusyLoading
                                        | ServerErrorKind::TryAgain
                                        | ServerErrorKind::ClusterDown
                                        | ServerErrorKind::MasterDown
                                        | ServerErrorKind::ReadOnly
                                )
                            )
                        })
                }) =>
            {
                (ErrorKind::Unavailable, true)
            }
            RedisKind::AuthenticationFailed | RedisKind::InvalidClientConfig => {
                (ErrorKind::InvalidInput, false)
            }
            _ => server_message_kind(e.code().unwrap_or(""), &e.to_string()),
        }
    };
    let message = match kind {
        ErrorKind::Unavailable => "cannot reach the Redis server",
        ErrorKind::Timeout => "the Redis server did not answer in time",
        ErrorKind::InvalidInput => "the Redis server rejected the request",
        _ => "unexpected Redis error",
    };
    Error::new(kind, message)
        .with_backend(REDIS)
        .with_operation(op)
        .with_retryable(retryable)
        .with_source(e)
}

/// Classify a server error reply by its code (first word) and text; shared with the Upstash
/// transport, whose errors arrive as `{"error": "WRONGTYPE …"}`.
pub(crate) fn server_message_kind(code: &str, text: &str) -> (ErrorKind, bool) {
    let code = if code.is_empty() {
        text.split_whitespace().next().unwrap_or("")
    } else {
        code
    };
    match code {
        "WRONGTYPE" => (ErrorKind::InvalidInput, false),
        "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "MOVED"
        | "ASK" => (ErrorKind::Unavailable, true),
        _ if text.contains("WRONGTYPE") => (ErrorKind::InvalidInput, false),
        _ if text.contains("overflow") || text.contains("not an integer") => {
            (ErrorKind::InvalidInput, false)
        }
        _ => (ErrorKind::Unexpected, false),
    }
}

#[cfg(feature = "upstash")]
/// Map a failed Upstash HTTP request: transport failures are retryable.
pub(crate) fn http_error(op: &'static str, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    err(UPSTASH, kind, op, "cannot reach the Upstash REST endpoint")
        .with_retryable(true)
        .with_source(e)
}

#[cfg(feature = "upstash")]
/// Map an Upstash HTTP error status: 401/403 (bad token) `InvalidInput`, 429/5xx retryable
/// `Unavailable`.
pub(crate) fn status_error(op: &'static str, status: reqwest::StatusCode, body: &str) -> Error {
    let (kind, retryable) = match status.as_u16() {
        401 | 403 => (ErrorKind::InvalidInput, false),
        429 | 500..=599 => (ErrorKind::Unavailable, true),
        _ => (ErrorKind::Unexpected, false),
    };
    let body: String = body.chars().take(200).collect();
    err(UPSTASH, kind, op, format!("HTTP {status}: {body}")).with_retryable(retryable)
}

#[cfg(feature = "upstash")]
/// Map an Upstash command error (`{"error": "WRONGTYPE …"}`).
pub(crate) fn command_error(op: &'static str, text: &str) -> Error {
    let (kind, retryable) = server_message_kind("", text);
    err(UPSTASH, kind, op, text.to_owned()).with_retryable(retryable)
}

//! The one place where driver errors become [`durable_core::Error`].

use durable_core::{Error, ErrorKind};

/// Backend name of every type of this crate.
pub(crate) const BACKEND: &str = "postgres";

/// An error of `kind` raised by this crate's own checks.
pub(crate) fn err(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
        .with_backend(BACKEND)
        .with_operation(op)
}

/// Check a name with [`durable_core::validate_name`], attributing the error to `op`.
pub(crate) fn check(op: &'static str, what: &'static str, name: &str) -> durable_core::Result<()> {
    durable_core::validate_name(what, name).map_err(|e| e.with_backend(BACKEND).with_operation(op))
}

/// Map an `sqlx` error.
///
/// - The SQLSTATEs raised by this crate's functions (`DUR01`…`DUR05`) become `Fenced`,
///   `LimitExceeded`, `NotFound`, `Conflict`, `InvalidState`.
/// - Connection problems (I/O, TLS, pool timeouts, class `08`, `57P01`–`57P03` admin shutdown
///   and restarts, class `53` resources) are retryable `Unavailable`.
/// - Serialization failures and deadlocks (`40001`, `40P01`) are retryable `Conflict`.
/// - Numeric overflow (`22003`) is `InvalidInput`; anything else `Unexpected`.
pub(crate) fn from_sqlx(op: &'static str, e: sqlx::Error) -> Error {
    let (kind, retryable, message): (ErrorKind, bool, String) = match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let text = db.message().to_owned();
            match code.as_str() {
                "DUR01" => (ErrorKind::Fenced, false, text),
                "DUR02" => (ErrorKind::LimitExceeded, false, text),
                "DUR03" => (ErrorKind::NotFound, false, text),
                "DUR04" => (ErrorKind::Conflict, false, text),
                "DUR05" => (ErrorKind::InvalidState, false, text),
                "40001" | "40P01" => (ErrorKind::Conflict, true, text),
                "22003" => (ErrorKind::InvalidInput, false, text),
                c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                    (ErrorKind::Unavailable, true, text)
                }
                _ => (ErrorKind::Unexpected, false, text),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => (
            ErrorKind::Unavailable,
            true,
            "cannot reach the PostgreSQL server".to_owned(),
        ),
        sqlx::Error::Configuration(_) => (
            ErrorKind::InvalidInput,
            false,
            "bad PostgreSQL configuration".to_owned(),
        ),
        _ => (
            ErrorKind::Unexpected,
            false,
            "unexpected PostgreSQL error".to_owned(),
        ),
    };
    // Database messages hold names and epochs, never credentials; the source is kept.
    let out = Error::new(kind, message)
        .with_backend(BACKEND)
        .with_operation(op)
        .with_retryable(retryable);
    match e {
        // Our own SQLSTATEs are complete in the message: no source needed.
        sqlx::Error::Database(ref db) if db.code().is_some_and(|c| c.starts_with("DUR")) => out,
        other => out.with_source(other),
    }
}

/// Run `f` once more when its connection was [`broken`](crate::conns::broken) (a server
/// restart, a terminated session): the failure closed every idle connection too (see
/// [`Conn::finish`](crate::conns::Conn::finish)), so the second try runs on a new one.
///
/// **Only for idempotent statements**: reads, and writes whose second run stores nothing more
/// and answers the same (set a value, extend an expiry, renew a lease, a first-writer-wins
/// checkpoint, a claim by the same owner, an ack). A broken connection does not tell whether
/// the server ran the statement (the request may have been written and the reply lost), so an
/// append, an increment, an insert or a status change must not use it: their error is
/// returned as retryable `Unavailable`, and the caller, who knows what it expected, decides
/// (the run writer asks the log's length; a run restarts from its last checkpoint). Running
/// an append again here once stored a batch twice.
pub(crate) async fn retry_idempotent<T, F, Fut>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    match f().await {
        Err(e) if crate::conns::broken(&e) => f().await,
        other => other,
    }
}

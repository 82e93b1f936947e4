//! The one place where `rusqlite` errors become [`durable_core::Error`].

use durable_core::{Error, ErrorKind};
use rusqlite::ErrorCode;

/// Backend name of every error and capability of this crate.
pub(crate) const SQLITE: &str = "sqlite";

/// An error of `kind` raised by this crate's own checks.
pub(crate) fn err(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
        .with_backend(SQLITE)
        .with_operation(op)
}

/// A key operation on a log's name, or a log operation on a key's name.
pub(crate) fn wrong_type(op: &'static str, name: &str) -> Error {
    err(
        ErrorKind::Conflict,
        op,
        format!("{name:?} is a log and a key at once: a key and a log may not share a name"),
    )
}

/// The writer never answered: its thread is gone, or the write failed inside it.
pub(crate) fn writer_gone(op: &'static str) -> Error {
    err(
        ErrorKind::Unavailable,
        op,
        "the SQLite writer did not complete the write (its thread stopped or the write failed)",
    )
}

/// Map a `rusqlite` error: a busy or locked database (another process holds the write lock
/// past `busy_timeout`) is a retryable `Unavailable`, a full disk or an I/O error a retryable
/// `Unavailable` too, a corrupt file `Corrupt`, the rest `Unexpected`.
pub(crate) fn from_sqlite(op: &'static str, e: rusqlite::Error) -> Error {
    let (kind, retryable, message) = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => (
                ErrorKind::Unavailable,
                true,
                "the SQLite database is busy (another connection or process holds the lock)",
            ),
            ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => (
                ErrorKind::Unavailable,
                true,
                "the SQLite database file cannot be written or opened",
            ),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                (ErrorKind::Corrupt, false, "the SQLite database is corrupt")
            }
            ErrorCode::ReadOnly | ErrorCode::PermissionDenied => (
                ErrorKind::InvalidInput,
                false,
                "the SQLite database is read-only or not accessible",
            ),
            _ => (ErrorKind::Unexpected, false, "unexpected SQLite error"),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => (
            ErrorKind::Corrupt,
            false,
            "stored data has an unexpected type",
        ),
        _ => (ErrorKind::Unexpected, false, "unexpected SQLite error"),
    };
    err(kind, op, message)
        .with_retryable(retryable)
        .with_source(e)
}

/// Stored JSON that does not decode.
pub(crate) fn corrupt(op: &'static str, what: &str, e: serde_json::Error) -> Error {
    err(
        ErrorKind::Corrupt,
        op,
        format!("stored {what} is not valid"),
    )
    .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_locked_are_retryable_unavailable() {
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_FULL,
        ] {
            let e = from_sqlite(
                "append",
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
            );
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(e.is_retryable());
            assert_eq!((e.backend(), e.operation()), ("sqlite", "append"));
        }
        let e = from_sqlite(
            "read",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                None,
            ),
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(!e.is_retryable());
    }
}

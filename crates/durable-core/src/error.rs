//! The one error type of the workspace.
//!
//! Every backend maps its driver errors into [`Error`] in one place. Callers match on
//! [`Error::kind`], never on message text.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Boxed source error carried by [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The run, log, key or group does not exist (and never existed, or its tombstone expired too).
    NotFound,
    /// The run existed but its retention elapsed: its events are gone for good.
    Gone,
    /// An observe offset is beyond the next cursor of the log.
    OffsetAhead,
    /// A write conflicts with current state (the run already exists, the lease is held by another owner).
    Conflict,
    /// A write carried an epoch older than the current owner's: the writer was fenced off.
    Fenced,
    /// The input was rejected before it reached the backend (bad run id, key, topic, option).
    InvalidInput,
    /// The backend does not support this operation (see its capabilities).
    Unsupported,
    /// The operation did not complete in time.
    Timeout,
    /// The backend cannot be reached or is overloaded; usually worth a retry.
    Unavailable,
    /// A configured bound was reached (maximum events per log, queue capacity).
    LimitExceeded,
    /// The producer of a live run stopped (its lease expired) and nobody took it over.
    ProducerLost,
    /// Stored data could not be decoded.
    Corrupt,
    /// The operation was not valid in the run's current state (resume of a run that is not suspended).
    InvalidState,
    /// Anything else: a bug or an unexpected backend answer.
    Unexpected,
}

impl ErrorKind {
    /// A stable, lowercase name for logs and problem bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Gone => "gone",
            ErrorKind::OffsetAhead => "offset_ahead",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::ProducerLost => "producer_lost",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    /// Whether an error of this kind is retryable unless the backend says otherwise.
    fn default_retryable(self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible operation in `durable`.
///
/// Carries a [`ErrorKind`], the backend and operation that failed, whether a retry may help,
/// a human-readable message and an optional source.
///
/// Cloning is cheap (the source is shared), so an error that several waiters must see (a failed
/// batch append reported to every pending flush) keeps every field for each of them.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    backend: &'static str,
    operation: &'static str,
    retryable: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message. Retryable defaults to the kind's default.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            backend: "",
            operation: "",
            retryable: kind.default_retryable(),
            source: None,
        }
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Set the backend name (`"memory"`, `"redis"`, …).
    #[must_use]
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// Set the operation name (`"append"`, `"claim"`, …).
    #[must_use]
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = operation;
        self
    }

    /// Override whether a retry may succeed.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Attach the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend that failed, or `""` when the error was raised above any backend.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The operation that failed, or `""` when unknown.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message, without kind, backend or operation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if !self.backend.is_empty() {
            d.field("backend", &self.backend);
        }
        if !self.operation.is_empty() {
            d.field("operation", &self.operation);
        }
        d.field("retryable", &self.retryable);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        match (self.backend, self.operation) {
            ("", "") => {}
            (b, "") => write!(f, " ({b})")?,
            ("", o) => write!(f, " ({o})")?,
            (b, o) => write!(f, " ({b} {o})")?,
        }
        write!(f, ": {}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new(ErrorKind::Corrupt, "JSON encoding or decoding failed").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_backend_operation_and_source() {
        let e = Error::new(ErrorKind::Unavailable, "connection refused")
            .with_backend("redis")
            .with_operation("append")
            .with_source(std::io::Error::other("io"));
        assert_eq!(
            e.to_string(),
            "unavailable (redis append): connection refused: io"
        );
        assert!(e.is_retryable());
        assert!(!Error::invalid_input("x").is_retryable());
    }
}

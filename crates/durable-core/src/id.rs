//! Validated identifiers and names.
//!
//! Everything user-supplied passes through one of these validators before it reaches a key,
//! subject, topic or query (SPEC G8).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Maximum length of a [`RunId`].
pub const MAX_RUN_ID_LEN: usize = 128;

/// Maximum length of a key, log, topic or group name passed to a backend.
pub const MAX_NAME_LEN: usize = 512;

/// The id of one run: `[A-Za-z0-9_-]`, 1 to 128 characters.
///
/// Cheap to clone. Generated ids are random UUIDs ([`RunId::generate`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Arc<str>);

impl RunId {
    /// Validate and wrap a run id.
    ///
    /// # Behavior
    /// - Ids with `*`, `>`, `.`, `:`, `/`, spaces, `..`, 0 or 129 characters, or non-ASCII are
    ///   rejected and nothing is written (`invalid_run_ids_are_rejected_and_nothing_is_written`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) if the id is empty, longer than
    /// 128 characters, or has a character outside `[A-Za-z0-9_-]`.
    pub fn new(id: impl AsRef<str>) -> Result<Self> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_RUN_ID_LEN {
            return Err(Error::invalid_input(format!(
                "run id must be 1..={MAX_RUN_ID_LEN} characters, got {}",
                id.chars().count()
            )));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(Error::invalid_input(format!(
                "run id may only contain [A-Za-z0-9_-], found {bad:?}"
            )));
        }
        Ok(Self(Arc::from(id)))
    }

    /// A fresh random run id (a UUID v4).
    pub fn generate() -> Self {
        Self(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RunId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RunId::new(s).map_err(serde::de::Error::custom)
    }
}

/// Validate a logical key, log, topic or group name before it reaches a backend.
///
/// Names are 1 to 512 characters of `[A-Za-z0-9_-.:/]`, without empty `.`-separated segments
/// and without `..`. Adapters map these onto their own namespace (and may escape further); this
/// check guarantees no glob, wildcard, whitespace or control character ever arrives there.
///
/// # Errors
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming `what` and the problem.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::invalid_input(format!(
            "{what} must be 1..={MAX_NAME_LEN} bytes, got {}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')))
    {
        return Err(Error::invalid_input(format!(
            "{what} may only contain [A-Za-z0-9_-.:/], found {bad:?}"
        )));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(Error::invalid_input(format!(
            "{what} may not start or end with '.' or contain '..'"
        )));
    }
    Ok(())
}

/// Validate a name prefix (of [`ServerCache::keys`](crate::ServerCache::keys)): empty, or the
/// characters of [`validate_name`], at most [`MAX_NAME_LEN`] bytes, not starting with `.` and
/// without `..` (a prefix may end with a separator).
///
/// # Errors
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming `what` and the problem.
pub fn validate_prefix(what: &'static str, prefix: &str) -> Result<()> {
    if prefix.len() > MAX_NAME_LEN {
        return Err(Error::invalid_input(format!(
            "{what} may be at most {MAX_NAME_LEN} bytes, got {}",
            prefix.len()
        )));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')))
    {
        return Err(Error::invalid_input(format!(
            "{what} may only contain [A-Za-z0-9_-.:/], found {bad:?}"
        )));
    }
    if prefix.starts_with('.') || prefix.contains("..") {
        return Err(Error::invalid_input(format!(
            "{what} may not start with '.' or contain '..'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn run_ids_are_validated() {
        for ok in ["a", "run_1-X", &"a".repeat(128)] {
            assert!(RunId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a*",
            "a>",
            "a.b",
            "a:b",
            "a/b",
            "a b",
            "..",
            "é",
            "a\n",
            &"a".repeat(129),
        ] {
            assert_eq!(
                RunId::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert_eq!(RunId::generate().as_str().len(), 36);
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("key", "durable/run/abc:events").is_ok());
        for bad in ["", "a*b", "a b", "a..b", ".a", "a.", "a>b", "a\u{0}"] {
            assert!(validate_name("key", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_id_deserialization_validates() {
        assert!(serde_json::from_str::<RunId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<RunId>("\"no.dots\"").is_err());
    }
}

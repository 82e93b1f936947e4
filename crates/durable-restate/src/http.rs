//! The HTTP client used for Restate's ingress and admin API.

use std::time::Duration;

use durable_core::{Error, ErrorKind, Result};

/// One HTTP client (connection pool) for Restate's ingress and admin API.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
}

impl Http {
    pub(crate) fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { client }
    }
}

/// `url` without a trailing `/`, if it is an `http://` or `https://` URL.
pub(crate) fn check_url(what: &str, url: &str) -> Result<String> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_owned())
        }
        _ => Err(Error::invalid_input(format!(
            "the Restate {what} must be an http(s):// URL"
        ))),
    }
}

pub(crate) fn unavailable(op: &'static str, e: reqwest::Error) -> Error {
    Error::new(ErrorKind::Unavailable, "Restate cannot be reached")
        .with_source(e)
        .with_backend("restate")
        .with_operation(op)
}

/// `url` with any `user:password@` replaced by `***@`, for Debug output and messages.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact("http://u:p@h:1/x"), "http://***@h:1/x");
        assert_eq!(redact("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(redact("https://h"), "https://h");
    }
}

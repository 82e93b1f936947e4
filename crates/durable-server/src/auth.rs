//! Access control (off by default): HMAC-signed expiring run tokens and a pluggable authorizer.
//!
//! With access control on, every route that names a run needs credentials *before* the run is
//! looked up, so the answer (401 without credentials, 403 with credentials that do not grant
//! the run) is the same whether the run exists or not.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use durable_core::RunId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Who a request acts for: maps a request to the resource id that owns runs
/// ([`StreamOptions::resource_id`](durable_core::agent::StreamOptions::resource_id)).
///
/// Implement it over your session cookies or an API gateway's identity header.
pub trait Authorizer: Send + Sync + 'static {
    /// The resource id the request acts for, or `None` if it carries no identity.
    fn resource(&self, headers: &HeaderMap) -> Option<String>;
}

/// Trusts a header set by a gateway in front of the server (for example `x-resource-id`).
/// Only correct when clients cannot reach the server without passing the gateway.
#[derive(Debug, Clone)]
pub struct TrustedHeader(pub String);

impl Authorizer for TrustedHeader {
    fn resource(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get(self.0.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Signs and checks run tokens: `<run_id>.<expiry, Unix seconds>.<HMAC-SHA256, base64url>`.
/// A token grants one run until it expires. The key never appears in `Debug` or logs.
#[derive(Clone)]
pub struct RunTokens {
    key: Arc<[u8]>,
    ttl: Duration,
}

impl fmt::Debug for RunTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunTokens")
            .field("key", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl RunTokens {
    /// Tokens signed with `key` (at least 32 bytes of secret randomness), valid for `ttl`.
    ///
    /// # Errors
    /// A key shorter than 32 bytes.
    pub fn new(key: impl AsRef<[u8]>, ttl: Duration) -> Result<Self, String> {
        let key = key.as_ref();
        if key.len() < 32 {
            return Err("the run token key must have at least 32 bytes".to_owned());
        }
        Ok(Self {
            key: Arc::from(key),
            ttl,
        })
    }

    fn mac(&self, run_id: &str, expires: u64) -> HmacSha256 {
        // `new_from_slice` accepts any key length for HMAC; the length was checked in `new`.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(run_id.as_bytes());
        mac.update(b".");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// A token for `run_id`, valid from `now` (Unix seconds) for the configured time.
    pub fn issue_at(&self, run_id: &RunId, now: u64) -> String {
        let expires = now.saturating_add(self.ttl.as_secs());
        let sig = self.mac(run_id.as_str(), expires).finalize().into_bytes();
        format!("{run_id}.{expires}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// A token for `run_id`, valid from now.
    pub fn issue(&self, run_id: &RunId) -> String {
        self.issue_at(run_id, now_secs())
    }

    /// Whether `token` grants `run_id` at `now` (Unix seconds). Compares in constant time.
    pub fn verify_at(&self, token: &str, run_id: &RunId, now: u64) -> bool {
        let mut parts = token.splitn(3, '.');
        let (Some(id), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(expires) = exp.parse::<u64>() else {
            return false;
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        id == run_id.as_str() && now < expires && self.mac(id, expires).verify_slice(&sig).is_ok()
    }

    /// Whether `token` grants `run_id` now.
    pub fn verify(&self, token: &str, run_id: &RunId) -> bool {
        self.verify_at(token, run_id, now_secs())
    }
}

fn now_secs() -> u64 {
    durable_core::now_ms() / 1000
}

/// Access control configuration: run tokens, an authorizer, or both.
#[derive(Clone, Default)]
pub struct AccessControl {
    pub(crate) tokens: Option<RunTokens>,
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
}

impl fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessControl")
            .field("tokens", &self.tokens)
            .field("authorizer", &self.authorizer.is_some())
            .finish()
    }
}

impl AccessControl {
    /// No credentials accepted yet: add [`tokens`](Self::tokens) and/or an
    /// [`authorizer`](Self::authorizer).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept (and issue, from the stream routes) run tokens.
    #[must_use]
    pub fn tokens(mut self, tokens: RunTokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Identify callers with `authorizer`: a caller may use the runs it owns.
    #[must_use]
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }
}

/// The bearer token of a request: `Authorization: Bearer <token>`, else `?token=`.
pub(crate) fn bearer<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_one_run_until_they_expire() {
        let t = RunTokens::new([7u8; 32], Duration::from_secs(60)).unwrap();
        let a = RunId::new("run-a").unwrap();
        let b = RunId::new("run-b").unwrap();
        let tok = t.issue_at(&a, 1000);
        assert!(t.verify_at(&tok, &a, 1000));
        assert!(t.verify_at(&tok, &a, 1059));
        assert!(!t.verify_at(&tok, &a, 1060), "expired");
        assert!(!t.verify_at(&tok, &b, 1000), "another run");
        let forged = tok.replace(".1060.", ".9999.");
        assert!(!t.verify_at(&forged, &a, 1000), "expiry is signed");
        let other = RunTokens::new([8u8; 32], Duration::from_secs(60)).unwrap();
        assert!(!other.verify_at(&tok, &a, 1000), "another key");
        for junk in ["", "..", "run-a", "run-a.x.y", "run-a.1060.%%%"] {
            assert!(!t.verify_at(junk, &a, 1000));
        }
        assert!(!format!("{t:?}").contains('7'), "key hidden: {t:?}");
        assert!(RunTokens::new([1u8; 8], Duration::from_secs(1)).is_err());
    }
}

//! [`UpstashServerCache`]: the same run log and key/value cache over the
//! [Upstash Redis REST API](https://upstash.com/docs/redis/features/restapi).
//!
//! Each operation is one HTTPS `POST` of a JSON command array (`["EVALSHA", sha, …]`) with
//! `Authorization: Bearer <token>`; the atomic append is the same Lua script as on Redis, so it
//! holds over REST too. Values travel as JSON strings, so payloads must be UTF-8 (every durable
//! event is JSON); other bytes are rejected with `InvalidInput`.
//!
//! Tested against the project's REST emulation in front of a real Redis (see the crate README),
//! not against Upstash itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    Announce, AnnounceDomain, AppendOptions, CacheCapabilities, Cursor, Error, ErrorKind, LogSlice,
    Result, ServerCache,
};
use serde_json::Value;

use crate::cache::{server_cache_impl, CacheCore};
use crate::config::DEFAULT_KEY_PREFIX;
use crate::error::{command_error, err, http_error, status_error, UPSTASH};
use crate::keys::KeySpace;
use crate::scripts::Script;
use crate::transport::{Reply, Transport};

/// Environment variables read by [`UpstashConfig::from_env`]: the REST URL and its token (the
/// names Upstash's console shows).
pub const UPSTASH_ENV_VARS: [&str; 2] = ["UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"];

/// Settings of an [`UpstashServerCache`]. `Debug` never shows the token.
#[derive(Clone)]
#[non_exhaustive]
pub struct UpstashConfig {
    /// The REST endpoint, e.g. `https://eu1-example-12345.upstash.io`.
    pub url: String,
    /// The REST token (sent as `Authorization: Bearer <token>`).
    pub token: String,
    /// Prefix of every key (default [`DEFAULT_KEY_PREFIX`]).
    pub key_prefix: String,
    /// Timeout of one request, connection included (default 10 s).
    pub timeout: Duration,
}

impl UpstashConfig {
    /// Settings for `url` and `token` with every default.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Settings from `UPSTASH_REDIS_REST_URL` and `UPSTASH_REDIS_REST_TOKEN`.
    ///
    /// # Errors
    /// `InvalidInput` if either is missing.
    pub fn from_env() -> Result<Self> {
        let get = |v: &str| {
            std::env::var(v)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Error::invalid_input(format!("{v} is not set")).with_backend(UPSTASH)
                })
        };
        Ok(Self::new(
            get(UPSTASH_ENV_VARS[0])?,
            get(UPSTASH_ENV_VARS[1])?,
        ))
    }

    /// Set the key prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Set the request timeout.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Build the cache (no request is made until the first operation).
    ///
    /// # Errors
    /// `InvalidInput` for a bad key prefix or an HTTP client that cannot be built.
    pub fn build(self) -> Result<UpstashServerCache> {
        let keys = KeySpace::new(&self.key_prefix).map_err(|e| e.with_backend(UPSTASH))?;
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| {
                err(
                    UPSTASH,
                    ErrorKind::InvalidInput,
                    "connect",
                    "cannot build the HTTP client",
                )
                .with_source(e)
            })?;
        let transport = UpstashTransport {
            http,
            url: self.url.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {}", self.token),
        };
        Ok(UpstashServerCache {
            // No announce: this crate has no PubSub over Upstash to pair with.
            core: Arc::new(CacheCore {
                transport,
                keys,
                announce: None,
            }),
            config: Arc::new(self),
        })
    }
}

impl fmt::Debug for UpstashConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstashConfig")
            .field("url", &self.url)
            .field("token", &"***")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// [`ServerCache`] over the Upstash Redis REST API; see the [module docs](self).
#[derive(Clone)]
pub struct UpstashServerCache {
    core: Arc<CacheCore<UpstashTransport>>,
    config: Arc<UpstashConfig>,
}

impl fmt::Debug for UpstashServerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstashServerCache")
            .field("config", &self.config)
            .finish()
    }
}

impl UpstashServerCache {
    /// A cache for `url` and `token` with default settings.
    ///
    /// # Errors
    /// As [`UpstashConfig::build`].
    pub fn new(url: &str, token: &str) -> Result<Self> {
        UpstashConfig::new(url, token).build()
    }
}

server_cache_impl!(UpstashServerCache);

struct UpstashTransport {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl fmt::Debug for UpstashTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstashTransport")
            .field("url", &self.url)
            .finish()
    }
}

/// Outcome of one REST command: a result, or the server's error text.
enum Answer {
    Result(Reply),
    Error(String),
}

fn from_json(v: Value) -> Reply {
    match v {
        Value::Null => Reply::Nil,
        Value::Bool(b) => Reply::Int(i64::from(b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Reply::Int(i),
            None => Reply::Bulk(Bytes::from(n.to_string())),
        },
        Value::String(s) => Reply::Bulk(Bytes::from(s)),
        Value::Array(a) => Reply::Array(a.into_iter().map(from_json).collect()),
        Value::Object(_) => Reply::Nil,
    }
}

impl UpstashTransport {
    async fn post(&self, op: &'static str, args: &[&[u8]]) -> Result<Answer> {
        let mut body = Vec::with_capacity(args.len());
        for a in args {
            let s = std::str::from_utf8(a).map_err(|_| {
                err(
                    UPSTASH,
                    ErrorKind::InvalidInput,
                    op,
                    "the Upstash REST API carries UTF-8 text only",
                )
            })?;
            body.push(Value::from(s));
        }
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await
            .map_err(|e| http_error(op, e))?;
        let status = response.status();
        let text = response.bytes().await.map_err(|e| http_error(op, e))?;
        let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(&text).ok();
        if let Some(mut obj) = parsed {
            if let Some(e) = obj.get("error").and_then(Value::as_str) {
                if status.is_client_error() && status.as_u16() != 400 {
                    return Err(status_error(op, status, e));
                }
                return Ok(Answer::Error(e.to_owned()));
            }
            if status.is_success() {
                if let Some(r) = obj.remove("result") {
                    return Ok(Answer::Result(from_json(r)));
                }
            }
        }
        Err(status_error(op, status, &String::from_utf8_lossy(&text)))
    }
}

#[async_trait]
impl Transport for UpstashTransport {
    fn backend(&self) -> &'static str {
        UPSTASH
    }

    async fn command(&self, op: &'static str, args: &[&[u8]]) -> Result<Reply> {
        match self.post(op, args).await? {
            Answer::Result(r) => Ok(r),
            Answer::Error(e) => Err(command_error(op, &e)),
        }
    }

    async fn eval(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply> {
        let nkeys = keys.len().to_string();
        let mut call: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        call.push(b"EVALSHA");
        call.push(script.sha.as_bytes());
        call.push(nkeys.as_bytes());
        call.extend_from_slice(keys);
        call.extend_from_slice(args);
        match self.post(op, &call).await? {
            Answer::Result(r) => Ok(r),
            Answer::Error(e) if e.starts_with("NOSCRIPT") => {
                call[0] = b"EVAL";
                call[1] = script.source.as_bytes();
                self.command(op, &call).await
            }
            Answer::Error(e) => Err(command_error(op, &e)),
        }
    }
}

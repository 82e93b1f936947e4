//! Connection settings and the shared connection handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use durable_core::{AnnounceDomain, Error, ErrorKind, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::cache::{CacheCore, RedisServerCache};
use crate::error::{err, from_redis, REDIS};
use crate::keys::KeySpace;
use crate::pubsub::RedisPubSub;
use crate::store::RedisWorkflowStore;
use crate::transport::RedisTransport;

/// Default key prefix of every Redis key and channel.
pub const DEFAULT_KEY_PREFIX: &str = "durable:";

/// Environment variables read by [`RedisConfig::from_env`], in order.
pub const URL_ENV_VARS: [&str; 2] = ["DURABLE_REDIS_URL", "REDIS_URL"];

/// Settings of the Redis backends. Every field has a documented default; build one with
/// [`RedisConfig::new`] or [`RedisConfig::from_env`], adjust it, then [`RedisConfig::connect`].
///
/// `Debug` shows the URL with its password replaced by `***`.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://…` for TLS (rustls, system roots;
    /// needs the `tls` feature, on by default).
    pub url: String,
    /// Prefix of every key and channel (default [`DEFAULT_KEY_PREFIX`]); `[A-Za-z0-9_-.:/]`.
    pub key_prefix: String,
    /// Timeout of one connection attempt (default 5 s).
    pub connect_timeout: Duration,
    /// Timeout of one command's answer (default 5 s); a hung server becomes a retryable `Timeout`.
    pub response_timeout: Duration,
    /// Multiplexed connections used round-robin for commands (default 1: one pipelined
    /// connection already carries concurrent requests without waiting for each other).
    pub connections: usize,
    /// Bounded buffer of one fan-out subscriber, in messages (default 1024); overflow yields
    /// [`Delivery::Lagged`](durable_core::Delivery::Lagged).
    pub subscriber_capacity: usize,
    /// Approximate bound of a consumer-group stream (`XADD MAXLEN ~`, default 100,000).
    pub group_max_len: u64,
    /// A job delivered but neither acked nor nacked for this long is reclaimed by another
    /// consumer (its consumer is presumed dead; default 30 s).
    pub group_reclaim_idle: Duration,
    /// A consumer-group stream expires this long after its last publish or subscribe (default
    /// 7 days), so abandoned queues do not leak keys.
    pub group_ttl: Duration,
    /// Jobs fetched per `XREADGROUP` (default 16).
    pub group_batch: usize,
}

impl RedisConfig {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            connections: 1,
            subscriber_capacity: 1024,
            group_max_len: 100_000,
            group_reclaim_idle: Duration::from_secs(30),
            group_ttl: Duration::from_secs(7 * 24 * 3600),
            group_batch: 16,
        }
    }

    /// Settings from the environment: the URL from `DURABLE_REDIS_URL`, else `REDIS_URL`; the
    /// key prefix from `DURABLE_REDIS_KEY_PREFIX` if set.
    ///
    /// # Errors
    /// `InvalidInput` if no URL variable is set.
    pub fn from_env() -> Result<Self> {
        let url = URL_ENV_VARS
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "set {} to a redis:// URL",
                    URL_ENV_VARS.join(" or ")
                ))
                .with_backend(REDIS)
            })?;
        let mut c = Self::new(url);
        if let Ok(p) = std::env::var("DURABLE_REDIS_KEY_PREFIX") {
            c.key_prefix = p;
        }
        Ok(c)
    }

    /// Set the key prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Set the connection timeout.
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Set the response timeout.
    #[must_use]
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// Set the number of multiplexed command connections.
    #[must_use]
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Set the per-subscriber buffer.
    #[must_use]
    pub fn subscriber_capacity(mut self, n: usize) -> Self {
        self.subscriber_capacity = n.max(1);
        self
    }

    /// Set the consumer-group stream bound.
    #[must_use]
    pub fn group_max_len(mut self, n: u64) -> Self {
        self.group_max_len = n.max(1);
        self
    }

    /// Set how long an unsettled job waits before another consumer reclaims it.
    #[must_use]
    pub fn group_reclaim_idle(mut self, t: Duration) -> Self {
        self.group_reclaim_idle = t;
        self
    }

    /// Set the idle TTL of consumer-group streams.
    #[must_use]
    pub fn group_ttl(mut self, t: Duration) -> Self {
        self.group_ttl = t;
        self
    }

    /// Connect (one multiplexed connection per [`RedisConfig::connections`], reconnecting by
    /// itself after failures).
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL or prefix, `Unavailable` if the server cannot be reached.
    pub async fn connect(self) -> Result<Redis> {
        let keys = KeySpace::new(&self.key_prefix).map_err(|e| e.with_backend(REDIS))?;
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            err(
                REDIS,
                ErrorKind::InvalidInput,
                "connect",
                format!("bad Redis URL {}", redact(&self.url)),
            )
            .with_source(e)
        })?;
        let mgr_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut conns = Vec::with_capacity(self.connections);
        for _ in 0..self.connections.max(1) {
            let conn = ConnectionManager::new_with_config(client.clone(), mgr_config.clone())
                .await
                .map_err(|e| from_redis("connect", e))?;
            conns.push(RedisTransport::new(conn));
        }
        let domain = announce_domain(&client, &self.key_prefix);
        Ok(Redis {
            inner: Arc::new(Shared {
                domain,
                client,
                transports: conns,
                next: std::sync::atomic::AtomicUsize::new(0),
                keys,
                config: self,
            }),
        })
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("connections", &self.connections)
            .field("subscriber_capacity", &self.subscriber_capacity)
            .field("group_max_len", &self.group_max_len)
            .field("group_reclaim_idle", &self.group_reclaim_idle)
            .field("group_ttl", &self.group_ttl)
            .field("group_batch", &self.group_batch)
            .finish()
    }
}

/// `url` with the password (if any) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or("", |(u, _)| u);
    if !userinfo.contains(':') {
        return format!("{}***@{}", &url[..scheme_end], &rest[at + 1..]);
    }
    format!("{}{user}:***@{}", &url[..scheme_end], &rest[at + 1..])
}

/// The channel space of a server and key prefix: `redis:<host>:<port>` (or the socket path)
/// and the prefix. Channels are global to a server (not per database), and the address holds
/// no credentials (user, password and database are not part of it).
fn announce_domain(client: &redis::Client, key_prefix: &str) -> AnnounceDomain {
    let addr = client.get_connection_info().addr();
    AnnounceDomain::new(format!("redis:{addr} {key_prefix}"))
}

/// A connection to one Redis server (or proxy), shared by the cache, pubsub and store built
/// from it. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Shared>,
}

struct Shared {
    /// Shared by the cache and the pubsub built from this connection: they are paired.
    domain: AnnounceDomain,
    client: redis::Client,
    transports: Vec<RedisTransport>,
    next: std::sync::atomic::AtomicUsize,
    keys: KeySpace,
    config: RedisConfig,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Redis {
    /// Connect to `url` with default settings.
    ///
    /// # Errors
    /// As [`RedisConfig::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        RedisConfig::new(url).connect().await
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    pub(crate) fn transport(&self) -> RedisTransport {
        let t = &self.inner.transports;
        let i = self
            .inner
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        t[i % t.len()].clone()
    }

    pub(crate) fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    pub(crate) fn announce_domain(&self) -> &AnnounceDomain {
        &self.inner.domain
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// The run-log cache on this connection.
    pub fn server_cache(&self) -> RedisServerCache {
        RedisServerCache {
            core: Arc::new(CacheCore {
                transport: self.transport(),
                keys: self.inner.keys.clone(),
                announce: Some(self.inner.domain.clone()),
            }),
        }
    }

    /// The workflow store on this connection.
    pub fn workflow_store(&self) -> RedisWorkflowStore {
        RedisWorkflowStore {
            transport: self.transport(),
            keys: self.inner.keys.clone(),
        }
    }

    /// A PubSub on this connection, with its own dedicated subscription connection (opened
    /// now) that carries every subscription of the returned value and its clones.
    ///
    /// # Errors
    /// `Unavailable` if the subscription connection cannot be opened.
    pub async fn pubsub(&self) -> Result<RedisPubSub> {
        RedisPubSub::new(self.clone()).await
    }
}

impl RedisServerCache {
    /// Connect to `url` with default settings; see [`RedisConfig`] for more.
    ///
    /// # Errors
    /// As [`RedisConfig::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Redis::connect(url).await?.server_cache())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let c = RedisConfig::new("redis://u:hunter2@h");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn announce_domains_name_server_and_prefix_never_credentials() {
        let domain =
            |url: &str, prefix: &str| announce_domain(&redis::Client::open(url).unwrap(), prefix);
        let d = domain("redis://user:hunter2@h:7000/3", "p:");
        assert_eq!(d.as_str(), "redis:h:7000 p:");
        assert!(!format!("{d:?}").contains("hunter2"));
        // Channels are per server, not per database or user.
        assert_eq!(d, domain("redis://h:7000/0", "p:"));
        assert_ne!(d, domain("redis://h:7000", "q:"));
        assert_ne!(d, domain("redis://h:7001", "p:"));
    }
}

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
use crate::transport::{Conn, RedisTransport};

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
    /// needs the `tls` feature, on by default). For a Redis Cluster, the seed nodes separated
    /// by commas (`redis://h1:7000,redis://h2:7001`); more than one URL means a cluster.
    pub url: String,
    /// Connect to a Redis Cluster even with a single seed URL (default: only when `url` lists
    /// several).
    pub cluster: bool,
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
    /// Replicas that must acknowledge every write script (append, run transitions,
    /// checkpoints, publishes) before it counts as done: `WAIT <n> <replica_ack_timeout>`
    /// pipelined after it, so still one round trip (default 0: no wait). Redis replicates
    /// asynchronously; without this, a master killed right after answering can take its last
    /// writes with it when a replica takes over.
    pub replica_acks: usize,
    /// How long a write waits for [`RedisConfig::replica_acks`] (default 1 s); fewer acks in
    /// that time is a retryable `Unavailable` (the write is on the master only).
    pub replica_ack_timeout: Duration,
}

impl RedisConfig {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            connections: 1,
            subscriber_capacity: 1024,
            group_max_len: 100_000,
            group_reclaim_idle: Duration::from_secs(30),
            group_ttl: Duration::from_secs(7 * 24 * 3600),
            group_batch: 16,
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
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

    /// Connect to a Redis Cluster (also implied by a `url` that lists several seeds).
    #[must_use]
    pub fn cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The seed URLs of `url`, and whether they name a cluster.
    fn seeds(&self) -> (Vec<&str>, bool) {
        let seeds: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let cluster = self.cluster || seeds.len() > 1;
        (seeds, cluster)
    }

    /// Wait for `replicas` replicas (at most `timeout`) after every write script; see
    /// [`RedisConfig::replica_acks`].
    #[must_use]
    pub fn replica_acks(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replica_acks = replicas;
        self.replica_ack_timeout = timeout;
        self
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
    /// itself after failures). For a cluster, each connection is a cluster connection: it
    /// learns the slot map from the seeds, routes every command to its slot's master, follows
    /// `MOVED`/`ASK` and refreshes the map after a failover.
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL or prefix, `Unavailable` if the server cannot be reached.
    pub async fn connect(self) -> Result<Redis> {
        let keys = KeySpace::new(&self.key_prefix).map_err(|e| e.with_backend(REDIS))?;
        let (seeds, cluster) = self.seeds();
        let wait = (self.replica_acks > 0).then(|| {
            let ms = u64::try_from(self.replica_ack_timeout.as_millis()).unwrap_or(u64::MAX);
            (self.replica_acks, ms.max(1))
        });
        let bad_url = |url: &str, e: redis::RedisError| {
            err(
                REDIS,
                ErrorKind::InvalidInput,
                "connect",
                format!("bad Redis URL {}", redact(url)),
            )
            .with_source(e)
        };
        let clients = seeds
            .iter()
            .map(|u| redis::Client::open(*u).map_err(|e| bad_url(u, e)))
            .collect::<Result<Vec<_>>>()?;
        let Some(client) = clients.first().cloned() else {
            return Err(err(
                REDIS,
                ErrorKind::InvalidInput,
                "connect",
                "no Redis URL given",
            ));
        };
        if cluster {
            let cluster_client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.response_timeout)
                // No retries inside the client: it would resend a script whose connection
                // dropped after the server ran it (a failover), appending twice. Every failure
                // comes back as a retryable error instead (redirects included; the slot map is
                // refreshed meanwhile), and the caller decides, as after any lost answer.
                .retries(0)
                .build()
                .map_err(|e| bad_url(&self.url, e))?;
            let mut conns = Vec::with_capacity(self.connections);
            for _ in 0..self.connections.max(1) {
                let conn = cluster_client
                    .get_async_connection()
                    .await
                    .map_err(|e| from_redis("connect", e))?;
                conns.push(RedisTransport::new(Conn::Cluster(conn), wait));
            }
            let domain = cluster_domain(&clients, &self.key_prefix);
            return Ok(Redis {
                inner: Arc::new(Shared {
                    domain,
                    clients,
                    transports: conns,
                    next: std::sync::atomic::AtomicUsize::new(0),
                    keys,
                    config: self,
                }),
            });
        }
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
            conns.push(RedisTransport::new(Conn::Single(conn), wait));
        }
        let domain = announce_domain(&client, &self.key_prefix);
        Ok(Redis {
            inner: Arc::new(Shared {
                domain,
                clients,
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
        let urls: Vec<String> = self.url.split(',').map(redact).collect();
        f.debug_struct("RedisConfig")
            .field("url", &urls.join(","))
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("connections", &self.connections)
            .field("subscriber_capacity", &self.subscriber_capacity)
            .field("group_max_len", &self.group_max_len)
            .field("group_reclaim_idle", &self.group_reclaim_idle)
            .field("group_ttl", &self.group_ttl)
            .field("group_batch", &self.group_batch)
            .field("replica_acks", &self.replica_acks)
            .field("replica_ack_timeout", &self.replica_ack_timeout)
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

/// The channel space of a cluster: `PUBLISH` reaches every node of it, so it is named by its
/// seed addresses (sorted) and the prefix.
fn cluster_domain(clients: &[redis::Client], key_prefix: &str) -> AnnounceDomain {
    let mut addrs: Vec<String> = clients
        .iter()
        .map(|c| c.get_connection_info().addr().to_string())
        .collect();
    addrs.sort();
    AnnounceDomain::new(format!("redis-cluster:{} {key_prefix}", addrs.join(",")))
}

/// A connection to one Redis server (or proxy), or to a Redis Cluster, shared by the cache,
/// pubsub and store built from it. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Shared>,
}

struct Shared {
    /// Shared by the cache and the pubsub built from this connection: they are paired.
    domain: AnnounceDomain,
    /// One client per seed URL: the subscription connection uses the first that answers.
    clients: Vec<redis::Client>,
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

    /// The clients of the seed URLs, in order (at least one).
    pub(crate) fn clients(&self) -> &[redis::Client] {
        &self.inner.clients
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

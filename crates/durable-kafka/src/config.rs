//! [`KafkaConfig`]: brokers, topic prefix, producer tuning, extra client properties.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use durable_core::{Error, Result};
use rdkafka::ClientConfig;

use crate::names::validate_prefix;
use crate::pubsub::KafkaPubSub;

/// The environment variables [`KafkaConfig::from_env`] reads, in order: bootstrap servers
/// (`host:port[,host:port…]`).
pub const URL_ENV_VARS: &[&str] = &["DURABLE_KAFKA_URL", "KAFKA_BOOTSTRAP_SERVERS"];

/// The topic prefix unless [`KafkaConfig::topic_prefix`] says otherwise.
pub const DEFAULT_TOPIC_PREFIX: &str = "durable.";

/// How to reach Kafka and how to produce.
///
/// | setting | default | why |
/// |---|---|---|
/// | `topic_prefix` | `durable.` | every Kafka topic and group id of durable starts with it |
/// | `linger` | 0 | `linger.ms`: a wake-up is sent at once; publishes issued while a request is in flight still share the next one |
/// | `partitions` | 1 | partitions of the topics this crate creates (a logical topic always stays on one) |
/// | `replication` | 1 | replication factor of the topics this crate creates |
/// | `subscriber_capacity` | 1024 | messages buffered per fan-out subscriber before [`Delivery::Lagged`](durable_core::Delivery::Lagged) |
/// | `job_buffer` | 64 | jobs fetched ahead per consumer group and process |
/// | `op_timeout` | 30 s | bound on one produce (`message.timeout.ms`), admin and metadata call |
///
/// The producer is always idempotent with `acks=all` (`enable.idempotence=true`). Extra
/// librdkafka properties ([`KafkaConfig::set`], e.g. `security.protocol`, `sasl.password`) go
/// to every client; their values never appear in `Debug`.
#[derive(Clone)]
pub struct KafkaConfig {
    pub(crate) bootstrap: String,
    pub(crate) topic_prefix: String,
    pub(crate) linger: Duration,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) subscriber_capacity: usize,
    pub(crate) job_buffer: usize,
    pub(crate) op_timeout: Duration,
    pub(crate) extra: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap", &self.bootstrap)
            .field("topic_prefix", &self.topic_prefix)
            .field("linger", &self.linger)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("subscriber_capacity", &self.subscriber_capacity)
            .field("job_buffer", &self.job_buffer)
            .field("op_timeout", &self.op_timeout)
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaConfig {
    /// Connect to `bootstrap_servers` (`host:port[,host:port…]`), with the defaults above.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap_servers.into(),
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            linger: Duration::ZERO,
            partitions: 1,
            replication: 1,
            subscriber_capacity: 1024,
            job_buffer: 64,
            op_timeout: Duration::from_secs(30),
            extra: BTreeMap::new(),
        }
    }

    /// The bootstrap servers from the first of [`URL_ENV_VARS`] that is set.
    ///
    /// # Errors
    /// `InvalidInput` when none is set.
    pub fn from_env() -> Result<Self> {
        URL_ENV_VARS
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .map(Self::new)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "set one of {} to the bootstrap servers",
                    URL_ENV_VARS.join(", ")
                ))
            })
    }

    /// Prefix of every Kafka topic and group id (`[A-Za-z0-9._-]`, at most 64 bytes; checked
    /// by [`connect`](Self::connect)).
    #[must_use]
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The producer's `linger.ms`.
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Partitions of the topics created by this crate (at least 1). More partitions spread
    /// the logical topics sharing a Kafka topic (all runs of a namespace) and the work queues'
    /// consumers over more group members; one logical topic is always one partition.
    #[must_use]
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Replication factor of the topics created by this crate (at least 1).
    #[must_use]
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication.max(1);
        self
    }

    /// Messages buffered per fan-out subscriber before it gets `Lagged` (at least 1).
    #[must_use]
    pub fn subscriber_capacity(mut self, capacity: usize) -> Self {
        self.subscriber_capacity = capacity.max(1);
        self
    }

    /// Jobs fetched ahead per consumer group and process (at least 1).
    #[must_use]
    pub fn job_buffer(mut self, jobs: usize) -> Self {
        self.job_buffer = jobs.max(1);
        self
    }

    /// Bound on one produce, admin or metadata call.
    #[must_use]
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// An extra librdkafka property for every client (security, SASL, client.id, …). It
    /// cannot turn off idempotence or `acks=all`, which are set last.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Create the clients (a producer, an admin client and the fan-out consumer).
    ///
    /// # Errors
    /// `InvalidInput` for a bad prefix or client property; the clients connect lazily, so an
    /// unreachable broker shows up at the first call.
    pub async fn connect(self) -> Result<KafkaPubSub> {
        validate_prefix(&self.topic_prefix)?;
        KafkaPubSub::new(self)
    }

    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = self.client();
        c.set("linger.ms", self.linger.as_millis().to_string())
            .set("message.timeout.ms", ms(self.op_timeout))
            .set("enable.idempotence", "true")
            .set("acks", "all");
        c
    }

    /// The fan-out consumer: assigned partitions by hand, never joins or commits. librdkafka
    /// takes incremental assignments only with a `group.id`, so it gets one of its own.
    pub(crate) fn fanout_consumer(&self) -> ClientConfig {
        let mut c = self.client();
        let id = format!(
            "{}fanout/{:016x}",
            self.topic_prefix,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 32
                ^ FANOUT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        c.set("group.id", id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A topic lost by the broker (a restart of a memory-backed one) comes back empty:
            // read it from the start, the hub sees the offset go back and reports Lagged.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10");
        c
    }

    pub(crate) fn group_consumer(&self, group_id: &str) -> ClientConfig {
        let mut c = self.client();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10");
        if !self.extra.contains_key("session.timeout.ms") {
            c.set("session.timeout.ms", "10000");
        }
        if !self.extra.contains_key("heartbeat.interval.ms") {
            c.set("heartbeat.interval.ms", "1000");
        }
        c
    }
}

static FANOUT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_property_values() {
        let c = KafkaConfig::new("127.0.0.1:9092").set("sasl.password", "hunter2");
        let d = format!("{c:?}");
        assert!(d.contains("sasl.password") && !d.contains("hunter2"), "{d}");
    }

    #[test]
    fn idempotence_and_acks_cannot_be_overridden() {
        let c = KafkaConfig::new("b:1")
            .set("acks", "0")
            .set("enable.idempotence", "false")
            .producer();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("linger.ms"), Some("0"));
    }
}

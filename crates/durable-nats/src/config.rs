//! [`NatsConfig`] and the connected [`Nats`] handle that hands out the three backends.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{CreateKeyValueErrorKind, CreateStreamErrorKind};
use async_nats::jetstream::{self, stream};
use durable_core::{ErrorKind, Result};
use tokio::sync::watch;

use crate::cache::NatsServerCache;
use crate::error::{err, unavailable};
use crate::fanout::Fanout;
use crate::js::Js;
use crate::pubsub::NatsPubSub;
use crate::store::NatsWorkflowStore;
use crate::subject::{valid_prefix, valid_stream_name};

/// Environment variables read by [`NatsConfig::from_env`], in order.
pub const URL_ENV_VARS: &[&str] = &["DURABLE_NATS_URL", "NATS_URL"];

/// Default subject prefix: logs under `durable.c.>`, topics under `durable.t.>`, queues under
/// `durable.q.>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "durable";

/// How to reach NATS and where to keep things. Defaults are documented on each setter.
#[derive(Clone)]
pub struct NatsConfig {
    url: String,
    prefix: String,
    log_stream: String,
    queue_stream: String,
    bucket: String,
    max_age: Option<Duration>,
    lease: Duration,
    max_deliver: i64,
    timeout: Duration,
    replicas: usize,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("log_stream", &self.log_stream)
            .field("queue_stream", &self.queue_stream)
            .field("bucket", &self.bucket)
            .field("max_age", &self.max_age)
            .field("lease", &self.lease)
            .field("max_deliver", &self.max_deliver)
            .field("timeout", &self.timeout)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// `nats://user:secret@host` → `nats://***@host`: credentials never reach logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl NatsConfig {
    /// A configuration for the server(s) at `url` (`nats://host:port`, comma-separated for
    /// several nodes of a cluster: the client connects to one and fails over to the others;
    /// credentials in the URL are used and never printed).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            log_stream: "DURABLE_LOGS".to_owned(),
            queue_stream: "DURABLE_QUEUES".to_owned(),
            bucket: "DURABLE_RUNS".to_owned(),
            max_age: None,
            lease: Duration::from_secs(30),
            max_deliver: 20,
            timeout: Duration::from_secs(10),
            replicas: 1,
        }
    }

    /// The URL from the first of [`URL_ENV_VARS`] that is set.
    ///
    /// # Errors
    /// `InvalidInput` when none is set.
    pub fn from_env() -> Result<Self> {
        URL_ENV_VARS
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .map(Self::new)
            .ok_or_else(|| {
                err(
                    ErrorKind::InvalidInput,
                    "config",
                    format!("none of {URL_ENV_VARS:?} is set"),
                )
            })
    }

    /// Subject prefix (default [`DEFAULT_SUBJECT_PREFIX`]): dot-separated tokens of
    /// `[A-Za-z0-9_-]`. Two configurations with different prefixes (and stream names) never see
    /// each other's data.
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Names of the log stream, the queue stream and the key-value bucket (defaults
    /// `DURABLE_LOGS`, `DURABLE_QUEUES`, `DURABLE_RUNS`).
    #[must_use]
    pub fn names(
        mut self,
        log_stream: impl Into<String>,
        queue_stream: impl Into<String>,
        bucket: impl Into<String>,
    ) -> Self {
        self.log_stream = log_stream.into();
        self.queue_stream = queue_stream.into();
        self.bucket = bucket.into();
        self
    }

    /// A stream-wide retention limit as a backstop to per-run retention (default none: runs
    /// are removed by their own retention, see the README).
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// How long a work-queue job may stay unacknowledged before it is redelivered (default 30 s).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many times a work-queue job is delivered at most (default 20).
    #[must_use]
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = i64::from(max_deliver.max(1));
        self
    }

    /// How long one request may take (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replicas of the log stream, the queue stream and the bucket (default 1; 3 on a
    /// three-node cluster makes every acknowledged write survive the loss of one node). An
    /// existing stream is updated to this count at connect.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Connect, and create the streams and the bucket if missing (or update them to this
    /// configuration). Processes may connect at the same time: a request the server leaves
    /// unanswered is asked again until [`NatsConfig::timeout`] has passed.
    ///
    /// # Errors
    /// `InvalidInput` for a bad prefix or name, `Unavailable` when the server cannot be reached
    /// or has no JetStream, `Conflict` when JetStream refuses a stream or the bucket (e.g. a
    /// stream of that name with other subjects, or more replicas than the cluster has).
    pub async fn connect(self) -> Result<Nats> {
        if !valid_prefix(&self.prefix) {
            return Err(err(
                ErrorKind::InvalidInput,
                "connect",
                "subject prefix must be dot-separated tokens of [A-Za-z0-9_-]",
            ));
        }
        for name in [&self.log_stream, &self.queue_stream, &self.bucket] {
            if !valid_stream_name(name) {
                return Err(err(
                    ErrorKind::InvalidInput,
                    "connect",
                    format!("{name:?} is not a valid stream or bucket name"),
                ));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(err(
                ErrorKind::InvalidInput,
                "connect",
                format!("replicas must be 1 to 5, not {}", self.replicas),
            ));
        }
        let servers = server_addrs(&self.url)?;
        let (reconnects, _) = watch::channel(0u64);
        let reconnects = Arc::new(reconnects);
        let events = reconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    // After a reconnection or a client-side overflow, core subscribers may have
                    // missed messages: every subscription reports Lagged.
                    if matches!(
                        event,
                        async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                    ) {
                        events.send_modify(|n| *n += 1);
                    }
                }
            })
            .request_timeout(Some(self.timeout))
            // Every process tries the nodes in the order given, so in normal operation all of
            // them sit on the same node: a new subscription's interest reaches another node
            // only asynchronously (over the route), and a wake-up published there in between
            // would be lost. After a failover each reconnected subscription reports `Lagged`
            // and its observer reads the log, so nothing is lost while processes move.
            .retain_servers_order()
            .connect(servers)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let context = jetstream::new(client.clone());
        let prefix = self.prefix.clone();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let logs = stream::Config {
            name: self.log_stream.clone(),
            subjects: vec![format!("{prefix}.c.>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            allow_direct: true,
            allow_rollup: true,
            allow_message_ttl: true,
            allow_atomic_publish: true,
            max_age: self.max_age.unwrap_or_default(),
            duplicate_window: Duration::from_secs(120),
            num_replicas: self.replicas,
            ..Default::default()
        };
        let queues = stream::Config {
            name: self.queue_stream.clone(),
            subjects: vec![format!("{prefix}.q.>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Interest,
            allow_direct: true,
            max_age: self.max_age.unwrap_or_default(),
            num_replicas: self.replicas,
            ..Default::default()
        };
        for config in [logs, queues] {
            let what = format!("stream {}", config.name);
            provision(deadline, &what, || async {
                context
                    .create_or_update_stream(config.clone())
                    .await
                    .map_err(|e| match e.kind() {
                        // An answer with an error code: the server refuses this configuration.
                        CreateStreamErrorKind::JetStream(_) => Attempt::Fail(e.into()),
                        _ => Attempt::Again(e.into()),
                    })
            })
            .await?;
        }
        let bucket = jetstream::kv::Config {
            bucket: self.bucket.clone(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        };
        let what = format!("bucket {}", self.bucket);
        provision(deadline, &what, || async {
            if context.get_key_value(&self.bucket).await.is_ok() {
                return Ok(());
            }
            match context.create_key_value(bucket.clone()).await {
                Ok(_) => Ok(()),
                // The server refused the bucket's stream.
                Err(e) if e.kind() == CreateKeyValueErrorKind::BucketCreate => {
                    Err(Attempt::Fail(e.into()))
                }
                Err(e) => Err(Attempt::Again(e.into())),
            }
        })
        .await?;
        Ok(Nats {
            inner: Arc::new(Shared {
                js: Js {
                    client,
                    timeout: self.timeout,
                    replicated: self.replicas > 1,
                    batches: Arc::new(tokio::sync::Semaphore::new(crate::js::BATCHES_IN_FLIGHT)),
                },
                context,
                config: self,
                reconnects,
                fanout: Arc::new(Fanout::new()),
            }),
        })
    }
}

/// How long one provisioning request (a stream or bucket create or update) may go unanswered
/// before it is asked again.
const PROVISION_ATTEMPT: Duration = Duration::from_secs(1);

/// Why one provisioning attempt failed.
enum Attempt {
    /// Unanswered or not ready: ask again.
    Again(durable_core::BoxError),
    /// Refused (a bad or conflicting configuration): asking again does not help.
    Fail(durable_core::BoxError),
}

/// Run one idempotent provisioning step (setting up `what`) until it succeeds, is refused, or
/// `deadline` passes. A JetStream cluster leaves some of several concurrent creates of one
/// stream unanswered although the stream is created (nats-server#3677: workers starting
/// together against a new cluster), and JetStream is unavailable for a moment while it starts:
/// such a step is asked again after a short pause instead of failing the connect.
async fn provision<T, F, Fut>(deadline: tokio::time::Instant, what: &str, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
{
    let mut pause = Duration::from_millis(25);
    loop {
        let now = tokio::time::Instant::now();
        let attempt = PROVISION_ATTEMPT.min(deadline.saturating_duration_since(now));
        let source: durable_core::BoxError = match tokio::time::timeout(attempt, step()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(Attempt::Fail(e))) => {
                return Err(err(
                    ErrorKind::Conflict,
                    "connect",
                    format!("JetStream refused to set up {what}"),
                )
                .with_source(e))
            }
            Ok(Err(Attempt::Again(e))) => e,
            Err(_) => "no answer".into(),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(err(
                ErrorKind::Unavailable,
                "connect",
                format!("JetStream did not set up {what} in time"),
            )
            .with_retryable(true)
            .with_source(source));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The server addresses of a comma-separated URL list.
fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|_| {
                err(
                    ErrorKind::InvalidInput,
                    "connect",
                    format!("bad NATS URL {}", redact(u)),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(err(ErrorKind::InvalidInput, "connect", "no NATS URL given"));
    }
    Ok(addrs)
}

/// What the three backends of one connection share.
pub(crate) struct Shared {
    pub(crate) js: Js,
    pub(crate) context: jetstream::Context,
    pub(crate) config: NatsConfig,
    /// Bumped on every (re)connection, so subscriptions can report `Lagged` after a gap.
    pub(crate) reconnects: Arc<watch::Sender<u64>>,
    /// This connection's topic subscriptions, shared by the observers of a topic.
    pub(crate) fanout: Arc<Fanout>,
}

impl Shared {
    pub(crate) fn prefix(&self) -> &str {
        &self.config.prefix
    }
    pub(crate) fn log_stream(&self) -> &str {
        &self.config.log_stream
    }
    pub(crate) fn queue_stream(&self) -> &str {
        &self.config.queue_stream
    }
    pub(crate) fn bucket(&self) -> &str {
        &self.config.bucket
    }
    pub(crate) fn lease(&self) -> Duration {
        self.config.lease
    }
    pub(crate) fn max_deliver(&self) -> i64 {
        self.config.max_deliver
    }
    /// Identifies the channel space: server list and prefix, never credentials.
    pub(crate) fn domain(&self) -> String {
        format!("nats:{}|{}", redact(&self.config.url), self.config.prefix)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("config", &self.config)
            .finish()
    }
}

/// A connection to NATS with JetStream; cheap to clone. Hands out the backends, which share it.
#[derive(Debug, Clone)]
pub struct Nats {
    pub(crate) inner: Arc<Shared>,
}

impl Nats {
    /// The run logs and keys ([`durable_core::ServerCache`]).
    pub fn server_cache(&self) -> NatsServerCache {
        NatsServerCache::new(self.inner.clone())
    }

    /// Wake-ups and work queues ([`durable_core::PubSub`]).
    pub fn pubsub(&self) -> NatsPubSub {
        NatsPubSub::new(self.inner.clone())
    }

    /// Run records, checkpoints and leases ([`durable_core::WorkflowStore`]).
    pub fn workflow_store(&self) -> NatsWorkflowStore {
        NatsWorkflowStore::new(self.inner.clone())
    }

    /// The underlying client, for anything this crate does not wrap.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.js.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_names_every_node_and_bad_ones_are_refused_without_secrets() {
        let addrs = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,").unwrap();
        assert_eq!(addrs.len(), 2);
        assert!(server_addrs(" , ").is_err());
        let e = server_addrs("nats://u:hunter2@h:1,nats://u:hunter2@:bad:port").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

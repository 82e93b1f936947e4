//! The backends: which server each needs, and the `DurableAgent` parts each provides.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use durable_core::agent::{Agent, DurableAgent};
use durable_core::{LogConfig, PubSub, ServerCache, WorkflowStore};
use serde::{Deserialize, Serialize};

use crate::counters::Counter;

/// A backend under benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// The in-memory backends of `durable-core`.
    Memory,
    /// One SQLite file (`durable-sqlite`): log and store; wake-ups in process.
    Sqlite,
    /// Redis for log, wake-ups and store.
    Redis,
    /// PostgreSQL for log, wake-ups and store.
    Postgres,
    /// NATS JetStream for log, wake-ups and store.
    Nats,
    /// Kafka for wake-ups only; the log and store are in memory (Kafka holds no log here).
    Kafka,
}

impl Kind {
    /// Every backend, in table order.
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Memory,
        Kind::Sqlite,
        Kind::Redis,
        Kind::Postgres,
        Kind::Nats,
        Kind::Kafka,
    ];

    /// The name on the command line and in the JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sqlite => "sqlite",
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Nats => "nats",
            Kind::Kafka => "kafka",
        }
    }

    /// Parse a name given on the command line.
    pub(crate) fn parse(name: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown backend {name:?} (known: {})", known.join(", "))
            })
    }

    /// Which backend holds the run log, the wake-ups and the run records.
    pub(crate) fn roles(self) -> [&'static str; 3] {
        match self {
            Kind::Memory => ["memory", "memory", "memory"],
            Kind::Sqlite => ["sqlite", "memory (in process)", "sqlite"],
            Kind::Redis => ["redis", "redis", "redis"],
            Kind::Postgres => ["postgres", "postgres", "postgres"],
            Kind::Nats => ["nats", "nats", "nats"],
            // Kafka holds no log in this project: it carries the wake-ups beside an in-memory
            // log and store, as in its conformance tests.
            Kind::Kafka => ["memory", "kafka", "memory"],
        }
    }

    /// The variable naming this backend's server, if it needs one.
    fn env_var(self) -> Option<&'static str> {
        match self {
            Kind::Memory | Kind::Sqlite => None,
            Kind::Redis => Some("DURABLE_TEST_REDIS_URL"),
            Kind::Postgres => Some("DURABLE_TEST_POSTGRES_URL"),
            Kind::Nats => Some("DURABLE_TEST_NATS_URL"),
            Kind::Kafka => Some("DURABLE_TEST_KAFKA_URL"),
        }
    }

    /// Why this backend cannot run here, if it cannot.
    pub(crate) fn unavailable(self) -> Option<String> {
        let var = self.env_var()?;
        durable_services::env_url_var(var)
            .is_none()
            .then(|| format!("{var} is not set"))
    }

    fn url(self) -> Result<String, String> {
        match self.env_var() {
            Some(var) => {
                durable_services::env_url_var(var).ok_or_else(|| format!("{var} is not set"))
            }
            None => Ok(String::new()),
        }
    }
}

/// One process's connection to a backend: the parts a `DurableAgent` is built from, and a
/// way to count what a turn costs on it.
pub(crate) struct Setup {
    cache: Option<Arc<dyn ServerCache>>,
    pubsub: Option<Arc<dyn PubSub>>,
    store: Option<Arc<dyn WorkflowStore>>,
    pub(crate) counter: Counter,
    /// A directory of this process's own, removed on drop (SQLite's file).
    scratch: Option<PathBuf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Key, subject and topic prefix of everything this tool writes.
const PREFIX: &str = "durable-bench";

impl Setup {
    /// Connect to `kind` (its server from the environment).
    pub(crate) async fn connect(kind: Kind) -> Result<Setup, String> {
        let url = kind.url()?;
        let err = |e: durable_core::Error| format!("{}: {e}", kind.name());
        let mut setup = Setup {
            cache: None,
            pubsub: None,
            store: None,
            counter: Counter::None("in-process: no backend round trips"),
            scratch: None,
        };
        match kind {
            Kind::Memory => {}
            Kind::Sqlite => {
                let dir = std::env::temp_dir().join(format!(
                    "durable-bench-{}-{}",
                    std::process::id(),
                    durable_core::RunId::generate()
                ));
                std::fs::create_dir_all(&dir).map_err(|e| format!("sqlite: {e}"))?;
                setup.scratch = Some(dir.clone());
                let sqlite = durable_sqlite::SqliteBackend::open_async(
                    durable_sqlite::SqliteConfig::new(dir.join("durable.db")),
                )
                .await
                .map_err(err)?;
                setup.cache = Some(Arc::new(sqlite.server_cache()));
                setup.pubsub = Some(Arc::new(sqlite.pubsub()));
                setup.store = Some(Arc::new(sqlite.workflow_store()));
                setup.counter = Counter::Sqlite(sqlite);
            }
            Kind::Redis => {
                let redis = durable_redis::RedisConfig::new(url.clone())
                    .key_prefix(format!("{PREFIX}:"))
                    .connect()
                    .await
                    .map_err(err)?;
                setup.cache = Some(Arc::new(redis.server_cache()));
                setup.pubsub = Some(Arc::new(redis.pubsub().await.map_err(err)?));
                setup.store = Some(Arc::new(redis.workflow_store()));
                setup.counter = Counter::redis(&url);
            }
            Kind::Postgres => {
                let pg = durable_postgres::PostgresConfig::new(url)
                    .schema("durable_bench")
                    .connect()
                    .await
                    .map_err(err)?;
                setup.cache = Some(Arc::new(pg.server_cache().with_announce()));
                setup.pubsub = Some(Arc::new(pg.pubsub().await.map_err(err)?));
                setup.store = Some(Arc::new(pg.workflow_store()));
                setup.counter = Counter::Postgres(pg);
            }
            Kind::Nats => {
                let nats = durable_nats::NatsConfig::new(url)
                    .subject_prefix(PREFIX)
                    .names("BENCH_LOGS", "BENCH_QUEUES", "BENCH_RUNS")
                    .connect()
                    .await
                    .map_err(err)?;
                setup.cache = Some(Arc::new(nats.server_cache()));
                setup.pubsub = Some(Arc::new(nats.pubsub()));
                setup.store = Some(Arc::new(nats.workflow_store()));
                setup.counter = Counter::Nats(nats);
            }
            Kind::Kafka => {
                let kafka = durable_kafka::KafkaConfig::new(url)
                    .topic_prefix(format!("{PREFIX}."))
                    .connect()
                    .await
                    .map_err(err)?;
                setup.pubsub = Some(Arc::new(kafka));
                setup.counter =
                    Counter::None("Kafka carries only the wake-ups; the log is in memory");
            }
        }
        Ok(setup)
    }

    /// A `DurableAgent` for `agent` on these parts (in-memory ones where the backend has none).
    pub(crate) fn durable(&self, agent: Agent) -> Result<DurableAgent, String> {
        let mut config = LogConfig::default();
        config.namespace = "bench".to_owned();
        // Finished runs go away soon, so a long run of the tool does not fill a server.
        config.retention = Duration::from_secs(120);
        let mut b = DurableAgent::builder(agent).log_config(config);
        if let Some(c) = &self.cache {
            b = b.cache_arc(c.clone());
        }
        if let Some(p) = &self.pubsub {
            b = b.pubsub_arc(p.clone());
        }
        if let Some(s) = &self.store {
            b = b.store_arc(s.clone());
        }
        b.build().map_err(|e| e.to_string())
    }
}

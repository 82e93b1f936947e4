//! The backends under test: which server, how a process connects to it, and what a run leaves
//! behind in it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use durable_core::{EventLog, LogConfig, PubSub, RunId, ServerCache, WorkflowStore};
use durable_kafka::KafkaConfig;
use durable_nats::{Nats, NatsConfig};
use durable_postgres::{Postgres, PostgresConfig};
use durable_redis::RedisConfig;
use durable_services::{self as services, ServerProcess};
use durable_sqlite::{SqliteBackend, SqliteConfig};
use futures::StreamExt;

/// A backend of the fault suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `durable-redis`: log, wake-ups and records on Redis.
    Redis,
    /// `durable-postgres`: log with NOTIFY wake-ups and records on PostgreSQL.
    Postgres,
    /// `durable-nats`: log on JetStream, wake-ups on core NATS, records in JetStream KV.
    Nats,
    /// `durable-sqlite`: one file, written by one process at a time (wake-ups in-process only).
    Sqlite,
    /// `durable-kafka` for wake-ups, abort and control between processes, with the log and the
    /// records in one SQLite file ([`Target::sqlite_file`]): Kafka is never the run log.
    Kafka,
}

impl Kind {
    /// The name used on the command line and in `DURABLE_TEST_<NAME>_URL`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Nats => "nats",
            Kind::Sqlite => "sqlite",
            Kind::Kafka => "kafka",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        [
            Kind::Redis,
            Kind::Postgres,
            Kind::Nats,
            Kind::Sqlite,
            Kind::Kafka,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// `DURABLE_TEST_<NAME>_URL`: where the worker and observer processes find the server (for
    /// SQLite, the database file).
    pub fn env_var(self) -> String {
        format!("DURABLE_TEST_{}_URL", self.name().to_ascii_uppercase())
    }
}

/// Where one test's data lives: the backend, its URL, and a namespace of the test's own (key
/// prefix, schema, subject prefix and stream names), so tests sharing a server never meet.
#[derive(Debug, Clone)]
pub struct Target {
    /// The backend.
    pub kind: Kind,
    /// Its URL (for SQLite, the database file).
    pub url: String,
    /// The namespace: `[a-z0-9]+`.
    pub ns: String,
    /// How long a finished run is kept: long enough for the scenario's slowest observer to
    /// finish reading, short enough to watch it elapse.
    pub retention: Duration,
}

impl Target {
    /// The target named by a process's flags (`--backend`, `--ns`, `--retention-ms`); the URL
    /// comes from [`Kind::env_var`].
    ///
    /// # Errors
    /// When a flag is missing or bad, or the variable is not set.
    pub fn from_flags(flags: &HashMap<String, String>) -> Result<Self, String> {
        let flag = |name: &str| {
            flags
                .get(name)
                .ok_or_else(|| format!("--{name} is required"))
        };
        let kind = Kind::parse(flag("backend")?)
            .ok_or("--backend is one of redis, postgres, nats, sqlite, kafka")?;
        let retention = flag("retention-ms")?
            .parse()
            .map_err(|_| "--retention-ms is a number")?;
        let url = services::env_url_var(&kind.env_var())
            .ok_or_else(|| format!("{} is not set", kind.env_var()))?;
        Ok(Self {
            kind,
            url,
            ns: flag("ns")?.clone(),
            retention: Duration::from_millis(retention),
        })
    }

    /// The flags and environment that point a child process at this target.
    pub fn child_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        (
            vec![
                "--backend".to_owned(),
                self.kind.name().to_owned(),
                "--ns".to_owned(),
                self.ns.clone(),
                "--retention-ms".to_owned(),
                self.retention.as_millis().to_string(),
            ],
            vec![(self.kind.env_var(), self.url.clone())],
        )
    }

    /// The scratch directory of the test using namespace `ns` (every process computes it).
    pub fn scratch_dir(ns: &str) -> PathBuf {
        std::env::temp_dir().join(format!("durable-faults-{ns}"))
    }

    /// The SQLite file holding the log and records: the URL for [`Kind::Sqlite`], a file in
    /// [`Target::scratch_dir`] beside the Kafka broker for [`Kind::Kafka`].
    pub fn sqlite_file(&self) -> PathBuf {
        match self.kind {
            Kind::Kafka => Self::scratch_dir(&self.ns).join("durable.db"),
            _ => PathBuf::from(&self.url),
        }
    }

    /// The event log's settings: this namespace and retention (a tombstone of 1 s after it),
    /// and a short idle check (SQLite has no wake-ups across processes).
    pub fn log_config(&self) -> LogConfig {
        let mut config = LogConfig::default();
        config.namespace = self.ns.clone();
        config.retention = self.retention;
        config.tombstone = Duration::from_secs(1);
        config.idle_check = match self.kind {
            Kind::Sqlite => Duration::from_millis(100),
            _ => Duration::from_millis(500),
        };
        config
    }
}

/// A connection of one process to a [`Target`].
pub struct Connected {
    /// The run logs.
    pub cache: Arc<dyn ServerCache>,
    /// Wake-ups and control messages.
    pub pubsub: Arc<dyn PubSub>,
    /// Run records and checkpoints.
    pub store: Arc<dyn WorkflowStore>,
    raw: Raw,
    target: Target,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("kind", &self.target.kind)
            .field("ns", &self.target.ns)
            .finish_non_exhaustive()
    }
}

/// The backend's own handle, to look behind the traits for leftovers.
enum Raw {
    Redis,
    Postgres(Postgres),
    Nats(Nats),
    Sqlite,
}

/// Connect to `target` with at most `pool` connections (PostgreSQL).
///
/// # Errors
/// The backend's error, as text.
pub async fn connect(target: &Target, pool: u32) -> Result<Connected, String> {
    let e = |e: durable_core::Error| e.to_string();
    let parts = |cache: Arc<dyn ServerCache>,
                 pubsub: Arc<dyn PubSub>,
                 store: Arc<dyn WorkflowStore>,
                 raw: Raw| Connected {
        cache,
        pubsub,
        store,
        raw,
        target: target.clone(),
    };
    Ok(match target.kind {
        Kind::Redis => {
            let r = RedisConfig::new(target.url.clone())
                .key_prefix(format!("{}:", target.ns))
                .connect()
                .await
                .map_err(e)?;
            let pubsub = r.pubsub().await.map_err(e)?;
            parts(
                Arc::new(r.server_cache()),
                Arc::new(pubsub),
                Arc::new(r.workflow_store()),
                Raw::Redis,
            )
        }
        Kind::Postgres => {
            let pg = PostgresConfig::new(target.url.clone())
                .schema(target.ns.clone())
                .max_connections(pool)
                .connect()
                .await
                .map_err(e)?;
            let pubsub = pg.pubsub().await.map_err(e)?;
            parts(
                Arc::new(pg.server_cache().with_announce()),
                Arc::new(pubsub),
                Arc::new(pg.workflow_store()),
                Raw::Postgres(pg),
            )
        }
        Kind::Nats => {
            let upper = target.ns.to_ascii_uppercase();
            let nats = NatsConfig::new(target.url.clone())
                .subject_prefix(target.ns.clone())
                .names(
                    format!("{upper}_LOGS"),
                    format!("{upper}_QUEUES"),
                    format!("{upper}_RUNS"),
                )
                .connect()
                .await
                .map_err(e)?;
            parts(
                Arc::new(nats.server_cache()),
                Arc::new(nats.pubsub()),
                Arc::new(nats.workflow_store()),
                Raw::Nats(nats),
            )
        }
        Kind::Sqlite => {
            let db = SqliteBackend::open_async(SqliteConfig::new(target.sqlite_file()))
                .await
                .map_err(e)?;
            parts(
                Arc::new(db.server_cache()),
                Arc::new(db.pubsub()),
                Arc::new(db.workflow_store()),
                Raw::Sqlite,
            )
        }
        Kind::Kafka => {
            let db = SqliteBackend::open_async(SqliteConfig::new(target.sqlite_file()))
                .await
                .map_err(e)?;
            let pubsub = KafkaConfig::new(target.url.clone())
                .topic_prefix(format!("{}.", target.ns))
                .connect()
                .await
                .map_err(e)?;
            parts(
                Arc::new(db.server_cache()),
                Arc::new(pubsub),
                Arc::new(db.workflow_store()),
                Raw::Sqlite,
            )
        }
    })
}

impl Connected {
    /// The event log over this connection, with [`Target::log_config`].
    pub fn event_log(&self) -> EventLog {
        EventLog::new(self.cache.clone(), self.pubsub.clone())
            .with_store(self.store.clone())
            .with_config(self.target.log_config())
    }

    /// What is left of `runs`, through the traits (keys under each run's prefix, its record)
    /// and behind them: Redis keys naming the run, PostgreSQL rows (after `purge`, the adapter's
    /// cleanup), JetStream subjects of the log stream and the record bucket. Empty once
    /// retention has removed everything.
    ///
    /// # Errors
    /// The backend's error, as text.
    pub async fn leftovers(&self, runs: &[RunId]) -> Result<Vec<String>, String> {
        let e = |e: durable_core::Error| e.to_string();
        let log = self.event_log();
        let mut left = Vec::new();
        if let Raw::Postgres(pg) = &self.raw {
            pg.purge(100_000).await.map_err(e)?;
        }
        for run in runs {
            if self.cache.capabilities().list_keys {
                for key in self.cache.keys(&log.run_prefix(run)).await.map_err(e)? {
                    left.push(format!("key {key}"));
                }
            }
            if let Some(record) = self.store.get_run(run).await.map_err(e)? {
                left.push(format!("record of {run} ({:?})", record.status));
            }
        }
        match &self.raw {
            Raw::Redis => left.extend(self.redis_leftovers(runs).await?),
            Raw::Postgres(pg) => left.extend(self.postgres_leftovers(pg, runs).await?),
            Raw::Nats(nats) => left.extend(self.nats_leftovers(nats, runs).await?),
            Raw::Sqlite => {}
        }
        Ok(left)
    }

    async fn redis_leftovers(&self, runs: &[RunId]) -> Result<Vec<String>, String> {
        let client = redis::Client::open(self.target.url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let mut left = Vec::new();
        for run in runs {
            // Run ids here are `[a-z0-9]`: nothing to escape in the pattern.
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*{run}*"))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            left.extend(keys.into_iter().map(|k| format!("redis key {k}")));
        }
        Ok(left)
    }

    async fn postgres_leftovers(
        &self,
        pg: &Postgres,
        runs: &[RunId],
    ) -> Result<Vec<String>, String> {
        let schema = &self.target.ns;
        let mut left = Vec::new();
        for run in runs {
            let pattern = format!("%{run}%");
            for (table, column) in [
                ("cache_items", "name"),
                ("log_events", "name"),
                ("runs", "run_id"),
                ("checkpoints", "run_id"),
            ] {
                // The schema is `[a-z0-9]` (the namespace): nothing to quote.
                let n: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {schema}.{table} WHERE {column} LIKE $1"
                ))
                .bind(&pattern)
                .fetch_one(pg.pool())
                .await
                .map_err(|e| e.to_string())?;
                if n > 0 {
                    left.push(format!("{n} row(s) of {run} in {table}"));
                }
            }
        }
        Ok(left)
    }

    async fn nats_leftovers(&self, nats: &Nats, runs: &[RunId]) -> Result<Vec<String>, String> {
        let js = async_nats::jetstream::new(nats.client().clone());
        let upper = self.target.ns.to_ascii_uppercase();
        let mut left = Vec::new();
        for stream in [format!("{upper}_LOGS"), format!("KV_{upper}_RUNS")] {
            let s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            let mut subjects = s.info_with_subjects(">").await.map_err(|e| e.to_string())?;
            while let Some(item) = subjects.next().await {
                let (subject, n) = item.map_err(|e| e.to_string())?;
                // Run ids are `[a-z0-9]`: the subject token of a name containing one contains it.
                if runs.iter().any(|r| subject.contains(r.as_str())) {
                    left.push(format!("{n} message(s) on {subject} in {stream}"));
                }
            }
        }
        Ok(left)
    }
}

/// The server of one test: given by `DURABLE_TEST_<NAME>_URL`, or a throwaway one the test owns
/// (started with `durable-services`; dropped with the test).
#[derive(Debug)]
pub struct Server {
    /// Its URL.
    pub url: String,
    kind: Kind,
    process: Option<ServerProcess>,
}

impl Server {
    /// The server given by the environment, else one of the test's own. `None` when neither is
    /// available (the test then skips); under `DURABLE_TEST_REQUIRE=1` that is a failure.
    pub fn given_or_own(kind: Kind) -> Option<Server> {
        if let Some(url) = services::env_url_var(&kind.env_var()) {
            return Some(Server {
                url,
                kind,
                process: None,
            });
        }
        Self::own(kind)
    }

    /// A server of the test's own (so it may kill and restart it), with persistence on.
    /// `None` when it cannot be started (the test then skips); under `DURABLE_TEST_REQUIRE=1`
    /// that is a failure.
    pub fn own(kind: Kind) -> Option<Server> {
        let started = match kind {
            Kind::Redis => services::redis(&services::RedisOptions { appendonly: true })
                .map(|p| (format!("redis://127.0.0.1:{}", p.port()), p)),
            Kind::Postgres => services::postgres(&services::PostgresOptions::default()).map(|p| {
                (
                    format!("postgres://postgres@127.0.0.1:{}/postgres", p.port()),
                    p,
                )
            }),
            Kind::Nats => services::nats().map(|p| (format!("nats://127.0.0.1:{}", p.port()), p)),
            Kind::Sqlite => Err("SQLite has no server".to_owned()),
            Kind::Kafka => {
                services::tansu_persistent().map(|p| (format!("127.0.0.1:{}", p.port()), p))
            }
        };
        match started {
            Ok((url, process)) => Some(Server {
                url,
                kind,
                process: Some(process),
            }),
            Err(why) => {
                assert!(
                    !durable_conformance::harness::require_backends(),
                    "{}: {why} and DURABLE_TEST_REQUIRE=1",
                    kind.name()
                );
                eprintln!("SKIPPED ({}): {why}", kind.name());
                None
            }
        }
    }

    /// Kill the server (SIGKILL) and start it again on the same port and data. Panics if it
    /// was not started by the test or does not come back.
    pub fn restart(&mut self) {
        let process = self
            .process
            .as_mut()
            .expect("only a server of the test's own can be restarted");
        process.kill();
        if self.kind == Kind::Postgres {
            let dir = process.dir().to_path_buf();
            assert!(
                services::wait_until(Duration::from_secs(30), || {
                    services::postgres_released(&dir)
                }),
                "the killed PostgreSQL server's processes did not exit"
            );
        }
        process
            .restart()
            .unwrap_or_else(|e| panic!("{} did not come back: {e}", self.kind.name()));
    }
}

//! Connection settings, migrations and the shared connection handle.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durable_core::{Error, ErrorKind, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::cache::PostgresServerCache;
use crate::conns::Conns;
use crate::error::{err, from_sqlx, BACKEND};
use crate::exec::ScalarExt;
use crate::pubsub::{PostgresPubSub, Registry};
use crate::store::PostgresWorkflowStore;

/// Default schema holding every table and function of this crate.
pub const DEFAULT_SCHEMA: &str = "durable";

/// Environment variables read by [`PostgresConfig::from_env`] for the URL, in order.
pub const URL_ENV_VARS: [&str; 2] = ["DURABLE_POSTGRES_URL", "DATABASE_URL"];

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Settings of the PostgreSQL backends. Every field has a documented default; build one with
/// [`PostgresConfig::new`] or [`PostgresConfig::from_env`], adjust it, then
/// [`PostgresConfig::connect`].
///
/// `Debug` shows the URL with its password replaced by `***`.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// `postgres://[user[:password]@]host[:port]/database[?options]`.
    pub url: String,
    /// Schema of every table and function (default [`DEFAULT_SCHEMA`]): two applications
    /// share a database by using two schemas. `[a-z_][a-z0-9_]*`, at most 63 bytes.
    pub schema: String,
    /// Most connections the handle's statements use at once (default 10), plus one dedicated
    /// LISTEN connection per [`PostgresPubSub`]; see [`PostgresConfig::max_connections`].
    pub max_connections: u32,
    /// Timeout of acquiring a pooled connection, including connecting (default 5 s); a dead
    /// server gives a retryable `Unavailable`, never a hang.
    pub acquire_timeout: Duration,
    /// Bounded buffer of one fan-out subscriber, in messages (default 1024); overflow yields
    /// [`Delivery::Lagged`](durable_core::Delivery::Lagged).
    pub subscriber_capacity: usize,
    /// A job delivered but neither acked nor nacked for this long is delivered again (its
    /// consumer is presumed dead; default 30 s).
    pub visibility_timeout: Duration,
    /// How often an idle group consumer looks for jobs without a wake-up (default 1 s): the
    /// backstop for redeliveries after [`visibility_timeout`](Self::visibility_timeout) and
    /// for notifications lost while the LISTEN connection was down.
    pub group_poll: Duration,
    /// Whether `connect` applies the migrations (default true); see [`Postgres::migrate`].
    pub migrate: bool,
    /// How subscribers in this process hear of new events (default [`Wake::Listen`]).
    pub wake: Wake,
    /// Whether the URL points at a pooler in transaction mode, such as PgBouncer (default
    /// false); see [`PostgresConfig::behind_pooler`].
    pub pooler: bool,
}

/// How a [`PostgresPubSub`](crate::PostgresPubSub) hears of new events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// One dedicated `LISTEN` session per pubsub: appends and publishes of every process
    /// reach subscribers at once (one `NOTIFY` per appended batch).
    Listen,
    /// No `LISTEN` (for poolers in transaction mode, which cannot hold one). Appends and
    /// publishes of this process still reach its own subscribers at once. An observer of a
    /// run executing in another process hears of its events only through the event log's
    /// idle re-read, so it sees them up to [`LogConfig::idle_check`] late (5 s by default;
    /// lower it, e.g. to 250 ms, at the cost of one read per idle observer per interval).
    /// Published messages of other processes are not delivered: event-log observers re-read
    /// the log, aborts are found by the marker checked at every step, and work-queue
    /// consumers poll their table every [`group_poll`](PostgresConfig::group_poll).
    ///
    /// [`LogConfig::idle_check`]: durable_core::LogConfig::idle_check
    Poll,
}

impl PostgresConfig {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            subscriber_capacity: 1024,
            visibility_timeout: Duration::from_secs(30),
            group_poll: Duration::from_secs(1),
            migrate: true,
            wake: Wake::Listen,
            pooler: false,
        }
    }

    /// Settings from the environment: the URL from `DURABLE_POSTGRES_URL`, else
    /// `DATABASE_URL`; the schema from `DURABLE_POSTGRES_SCHEMA` if set;
    /// `DURABLE_POSTGRES_POOLER=1` for [`behind_pooler`](Self::behind_pooler);
    /// `DURABLE_POSTGRES_POLL=1` for [`poll_only`](Self::poll_only).
    ///
    /// # Errors
    /// `InvalidInput` if no URL variable is set, or a variable is malformed.
    pub fn from_env() -> Result<Self> {
        let url = URL_ENV_VARS
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "set {} to a postgres:// URL",
                    URL_ENV_VARS.join(" or ")
                ))
                .with_backend(BACKEND)
            })?;
        let mut c = Self::new(url);
        if let Ok(s) = std::env::var("DURABLE_POSTGRES_SCHEMA") {
            c.schema = s;
        }
        match std::env::var("DURABLE_POSTGRES_POOLER").as_deref() {
            Ok("1" | "true") => c = c.behind_pooler(),
            Ok("0" | "false" | "") | Err(_) => {}
            Ok(_) => {
                return Err(
                    Error::invalid_input("DURABLE_POSTGRES_POOLER must be 1 or 0")
                        .with_backend(BACKEND),
                )
            }
        }
        match std::env::var("DURABLE_POSTGRES_POLL").as_deref() {
            Ok("1" | "true") => c = c.poll_only(),
            Ok("0" | "false" | "") | Err(_) => {}
            Ok(_) => {
                return Err(Error::invalid_input("DURABLE_POSTGRES_POLL must be 1 or 0")
                    .with_backend(BACKEND))
            }
        }
        Ok(c)
    }

    /// Set the schema.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Set the most connections the handle's statements use at once (default 10). The
    /// handle's [`pool`](Postgres::pool), for migrations and your own queries, opens up to as
    /// many again, on first use, and closes them after a minute idle; the pubsub adds its one
    /// LISTEN connection.
    #[must_use]
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Set the acquire timeout.
    #[must_use]
    pub fn acquire_timeout(mut self, t: Duration) -> Self {
        self.acquire_timeout = t;
        self
    }

    /// Set the per-subscriber buffer.
    #[must_use]
    pub fn subscriber_capacity(mut self, n: usize) -> Self {
        self.subscriber_capacity = n.max(1);
        self
    }

    /// Set the visibility timeout of unsettled jobs.
    #[must_use]
    pub fn visibility_timeout(mut self, t: Duration) -> Self {
        self.visibility_timeout = t;
        self
    }

    /// Set the idle poll interval of group consumers.
    #[must_use]
    pub fn group_poll(mut self, t: Duration) -> Self {
        self.group_poll = t;
        self
    }

    /// Whether `connect` applies the migrations.
    #[must_use]
    pub fn migrate(mut self, yes: bool) -> Self {
        self.migrate = yes;
        self
    }

    /// No `LISTEN` session: [`Wake::Poll`].
    #[must_use]
    pub fn poll_only(mut self) -> Self {
        self.wake = Wake::Poll;
        self
    }

    /// The URL points at a pooler in transaction mode (PgBouncer's `pool_mode = transaction`),
    /// where a server session is not kept between transactions. Then:
    /// - no `LISTEN`: [`Wake::Poll`] (observers in other processes wake by the event log's
    ///   idle re-read);
    /// - no named prepared statements (sqlx's statement cache is off), which such poolers
    ///   cannot route;
    /// - no `search_path` startup parameter (poolers reject or drop it): set the schema for the
    ///   role or the database instead (`ALTER ROLE app SET search_path = durable` or
    ///   `ALTER DATABASE db SET search_path = durable`); `connect` checks that
    ///   `current_schema()` is [`schema`](Self::schema) and fails with `InvalidInput` if not;
    /// - no migrations on connect: they hold a session lock, so apply them once through a
    ///   direct connection (`PostgresConfig::new(direct_url).connect()`, or
    ///   [`Postgres::migrate`] on it); `migrate(true)` here is `InvalidInput`.
    #[must_use]
    pub fn behind_pooler(mut self) -> Self {
        self.pooler = true;
        self.migrate = false;
        self.wake = Wake::Poll;
        self
    }

    fn connect_options(&self) -> Result<PgConnectOptions> {
        validate_schema(&self.schema)?;
        let opts = PgConnectOptions::from_str(&self.url).map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                "connect",
                format!("bad PostgreSQL URL {}", redact(&self.url)),
            )
            .with_source(e)
        })?;
        let opts = opts.application_name("durable");
        Ok(if self.pooler {
            opts.statement_cache_capacity(0)
        } else {
            opts.options([("search_path", self.schema.as_str())])
        })
    }

    /// Connect a pool (and, with [`migrate`](Self::migrate), apply the migrations).
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL or schema, `Unavailable` if the server cannot be reached.
    pub async fn connect(self) -> Result<Postgres> {
        let opts = self.connect_options()?;
        if self.pooler && self.migrate {
            return Err(err(
                ErrorKind::InvalidInput,
                "connect",
                "migrations cannot run through a pooler in transaction mode: apply them \
                 through a direct connection and connect here with migrate(false)",
            ));
        }
        // The pool serves migrations and `Postgres::pool` users; statements run on `conns`.
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts.clone());
        let conns = Conns::new(opts.clone(), self.max_connections, self.acquire_timeout);
        // Reach the server now: a bad address or password fails here, not at first use.
        conns
            .get()
            .await
            .map_err(|e| from_sqlx("connect", e))?
            .give_back();
        let local = Arc::new(Registry::default());
        let pg = Postgres {
            inner: Arc::new(Shared {
                pool,
                conns,
                opts,
                config: self,
                local,
                id: HANDLE_SEQ.fetch_add(1, Ordering::Relaxed),
                log_locks: (0..LOG_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        };
        if pg.inner.config.pooler {
            pg.check_search_path().await?;
        }
        if pg.inner.config.migrate {
            pg.migrate().await?;
        }
        Ok(pg)
    }
}

/// Check a schema name: `[a-z_][a-z0-9_]*`, 1–63 bytes (a plain PostgreSQL identifier, so it
/// never needs quoting and never carries SQL).
fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorKind::InvalidInput,
            "connect",
            format!(
                "schema must match [a-z_][a-z0-9_]{{0,62}} and not start with pg_, got {schema:?}"
            ),
        ))
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("subscriber_capacity", &self.subscriber_capacity)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("group_poll", &self.group_poll)
            .field("migrate", &self.migrate)
            .field("wake", &self.wake)
            .field("pooler", &self.pooler)
            .finish()
    }
}

/// `url` with the password (if any, in the userinfo or a `password=` parameter) replaced by
/// `***`.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = url.find("://").map(|i| i + 3) {
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some((user, _)) = userinfo.split_once(':') {
                out = format!("{}{user}:***{}", &url[..scheme_end], &rest[at..]);
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// A pool of connections to one PostgreSQL database and schema, shared by the cache, pubsub
/// and store built from it. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    conns: Conns,
    opts: PgConnectOptions,
    config: PostgresConfig,
    /// The subscribers of every polling pubsub built on this handle, which its cache's
    /// appends are announced to directly ([`Wake::Poll`]).
    local: Arc<Registry>,
    /// Unique per handle in this process (names the polling announce domain).
    id: u64,
    /// See [`Postgres::log_lock`].
    log_locks: Box<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Postgres::log_lock`].
const LOG_LOCKS: usize = 256;

static HANDLE_SEQ: AtomicU64 = AtomicU64::new(0);

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Postgres {
    /// Connect to `url` with default settings (and migrate).
    ///
    /// # Errors
    /// As [`PostgresConfig::connect`].
    pub async fn connect(url: &str) -> Result<Self> {
        PostgresConfig::new(url).connect().await
    }

    /// The settings.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// A pool for your own queries (every connection has `search_path` set to the schema);
    /// opened lazily. The handle's own statements do not use it: they run on connections
    /// checked out and back without sqlx's per-checkout `Sync` round trips.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The connections statements run on.
    pub(crate) fn conns(&self) -> &Conns {
        &self.inner.conns
    }

    pub(crate) fn connect_options(&self) -> &PgConnectOptions {
        &self.inner.opts
    }

    pub(crate) fn local(&self) -> &Arc<Registry> {
        &self.inner.local
    }

    pub(crate) fn handle_id(&self) -> u64 {
        self.inner.id
    }

    /// One of [`LOG_LOCKS`] locks, by a hash of `log`: held around an append and its local
    /// announcement with [`Wake::Poll`], so one log's frames leave in cursor order.
    pub(crate) async fn log_lock(&self, log: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        log.hash(&mut h);
        let i = usize::try_from(h.finish() % LOG_LOCKS as u64).unwrap_or(0);
        self.inner.log_locks[i].lock().await
    }

    /// Behind a pooler the schema comes from the role's or database's `search_path`: make sure
    /// it does, before anything reads or writes the wrong schema.
    async fn check_search_path(&self) -> Result<()> {
        let current: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one_on(self)
            .await
            .map_err(|e| from_sqlx("connect", e))?;
        let want = &self.inner.config.schema;
        if current.as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        Err(err(
            ErrorKind::InvalidInput,
            "connect",
            format!(
                "behind a pooler the schema comes from the server: current_schema() is {}, \
                 expected {want}; run `ALTER ROLE <user> SET search_path = {want}` (or ALTER \
                 DATABASE … SET search_path) on the server",
                current.as_deref().unwrap_or("NULL")
            ),
        ))
    }

    /// Create the schema if needed and apply every pending migration (`sqlx::migrate!`, with
    /// its bookkeeping table inside the schema). Idempotent, and safe to call from several
    /// processes at once: it runs under a session advisory lock on a dedicated connection.
    ///
    /// # Errors
    /// `Unavailable` if the server cannot be reached; `Unexpected` if a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        let schema = &self.inner.config.schema;
        validate_schema(schema)?;
        let mut conn = self
            .inner
            .opts
            .connect()
            .await
            .map_err(|e| from_sqlx("migrate", e))?;
        let result = async {
            // One lock for every schema of the database: creating schemas concurrently can
            // race on pg_namespace's unique index.
            sqlx::query("SELECT pg_advisory_lock(hashtext('durable-postgres migrate'))")
                .execute(&mut conn)
                .await
                .map_err(|e| from_sqlx("migrate", e))?;
            // The schema is validated as a plain lowercase identifier: nothing to escape.
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut conn)
                .await
                .map_err(|e| from_sqlx("migrate", e))?;
            MIGRATOR.run(&mut conn).await.map_err(|e| {
                err(ErrorKind::Unexpected, "migrate", "a migration failed").with_source(e)
            })
        }
        .await;
        // Closing the session releases the advisory lock whatever happened.
        let _ = conn.close().await;
        result
    }

    /// Delete up to `limit` expired logs, keys and runs (with their events and checkpoints),
    /// and outbox rows older than a minute. Index-backed; returns the rows removed. Reads never
    /// return expired data, so this only bounds table growth; `expire` of
    /// [`PostgresServerCache`] runs it as a side task.
    ///
    /// # Errors
    /// The server's error.
    pub async fn purge(&self, limit: u32) -> Result<u64> {
        // Not run twice: a second run would under-count what the first removed.
        let n: i64 = sqlx::query_scalar("SELECT durable_purge($1, 60000)")
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .fetch_one_on(self)
            .await
            .map_err(|e| from_sqlx("purge", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The run-log cache on this pool (see [`PostgresServerCache::with_announce`] to pair it
    /// with this database's [`PostgresPubSub`]).
    pub fn server_cache(&self) -> PostgresServerCache {
        PostgresServerCache::new(self.clone())
    }

    /// The workflow store on this pool.
    pub fn workflow_store(&self) -> PostgresWorkflowStore {
        PostgresWorkflowStore::new(self.clone())
    }

    /// A PubSub with its own dedicated LISTEN connection (opened now) that carries every
    /// subscription of the returned value and its clones.
    ///
    /// # Errors
    /// `Unavailable` if the LISTEN connection cannot be opened.
    pub async fn pubsub(&self) -> Result<PostgresPubSub> {
        PostgresPubSub::new(self.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret"),
            "postgres://h/db?user=u&password=***"
        );
        let c = PostgresConfig::new("postgresql://u:hunter2@h/db");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn schemas_are_plain_identifiers() {
        for ok in ["durable", "_a", "app_2"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a-b",
            "a;drop",
            "\"x\"",
            "pg_x",
            "1a",
            &"a".repeat(64),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }
}

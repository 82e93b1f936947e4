//! `durable serve` configuration: a TOML file and flags choosing the backend by URL, the listen
//! address and the agents.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! # memory (default) · sqlite:<path> or a bare path · redis://… · postgres://…
//! backend = "runs.db"
//! namespace = "durable"
//!
//! [[agents]]
//! id = "demo"
//! model = "demo"          # the built-in demo agent on the scripted model
//! delay_ms = 40
//!
//! [[agents]]
//! id = "assistant"
//! model = "openai"        # an OpenAI-compatible chat-completions server
//! url = "http://127.0.0.1:11434/v1"
//! model_name = "llama3.2"
//! api_key_env = "OPENAI_API_KEY"
//! chat = true             # the agent answering /api/chat
//! ```
//!
//! With no agent configured, `demo` is served. On a memory backend runs execute in the serving
//! process; on any other backend the agents are [`EventedAgent`]s: runs are queued, executed by
//! `workers` tasks with a lease, and a run whose process died is continued by any instance
//! sharing the backend (after a restart, by the restarted process).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use durable_core::agent::{Agent, DurableAgent, EventedAgent};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{LogConfig, PubSub, ServerCache, WorkflowStore};
use serde::Deserialize;

use crate::{demo, AccessControl, DurableServer, RunTokens};

/// Default listen address of `durable serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A configuration error: what is wrong and where, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The backends (cache, pubsub, store) of `durable serve`, chosen by URL.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Everything in this process (`memory`, the default): nothing survives it.
    Memory,
    /// One SQLite file (`sqlite:<path>`, or a bare path).
    Sqlite(PathBuf),
    /// A Redis server (`redis://…`, `rediss://…`).
    Redis(String),
    /// A PostgreSQL database (`postgres://…`, `postgresql://…`).
    Postgres(String),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend {
    /// Parse a backend URL: `memory`, `sqlite:<path>` (also `sqlite://<path>`), `redis://…`,
    /// `rediss://…`, `postgres://…`, `postgresql://…`; anything else without a scheme is a
    /// path to an SQLite file.
    ///
    /// # Errors
    /// An empty value, an unknown scheme, or a backend this binary was built without (the
    /// `sqlite`, `redis` and `postgres` features).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        let backend = if url.is_empty() {
            return Err(ConfigError::new(
                "backend is empty: use memory, sqlite:<path>, a path, redis://… or postgres://…",
            ));
        } else if url == "memory" || url == "memory:" {
            Backend::Memory
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ConfigError::new(
                    "backend sqlite: needs a file path (sqlite:runs.db)",
                ));
            }
            Backend::Sqlite(PathBuf::from(path))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Backend::Redis(url.to_owned())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(url.to_owned())
        } else if let Some((scheme, _)) = url.split_once("://") {
            return Err(ConfigError::new(format!(
                "backend scheme {scheme:?} is not supported: use memory, sqlite:<path>, a path, \
                 redis://… or postgres://…"
            )));
        } else {
            Backend::Sqlite(PathBuf::from(url))
        };
        backend.check_compiled_in()?;
        Ok(backend)
    }

    fn check_compiled_in(&self) -> Result<(), ConfigError> {
        let (feature, on) = match self {
            Backend::Memory => return Ok(()),
            Backend::Sqlite(_) => ("sqlite", cfg!(feature = "sqlite")),
            Backend::Redis(_) => ("redis", cfg!(feature = "redis")),
            Backend::Postgres(_) => ("postgres", cfg!(feature = "postgres")),
        };
        if on {
            Ok(())
        } else {
            Err(ConfigError::new(format!(
                "this durable binary was built without the `{feature}` feature; \
                 rebuild with --features {feature}"
            )))
        }
    }

    /// The backend for logs: its kind and address, without a password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Memory => "memory".to_owned(),
            Backend::Sqlite(p) => format!("sqlite:{}", p.display()),
            Backend::Redis(u) | Backend::Postgres(u) => redact(u),
        }
    }

    /// Whether runs outlive the process (every backend but memory).
    pub fn is_durable(&self) -> bool {
        !matches!(self, Backend::Memory)
    }
}

/// `scheme://user:password@host/…` → `scheme://user:***@host/…`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                // A bare userinfo may be a password (`redis://secret@host`): hide it whole.
                "***".to_owned()
            };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Which model an agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ModelKind {
    /// The built-in demo agent: a `weather` tool call, then a scripted answer word by word.
    Demo,
    /// An OpenAI-compatible chat-completions server (`url`, `model_name`).
    Openai,
}

/// One `[[agents]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The agent id (routes `/api/agents/{id}/…`).
    pub id: String,
    /// The model.
    pub model: ModelKind,
    /// Demo: pause before each chunk, milliseconds (default 40).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Demo: how many times the answer is repeated (default 1; long runs for tests).
    #[serde(default)]
    pub repeat: Option<u32>,
    /// OpenAI: the server's base URL (`http://127.0.0.1:11434/v1`).
    #[serde(default)]
    pub url: Option<String>,
    /// OpenAI: the model name.
    #[serde(default)]
    pub model_name: Option<String>,
    /// OpenAI: the environment variable holding the API key (default `OPENAI_API_KEY`; unset
    /// or empty means no key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// OpenAI: the system instructions.
    #[serde(default)]
    pub instructions: Option<String>,
    /// This agent answers `/api/chat` (default: the first agent).
    #[serde(default)]
    pub chat: bool,
}

impl AgentConfig {
    /// The demo agent `id` with a pause of `delay_ms` before each chunk.
    pub fn demo(id: impl Into<String>, delay_ms: u64) -> Self {
        Self {
            id: id.into(),
            model: ModelKind::Demo,
            delay_ms: Some(delay_ms),
            repeat: None,
            url: None,
            model_name: None,
            api_key_env: None,
            instructions: None,
            chat: false,
        }
    }

    /// An agent `id` on the OpenAI-compatible server at `url`, model `model_name`.
    pub fn openai(
        id: impl Into<String>,
        url: impl Into<String>,
        model_name: impl Into<String>,
    ) -> Self {
        Self {
            model: ModelKind::Openai,
            url: Some(url.into()),
            model_name: Some(model_name.into()),
            delay_ms: None,
            ..Self::demo(id, 0)
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let at = format!("agent {:?}", self.id);
        durable_core::validate_name("agent id", &self.id)
            .map_err(|e| ConfigError::new(format!("{at}: {}", e.message())))?;
        let forbid = |set: bool, field: &str, kind: &str| {
            if set {
                Err(ConfigError::new(format!(
                    "{at}: `{field}` does not apply to model = \"{kind}\""
                )))
            } else {
                Ok(())
            }
        };
        match self.model {
            ModelKind::Demo => {
                forbid(self.url.is_some(), "url", "demo")?;
                forbid(self.model_name.is_some(), "model_name", "demo")?;
                forbid(self.api_key_env.is_some(), "api_key_env", "demo")?;
                forbid(self.instructions.is_some(), "instructions", "demo")?;
                if self.repeat == Some(0) {
                    return Err(ConfigError::new(format!(
                        "{at}: `repeat` must be at least 1"
                    )));
                }
            }
            ModelKind::Openai => {
                forbid(self.delay_ms.is_some(), "delay_ms", "openai")?;
                forbid(self.repeat.is_some(), "repeat", "openai")?;
                let url = self.url.as_deref().unwrap_or_default();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::new(format!(
                        "{at}: model = \"openai\" needs `url`, an http:// or https:// base URL"
                    )));
                }
                if self.model_name.as_deref().unwrap_or_default().is_empty() {
                    return Err(ConfigError::new(format!(
                        "{at}: model = \"openai\" needs `model_name`"
                    )));
                }
            }
        }
        Ok(())
    }

    fn build(&self) -> Result<Agent, ConfigError> {
        let bad = |e: durable_core::Error| ConfigError::new(format!("agent {:?}: {e}", self.id));
        match self.model {
            ModelKind::Demo => demo::agent_with(
                &self.id,
                Duration::from_millis(self.delay_ms.unwrap_or(40)),
                self.repeat.unwrap_or(1),
            )
            .map_err(bad),
            ModelKind::Openai => {
                let mut llm = durable_openai::OpenAiModel::builder()
                    .base_url(self.url.clone().unwrap_or_default())
                    .model(self.model_name.clone().unwrap_or_default());
                let var = self.api_key_env.as_deref().unwrap_or("OPENAI_API_KEY");
                if let Ok(key) = std::env::var(var) {
                    if !key.is_empty() {
                        llm = llm.api_key(key);
                    }
                }
                let model = llm.build().map_err(bad)?;
                Agent::builder()
                    .id(self.id.clone())
                    .instructions(
                        self.instructions
                            .clone()
                            .unwrap_or_else(|| "You are a helpful assistant.".to_owned()),
                    )
                    .model(model)
                    .build()
                    .map_err(bad)
            }
        }
    }
}

/// The configuration of `durable serve` (the TOML file; flags override its fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Address to listen on (default [`DEFAULT_LISTEN`]).
    #[serde(default)]
    pub listen: Option<String>,
    /// The backend URL (default `memory`; see [`Backend::parse`]).
    #[serde(default)]
    pub backend: Option<String>,
    /// Prefix of every key and topic (default `durable`): instances sharing a backend and a
    /// namespace share their runs.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Worker tasks per agent executing runs, on a durable backend (default 4; 0 = this
    /// instance only queues and observes).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Lease of a run's executor, milliseconds (default: core's, 30 s): how soon another
    /// instance continues a run whose process died.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// SSE heartbeat interval, seconds (default 15).
    #[serde(default)]
    pub heartbeat_secs: Option<u64>,
    /// Require run tokens signed with the key in this environment variable (≥ 32 bytes).
    #[serde(default)]
    pub token_key_env: Option<String>,
    /// Serve the demo page at `/` (default true).
    #[serde(default)]
    pub demo_page: Option<bool>,
    /// The agents (default: `demo`).
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
}

impl ServeConfig {
    /// Parse a TOML configuration and check it.
    ///
    /// # Errors
    /// The TOML error (with its line) or the first invalid setting.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            toml::from_str(text).map_err(|e| ConfigError::new(format!("invalid config: {e}")))?;
        config.check()?;
        Ok(config)
    }

    /// Read and parse the configuration file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or as [`ServeConfig::from_toml`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))
    }

    /// Check every setting (done by [`ServeConfig::from_toml`]; call it again after changing
    /// fields).
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.backend()?;
        if let Some(ns) = &self.namespace {
            durable_core::names::validate_namespace(ns)
                .map_err(|e| ConfigError::new(format!("namespace: {}", e.message())))?;
        }
        if self.lease_ms == Some(0) {
            return Err(ConfigError::new("lease_ms must be at least 1"));
        }
        if self.heartbeat_secs == Some(0) {
            return Err(ConfigError::new("heartbeat_secs must be at least 1"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.agents {
            a.check()?;
            if !seen.insert(a.id.as_str()) {
                return Err(ConfigError::new(format!(
                    "agent {:?} is configured twice",
                    a.id
                )));
            }
        }
        if self.agents.iter().filter(|a| a.chat).count() > 1 {
            return Err(ConfigError::new("more than one agent has chat = true"));
        }
        Ok(())
    }

    /// The backend (default memory).
    ///
    /// # Errors
    /// As [`Backend::parse`].
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        self.backend
            .as_deref()
            .map_or(Ok(Backend::Memory), Backend::parse)
    }

    /// The listen address.
    pub fn listen(&self) -> &str {
        self.listen.as_deref().unwrap_or(DEFAULT_LISTEN)
    }

    /// Connect the backend and build the server with every configured agent.
    ///
    /// # Errors
    /// An invalid setting, a backend that cannot be reached or opened, an unset token key.
    pub async fn build(&self) -> Result<DurableServer, ConfigError> {
        self.check()?;
        let backend = self.backend()?;
        let parts = connect(&backend).await?;
        let mut log = LogConfig::default();
        if let Some(ns) = &self.namespace {
            log.namespace.clone_from(ns);
        }
        let agents = if self.agents.is_empty() {
            vec![AgentConfig::demo("demo", 40)]
        } else {
            self.agents.clone()
        };
        let mut builder = DurableServer::builder();
        if let Some(s) = self.heartbeat_secs {
            builder = builder.heartbeat(Duration::from_secs(s));
        }
        for a in &agents {
            let mut b = DurableAgent::builder(a.build()?)
                .cache_arc(parts.cache.clone())
                .pubsub_arc(parts.pubsub.clone())
                .store_arc(parts.store.clone())
                .log_config(log.clone());
            if let Some(ms) = self.lease_ms {
                b = b.lease_ttl(Duration::from_millis(ms));
            }
            let durable = b
                .build()
                .map_err(|e| ConfigError::new(format!("agent {:?}: {e}", a.id)))?;
            builder = if backend.is_durable() {
                let evented = EventedAgent::builder(durable)
                    .workers(self.workers.unwrap_or(4))
                    .start()
                    .await
                    .map_err(|e| ConfigError::new(format!("agent {:?}: {e}", a.id)))?;
                builder.agent(evented)
            } else {
                builder.agent(durable)
            };
            if a.chat {
                builder = builder.chat_agent(a.id.clone());
            }
        }
        if let Some(var) = &self.token_key_env {
            let key = std::env::var(var)
                .map_err(|_| ConfigError::new(format!("token_key_env: {var} is not set")))?;
            let tokens = RunTokens::new(key, Duration::from_secs(3600))
                .map_err(|e| ConfigError::new(format!("token_key_env: {e}")))?;
            builder = builder.access(AccessControl::new().tokens(tokens));
        }
        builder.build().map_err(|e| ConfigError::new(e.to_string()))
    }
}

struct Parts {
    cache: Arc<dyn ServerCache>,
    pubsub: Arc<dyn PubSub>,
    store: Arc<dyn WorkflowStore>,
}

async fn connect(backend: &Backend) -> Result<Parts, ConfigError> {
    let unreachable =
        |e: durable_core::Error| ConfigError::new(format!("backend {}: {e}", backend.describe()));
    match backend {
        Backend::Memory => {
            let pubsub = InMemoryPubSub::new();
            Ok(Parts {
                cache: Arc::new(InMemoryCache::new().with_pubsub(&pubsub)),
                pubsub: Arc::new(pubsub),
                store: Arc::new(InMemoryWorkflowStore::new()),
            })
        }
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(path) => {
            let config = durable_sqlite::SqliteConfig::new(path.clone());
            let db = durable_sqlite::SqliteBackend::open_async(config)
                .await
                .map_err(unreachable)?;
            Ok(Parts {
                cache: Arc::new(db.server_cache()),
                pubsub: Arc::new(db.pubsub()),
                store: Arc::new(db.workflow_store()),
            })
        }
        #[cfg(feature = "redis")]
        Backend::Redis(url) => {
            let redis = durable_redis::RedisConfig::new(url.clone())
                .connect()
                .await
                .map_err(unreachable)?;
            let pubsub = redis.pubsub().await.map_err(unreachable)?;
            Ok(Parts {
                cache: Arc::new(redis.server_cache()),
                pubsub: Arc::new(pubsub),
                store: Arc::new(redis.workflow_store()),
            })
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres(url) => {
            let pg = durable_postgres::PostgresConfig::new(url.clone())
                .connect()
                .await
                .map_err(unreachable)?;
            let pubsub = pg.pubsub().await.map_err(unreachable)?;
            Ok(Parts {
                cache: Arc::new(pg.server_cache().with_announce()),
                pubsub: Arc::new(pubsub),
                store: Arc::new(pg.workflow_store()),
            })
        }
        #[allow(unreachable_patterns)]
        other => {
            other.check_compiled_in()?;
            let _ = unreachable;
            Err(ConfigError::new("backend not compiled in"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_parse_and_bad_ones_are_named() {
        assert_eq!(Backend::parse("memory"), Ok(Backend::Memory));
        assert_eq!(
            Backend::parse("sqlite:/tmp/a.db"),
            Ok(Backend::Sqlite("/tmp/a.db".into()))
        );
        assert_eq!(
            Backend::parse("sqlite:///tmp/a.db"),
            Ok(Backend::Sqlite("/tmp/a.db".into()))
        );
        assert_eq!(
            Backend::parse("runs.db"),
            Ok(Backend::Sqlite("runs.db".into()))
        );
        assert!(matches!(
            Backend::parse("redis://h:6379/0"),
            Ok(Backend::Redis(_))
        ));
        assert!(matches!(
            Backend::parse("postgresql://u@h/db"),
            Ok(Backend::Postgres(_))
        ));
        for bad in ["", "  ", "sqlite:", "mysql://h/db", "http://x"] {
            assert!(Backend::parse(bad).is_err(), "{bad:?}");
        }
        let e = Backend::parse("mysql://u:pw@h/db").unwrap_err().to_string();
        assert!(e.contains("\"mysql\"") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn passwords_never_reach_descriptions() {
        for (url, shown) in [
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://s3cret@h", "redis://***@h"),
            ("postgres://u:s3cret@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://***@h/db"),
            ("redis://h:6379", "redis://h:6379"),
        ] {
            let b = Backend::parse(url).unwrap();
            assert_eq!(b.describe(), shown);
            assert!(!format!("{b:?}").contains("s3cret"));
        }
    }

    #[test]
    fn configs_parse_and_errors_say_what_is_wrong() {
        let c = ServeConfig::from_toml(
            r#"
            listen = "127.0.0.1:0"
            backend = "sqlite:runs.db"
            [[agents]]
            id = "demo"
            model = "demo"
            delay_ms = 1
            [[agents]]
            id = "assistant"
            model = "openai"
            url = "http://127.0.0.1:11434/v1"
            model_name = "llama3.2"
            chat = true
            "#,
        )
        .unwrap();
        assert_eq!(c.listen(), "127.0.0.1:0");
        assert_eq!(c.agents.len(), 2);
        assert_eq!(ServeConfig::from_toml("").unwrap().listen(), DEFAULT_LISTEN);
        for (text, needle) in [
            ("lisen = \"x\"", "unknown field"),
            ("backend = \"mysql://h\"", "mysql"),
            ("namespace = \"a b\"", "namespace"),
            ("[[agents]]\nid = \"a\"\nmodel = \"gpt\"", "unknown variant"),
            ("[[agents]]\nid = \"a b\"\nmodel = \"demo\"", "agent \"a b\""),
            ("[[agents]]\nid = \"a\"\nmodel = \"openai\"", "needs `url`"),
            (
                "[[agents]]\nid = \"a\"\nmodel = \"openai\"\nurl = \"http://x\"",
                "model_name",
            ),
            ("[[agents]]\nid = \"a\"\nmodel = \"demo\"\nurl = \"http://x\"", "`url`"),
            (
                "[[agents]]\nid = \"a\"\nmodel = \"demo\"\n[[agents]]\nid = \"a\"\nmodel = \"demo\"",
                "twice",
            ),
            ("lease_ms = 0", "lease_ms"),
            ("listen = 5", "invalid type"),
        ] {
            let e = ServeConfig::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}

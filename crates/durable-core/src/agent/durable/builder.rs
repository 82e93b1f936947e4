//! [`DurableAgentBuilder`]: backends and options of a [`DurableAgent`].

use super::*;

/// Builds a [`DurableAgent`]; every backend defaults to its in-memory implementation.
pub struct DurableAgentBuilder {
    pub(super) agent: Agent,
    pub(super) cache: Option<Arc<dyn ServerCache>>,
    pub(super) no_cache: bool,
    pub(super) pubsub: Option<Arc<dyn PubSub>>,
    pub(super) store: Option<Arc<dyn WorkflowStore>>,
    pub(super) memory: Option<Arc<dyn ConversationMemory>>,
    pub(super) config: LogConfig,
    pub(super) worker_id: Option<String>,
    pub(super) lease_ttl: Duration,
}

impl fmt::Debug for DurableAgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableAgentBuilder")
            .field("agent", &self.agent.id())
            .finish()
    }
}

impl DurableAgentBuilder {
    /// Store run logs in `cache` (default: in memory).
    #[must_use]
    pub fn cache(self, cache: impl ServerCache) -> Self {
        self.cache_arc(Arc::new(cache))
    }

    /// Store run logs in a shared `cache`.
    #[must_use]
    pub fn cache_arc(mut self, cache: Arc<dyn ServerCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Live only: events are published but not stored, so `observe` sees only what comes
    /// after it attaches and nothing is replayable.
    #[must_use]
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Wake observers and carry control messages over `pubsub` (default: in memory).
    #[must_use]
    pub fn pubsub(self, pubsub: impl PubSub) -> Self {
        self.pubsub_arc(Arc::new(pubsub))
    }

    /// Use a shared `pubsub`.
    #[must_use]
    pub fn pubsub_arc(mut self, pubsub: Arc<dyn PubSub>) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// Keep run records and checkpoints in `store` (default: in memory).
    #[must_use]
    pub fn store(self, store: impl WorkflowStore) -> Self {
        self.store_arc(Arc::new(store))
    }

    /// Use a shared `store`.
    #[must_use]
    pub fn store_arc(mut self, store: Arc<dyn WorkflowStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Conversation memory for runs with a thread id (default: in memory).
    #[must_use]
    pub fn memory(mut self, memory: impl ConversationMemory) -> Self {
        self.memory = Some(Arc::new(memory));
        self
    }

    /// How long a finished run's events and record are kept (default 24 h).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// The event log's settings (namespace, limits, retention).
    #[must_use]
    pub fn log_config(mut self, config: LogConfig) -> Self {
        self.config = config;
        self
    }

    /// This instance's identity as a lease owner (default: random). A process restarted with
    /// the same id recovers its own runs at once instead of waiting for their leases to expire.
    #[must_use]
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Lease of an executing run (default 30 s): a crashed executor's runs are taken over this
    /// long after its last heartbeat.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Build the agent.
    ///
    /// # Errors
    /// `InvalidInput` for an invalid worker id or a lease shorter than 10 ms.
    pub fn build(self) -> Result<DurableAgent> {
        let worker_id = self
            .worker_id
            .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4()));
        crate::id::validate_name("worker id", &worker_id)?;
        if self.lease_ttl < Duration::from_millis(10) {
            return Err(Error::invalid_input("lease_ttl must be at least 10 ms"));
        }
        self.config.validate()?;
        // The in-memory defaults are a pair: the cache announces each append itself, under
        // its lock, and an announced batch is stored once, as its frame.
        let memory_pubsub = self.pubsub.is_none().then(InMemoryPubSub::new);
        let pubsub = match (self.pubsub, &memory_pubsub) {
            (Some(p), _) => p,
            (None, Some(p)) => Arc::new(p.clone()) as Arc<dyn PubSub>,
            (None, None) => Arc::new(InMemoryPubSub::new()),
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(InMemoryWorkflowStore::new()));
        let cache = if self.no_cache {
            None
        } else {
            Some(self.cache.unwrap_or_else(|| match &memory_pubsub {
                Some(p) => Arc::new(InMemoryCache::new().with_pubsub(p)),
                None => Arc::new(InMemoryCache::new()),
            }))
        };
        let log = match &cache {
            Some(c) => EventLog::new(c.clone(), pubsub.clone()),
            None => EventLog::live_only(pubsub.clone()),
        }
        .with_store(store.clone())
        .with_config(self.config);
        Ok(DurableAgent {
            inner: Arc::new(Inner {
                agent: self.agent,
                log,
                store,
                cache,
                pubsub,
                memory: self
                    .memory
                    .unwrap_or_else(|| Arc::new(InMemoryMemory::new())),
                worker_id,
                lease_ttl: self.lease_ttl,
                local: Mutex::new(HashMap::new()),
                control: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

//! Running cases: outcomes, timeouts, the `#[test]` driver behind [`suite!`](crate::suite).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{EventLog, LogConfig, PubSub, ServerCache, WorkflowStore};
use futures::future::BoxFuture;

/// The backend under test: any subset of the three traits. Event-log cases fill a missing part
/// with its in-memory implementation (pick and mix); trait cases skip a missing part by name.
#[derive(Clone)]
pub struct Backend {
    /// Name for messages.
    pub name: String,
    /// The cache under test.
    pub cache: Option<Arc<dyn ServerCache>>,
    /// The pubsub under test.
    pub pubsub: Option<Arc<dyn PubSub>>,
    /// The store under test.
    pub store: Option<Arc<dyn WorkflowStore>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("cache", &self.cache.as_ref().map(|c| c.backend()))
            .field("pubsub", &self.pubsub.as_ref().map(|p| p.backend()))
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .finish()
    }
}

impl Backend {
    /// A backend with no parts yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cache: None,
            pubsub: None,
            store: None,
        }
    }

    /// The in-memory reference backends.
    pub fn memory() -> Self {
        let pubsub = InMemoryPubSub::new();
        Self::new("memory")
            .cache(InMemoryCache::new().with_pubsub(&pubsub))
            .pubsub(pubsub)
            .store(InMemoryWorkflowStore::new())
    }

    /// Set the cache under test.
    #[must_use]
    pub fn cache(mut self, cache: impl ServerCache) -> Self {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// Set the pubsub under test.
    #[must_use]
    pub fn pubsub(mut self, pubsub: impl PubSub) -> Self {
        self.pubsub = Some(Arc::new(pubsub));
        self
    }

    /// Set the store under test.
    #[must_use]
    pub fn store(mut self, store: impl WorkflowStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The cache, or the in-memory one.
    pub fn cache_or_memory(&self) -> Arc<dyn ServerCache> {
        self.cache
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryCache::new()))
    }

    /// The pubsub, or the in-memory one.
    pub fn pubsub_or_memory(&self) -> Arc<dyn PubSub> {
        self.pubsub
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryPubSub::new()))
    }

    /// The store, or the in-memory one.
    pub fn store_or_memory(&self) -> Arc<dyn WorkflowStore> {
        self.store
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryWorkflowStore::new()))
    }

    /// An event log over this backend (memory filling the gaps) with a test configuration:
    /// a namespace unique to the case, so no case sees another's data.
    pub fn event_log(&self, config: LogConfig) -> EventLog {
        EventLog::new(self.cache_or_memory(), self.pubsub_or_memory())
            .with_store(self.store_or_memory())
            .with_config(config)
    }
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The behaviour holds.
    Passed,
    /// The case does not apply (a missing part or capability), with the reason.
    Skipped(String),
    /// The behaviour does not hold, with what was observed.
    Failed(String),
}

impl Outcome {
    /// Whether it passed.
    pub fn is_passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

/// A case failure, produced by the `check!`-style helpers and `?` inside cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The case does not apply.
    Skip(String),
    /// The case failed.
    Fail(String),
}

impl From<durable_core::Error> for Stop {
    fn from(e: durable_core::Error) -> Self {
        Stop::Fail(format!("unexpected error: {e}"))
    }
}

/// What a case body returns.
pub type CaseResult = Result<(), Stop>;

/// A named case.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case name (a sentence in snake case).
    pub name: &'static str,
    /// The case body.
    pub run: fn(Backend) -> BoxFuture<'static, Outcome>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Turn a case body's result into an [`Outcome`].
pub fn outcome(r: CaseResult) -> Outcome {
    match r {
        Ok(()) => Outcome::Passed,
        Err(Stop::Skip(why)) => Outcome::Skipped(why),
        Err(Stop::Fail(why)) => Outcome::Failed(why),
    }
}

/// Default bound on one backend call inside a case.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one whole case.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// Await `fut` for at most [`OP_TIMEOUT`]; a hang becomes a failure naming `what`.
///
/// # Errors
/// [`Stop::Fail`] on timeout.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, Stop> {
    within_for(OP_TIMEOUT, what, fut).await
}

/// Await `fut` for at most `limit`.
///
/// # Errors
/// [`Stop::Fail`] on timeout.
pub async fn within_for<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Stop> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Stop::Fail(format!("{what} did not complete within {limit:?}")))
}

/// Fail unless `cond`.
///
/// # Errors
/// [`Stop::Fail`] with `msg`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(Stop::Fail(msg()))
    }
}

/// Skip with a reason.
///
/// # Errors
/// Always [`Stop::Skip`].
pub fn skip(why: impl Into<String>) -> CaseResult {
    Err(Stop::Skip(why.into()))
}

/// Whether `DURABLE_TEST_REQUIRE=1`: an unavailable backend is then a failure, not a skip.
pub fn require_backends() -> bool {
    std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1" || v == "true")
}

/// The `#[test]` body generated by [`suite!`](crate::suite) for one case.
///
/// # Panics
/// When the case fails, when the backend is unavailable and [`require_backends`], or when an
/// expected failure passes.
pub fn run_test<F, Fut>(name: &str, factory: F, expected_failures: &[(&str, &str)])
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Backend, String>>,
{
    let Some(case) = crate::cases::find(name) else {
        panic!("unknown conformance case {name}");
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
    let outcome = rt.block_on(async {
        let backend = match factory().await {
            Ok(b) => b,
            Err(why) if require_backends() => {
                panic!("backend unavailable and DURABLE_TEST_REQUIRE=1: {why}")
            }
            Err(why) => return Outcome::Skipped(format!("backend unavailable: {why}")),
        };
        match tokio::time::timeout(CASE_TIMEOUT, (case.run)(backend)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("case did not finish within {CASE_TIMEOUT:?}")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let expected = expected_failures.iter().find(|(n, _)| *n == name);
    match (outcome, expected) {
        (Outcome::Passed, None) => {}
        (Outcome::Skipped(why), _) => eprintln!("conformance case {name} skipped: {why}"),
        (Outcome::Failed(why), None) => panic!("conformance case {name} failed: {why}"),
        (Outcome::Failed(why), Some((_, reason))) => {
            eprintln!("conformance case {name} failed as expected ({reason}): {why}")
        }
        (Outcome::Passed, Some((_, reason))) => panic!(
            "conformance case {name} is listed as an expected failure ({reason}) but passed: remove it from the list"
        ),
    }
}

/// The completeness check generated by [`suite!`](crate::suite): the expanded list equals the
/// registry, and every expected failure names a real case.
///
/// # Panics
/// When they differ.
pub fn check_complete(expanded: &[&str], expected_failures: &[&str]) {
    let registry: Vec<&str> = crate::cases::ALL.iter().map(|c| c.name).collect();
    assert_eq!(
        expanded, registry,
        "the suite's expanded case list differs from the registry"
    );
    for xf in expected_failures {
        assert!(
            registry.contains(xf),
            "expected failure {xf} is not a conformance case"
        );
    }
}

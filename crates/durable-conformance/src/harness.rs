//! Running cases: outcomes, timeouts, the `#[test]` driver behind [`suite!`](crate::suite).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{EventLog, LogConfig, PubSub, ServerCache, WorkflowStore};
use futures::future::BoxFuture;

pub use crate::timeout::{TimeoutCache, TimeoutPubSub, TimeoutStore};

/// One of the three parts a [`Backend`] may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A [`ServerCache`].
    Cache,
    /// A [`PubSub`].
    PubSub,
    /// A [`WorkflowStore`].
    Store,
}

impl Part {
    /// The trait's name.
    pub fn trait_name(self) -> &'static str {
        match self {
            Part::Cache => "ServerCache",
            Part::PubSub => "PubSub",
            Part::Store => "WorkflowStore",
        }
    }
}

/// The backend under test: any subset of the three traits. Event-log cases fill a missing part
/// with its in-memory implementation (pick and mix); trait cases skip a missing part by name.
///
/// Cases get every part wrapped in a timeout decorator ([`TimeoutCache`], [`TimeoutPubSub`],
/// [`TimeoutStore`], bounded by [`OP_TIMEOUT`] unless [`Backend::op_timeout`] says otherwise),
/// so a hanging backend call fails the case with a `Timeout` error naming the operation.
#[derive(Clone)]
pub struct Backend {
    name: String,
    cache: Option<Arc<dyn ServerCache>>,
    pubsub: Option<Arc<dyn PubSub>>,
    store: Option<Arc<dyn WorkflowStore>>,
    op_timeout: Duration,
    /// A second instance made by the same factory (another connection, as another process
    /// would make), for the `shared_*` cases of backends that claim to be shared.
    peer: Option<Arc<Backend>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("cache", &self.cache.as_ref().map(|c| c.backend()))
            .field("pubsub", &self.pubsub.as_ref().map(|p| p.backend()))
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .field("op_timeout", &self.op_timeout)
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
            op_timeout: OP_TIMEOUT,
            peer: None,
        }
    }

    /// Attach a second instance of the same backend (what another process would connect to).
    /// [`run_test`] does this itself for a backend whose capabilities claim `shared`.
    #[must_use]
    pub fn with_peer(mut self, peer: Backend) -> Self {
        self.peer = Some(Arc::new(peer));
        self
    }

    /// The second instance, if attached.
    pub fn peer(&self) -> Option<&Backend> {
        self.peer.as_deref()
    }

    /// Whether any part claims to be shared between processes (so the `shared_*` cases need a
    /// second instance).
    pub fn claims_shared(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.capabilities().shared)
            || self
                .pubsub
                .as_ref()
                .is_some_and(|p| p.capabilities().shared)
            || self.store.as_ref().is_some_and(|s| s.capabilities().shared)
    }

    /// The in-memory reference backends.
    pub fn memory() -> Self {
        let pubsub = InMemoryPubSub::new();
        Self::new("memory")
            .cache(InMemoryCache::new().with_pubsub(&pubsub))
            .pubsub(pubsub)
            .store(InMemoryWorkflowStore::new())
    }

    /// The name given to [`Backend::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set the cache under test.
    #[must_use]
    pub fn cache(self, cache: impl ServerCache) -> Self {
        self.cache_arc(Arc::new(cache))
    }

    /// Set a shared cache under test.
    #[must_use]
    pub fn cache_arc(mut self, cache: Arc<dyn ServerCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Set the pubsub under test.
    #[must_use]
    pub fn pubsub(self, pubsub: impl PubSub) -> Self {
        self.pubsub_arc(Arc::new(pubsub))
    }

    /// Set a shared pubsub under test.
    #[must_use]
    pub fn pubsub_arc(mut self, pubsub: Arc<dyn PubSub>) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// Set the store under test.
    #[must_use]
    pub fn store(self, store: impl WorkflowStore) -> Self {
        self.store_arc(Arc::new(store))
    }

    /// Set a shared store under test.
    #[must_use]
    pub fn store_arc(mut self, store: Arc<dyn WorkflowStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Bound each backend call by `limit` instead of [`OP_TIMEOUT`] (a slow remote service).
    #[must_use]
    pub fn op_timeout(mut self, limit: Duration) -> Self {
        self.op_timeout = limit;
        self
    }

    /// The cache under test, bounded by the timeout decorator; `None` if the backend has none.
    pub fn cache_under_test(&self) -> Option<Arc<dyn ServerCache>> {
        self.cache.clone().map(|c| self.timed_cache(c))
    }

    /// The pubsub under test, bounded by the timeout decorator.
    pub fn pubsub_under_test(&self) -> Option<Arc<dyn PubSub>> {
        self.pubsub.clone().map(|p| self.timed_pubsub(p))
    }

    /// The store under test, bounded by the timeout decorator.
    pub fn store_under_test(&self) -> Option<Arc<dyn WorkflowStore>> {
        self.store.clone().map(|s| self.timed_store(s))
    }

    /// The cache under test, or a new in-memory one; bounded either way.
    pub fn cache_or_memory(&self) -> Arc<dyn ServerCache> {
        let c = self
            .cache
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryCache::new()));
        self.timed_cache(c)
    }

    /// The pubsub under test, or a new in-memory one; bounded either way.
    pub fn pubsub_or_memory(&self) -> Arc<dyn PubSub> {
        let p = self
            .pubsub
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryPubSub::new()));
        self.timed_pubsub(p)
    }

    /// The store under test, or a new in-memory one; bounded either way.
    pub fn store_or_memory(&self) -> Arc<dyn WorkflowStore> {
        let s = self
            .store
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryWorkflowStore::new()));
        self.timed_store(s)
    }

    /// An event log over this backend (memory filling the gaps) with a test configuration:
    /// a namespace unique to the case, so no case sees another's data.
    pub fn event_log(&self, config: LogConfig) -> EventLog {
        EventLog::new(self.cache_or_memory(), self.pubsub_or_memory())
            .with_store(self.store_or_memory())
            .with_config(config)
    }

    fn timed_cache(&self, c: Arc<dyn ServerCache>) -> Arc<dyn ServerCache> {
        Arc::new(TimeoutCache::new(c, self.op_timeout))
    }

    fn timed_pubsub(&self, p: Arc<dyn PubSub>) -> Arc<dyn PubSub> {
        Arc::new(TimeoutPubSub::new(p, self.op_timeout))
    }

    fn timed_store(&self, s: Arc<dyn WorkflowStore>) -> Arc<dyn WorkflowStore> {
        Arc::new(TimeoutStore::new(s, self.op_timeout))
    }
}

/// Why a case was skipped, which decides whether the skip needs declaring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipCause {
    /// The backend's capabilities say it lacks the feature: its own claim, so declared.
    Capability,
    /// The [`Backend`] has no such part (a cache-only adapter): declared by its composition.
    MissingPart(Part),
    /// The backend could not be reached (the factory returned `Err`).
    Unavailable,
    /// Anything else: must be declared in the `skips = { .. }` of [`suite!`](crate::suite).
    Other,
}

impl SkipCause {
    /// Whether the backend itself declared this skip (no `skips` entry needed).
    pub fn is_declared_by_backend(self) -> bool {
        matches!(self, SkipCause::Capability | SkipCause::MissingPart(_))
    }
}

/// A skipped case: why, and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The cause.
    pub cause: SkipCause,
    /// The reason, naming the missing part or capability.
    pub why: String,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The behaviour holds.
    Passed,
    /// The case does not apply, with the reason.
    Skipped(Skipped),
    /// The behaviour does not hold, with what was observed.
    Failed(String),
}

impl Outcome {
    /// Whether it passed.
    pub fn is_passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }

    /// Whether it was skipped.
    pub fn is_skipped(&self) -> bool {
        matches!(self, Outcome::Skipped(_))
    }
}

/// Why a case body stopped early: produced by [`ensure`], [`skip`] and `?` inside cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The case does not apply.
    Skip(Skipped),
    /// The case failed.
    Fail(String),
}

impl Stop {
    /// The case does not apply because the backend has no `part`.
    pub fn missing(part: Part) -> Self {
        Stop::Skip(Skipped {
            cause: SkipCause::MissingPart(part),
            why: format!("backend has no {}", part.trait_name()),
        })
    }

    /// The case does not apply because the backend's capabilities say so.
    pub fn capability(why: impl Into<String>) -> Self {
        Stop::Skip(Skipped {
            cause: SkipCause::Capability,
            why: why.into(),
        })
    }
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
        Err(Stop::Skip(s)) => Outcome::Skipped(s),
        Err(Stop::Fail(why)) => Outcome::Failed(why),
    }
}

/// Default bound on one backend call inside a case (applied by the timeout decorators).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one whole case.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// Await `fut` for at most [`OP_TIMEOUT`]; a wait that does not end becomes a failure naming
/// `what`. For waits on a condition (the next event of a stream); backend calls are bounded by
/// the decorators already.
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

/// Skip for a reason that is neither a capability nor a missing part: the adapter must declare
/// it in `skips = { .. }`, or `DURABLE_TEST_REQUIRE=1` fails the case.
///
/// # Errors
/// Always [`Stop::Skip`].
pub fn skip(why: impl Into<String>) -> CaseResult {
    Err(Stop::Skip(Skipped {
        cause: SkipCause::Other,
        why: why.into(),
    }))
}

/// Skip because the backend's capabilities say it lacks a feature (declared by the backend).
///
/// # Errors
/// Always [`Stop::Skip`].
pub fn skip_capability(why: impl Into<String>) -> CaseResult {
    Err(Stop::capability(why))
}

/// Whether `DURABLE_TEST_REQUIRE=1`: an unavailable backend and an undeclared skip are then
/// failures.
pub fn require_backends() -> bool {
    std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1" || v == "true")
}

/// `DURABLE_TEST_<BACKEND>_URL`, for a test that needs that server. When it is not set the test
/// skips (`None`, with a `SKIPPED` line on stderr, past the harness' capture), except under
/// [`require_backends`], where it fails.
///
/// # Panics
/// When the variable is not set and `DURABLE_TEST_REQUIRE=1`.
pub fn backend_url(backend: &str) -> Option<String> {
    let url = durable_services::env_url(backend);
    if url.is_none() {
        let var = format!("DURABLE_TEST_{}_URL", backend.to_ascii_uppercase());
        assert!(
            !require_backends(),
            "{var} is not set and DURABLE_TEST_REQUIRE=1"
        );
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {var} is not set");
    }
    url
}

/// What an adapter declared about the cases of its suite, as written in [`suite!`](crate::suite)
/// or [`agent_suite!`](crate::agent_suite).
#[derive(Debug, Clone, Copy, Default)]
pub struct Declarations<'a> {
    /// Cases known to fail, with the reason.
    pub expected_failures: &'a [(&'a str, &'a str)],
    /// Cases that skip on this backend for a reason its capabilities do not express.
    pub skips: &'a [(&'a str, &'a str)],
}

impl Declarations<'_> {
    /// Declaration problems against the case names of `registry`: names that are not cases,
    /// names declared twice or both skipped and expected to fail. Empty when all is well.
    pub fn problems(&self, registry: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (list, entries) in [
            ("expected_failures", self.expected_failures),
            ("skips", self.skips),
        ] {
            for (name, why) in entries {
                if !registry.contains(name) {
                    out.push(format!("{list} names {name}, which is not a case"));
                }
                if why.trim().is_empty() {
                    out.push(format!("{list} entry {name} gives no reason"));
                }
                if seen.contains(name) {
                    out.push(format!("{name} is declared more than once"));
                }
                seen.push(name);
            }
        }
        out
    }
}

/// Write straight to the process's stderr: the test harness captures `eprintln!` of passing
/// tests, and a skip must be visible in every run.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Decide a case's fate from its outcome, the adapter's declarations and whether
/// `DURABLE_TEST_REQUIRE=1` (`require`): `Ok(line)` to report (a skip, an expected failure), or
/// `Err(why)` the test must fail with. Pure, so its rules are tested directly.
///
/// # Errors
/// When the case failed (and was not expected to), an expected failure passed, a declared skip
/// did not skip (stale declaration), or the case skipped undeclared while `require`.
pub fn verdict(
    name: &str,
    outcome: &Outcome,
    declared: &Declarations<'_>,
    require: bool,
) -> Result<Option<String>, String> {
    let xf = declared.expected_failures.iter().find(|(n, _)| *n == name);
    let sk = declared.skips.iter().find(|(n, _)| *n == name);
    match outcome {
        // An unreachable backend proves nothing, whatever was declared.
        Outcome::Skipped(s) if s.cause == SkipCause::Unavailable => {
            if require {
                Err(format!(
                    "conformance case {name}: {} and DURABLE_TEST_REQUIRE=1",
                    s.why
                ))
            } else {
                Ok(Some(format!("conformance case {name} SKIPPED: {}", s.why)))
            }
        }
        Outcome::Skipped(s) => {
            let declared_by = match (sk, s.cause.is_declared_by_backend()) {
                (Some((_, reason)), _) => Some(format!("declared: {reason}")),
                (None, true) => Some("declared by the backend".to_owned()),
                (None, false) => None,
            };
            match declared_by {
                Some(d) => Ok(Some(format!(
                    "conformance case {name} SKIPPED ({d}): {}",
                    s.why
                ))),
                None if require => Err(format!(
                    "conformance case {name} SKIPPED undeclared ({}) and DURABLE_TEST_REQUIRE=1: \
                     declare it in `skips = {{ {name}: \"why\" }}` or make it run",
                    s.why
                )),
                None => Ok(Some(format!("conformance case {name} SKIPPED: {}", s.why))),
            }
        }
        Outcome::Passed => match (xf, sk) {
            (Some((_, reason)), _) => Err(format!(
                "conformance case {name} is listed as an expected failure ({reason}) but \
                 passed: remove it from the list"
            )),
            (None, Some((_, reason))) => Err(format!(
                "conformance case {name} is declared skipped ({reason}) but ran and passed: \
                 the declaration is stale, remove it"
            )),
            (None, None) => Ok(None),
        },
        Outcome::Failed(why) => match xf {
            Some((_, reason)) => Ok(Some(format!(
                "conformance case {name} failed as expected ({reason}): {why}"
            ))),
            None => Err(format!("conformance case {name} failed: {why}")),
        },
    }
}

/// Apply [`verdict`] with `DURABLE_TEST_REQUIRE` from the environment: report or panic.
///
/// # Panics
/// When [`verdict`] says the test fails.
pub fn judge(name: &str, outcome: &Outcome, declared: &Declarations<'_>) {
    match verdict(name, outcome, declared, require_backends()) {
        Ok(Some(line)) => report(&line),
        Ok(None) => {}
        Err(why) => panic!("{why}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"))
}

/// The `#[test]` body generated by [`suite!`](crate::suite) for one case.
///
/// # Panics
/// As [`judge`] says, and for a name that is not a case.
pub fn run_test<F, Fut>(name: &str, factory: F, declared: &Declarations<'_>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Backend, String>>,
{
    let Some(case) = crate::cases::find(name) else {
        panic!("unknown conformance case {name}");
    };
    let rt = runtime();
    let outcome = rt.block_on(async {
        let mut backend = match factory().await {
            Ok(b) => b,
            Err(why) => {
                return Outcome::Skipped(Skipped {
                    cause: SkipCause::Unavailable,
                    why: format!("backend unavailable: {why}"),
                })
            }
        };
        if name.starts_with("shared_") && backend.claims_shared() && backend.peer().is_none() {
            match factory().await {
                Ok(peer) => backend = backend.with_peer(peer),
                Err(why) => {
                    return Outcome::Skipped(Skipped {
                        cause: SkipCause::Unavailable,
                        why: format!("second instance unavailable: {why}"),
                    })
                }
            }
        }
        match tokio::time::timeout(CASE_TIMEOUT, (case.run)(backend)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("case did not finish within {CASE_TIMEOUT:?}")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    judge(name, &outcome, declared);
}

/// The declaration check generated by [`suite!`](crate::suite) and
/// [`agent_suite!`](crate::agent_suite): every name it declares is a case of `registry`, once,
/// with a reason.
///
/// # Panics
/// On the first problem found, listing all of them.
pub fn check_declarations(registry: &[&str], declared: &Declarations<'_>) {
    let problems = declared.problems(registry);
    assert!(
        problems.is_empty(),
        "conformance declarations are wrong: {problems:#?}"
    );
}

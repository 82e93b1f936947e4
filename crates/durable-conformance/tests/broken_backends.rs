//! The suite catches broken backends: each deliberately broken variant of the in-memory
//! reference makes the named cases fail (and a correct one passes them).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_conformance::{cases, Backend, Outcome};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::{
    AppendOptions, CacheCapabilities, Cursor, ErrorKind, GroupSubscription, LogSlice, PubSub,
    PubSubCapabilities, Result, ServerCache, Subscription, WorkflowStore,
};

/// Delegates everything to the in-memory cache except what a variant breaks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CacheBug {
    /// Cursor allocation and storage are two steps (Mastra's INCR then RPUSH).
    NonAtomicAppend,
    /// Fences are ignored: a superseded owner can still write.
    IgnoresFence,
    /// Reads by a position that is off by one for non-zero offsets.
    ShiftedRead,
    /// `get` never completes (a stuck connection).
    HangingGet,
}

#[derive(Debug)]
struct BrokenCache {
    inner: InMemoryCache,
    bug: CacheBug,
}

#[async_trait]
impl ServerCache for BrokenCache {
    fn backend(&self) -> &'static str {
        "broken"
    }
    fn capabilities(&self) -> CacheCapabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        if self.bug == CacheBug::HangingGet {
            futures::future::pending::<()>().await;
        }
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        self.inner.increment(key, by, ttl).await
    }
    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        match self.bug {
            CacheBug::NonAtomicAppend => {
                let first = self.inner.len(log).await?.unwrap_or(0);
                tokio::task::yield_now().await;
                self.inner.append_many(log, payloads, options).await?;
                Ok(first)
            }
            CacheBug::IgnoresFence => {
                let mut opts = options;
                opts.fence = None;
                self.inner.append_many(log, payloads, opts).await
            }
            CacheBug::ShiftedRead | CacheBug::HangingGet => {
                self.inner.append_many(log, payloads, options).await
            }
        }
    }
    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        if self.bug == CacheBug::ShiftedRead && from > 0 {
            let len = self.inner.len(log).await?.unwrap_or(0);
            let shifted = self.inner.read(log, (from + 1).min(len), limit).await?;
            return Ok(LogSlice {
                first: from,
                entries: shifted.entries,
                next: shifted.next,
            });
        }
        self.inner.read(log, from, limit).await
    }
    async fn len(&self, log: &str) -> Result<Option<u64>> {
        self.inner.len(log).await
    }
    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        self.inner.expire(log, ttl).await
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.keys(prefix).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PubSubBug {
    /// Drops every third message without telling the subscriber.
    SilentLoss,
    /// The subscription becomes active only some time after `subscribe` returned, so an
    /// observer's replay/live hand-off has a window in which wake-ups are lost.
    LateSubscribe,
}

#[derive(Debug)]
struct BrokenPubSub {
    inner: InMemoryPubSub,
    bug: PubSubBug,
    published: AtomicU64,
}

#[async_trait]
impl PubSub for BrokenPubSub {
    fn backend(&self) -> &'static str {
        "broken"
    }
    fn capabilities(&self) -> PubSubCapabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let n = self.published.fetch_add(1, Ordering::Relaxed);
        if self.bug == PubSubBug::SilentLoss && n.is_multiple_of(3) {
            return Ok(());
        }
        self.inner.publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        if self.bug == PubSubBug::LateSubscribe {
            let inner = self.inner.clone();
            let topic = topic.to_owned();
            let stream = futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                inner.subscribe(&topic).await.unwrap()
            })
            .flatten();
            return Ok(Subscription::new(stream));
        }
        self.inner.subscribe(topic).await
    }
    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        self.inner.subscribe_group(topic, group).await
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

use futures::StreamExt;

fn with_cache(bug: CacheBug) -> Backend {
    Backend::new(format!("{bug:?}"))
        .cache(BrokenCache {
            inner: InMemoryCache::new(),
            bug,
        })
        .pubsub(InMemoryPubSub::new())
        .store(InMemoryWorkflowStore::new())
}

fn with_pubsub(bug: PubSubBug) -> Backend {
    Backend::new(format!("{bug:?}"))
        .cache(InMemoryCache::new())
        .pubsub(BrokenPubSub {
            inner: InMemoryPubSub::new(),
            bug,
            published: AtomicU64::new(0),
        })
        .store(InMemoryWorkflowStore::new())
}

async fn run(name: &str, backend: Backend) -> Outcome {
    let case = cases::find(name).unwrap_or_else(|| panic!("no case {name}"));
    tokio::time::timeout(Duration::from_secs(120), (case.run)(backend))
        .await
        .unwrap_or_else(|_| Outcome::Failed("case timed out".into()))
}

async fn assert_fails(name: &str, make: impl Fn() -> Backend) {
    let outcome = run(name, make()).await;
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "{name} did not catch {:?}: {outcome:?}",
        make().name()
    );
    // The same case passes on the correct reference backend, so the failure is the bug's.
    let reference = run(name, Backend::memory()).await;
    assert_eq!(
        reference,
        Outcome::Passed,
        "{name} fails on the reference backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_append_breaks_contiguous_cursors() {
    let make = || with_cache(CacheBug::NonAtomicAppend);
    assert_fails("concurrent_appends_get_contiguous_cursors", make).await;
    assert_fails(
        "log_cursors_are_contiguous_under_concurrent_appenders",
        make,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_fence_is_caught() {
    let make = || with_cache(CacheBug::IgnoresFence);
    assert_fails("stale_fence_is_rejected", make).await;
    assert_fails("fenced_writer_cannot_append", make).await;
    assert_fails("writer_batches_and_preserves_order", make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_read_breaks_exact_resume() {
    let make = || with_cache(CacheBug::ShiftedRead);
    assert_fails("read_returns_entries_by_cursor", make).await;
    assert_fails("observe_from_every_offset_is_exact", make).await;
    assert_fails("observe_racing_live_producer_is_exact", make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_message_loss_is_caught() {
    let make = || with_pubsub(PubSubBug::SilentLoss);
    assert_fails("slow_subscriber_never_loses_silently", make).await;
    assert_fails("live_event_is_pushed_without_polling", make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscription_breaks_the_replay_live_hand_off() {
    let make = || with_pubsub(PubSubBug::LateSubscribe);
    assert_fails("subscribers_receive_in_order", make).await;
    assert_fails("live_event_is_pushed_without_polling", make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_call_fails_the_case_with_a_timeout_naming_the_operation() {
    let limit = Duration::from_millis(200);
    let backend = with_cache(CacheBug::HangingGet).op_timeout(limit);
    let started = tokio::time::Instant::now();
    let outcome = run("cache_set_get_delete", backend.clone()).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the case waited {:?} for a hanging call",
        started.elapsed()
    );
    match outcome {
        Outcome::Failed(why) => assert!(
            why.contains("timeout (broken get)"),
            "the failure does not name the timed-out operation: {why}"
        ),
        other => panic!("a hanging get did not fail the case: {other:?}"),
    }
    let e = backend
        .cache_under_test()
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.backend(), e.operation()),
        (ErrorKind::Timeout, "broken", "get")
    );
}

#[tokio::test]
async fn decorators_keep_capabilities_and_announce_pairing() {
    let backend = Backend::memory();
    let (cache, pubsub) = (
        backend.cache_under_test().unwrap(),
        backend.pubsub_under_test().unwrap(),
    );
    let paired = InMemoryCache::new().with_pubsub(&InMemoryPubSub::new());
    assert_eq!(cache.capabilities(), paired.capabilities());
    assert_eq!(pubsub.capabilities(), InMemoryPubSub::new().capabilities());
    assert!(cache.announce_domain().is_some());
    assert_eq!(cache.announce_domain(), pubsub.announce_domain());
    assert_eq!(
        backend.store_under_test().unwrap().capabilities(),
        InMemoryWorkflowStore::new().capabilities()
    );
}

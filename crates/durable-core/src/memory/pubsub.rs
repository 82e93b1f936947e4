use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{broadcast, Notify};

use super::{lock, BACKEND};
use crate::cache::AnnounceDomain;
use crate::error::{Error, ErrorKind, Result};
use crate::id::validate_name;
use crate::pubsub::{
    Delivery, GroupSubscription, Job, JobAcker, PubSub, PubSubCapabilities, Subscription,
};

static NEXT_DOMAIN: AtomicU64 = AtomicU64::new(0);

/// Default bounded buffer of one fan-out subscriber, in messages.
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 256;
/// Default bound of one consumer group's queue, in messages.
pub const DEFAULT_GROUP_CAPACITY: usize = 100_000;

/// In-memory [`PubSub`]: a bounded `tokio::sync::broadcast` channel per topic for fan-out, and a
/// bounded queue per consumer group.
///
/// A topic's channel exists only while it has subscribers. A slow subscriber gets
/// [`Delivery::Lagged`] instead of unbounded buffering. A consumer group keeps its messages
/// (up to its capacity) while no consumer is attached.
#[derive(Clone, Debug)]
pub struct InMemoryPubSub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    groups: Mutex<HashMap<String, HashMap<String, Arc<GroupQueue>>>>,
    subscriber_capacity: usize,
    group_capacity: usize,
    /// Pairs an announcing [`InMemoryCache`](super::InMemoryCache) with this pubsub.
    domain: AnnounceDomain,
}

#[derive(Debug)]
struct GroupQueue {
    items: Mutex<VecDeque<(Bytes, u32)>>,
    notify: Notify,
}

impl GroupQueue {
    fn push(&self, item: (Bytes, u32), front: bool) {
        {
            let mut q = lock(&self.items);
            if front {
                q.push_front(item);
            } else {
                q.push_back(item);
            }
        }
        self.notify.notify_one();
    }
}

impl Default for InMemoryPubSub {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryPubSub {
    /// A pubsub with default capacities.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_SUBSCRIBER_CAPACITY, DEFAULT_GROUP_CAPACITY)
    }

    /// A pubsub whose subscribers buffer `subscriber` messages and whose groups hold `group`.
    pub fn with_capacity(subscriber: usize, group: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                subscriber_capacity: subscriber.max(1),
                group_capacity: group.max(1),
                domain: AnnounceDomain::new(format!(
                    "memory:{}",
                    NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed)
                )),
            }),
        }
    }

    /// Publish synchronously (what [`PubSub::publish`] does): an announcing cache calls it
    /// while it holds the log's lock, so frames leave in cursor order.
    pub(crate) fn publish_now(&self, topic: &str, payload: Bytes) -> Result<()> {
        check("publish", "topic", topic)?;
        let groups: Vec<Arc<GroupQueue>> = match lock(&self.inner.groups).get(topic) {
            Some(g) => g.values().cloned().collect(),
            None => Vec::new(),
        };
        if groups
            .iter()
            .any(|g| lock(&g.items).len() >= self.inner.group_capacity)
        {
            return Err(
                Error::new(ErrorKind::Unavailable, "consumer group queue is full")
                    .with_backend(BACKEND)
                    .with_operation("publish"),
            );
        }
        for g in &groups {
            g.push((payload.clone(), 1), false);
        }
        if let Some(tx) = lock(&self.inner.topics).get(topic) {
            // No receiver left is not an error: nobody is listening.
            let _ = tx.send(payload);
        }
        Ok(())
    }

    pub(crate) fn domain(&self) -> &AnnounceDomain {
        &self.inner.domain
    }

    /// The number of topics with at least one subscriber (for leak tests).
    pub fn active_topics(&self) -> usize {
        lock(&self.inner.topics).len()
    }
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(BACKEND).with_operation(op))
}

/// Removes the topic's channel when its last subscriber goes.
struct SubscriberGuard {
    inner: Arc<Inner>,
    topic: String,
    rx: Option<broadcast::Receiver<Bytes>>,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut topics = lock(&self.inner.topics);
        if topics
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            topics.remove(&self.topic);
        }
    }
}

struct MemoryAcker {
    queue: Arc<GroupQueue>,
    payload: Bytes,
    attempt: u32,
}

impl JobAcker for MemoryAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async { Ok(()) }.boxed()
    }
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.queue.push((self.payload, self.attempt + 1), true);
        async { Ok(()) }.boxed()
    }
}

#[async_trait]
impl PubSub for InMemoryPubSub {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> PubSubCapabilities {
        PubSubCapabilities::ALL.with_shared(false)
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        self.publish_now(topic, payload)
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        Some(self.inner.domain.clone())
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        check("subscribe", "topic", topic)?;
        let rx = lock(&self.inner.topics)
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(self.inner.subscriber_capacity).0)
            .subscribe();
        let guard = SubscriberGuard {
            inner: self.inner.clone(),
            topic: topic.to_owned(),
            rx: Some(rx),
        };
        Ok(Subscription::new(futures::stream::unfold(
            guard,
            |mut g| async move {
                let rx = g.rx.as_mut()?;
                let item = match rx.recv().await {
                    Ok(b) => Delivery::Message(b),
                    Err(broadcast::error::RecvError::Lagged(_)) => Delivery::Lagged,
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((item, g))
            },
        )))
    }

    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        check("subscribe_group", "topic", topic)?;
        check("subscribe_group", "group", group)?;
        let queue = lock(&self.inner.groups)
            .entry(topic.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_insert_with(|| {
                Arc::new(GroupQueue {
                    items: Mutex::new(VecDeque::new()),
                    notify: Notify::new(),
                })
            })
            .clone();
        Ok(GroupSubscription::new(futures::stream::unfold(
            queue,
            |queue| async move {
                let (payload, attempt) = loop {
                    let notified = queue.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let item = lock(&queue.items).pop_front();
                    if let Some(item) = item {
                        break item;
                    }
                    notified.await;
                };
                let acker = MemoryAcker {
                    queue: queue.clone(),
                    payload: payload.clone(),
                    attempt,
                };
                let job = Job::new(payload, attempt, Box::new(acker));
                Some((Ok(job), queue))
            },
        )))
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EventLog, ObserveOptions};
    use crate::memory::InMemoryCache;
    use crate::{EventKind, NewEvent, RunId};
    use futures::StreamExt;

    #[tokio::test]
    async fn topic_channel_is_released_with_its_last_subscriber() {
        let p = InMemoryPubSub::new();
        let a = p.subscribe("t.one").await.unwrap();
        let b = p.subscribe("t.one").await.unwrap();
        let c = p.subscribe("t.two").await.unwrap();
        assert_eq!(p.active_topics(), 2);
        drop(a);
        assert_eq!(p.active_topics(), 2);
        drop(b);
        drop(c);
        assert_eq!(p.active_topics(), 0);
        // Publishing to a topic nobody listens to creates nothing.
        p.publish("t.three", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(p.active_topics(), 0);
    }

    #[tokio::test]
    async fn finished_and_dropped_observers_leave_no_subscription_behind() {
        let pubsub = InMemoryPubSub::new();
        let log = EventLog::new(Arc::new(InMemoryCache::new()), Arc::new(pubsub.clone()));
        let run = RunId::generate();
        log.create(&run, None).await.unwrap();
        let dropped = log.observe(&run, ObserveOptions::default()).await.unwrap();
        let finished = log.observe(&run, ObserveOptions::default()).await.unwrap();
        assert_eq!(pubsub.active_topics(), 1);
        drop(dropped);
        log.append(
            &run,
            &[NewEvent::json(EventKind::Finish, &()).unwrap()],
            None,
        )
        .await
        .unwrap();
        assert_eq!(finished.collect::<Vec<_>>().await.len(), 1);
        assert_eq!(pubsub.active_topics(), 0);
    }

    #[tokio::test]
    async fn unsettled_job_is_redelivered_when_dropped() {
        let p = InMemoryPubSub::new();
        let mut c = p.subscribe_group("jobs", "workers").await.unwrap();
        p.publish("jobs", Bytes::from_static(b"1")).await.unwrap();
        let job = c.next().await.unwrap().unwrap();
        drop(job);
        let again = c.next().await.unwrap().unwrap();
        assert_eq!((again.payload().as_ref(), again.attempt()), (&b"1"[..], 2));
        again.ack().await.unwrap();
    }

    #[tokio::test]
    async fn full_group_queue_refuses_instead_of_growing() {
        let p = InMemoryPubSub::with_capacity(8, 2);
        let _c = p.subscribe_group("jobs", "workers").await.unwrap();
        p.publish("jobs", Bytes::from_static(b"1")).await.unwrap();
        p.publish("jobs", Bytes::from_static(b"2")).await.unwrap();
        let err = p
            .publish("jobs", Bytes::from_static(b"3"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
    }
}

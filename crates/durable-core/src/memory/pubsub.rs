use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Notify;

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

/// In-memory [`PubSub`]: a bounded fan-out ring per topic, and a bounded queue per consumer
/// group.
///
/// A topic's ring exists only while it has subscribers, and holds only the messages some
/// subscriber has not read yet: it grows with the backlog up to the subscriber capacity and
/// shrinks back, so an idle topic costs about a hundred bytes, not a slot per message of
/// capacity (`tokio::sync::broadcast` allocates all of them up front: 14 KiB per topic at the
/// default 256). A slow subscriber gets [`Delivery::Lagged`] instead of unbounded buffering. A
/// consumer group keeps its messages (up to its capacity) while no consumer is attached.
#[derive(Clone, Debug)]
pub struct InMemoryPubSub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    groups: Mutex<HashMap<String, HashMap<String, Arc<GroupQueue>>>>,
    subscriber_capacity: usize,
    group_capacity: usize,
    /// Pairs an announcing [`InMemoryCache`](super::InMemoryCache) with this pubsub.
    domain: AnnounceDomain,
}

/// The fan-out ring of one topic.
#[derive(Debug, Default)]
struct Topic {
    ring: Mutex<Ring>,
    /// Woken (all waiters) by every publish.
    notify: Notify,
}

#[derive(Debug, Default)]
struct Ring {
    /// The unread messages, each with the number of subscribers still to read it.
    buf: VecDeque<(Bytes, usize)>,
    /// The sequence number of `buf[0]`.
    head: u64,
    subscribers: usize,
}

impl Ring {
    fn next(&self) -> u64 {
        self.head + self.buf.len() as u64
    }

    /// Count one read (or one unsubscribe) of message `seq`; drop what everyone has read.
    fn release(&mut self, seq: u64) {
        if let Some(i) = seq.checked_sub(self.head) {
            if let Some((_, rem)) = self.buf.get_mut(i as usize) {
                *rem = rem.saturating_sub(1);
            }
        }
        while self.buf.front().is_some_and(|(_, rem)| *rem == 0) {
            self.buf.pop_front();
            self.head += 1;
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 {
            // A burst is over: give its memory back.
            self.buf = VecDeque::new();
        }
    }
}

impl Topic {
    fn publish(&self, payload: Bytes, capacity: usize) {
        {
            let mut ring = lock(&self.ring);
            if ring.subscribers == 0 {
                return;
            }
            if ring.buf.len() >= capacity {
                // The slowest subscriber falls behind: it will read `Lagged`.
                ring.buf.pop_front();
                ring.head += 1;
            }
            let n = ring.subscribers;
            ring.buf.push_back((payload, n));
        }
        self.notify.notify_waiters();
    }
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
        let target = lock(&self.inner.topics).get(topic).cloned();
        if let Some(t) = target {
            t.publish(payload, self.inner.subscriber_capacity);
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

    /// The messages of `topic` some subscriber has not read yet (for memory tests).
    pub fn buffered(&self, topic: &str) -> usize {
        lock(&self.inner.topics)
            .get(topic)
            .map_or(0, |t| lock(&t.ring).buf.len())
    }
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(BACKEND).with_operation(op))
}

/// One subscriber of a topic: its read position. Dropping it releases what it had not read,
/// and the topic's ring with its last subscriber.
struct Subscriber {
    inner: Arc<Inner>,
    name: String,
    topic: Arc<Topic>,
    /// The sequence number of the next message to read.
    at: u64,
}

impl Subscriber {
    async fn recv(&mut self) -> Delivery {
        loop {
            let notified = self.topic.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut ring = lock(&self.topic.ring);
                if self.at < ring.head {
                    self.at = ring.head;
                    return Delivery::Lagged;
                }
                if self.at < ring.next() {
                    let i = (self.at - ring.head) as usize;
                    let payload = ring.buf[i].0.clone();
                    let seq = self.at;
                    self.at += 1;
                    ring.release(seq);
                    return Delivery::Message(payload);
                }
            }
            notified.await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Lock order: the topics map, then a ring (as in `subscribe`).
        let mut topics = lock(&self.inner.topics);
        let mut ring = lock(&self.topic.ring);
        for seq in self.at.max(ring.head)..ring.next() {
            ring.release(seq);
        }
        ring.subscribers = ring.subscribers.saturating_sub(1);
        if ring.subscribers == 0
            && topics
                .get(&self.name)
                .is_some_and(|t| Arc::ptr_eq(t, &self.topic))
        {
            topics.remove(&self.name);
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
        let (t, at) = {
            let mut topics = lock(&self.inner.topics);
            let t = topics.entry(topic.to_owned()).or_default().clone();
            let mut ring = lock(&t.ring);
            ring.subscribers += 1;
            let at = ring.next();
            drop(ring);
            (t, at)
        };
        let sub = Subscriber {
            inner: self.inner.clone(),
            name: topic.to_owned(),
            topic: t,
            at,
        };
        Ok(Subscription::new(futures::stream::unfold(
            sub,
            |mut s| async move {
                let item = s.recv().await;
                Some((item, s))
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
    async fn the_ring_holds_only_what_a_subscriber_has_not_read() {
        let p = InMemoryPubSub::with_capacity(4, 2);
        let msg = |i: u8| Some(Delivery::Message(Bytes::from(vec![i])));
        let mut a = p.subscribe("t").await.unwrap();
        let mut b = p.subscribe("t").await.unwrap();
        for i in 0..3 {
            p.publish("t", Bytes::from(vec![i])).await.unwrap();
        }
        assert_eq!(p.buffered("t"), 3);
        for i in 0..3 {
            assert_eq!(a.next().await, msg(i));
        }
        // `b` has read nothing yet.
        assert_eq!(p.buffered("t"), 3);
        assert_eq!(b.next().await, msg(0));
        assert_eq!(p.buffered("t"), 2);
        // A subscriber that goes releases what it had not read.
        drop(b);
        assert_eq!(p.buffered("t"), 0);
        // A late subscriber starts at the next message.
        p.publish("t", Bytes::from(vec![9])).await.unwrap();
        let mut c = p.subscribe("t").await.unwrap();
        assert_eq!(a.next().await, msg(9));
        assert_eq!(p.buffered("t"), 0);
        // Six messages into a ring of four: the two oldest are gone, and a subscriber that
        // had not read them learns so once, then reads on in order.
        for i in 0..6 {
            p.publish("t", Bytes::from(vec![i])).await.unwrap();
        }
        assert_eq!(p.buffered("t"), 4);
        for s in [&mut a, &mut c] {
            assert_eq!(s.next().await, Some(Delivery::Lagged));
            for i in 2..6 {
                assert_eq!(s.next().await, msg(i));
            }
        }
        assert_eq!(p.buffered("t"), 0);
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

//! [`PubSub`]: fan-out topics that wake observers, and competing-consumer groups (work queues).

use std::fmt::{self, Debug};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;

use crate::cache::AnnounceDomain;
use crate::error::Result;

/// What a [`PubSub`] backend supports.
///
/// `Default` is "nothing"; backends turn on what they implement with the `with_*` setters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubCapabilities {
    /// [`PubSub::subscribe_group`] is implemented.
    pub groups: bool,
    /// Messages published to a group while no consumer is attached are kept for later consumers.
    pub durable_groups: bool,
    /// Messages reach subscribers in other processes.
    ///
    /// # Behavior
    /// - A message published through one instance reaches a subscriber of a second instance
    ///   (`shared_pubsub_reaches_another_instance`).
    pub shared: bool,
}

impl PubSubCapabilities {
    /// All capabilities on.
    pub const ALL: Self = Self {
        groups: true,
        durable_groups: true,
        shared: true,
    };

    /// Set whether messages cross processes.
    #[must_use]
    pub const fn with_shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// Set whether consumer groups are implemented.
    #[must_use]
    pub const fn with_groups(mut self, groups: bool) -> Self {
        self.groups = groups;
        self
    }

    /// Set whether groups keep messages published while no consumer is attached.
    #[must_use]
    pub const fn with_durable_groups(mut self, durable_groups: bool) -> Self {
        self.durable_groups = durable_groups;
        self
    }
}

/// One item of a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A published payload.
    Message(Bytes),
    /// Messages may have been missed (the subscriber fell behind its bounded buffer, or the
    /// connection was re-established). Resynchronise from the source of truth.
    Lagged,
}

/// A fan-out subscription to one topic: a [`Stream`] of [`Delivery`]. Dropping it unsubscribes.
///
/// The buffer behind it is bounded; a subscriber that falls behind gets [`Delivery::Lagged`]
/// instead of unbounded memory growth.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Delivery> + Send>>,
}

impl Subscription {
    /// Wrap a backend's stream.
    pub fn new(stream: impl Stream<Item = Delivery> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

impl Stream for Subscription {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// How a [`Job`] is settled with its backend.
pub trait JobAcker: Send + Sync + 'static {
    /// Acknowledge: the job is done and never redelivered.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// Negative acknowledgement: redeliver the job (to any consumer of the group).
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// A message taken from a consumer group. Settle it with [`Job::ack`] or [`Job::nack`].
/// A job dropped unsettled is redelivered by the backend (at the latest after its
/// redelivery timeout), as if its consumer had crashed.
pub struct Job {
    payload: Bytes,
    attempt: u32,
    acker: Option<Box<dyn JobAcker>>,
}

impl Job {
    /// A job with its payload, delivery attempt (1 for the first delivery) and acker.
    pub fn new(payload: Bytes, attempt: u32, acker: Box<dyn JobAcker>) -> Self {
        Self {
            payload,
            attempt,
            acker: Some(acker),
        }
    }

    /// The published payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// 1 on first delivery, more after redeliveries.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Acknowledge the job.
    ///
    /// # Errors
    /// The backend's error if the acknowledgement could not be stored.
    pub async fn ack(mut self) -> Result<()> {
        match self.acker.take() {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }

    /// Return the job to the group for redelivery.
    ///
    /// # Errors
    /// The backend's error if the job could not be returned.
    pub async fn nack(mut self) -> Result<()> {
        match self.acker.take() {
            Some(a) => a.nack().await,
            None => Ok(()),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            // Dropped unsettled: hand it back now if a runtime is there, else the backend's
            // redelivery timeout takes care of it.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = acker.nack().await;
                });
            }
        }
    }
}

impl Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("len", &self.payload.len())
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// A competing-consumer subscription: each published message goes to one consumer of the group.
/// Dropping it detaches the consumer; unsettled jobs are redelivered.
pub struct GroupSubscription {
    inner: Pin<Box<dyn Stream<Item = Result<Job>> + Send>>,
}

impl GroupSubscription {
    /// Wrap a backend's stream.
    pub fn new(stream: impl Stream<Item = Result<Job>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Debug for GroupSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupSubscription")
    }
}

impl Stream for GroupSubscription {
    type Item = Result<Job>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Job>>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Publish/subscribe. In `durable` PubSub only *wakes* observers (the run log is the source of
/// truth) and carries work-queue messages for evented execution.
#[async_trait]
pub trait PubSub: Send + Sync + Debug + 'static {
    /// The backend's name (`"memory"`, `"redis"`, …).
    fn backend(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> PubSubCapabilities;

    /// Publish `payload` to every current subscriber of `topic` and to every consumer group of it.
    ///
    /// # Behavior
    /// - Every subscriber attached before the publish returned receives it, in publish order
    ///   (`subscribers_receive_in_order`).
    /// - A publish that cannot reach the backend fails (retryable), never drops silently.
    /// - Invalid topic names are rejected with `InvalidInput` (`pubsub_rejects_invalid_names`).
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()>;

    /// Subscribe to `topic`. The subscription is active when this returns.
    ///
    /// # Behavior
    /// - Dropping the subscription unsubscribes (`dropped_subscription_unsubscribes`).
    /// - A subscriber that does not keep up gets [`Delivery::Lagged`], memory stays bounded
    ///   (`slow_subscriber_never_loses_silently`).
    /// - Topics are isolated (`topics_are_isolated`).
    async fn subscribe(&self, topic: &str) -> Result<Subscription>;

    /// Join consumer group `group` of `topic` (created on first use).
    ///
    /// # Behavior
    /// - Each message goes to exactly one consumer of the group
    ///   (`group_delivers_each_message_once`).
    /// - A nacked or dropped job is redelivered (`nacked_job_is_redelivered`).
    /// - With `durable_groups`, messages published while no consumer is attached wait for one
    ///   (`group_keeps_messages_without_consumers`).
    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription>;

    /// Wait until everything published so far has been handed to the backend.
    async fn flush(&self) -> Result<()>;

    /// The channel space this pubsub's subscribers listen in, for pairing with a cache that
    /// announces its appends ([`ServerCache::announce_domain`]). `None` (the default): no cache
    /// announces into it.
    ///
    /// [`ServerCache::announce_domain`]: crate::ServerCache::announce_domain
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        None
    }
}

#[async_trait]
impl<T: PubSub + ?Sized> PubSub for Arc<T> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn capabilities(&self) -> PubSubCapabilities {
        (**self).capabilities()
    }
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        (**self).publish(topic, payload).await
    }
    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        (**self).subscribe(topic).await
    }
    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        (**self).subscribe_group(topic, group).await
    }
    async fn flush(&self) -> Result<()> {
        (**self).flush().await
    }
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        (**self).announce_domain()
    }
}

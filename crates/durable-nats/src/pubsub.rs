//! [`NatsPubSub`]: core subjects for fan-out, JetStream durable consumers for groups.
//!
//! - A topic `t` is the core subject `<prefix>.t.<token(t)>`. The subscriptions of one topic
//!   in one process share one core subscription (see [`crate::fanout`]), each behind its own
//!   bounded buffer; overflow and reconnection both surface as [`Delivery::Lagged`] (core NATS
//!   does not replay what a disconnected subscriber missed).
//! - A consumer group `g` of `t` is a durable pull consumer on the queue stream
//!   (`<prefix>.q.<token(t)>`, interest retention: a message stays until every group of its
//!   topic acknowledged it), with explicit acks, redelivery after the lease and a maximum number
//!   of deliveries. `publish` writes the core subject and the queue subject.

use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;
use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    validate_name, AnnounceDomain, GroupSubscription, Job, JobAcker, PubSub, PubSubCapabilities,
    Result, Subscription,
};
use futures::future::BoxFuture;
use futures::StreamExt;

use crate::config::Shared;
use crate::error::{unavailable, NATS};
use crate::fanout::Joined;
use crate::js::Published;
use crate::subject::token;

/// The core subject of `topic`.
pub(crate) fn topic_subject(prefix: &str, topic: &str) -> String {
    format!("{prefix}.t.{}", token(topic))
}

fn queue_subject(prefix: &str, topic: &str) -> String {
    format!("{prefix}.q.{}", token(topic))
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(NATS).with_operation(op))
}

/// Publish/subscribe and work queues on NATS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsPubSub {
    shared: Arc<Shared>,
}

impl NatsPubSub {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

struct Acker(async_nats::jetstream::Message);

impl JobAcker for Acker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            // Double ack: the server confirms, so an acknowledged job is never redelivered.
            self.0
                .double_ack()
                .await
                .map_err(|e| unavailable("ack", e.to_string()))
        })
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.0
                .ack_with(AckKind::Nak(None))
                .await
                .map_err(|e| unavailable("nack", e.to_string()))
        })
    }
}

#[async_trait]
impl PubSub for NatsPubSub {
    fn backend(&self) -> &'static str {
        NATS
    }

    fn capabilities(&self) -> PubSubCapabilities {
        PubSubCapabilities::ALL
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        const OP: &str = "publish";
        check(OP, "topic", topic)?;
        let prefix = self.shared.prefix();
        self.shared
            .js
            .client
            .publish(topic_subject(prefix, topic), payload.clone())
            .await
            .map_err(|e| unavailable(OP, e))?;
        // The stream's acknowledgement also proves the core publish before it left.
        match self
            .shared
            .js
            .publish(
                OP,
                queue_subject(prefix, topic),
                Default::default(),
                payload,
            )
            .await?
        {
            Published::Stored(_) | Published::WrongLastSequence => Ok(()),
        }
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        const OP: &str = "subscribe";
        check(OP, "topic", topic)?;
        let client = &self.shared.js.client;
        let subject = topic_subject(self.shared.prefix(), topic);
        let (reader, joined) = self.shared.fanout.join(&subject);
        let Joined::Create(creating) = joined else {
            // Another observer in this process subscribed this topic: share its subscription.
            reader.live().await.map_err(|e| unavailable(OP, e))?;
            return Ok(Subscription::new(reader));
        };
        let sub = client
            .subscribe(subject)
            .await
            .map_err(|e| unavailable(OP, e))?;
        creating.feed(sub, self.shared.reconnects.subscribe());
        // A flush only hands the SUB to the socket. A request answered by the server (no
        // one listens on its subject, so the server itself replies "no responders") proves the
        // server has processed the SUB before it: the subscription is live when this returns.
        let probe = format!(
            "{}.probe.{}",
            self.shared.prefix(),
            uuid::Uuid::new_v4().simple()
        );
        match client.request(probe, Bytes::new()).await {
            Ok(_) => {}
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(e) => return Err(unavailable(OP, e)),
        }
        creating.live();
        Ok(Subscription::new(reader))
    }

    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        const OP: &str = "subscribe_group";
        check(OP, "topic", topic)?;
        check(OP, "group", group)?;
        let name = format!("{}_g{}", token(topic), token(group));
        let stream = self
            .shared
            .context
            .get_stream_no_info(self.shared.queue_stream())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: queue_subject(self.shared.prefix(), topic),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    ack_wait: self.shared.lease(),
                    max_deliver: self.shared.max_deliver(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable(OP, e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(16)
            .messages()
            .await
            .map_err(|e| unavailable(OP, e))?;
        Ok(GroupSubscription::new(messages.map(|m| {
            let m = m.map_err(|e| unavailable("subscribe_group", e))?;
            let attempt = m
                .info()
                .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
                .unwrap_or(1);
            Ok(Job::new(m.payload.clone(), attempt, Box::new(Acker(m))))
        })))
    }

    async fn flush(&self) -> Result<()> {
        self.shared
            .js
            .client
            .flush()
            .await
            .map_err(|e| unavailable("flush", e))
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        Some(AnnounceDomain::new(self.shared.domain()))
    }
}

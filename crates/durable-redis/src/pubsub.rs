//! [`RedisPubSub`]: fan-out over PUBLISH/SUBSCRIBE on one dedicated connection, work queues
//! over Redis Streams consumer groups.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    ttl_ms, validate_name, AnnounceDomain, Delivery, Error, ErrorKind, GroupSubscription, Job,
    JobAcker, PubSub, PubSubCapabilities, Result, Subscription,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::config::Redis;
use crate::error::{err, from_redis, REDIS};
use crate::scripts::{GROUP_JOIN, GROUP_LEAVE, GROUP_NACK, GROUP_RECLAIM, PUBLISH};
use crate::transport::{RedisTransport, Reply, Transport};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(REDIS).with_operation(op))
}

/// [`PubSub`] on Redis.
///
/// - **Fan-out** (`publish`/`subscribe`): `PUBLISH` on channel `<prefix>t:<topic>`. All
///   subscriptions of one `RedisPubSub` (and its clones) share **one** dedicated subscription
///   connection; a topic is `SUBSCRIBE`d once however many subscribers it has and
///   `UNSUBSCRIBE`d with its last one. `subscribe` returns once Redis confirmed the
///   `SUBSCRIBE`. Subscription changes are batched: everything requested while a batch is in
///   flight goes out together as pipelined multi-channel `SUBSCRIBE`/`UNSUBSCRIBE` commands,
///   so ten thousand observers attaching at once cost a few round trips, not ten thousand
///   sequential ones. A `SUBSCRIBE` not confirmed within
///   [`response_timeout`](crate::RedisConfig::response_timeout) is a *retryable* `Timeout`
///   (an event log observer then reads the log and subscribes again; it never fails on it).
///   Each subscriber has a bounded buffer
///   ([`RedisConfig::subscriber_capacity`](crate::RedisConfig::subscriber_capacity)); overflow
///   yields [`Delivery::Lagged`]. When the subscription connection is lost it is re-opened,
///   every topic re-subscribed, and every subscriber gets [`Delivery::Lagged`] (messages may
///   have been missed while it was down; the event log re-reads from its last cursor).
/// - **Work queues** (`subscribe_group`): a Redis Stream `<prefix>q:{<topic>}` with one
///   consumer group per group name. `publish` appends to it (`XADD MAXLEN ~`) in the same
///   script as the `PUBLISH`, once a group exists. Consumers read with `XREADGROUP`, woken by a
///   `PUBLISH` on `<prefix>w:<topic>` (no blocking read, no connection per consumer). `ack` is
///   `XACK`; `nack` (or dropping a job) makes the job claimable at once and wakes the group;
///   jobs of a crashed consumer are reclaimed after
///   [`group_reclaim_idle`](crate::RedisConfig::group_reclaim_idle). A job's attempt is its
///   delivery count. The stream expires [`group_ttl`](crate::RedisConfig::group_ttl) after its
///   last publish or consumer activity, so abandoned queues leave no key behind.
///
/// Its [`announce_domain`](PubSub::announce_domain) is the server and key prefix, equal to the
/// [`RedisServerCache`](crate::RedisServerCache)'s of the same [`Redis`]: that cache publishes
/// the wake-up frames of its appends itself, on the channels this pubsub listens to.
///
/// Cheap to clone; clones share the connections.
#[derive(Clone, Debug)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: Redis,
    transport: RedisTransport,
    hub: Arc<Hub>,
}

/// The subscription registry, driven by one task that owns the subscription connection.
#[derive(Debug)]
struct Hub {
    channels: Mutex<HashMap<Vec<u8>, Subscribers>>,
    commands: mpsc::UnboundedSender<HubCommand>,
    next_id: AtomicU64,
    capacity: usize,
}

/// The local subscribers of one channel, by id.
type Subscribers = Vec<(u64, Arc<Slot>)>;

#[derive(Debug)]
enum HubCommand {
    /// Subscribe the channel if needed, then activate the slot (see [`drive`]).
    Subscribe(Vec<u8>, u64, Arc<Slot>, oneshot::Sender<Result<()>>),
    Unsubscribe(Vec<u8>),
}

/// One subscriber's bounded buffer.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    notify: Notify,
    /// Its guard was dropped (set under the registry lock, so a late activation is skipped).
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct SlotState {
    queue: VecDeque<Delivery>,
    /// The oldest messages were dropped to make room: a `Lagged` is owed before the queue's
    /// front (like a broadcast channel, an overflowing subscriber keeps the newest messages).
    lagged: bool,
}

impl Slot {
    fn push(&self, payload: Bytes, capacity: usize) {
        {
            let mut s = lock(&self.state);
            while s.queue.len() >= capacity {
                s.queue.pop_front();
                s.lagged = true;
            }
            s.queue.push_back(Delivery::Message(payload));
        }
        self.notify.notify_one();
    }

    /// Everything after what is queued now may have been missed (a reconnect).
    fn lag(&self) {
        lock(&self.state).queue.push_back(Delivery::Lagged);
        self.notify.notify_one();
    }

    async fn next(&self) -> Delivery {
        loop {
            {
                let mut s = lock(&self.state);
                if s.lagged {
                    s.lagged = false;
                    if matches!(s.queue.front(), Some(Delivery::Lagged)) {
                        s.queue.pop_front();
                    }
                    return Delivery::Lagged;
                }
                if let Some(d) = s.queue.pop_front() {
                    return d;
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Hub {
    fn dispatch(&self, channel: &[u8], payload: &[u8]) {
        let channels = lock(&self.channels);
        if let Some(subs) = channels.get(channel) {
            let payload = Bytes::copy_from_slice(payload);
            for (_, slot) in subs {
                slot.push(payload.clone(), self.capacity);
            }
        }
    }

    fn lag_all(&self) {
        for subs in lock(&self.channels).values() {
            for (_, slot) in subs {
                slot.lag();
            }
        }
    }

    /// Register a subscriber and wait until its channel is subscribed on the server.
    async fn subscribe(self: &Arc<Self>, channel: Vec<u8>, timeout: Duration) -> Result<SlotGuard> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        let guard = SlotGuard {
            hub: self.clone(),
            channel: channel.clone(),
            id,
            slot: slot.clone(),
        };
        let (tx, rx) = oneshot::channel();
        let unavailable = || {
            err(
                REDIS,
                ErrorKind::Unavailable,
                "subscribe",
                "the subscription connection is down",
            )
        };
        self.commands
            .send(HubCommand::Subscribe(channel, id, slot, tx))
            .map_err(|_| unavailable())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(guard),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(unavailable()),
            // Retryable: the subscription is still on its way (the slot activates when Redis
            // confirms it, or is released), and an event log observer reads the log
            // meanwhile and subscribes again; a slow SUBSCRIBE is never an observer's error.
            Err(_) => Err(err(
                REDIS,
                ErrorKind::Timeout,
                "subscribe",
                "SUBSCRIBE was not confirmed in time",
            )
            .with_retryable(true)),
        }
    }
}

/// A registered subscriber; unregisters (and unsubscribes the last one of a channel) on drop.
struct SlotGuard {
    hub: Arc<Hub>,
    channel: Vec<u8>,
    id: u64,
    slot: Arc<Slot>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut channels = lock(&self.hub.channels);
        self.slot.closed.store(true, Ordering::Relaxed);
        let now_empty = match channels.get_mut(&self.channel) {
            Some(subs) => {
                subs.retain(|(id, _)| *id != self.id);
                subs.is_empty()
            }
            None => false,
        };
        if now_empty {
            channels.remove(&self.channel);
            let _ = self
                .hub
                .commands
                .send(HubCommand::Unsubscribe(self.channel.clone()));
        }
    }
}

/// Most queued hub commands handled as one batch: the batch costs one round trip, whatever
/// its size.
const MAX_BATCH: usize = 16 * 1024;
/// Channels per `SUBSCRIBE` / `UNSUBSCRIBE` command of a batch (all of them are pipelined).
const CHANNELS_PER_COMMAND: usize = 1024;

/// The task owning the subscription connection: (re)connects, (re)subscribes, dispatches.
///
/// Subscription changes are batched: every command queued while the previous batch was in
/// flight goes out together, as pipelined `SUBSCRIBE` / `UNSUBSCRIBE` commands of up to
/// [`CHANNELS_PER_COMMAND`] channels, so a burst of ten thousand observers costs a handful of
/// round trips instead of ten thousand sequential ones.
///
/// A batch not confirmed within `timeout` (a server that stopped answering without closing the
/// connection) is failed as retryable and the connection replaced, so the task never waits on
/// a dead server.
async fn drive(
    clients: Vec<redis::Client>,
    initial: redis::aio::PubSub,
    hub: Weak<Hub>,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    timeouts: Timeouts,
) {
    let timeout = timeouts.response;
    let mut first = true;
    let mut initial = Some(initial);
    let mut backoff = Duration::from_millis(50);
    // On a cluster, every seed in turn: a `PUBLISH` reaches subscribers on every node, so any
    // node that answers will do, and a failed one is skipped at the next attempt.
    let mut seed = 0usize;
    loop {
        let client = &clients[seed % clients.len()];
        let connected = match initial.take() {
            Some(p) => Ok(p),
            None => match tokio::time::timeout(timeouts.connect, client.get_async_pubsub()).await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(e)) => Err(from_redis("subscribe", e)),
                Err(_) => Err(err(
                    REDIS,
                    ErrorKind::Timeout,
                    "subscribe",
                    "the subscription connection could not be opened in time",
                )
                .with_retryable(true)),
            },
        };
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "redis subscription connection failed; retrying");
                seed = seed.wrapping_add(1);
                // Refuse subscriptions while down instead of letting them hang.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        cmd = commands.recv() => match cmd {
                            None => return,
                            Some(HubCommand::Subscribe(_, _, _, reply)) => {
                                let _ = reply.send(Err(e.clone()));
                            }
                            Some(HubCommand::Unsubscribe(_)) => {}
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (sink, mut stream) = pubsub.split();
        let Some(h) = hub.upgrade() else { return };
        let wanted: Vec<Vec<u8>> = lock(&h.channels).keys().cloned().collect();
        drop(h);
        let mut subscribed: HashSet<Vec<u8>> = HashSet::new();
        if !wanted.is_empty() {
            if let Err(e) = send_all(&sink, &wanted, &[], false, timeout).await {
                tracing::debug!(error = %e, "re-subscribe failed; reconnecting");
                continue;
            }
            subscribed.extend(wanted);
        }
        if !first {
            // Anything published while the connection was down is lost for subscribers.
            match hub.upgrade() {
                Some(h) => h.lag_all(),
                None => return,
            }
        }
        first = false;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(h) = hub.upgrade() else { return };
                    h.dispatch(msg.get_channel_name().as_bytes(), msg.get_payload_bytes());
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while batch.len() < MAX_BATCH {
                        match commands.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    let applied =
                        apply_batch(&sink, &mut stream, &hub, &mut subscribed, batch, timeout);
                    match applied.await {
                        Batch::Done => {}
                        Batch::Reconnect => break,
                        Batch::HubGone => return,
                    }
                }
            }
        }
        tracing::debug!("redis subscription connection lost; reconnecting");
    }
}

/// Bounds of the subscription connection's waits.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// Opening the connection.
    connect: Duration,
    /// The confirmations of one batch.
    response: Duration,
}

/// What the driver does after a batch.
enum Batch {
    Done,
    Reconnect,
    HubGone,
}

/// A subscriber waiting for its channel: channel, id, slot, reply.
type Pending = (Vec<u8>, u64, Arc<Slot>, oneshot::Sender<Result<()>>);

/// Apply one batch of hub commands with one pipelined round trip, then activate its
/// subscribers.
async fn apply_batch(
    sink: &redis::aio::PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    hub: &Weak<Hub>,
    subscribed: &mut HashSet<Vec<u8>>,
    batch: Vec<HubCommand>,
    timeout: Duration,
) -> Batch {
    let mut pending: Vec<Pending> = Vec::new();
    let mut released: HashSet<Vec<u8>> = HashSet::new();
    for cmd in batch {
        match cmd {
            HubCommand::Subscribe(channel, id, slot, reply) => {
                pending.push((channel, id, slot, reply));
            }
            HubCommand::Unsubscribe(channel) => {
                released.insert(channel);
            }
        }
    }
    let Some(h) = hub.upgrade() else {
        return Batch::HubGone;
    };
    let wanted: HashSet<&[u8]> = pending.iter().map(|p| &p.0[..]).collect();
    let (fresh, gone) = {
        let channels = lock(&h.channels);
        let fresh: Vec<Vec<u8>> = wanted
            .iter()
            .filter(|c| !subscribed.contains(**c))
            .map(|c| c.to_vec())
            .collect();
        // Released by its last local subscriber, and not wanted again meanwhile.
        let gone: Vec<Vec<u8>> = released
            .into_iter()
            .filter(|c| {
                subscribed.contains(c) && !channels.contains_key(c) && !wanted.contains(&c[..])
            })
            .collect();
        (fresh, gone)
    };
    drop(h);
    // Barrier: once every reply of the batch is in, every message Redis sent before them is
    // already in `stream`. Those predate the batch's subscribers: hand them to the others
    // first, then activate the new ones, so they only see later publishes. A new subscriber of
    // a channel that is already subscribed needs a reply too: a PING when nothing else is sent.
    let barrier = !pending.is_empty();
    if let Err(e) = send_all(sink, &fresh, &gone, barrier, timeout).await {
        tracing::debug!(error = %e, "redis subscription batch failed; reconnecting");
        for (_, _, _, reply) in pending {
            let _ = reply.send(Err(e.clone()));
        }
        return Batch::Reconnect;
    }
    for c in &gone {
        subscribed.remove(c);
    }
    subscribed.extend(fresh);
    let Some(h) = hub.upgrade() else {
        return Batch::HubGone;
    };
    let mut lost = false;
    loop {
        match stream.next().now_or_never() {
            Some(Some(msg)) => {
                h.dispatch(msg.get_channel_name().as_bytes(), msg.get_payload_bytes())
            }
            Some(None) => {
                lost = true;
                break;
            }
            None => break,
        }
    }
    let mut orphans = Vec::new();
    {
        let mut channels = lock(&h.channels);
        for (channel, id, slot, reply) in pending {
            if slot.closed.load(Ordering::Relaxed) {
                // Its subscriber gave up before activation: release the channel if nobody
                // else wants it (in the next batch).
                if !channels.contains_key(&channel) {
                    orphans.push(channel);
                }
            } else {
                channels.entry(channel).or_default().push((id, slot));
            }
            let _ = reply.send(Ok(()));
        }
    }
    for channel in orphans {
        let _ = h.commands.send(HubCommand::Unsubscribe(channel));
    }
    if lost {
        Batch::Reconnect
    } else {
        Batch::Done
    }
}

/// Send `UNSUBSCRIBE gone` and `SUBSCRIBE fresh` (chunked, pipelined on the one connection) and
/// wait for every confirmation, at most `timeout`; with `barrier` and nothing to send, a `PING`.
async fn send_all(
    sink: &redis::aio::PubSubSink,
    fresh: &[Vec<u8>],
    gone: &[Vec<u8>],
    barrier: bool,
    timeout: Duration,
) -> Result<()> {
    let mut calls = Vec::new();
    for chunk in gone.chunks(CHANNELS_PER_COMMAND) {
        let mut s = sink.clone();
        calls.push(async move { s.unsubscribe(chunk).await }.boxed());
    }
    for chunk in fresh.chunks(CHANNELS_PER_COMMAND) {
        let mut s = sink.clone();
        calls.push(async move { s.subscribe(chunk).await }.boxed());
    }
    if calls.is_empty() && barrier {
        let mut s = sink.clone();
        calls.push(async move { s.ping::<redis::Value>().await.map(drop) }.boxed());
    }
    match tokio::time::timeout(timeout, futures::future::try_join_all(calls)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(from_redis("subscribe", e)),
        Err(_) => Err(err(
            REDIS,
            ErrorKind::Timeout,
            "subscribe",
            "the subscription connection did not answer in time",
        )
        .with_retryable(true)),
    }
}

impl RedisPubSub {
    pub(crate) async fn new(redis: Redis) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            commands: tx,
            next_id: AtomicU64::new(0),
            capacity: redis.config().subscriber_capacity.max(1),
        });
        // Open the connection here so a bad server is reported now, not at first subscribe
        // (on a cluster, to the first seed that answers).
        let mut pubsub = None;
        let mut failure = None;
        for (i, client) in redis.clients().iter().enumerate() {
            let connect = client.get_async_pubsub();
            match tokio::time::timeout(redis.config().connect_timeout, connect).await {
                Ok(Ok(p)) => {
                    pubsub = Some((i, p));
                    break;
                }
                Ok(Err(e)) => failure = Some(from_redis("connect", e)),
                Err(_) => {
                    failure = Some(
                        err(
                            REDIS,
                            ErrorKind::Timeout,
                            "connect",
                            "the subscription connection could not be opened in time",
                        )
                        .with_retryable(true),
                    )
                }
            }
        }
        let Some((first, pubsub)) = pubsub else {
            return Err(failure.unwrap_or_else(|| {
                err(REDIS, ErrorKind::InvalidInput, "connect", "no Redis URL")
            }));
        };
        let mut clients = redis.clients().to_vec();
        clients.rotate_left(first);
        let timeouts = Timeouts {
            connect: redis.config().connect_timeout,
            response: redis.config().response_timeout,
        };
        tokio::spawn(drive(clients, pubsub, Arc::downgrade(&hub), rx, timeouts));
        Ok(Self {
            inner: Arc::new(Inner {
                transport: redis.transport(),
                redis,
                hub,
            }),
        })
    }

    /// Connect to `url` with default settings; see [`RedisConfig`](crate::RedisConfig) for more.
    ///
    /// # Errors
    /// As [`RedisConfig::connect`](crate::RedisConfig::connect).
    pub async fn connect(url: &str) -> Result<Self> {
        Redis::connect(url).await?.pubsub().await
    }

    /// The number of channels with at least one local subscriber (for leak tests).
    pub fn active_channels(&self) -> usize {
        lock(&self.inner.hub.channels).len()
    }

    async fn subscribe_channel(&self, channel: Vec<u8>) -> Result<SlotGuard> {
        let timeout = self.inner.redis.config().response_timeout;
        self.inner.hub.subscribe(channel, timeout).await
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    fn backend(&self) -> &'static str {
        REDIS
    }

    fn capabilities(&self) -> PubSubCapabilities {
        PubSubCapabilities::ALL
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        check("publish", "topic", topic)?;
        let keys = self.inner.redis.keys();
        let cfg = self.inner.redis.config();
        let stream = keys.group_stream(topic);
        let channel = keys.topic_channel(topic);
        let wake = keys.group_wake_channel(topic);
        let max = cfg.group_max_len.to_string();
        let ttl = ttl_ms(cfg.group_ttl).to_string();
        self.inner
            .transport
            .eval(
                "publish",
                &PUBLISH,
                &[&stream],
                &[&channel, &payload, &wake, max.as_bytes(), ttl.as_bytes()],
            )
            .await?;
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        check("subscribe", "topic", topic)?;
        let guard = self
            .subscribe_channel(self.inner.redis.keys().topic_channel(topic))
            .await?;
        Ok(Subscription::new(futures::stream::unfold(
            guard,
            |g| async move {
                let d = g.slot.next().await;
                Some((d, g))
            },
        )))
    }

    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        check("subscribe_group", "topic", topic)?;
        check("subscribe_group", "group", group)?;
        let keys = self.inner.redis.keys();
        let consumer = Consumer {
            transport: self.inner.transport.clone(),
            stream: Bytes::from(keys.group_stream(topic)),
            wake: Bytes::from(keys.group_wake_channel(topic)),
            group: Bytes::from(group.to_owned()),
            name: Bytes::from(uuid::Uuid::new_v4().to_string()),
            reclaim_idle: self.inner.redis.config().group_reclaim_idle,
            ttl: self.inner.redis.config().group_ttl,
            batch: self.inner.redis.config().group_batch.max(1),
        };
        // Subscribe to wake-ups before the first read, so no publish can slip between them.
        let wake = self.subscribe_channel(consumer.wake.to_vec()).await?;
        consumer.join().await?;
        let state = ConsumerState {
            consumer: Arc::new(consumer),
            wake,
            buf: VecDeque::new(),
            next_reclaim: Instant::now(),
            failing: false,
        };
        Ok(GroupSubscription::new(futures::stream::unfold(
            state,
            |mut s| async move {
                let item = s.next_job().await;
                Some((item, s))
            },
        )))
    }

    async fn flush(&self) -> Result<()> {
        // Publishes are sent when `publish` is called and complete before it returns.
        Ok(())
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        Some(self.inner.redis.announce_domain().clone())
    }
}

/// One consumer of a group.
#[derive(Debug)]
struct Consumer {
    transport: RedisTransport,
    stream: Bytes,
    wake: Bytes,
    group: Bytes,
    name: Bytes,
    reclaim_idle: Duration,
    ttl: Duration,
    batch: usize,
}

impl Consumer {
    async fn join(&self) -> Result<()> {
        let ttl = ttl_ms(self.ttl).to_string();
        self.transport
            .eval(
                "subscribe_group",
                &GROUP_JOIN,
                &[&self.stream],
                &[&self.group, ttl.as_bytes()],
            )
            .await?;
        Ok(())
    }

    /// New jobs (`XREADGROUP … >`).
    async fn read_new(self: &Arc<Self>) -> Result<Vec<Job>> {
        let batch = self.batch.to_string();
        let reply = self
            .transport
            .command(
                "subscribe_group",
                &[
                    b"XREADGROUP",
                    b"GROUP",
                    &self.group,
                    &self.name,
                    b"COUNT",
                    batch.as_bytes(),
                    b"STREAMS",
                    &self.stream,
                    b">",
                ],
            )
            .await?;
        let mut jobs = Vec::new();
        for stream in reply.into_array().unwrap_or_default() {
            let mut parts = stream.into_array().unwrap_or_default().into_iter();
            let entries = parts.nth(1).and_then(Reply::into_array).unwrap_or_default();
            for e in entries {
                if let Some(job) = self.job(e, None) {
                    jobs.push(job);
                }
            }
        }
        Ok(jobs)
    }

    /// Jobs idle for at least the reclaim time (or nacked).
    async fn reclaim(self: &Arc<Self>) -> Result<Vec<Job>> {
        let (idle, batch) = (
            ttl_ms(self.reclaim_idle).to_string(),
            self.batch.to_string(),
        );
        let reply = self
            .transport
            .eval(
                "subscribe_group",
                &GROUP_RECLAIM,
                &[&self.stream],
                &[&self.group, &self.name, idle.as_bytes(), batch.as_bytes()],
            )
            .await?;
        let mut jobs = Vec::new();
        for item in reply.into_array().unwrap_or_default() {
            let mut parts = item.into_array().unwrap_or_default().into_iter();
            let (Some(id), Some(fields), Some(attempt)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let attempt = attempt.int().and_then(|a| u32::try_from(a).ok());
            if let Some(job) = self.job(Reply::Array(vec![id, fields]), attempt) {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// A job from a stream entry `[id, [field, value, …]]`.
    fn job(self: &Arc<Self>, entry: Reply, attempt: Option<u32>) -> Option<Job> {
        let mut parts = entry.into_array()?.into_iter();
        let id = parts.next()?.into_bytes()?;
        let fields = parts.next()?.into_array()?;
        let mut it = fields.into_iter();
        let mut payload = None;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if k.into_bytes().as_deref() == Some(&b"p"[..]) {
                payload = v.into_bytes();
            }
        }
        let acker = RedisAcker {
            consumer: self.clone(),
            id,
        };
        Some(Job::new(
            payload?,
            attempt.unwrap_or(1).max(1),
            Box::new(acker),
        ))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Leave the group if nothing is pending for us (pending jobs stay claimable).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (t, stream, group, name) = (
                self.transport.clone(),
                self.stream.clone(),
                self.group.clone(),
                self.name.clone(),
            );
            handle.spawn(async move {
                let _ = t
                    .eval(
                        "subscribe_group",
                        &GROUP_LEAVE,
                        &[&stream],
                        &[&group, &name],
                    )
                    .await;
            });
        }
    }
}

struct ConsumerState {
    consumer: Arc<Consumer>,
    wake: SlotGuard,
    buf: VecDeque<Job>,
    next_reclaim: Instant,
    failing: bool,
}

impl ConsumerState {
    async fn next_job(&mut self) -> Result<Job> {
        loop {
            if let Some(job) = self.buf.pop_front() {
                return Ok(job);
            }
            if self.failing {
                // Back off after an error; a wake-up (the server is back and busy) ends it early.
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), self.wake.slot.next()).await;
            }
            match self.fill().await {
                Ok(true) => {
                    self.failing = false;
                    continue;
                }
                Ok(false) => self.failing = false,
                Err(e) => {
                    self.failing = true;
                    if is_nogroup(&e) {
                        let _ = self.consumer.join().await;
                    }
                    return Err(e);
                }
            }
            tokio::select! {
                _ = self.wake.slot.next() => {}
                () = tokio::time::sleep_until(self.next_reclaim) => {}
            }
        }
    }

    /// Fetch new jobs, else reclaimable ones. Returns whether any were found.
    async fn fill(&mut self) -> Result<bool> {
        let jobs = self.consumer.read_new().await?;
        if !jobs.is_empty() {
            self.buf.extend(jobs);
            return Ok(true);
        }
        let jobs = self.consumer.reclaim().await?;
        let now = Instant::now();
        if now >= self.next_reclaim {
            self.next_reclaim =
                now + (self.consumer.reclaim_idle / 2).max(Duration::from_millis(100));
            // Consumer activity keeps the queue alive.
            self.consumer.join().await?;
        }
        let found = !jobs.is_empty();
        self.buf.extend(jobs);
        Ok(found)
    }
}

fn is_nogroup(e: &Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.to_string().contains("NOGROUP"))
}

/// Settles one stream entry.
struct RedisAcker {
    consumer: Arc<Consumer>,
    id: Bytes,
}

impl JobAcker for RedisAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            let c = &self.consumer;
            c.transport
                .command("ack", &[b"XACK", &c.stream, &c.group, &self.id])
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            let c = &self.consumer;
            c.transport
                .eval(
                    "nack",
                    &GROUP_NACK,
                    &[&c.stream],
                    &[&c.group, &c.name, &self.id, &c.wake],
                )
                .await?;
            Ok(())
        }
        .boxed()
    }
}

//! [`KafkaPubSub`]: fan-out subscriptions by partition assignment, work queues by consumer
//! groups, publishes through one idempotent producer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    Delivery, Error, ErrorKind, GroupSubscription, Job, JobAcker, PubSub, PubSubCapabilities,
    Result, Subscription,
};
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Notify};

use crate::config::KafkaConfig;
use crate::error::{code, err, from_kafka, KAFKA};
use crate::names::{group_id, partition_for, route, Route};

/// The record header carrying a job's delivery attempt (absent on a first delivery).
pub const ATTEMPT_HEADER: &str = "durable-attempt";

/// How long a consumer thread blocks in one poll before it checks whether it is still needed.
const POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`PubSub`] on Kafka (capabilities: groups, durable groups, shared).
///
/// # Behavior
/// - `publish` routes the topic (see the crate docs for the mapping), creates its Kafka topic on
///   first use, and waits for the broker's acknowledgement (`acks=all`, idempotent producer):
///   a publish that cannot be stored fails with a retryable error, never drops silently. A
///   topic the broker lost (a restart of a memory-backed broker) is created again and the
///   publish retried once.
/// - `subscribe` reads the partition's high watermark and assigns this instance's fan-out
///   consumer to it from there, so everything published after `subscribe` returns is
///   delivered and nothing before. Each subscriber has a bounded buffer; overflow drops the
///   oldest messages and yields [`Delivery::Lagged`]. A consumer error (broker unreachable) and
///   a partition whose offsets went back (the broker lost it) yield `Lagged` to every affected
///   subscriber.
/// - `subscribe_group` joins Kafka consumer group `<prefix><topic>/<group>`; the subscriptions
///   of one process share one group member. Offsets are committed only when a job is acked
///   (contiguously: never past a job still in flight), so a crashed consumer's jobs are
///   redelivered. `nack` republishes the job with its attempt number in the
///   [`ATTEMPT_HEADER`] header, then commits it. Delivery is at least once: a rebalance can
///   redeliver a job whose ack was not yet committed, which the run's epoch fencing makes safe.
#[derive(Clone)]
pub struct KafkaPubSub {
    inner: Arc<Inner>,
}

impl fmt::Debug for KafkaPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPubSub")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: KafkaConfig,
    /// Replaced after a fatal producer error (an idempotent producer whose broker lost its
    /// producer state cannot go on).
    producer: Mutex<Arc<FutureProducer>>,
    admin: AdminClient<DefaultClientContext>,
    /// Kafka topics known to exist, with their partition counts.
    topics: Mutex<HashMap<String, i32>>,
    hub: Arc<Hub>,
    /// This process's member of each consumer group, by group id.
    groups: Mutex<HashMap<String, Weak<GroupLocal>>>,
}

impl KafkaPubSub {
    pub(crate) fn new(config: KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = config
            .producer()
            .create()
            .map_err(|e| from_kafka("connect", e))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client()
            .create()
            .map_err(|e| from_kafka("connect", e))?;
        let consumer: BaseConsumer<HubContext> = config
            .fanout_consumer()
            .create_with_context(HubContext::default())
            .map_err(|e| from_kafka("connect", e))?;
        let hub = Arc::new(Hub {
            consumer,
            capacity: config.subscriber_capacity,
            state: Mutex::new(HubState::default()),
        });
        let weak = Arc::downgrade(&hub);
        std::thread::Builder::new()
            .name("durable-kafka-fanout".into())
            .spawn(move || run_hub(&weak))
            .map_err(|e| {
                err(
                    ErrorKind::Unexpected,
                    "connect",
                    format!("cannot start a thread: {e}"),
                )
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer: Mutex::new(Arc::new(producer)),
                admin,
                topics: Mutex::new(HashMap::new()),
                hub,
                groups: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }
}

impl Inner {
    fn route(&self, topic: &str) -> Result<Route> {
        route(&self.config.topic_prefix, topic)
    }

    fn producer(&self) -> Arc<FutureProducer> {
        lock(&self.producer).clone()
    }

    /// Create `topic` unless known; its partition count.
    async fn ensure_topic(self: &Arc<Self>, topic: &str) -> Result<i32> {
        if let Some(n) = lock(&self.topics).get(topic) {
            return Ok(*n);
        }
        let timeout = self.config.op_timeout;
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication),
        );
        let opts = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let results = tokio::time::timeout(timeout, self.admin.create_topics([&new], &opts))
            .await
            .map_err(|_| {
                err(
                    ErrorKind::Timeout,
                    "create topic",
                    "CreateTopics did not answer",
                )
            })?
            .map_err(|e| from_kafka("create topic", e))?;
        let mut partitions = self.config.partitions;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    partitions = self.partitions_of(topic).await?;
                }
                Err((_, c)) => {
                    return Err(from_kafka(
                        "create topic",
                        rdkafka::error::KafkaError::AdminOp(c),
                    ))
                }
            }
        }
        lock(&self.topics).insert(topic.to_owned(), partitions);
        Ok(partitions)
    }

    async fn partitions_of(self: &Arc<Self>, topic: &str) -> Result<i32> {
        let (me, name) = (self.clone(), topic.to_owned());
        let md = tokio::task::spawn_blocking(move || {
            me.hub
                .consumer
                .fetch_metadata(Some(&name), me.config.op_timeout)
        })
        .await
        .map_err(|e| err(ErrorKind::Unexpected, "metadata", e.to_string()))?
        .map_err(|e| from_kafka("metadata", e))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        match i32::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(err(
                ErrorKind::Unavailable,
                "metadata",
                format!("topic {topic} has no partitions yet"),
            )
            .with_retryable(true)),
        }
    }

    fn forget_topic(&self, topic: &str) {
        lock(&self.topics).remove(topic);
    }

    /// Produce one record and wait for its acknowledgement.
    async fn send(
        &self,
        route: &Route,
        partition: i32,
        payload: &[u8],
        attempt: Option<u32>,
    ) -> Result<()> {
        let producer = self.producer();
        let mut record = FutureRecord::to(&route.topic)
            .key(route.key.as_bytes())
            .payload(payload)
            .partition(partition);
        if let Some(a) = attempt {
            let value = a.to_string();
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: ATTEMPT_HEADER,
                value: Some(value.as_str()),
            }));
        }
        match producer
            .send(record, Timeout::After(self.config.op_timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                if producer.client().fatal_error().is_some() {
                    self.renew_producer(&producer);
                }
                Err(from_kafka("publish", e))
            }
        }
    }

    fn renew_producer(&self, failed: &Arc<FutureProducer>) {
        let mut current = lock(&self.producer);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match self.config.producer().create::<FutureProducer>() {
            Ok(p) => *current = Arc::new(p),
            Err(e) => tracing::warn!(error = %e, "cannot renew the Kafka producer"),
        }
    }

    /// Route, create the topic if needed, produce; once more after the broker lost the topic.
    async fn publish(
        self: &Arc<Self>,
        topic: &str,
        payload: &[u8],
        attempt: Option<u32>,
    ) -> Result<()> {
        let route = self.route(topic)?;
        let mut retried = false;
        loop {
            let partitions = self.ensure_topic(&route.topic).await?;
            let p = partition_for(&route.key, partitions);
            match self.send(&route, p, payload, attempt).await {
                Err(e) if !retried && lost_topic(&e) => {
                    self.forget_topic(&route.topic);
                    retried = true;
                }
                other => return other,
            }
        }
    }
}

fn lost_topic(e: &Error) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<rdkafka::error::KafkaError>())
        .and_then(code)
        .is_some_and(|c| {
            matches!(
                c,
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::UnknownPartition
            )
        })
}

#[async_trait]
impl PubSub for KafkaPubSub {
    fn backend(&self) -> &'static str {
        KAFKA
    }

    fn capabilities(&self) -> PubSubCapabilities {
        PubSubCapabilities::default()
            .with_groups(true)
            .with_durable_groups(true)
            .with_shared(true)
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        self.inner.publish(topic, &payload, None).await
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        let inner = &self.inner;
        let route = inner.route(topic)?;
        let partitions = inner.ensure_topic(&route.topic).await?;
        let p = partition_for(&route.key, partitions);
        let (me, name) = (inner.clone(), route.topic.clone());
        let (_, high) = tokio::task::spawn_blocking(move || {
            me.hub
                .consumer
                .fetch_watermarks(&name, p, me.config.op_timeout)
        })
        .await
        .map_err(|e| err(ErrorKind::Unexpected, "subscribe", e.to_string()))?
        .map_err(|e| from_kafka("subscribe", e))?;
        let guard = inner.hub.subscribe(&route, p, high)?;
        Ok(Subscription::new(futures::stream::unfold(
            guard,
            |g| async move {
                let d = g.slot.next().await;
                Some((d, g))
            },
        )))
    }

    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        let inner = &self.inner;
        let route = inner.route(topic)?;
        let id = group_id(&inner.config.topic_prefix, &route, group)?;
        inner.ensure_topic(&route.topic).await?;
        let local = {
            let mut groups = lock(&inner.groups);
            groups.retain(|_, g| g.strong_count() > 0);
            match groups.get(&id).and_then(Weak::upgrade) {
                Some(g) => g,
                None => {
                    let g = GroupLocal::start(inner, &route, &id)?;
                    groups.insert(id, Arc::downgrade(&g));
                    g
                }
            }
        };
        Ok(GroupSubscription::new(futures::stream::unfold(
            local,
            |l| async move {
                let job = l.rx.lock().await.recv().await?;
                Some((Ok(job), l))
            },
        )))
    }

    async fn flush(&self) -> Result<()> {
        let producer = self.inner.producer();
        let timeout = self.inner.config.op_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| err(ErrorKind::Unexpected, "flush", e.to_string()))?
            .map_err(|e| from_kafka("flush", e))
    }
}

// ---- fan-out -------------------------------------------------------------------------------

/// The fan-out consumer of one [`KafkaPubSub`]: assigned (no group) to the partitions that
/// have subscribers, polled by one thread that hands each record to the subscribers of its key.
struct Hub {
    consumer: BaseConsumer<HubContext>,
    capacity: usize,
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    /// Kafka topic → partition → its subscribers.
    topics: HashMap<String, HashMap<i32, Part>>,
    next_id: u64,
}

struct Part {
    /// The next offset expected: an offset below it means the broker lost the partition.
    position: i64,
    subs: HashMap<u64, Sub>,
}

struct Sub {
    key: String,
    /// The partition's high watermark when it subscribed: earlier records are not its own.
    start: i64,
    slot: Arc<Slot>,
}

struct SubGuard {
    hub: Arc<Hub>,
    topic: String,
    partition: i32,
    id: u64,
    slot: Arc<Slot>,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.slot.closed.store(true, Ordering::Release);
        self.hub.unsubscribe(&self.topic, self.partition, self.id);
    }
}

fn one_partition(topic: &str, partition: i32, offset: Option<i64>) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    match offset {
        Some(o) => tpl
            .add_partition_offset(topic, partition, Offset::Offset(o))
            .map_err(|e| from_kafka("subscribe", e))?,
        None => {
            tpl.add_partition(topic, partition);
        }
    }
    Ok(tpl)
}

impl Hub {
    fn subscribe(self: &Arc<Self>, route: &Route, partition: i32, high: i64) -> Result<SubGuard> {
        let slot = Arc::new(Slot::default());
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        let parts = st.topics.entry(route.topic.clone()).or_default();
        let part = match parts.entry(partition) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let tpl = one_partition(&route.topic, partition, Some(high))?;
                self.consumer
                    .incremental_assign(&tpl)
                    .map_err(|e| from_kafka("subscribe", e))?;
                e.insert(Part {
                    position: high,
                    subs: HashMap::new(),
                })
            }
        };
        part.subs.insert(
            id,
            Sub {
                key: route.key.clone(),
                start: high,
                slot: slot.clone(),
            },
        );
        Ok(SubGuard {
            hub: self.clone(),
            topic: route.topic.clone(),
            partition,
            id,
            slot,
        })
    }

    fn unsubscribe(&self, topic: &str, partition: i32, id: u64) {
        let mut st = lock(&self.state);
        let Some(parts) = st.topics.get_mut(topic) else {
            return;
        };
        let Some(part) = parts.get_mut(&partition) else {
            return;
        };
        part.subs.remove(&id);
        if part.subs.is_empty() {
            parts.remove(&partition);
            if let Ok(tpl) = one_partition(topic, partition, None) {
                if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                    tracing::debug!(error = %e, topic, partition, "cannot unassign");
                }
            }
            if parts.is_empty() {
                st.topics.remove(topic);
            }
        }
    }

    fn dispatch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
    ) {
        let mut st = lock(&self.state);
        let Some(part) = st.topics.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return;
        };
        if offset < part.position {
            // The broker lost the partition (a memory-backed broker restarted): its offsets
            // start over, so every subscriber may have missed messages and takes new ones.
            for sub in part.subs.values_mut() {
                sub.slot.lag();
                sub.start = 0;
            }
        }
        part.position = offset + 1;
        let mut bytes: Option<Bytes> = None;
        for sub in part.subs.values() {
            if offset >= sub.start && key == Some(sub.key.as_bytes()) {
                let b = bytes.get_or_insert_with(|| Bytes::copy_from_slice(payload));
                sub.slot.push(b.clone(), self.capacity);
            }
        }
    }

    fn lag_all(&self) {
        for parts in lock(&self.state).topics.values() {
            for part in parts.values() {
                for sub in part.subs.values() {
                    sub.slot.lag();
                }
            }
        }
    }
}

/// Notes client-level errors (a broker connection lost), which librdkafka reports through the
/// context rather than through `poll`.
#[derive(Default)]
struct HubContext {
    errored: AtomicBool,
}

impl ClientContext for HubContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka fan-out client error; subscribers resync");
        self.errored.store(true, Ordering::Release);
    }
}

impl ConsumerContext for HubContext {}

fn run_hub(hub: &Weak<Hub>) {
    loop {
        let Some(hub) = hub.upgrade() else { return };
        let polled = hub.consumer.poll(POLL);
        if hub.consumer.context().errored.swap(false, Ordering::AcqRel) {
            hub.lag_all();
        }
        match polled {
            None => {}
            Some(Ok(m)) => hub.dispatch(
                m.topic(),
                m.partition(),
                m.offset(),
                m.key(),
                m.payload().unwrap_or_default(),
            ),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Kafka fan-out consumer error; subscribers resync");
                hub.lag_all();
            }
        }
    }
}

/// One subscriber's bounded buffer.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    notify: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct SlotState {
    queue: VecDeque<Delivery>,
    /// The oldest messages were dropped to make room: a `Lagged` is owed first.
    lagged: bool,
}

impl Slot {
    fn push(&self, payload: Bytes, capacity: usize) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
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

    /// Everything after what is queued now may have been missed.
    fn lag(&self) {
        {
            let mut s = lock(&self.state);
            if !matches!(s.queue.back(), Some(Delivery::Lagged)) {
                s.queue.push_back(Delivery::Lagged);
            }
        }
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

// ---- consumer groups ------------------------------------------------------------------------

/// This process's member of one consumer group: a consumer thread filling a bounded queue that
/// every local [`GroupSubscription`] of the group takes jobs from.
struct GroupLocal {
    rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
}

/// What the consumer thread and the job ackers share.
struct GroupShared {
    consumer: BaseConsumer,
    topic: String,
    key: String,
    tracks: Mutex<HashMap<i32, Track>>,
}

/// The jobs of one partition between delivery and settlement.
struct Track {
    in_flight: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl GroupLocal {
    fn start(inner: &Arc<Inner>, route: &Route, group_id: &str) -> Result<Arc<Self>> {
        let consumer: BaseConsumer = inner
            .config
            .group_consumer(group_id)
            .create()
            .map_err(|e| from_kafka("subscribe_group", e))?;
        consumer
            .subscribe(&[&route.topic])
            .map_err(|e| from_kafka("subscribe_group", e))?;
        let shared = Arc::new(GroupShared {
            consumer,
            topic: route.topic.clone(),
            key: route.key.clone(),
            tracks: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel(inner.config.job_buffer);
        let weak = Arc::downgrade(inner);
        std::thread::Builder::new()
            .name("durable-kafka-group".into())
            .spawn(move || run_group(shared, &tx, &weak))
            .map_err(|e| {
                err(
                    ErrorKind::Unexpected,
                    "subscribe_group",
                    format!("cannot start a thread: {e}"),
                )
            })?;
        Ok(Arc::new(Self {
            rx: tokio::sync::Mutex::new(rx),
        }))
    }
}

impl GroupShared {
    fn track(&self, partition: i32, offset: i64) {
        let mut tracks = lock(&self.tracks);
        let t = tracks.entry(partition).or_insert(Track {
            in_flight: BTreeSet::new(),
            next: offset,
            committed: -1,
        });
        if offset < t.next {
            // Fetched again from the committed offset (a rebalance gave the partition back):
            // the jobs in flight before are being redelivered.
            t.in_flight.clear();
            t.committed = -1;
        }
        t.in_flight.insert(offset);
        t.next = offset + 1;
    }

    /// The job at `offset` is done: commit up to the oldest job still in flight.
    fn settle(&self, partition: i32, offset: i64) -> Result<()> {
        let to = {
            let mut tracks = lock(&self.tracks);
            let Some(t) = tracks.get_mut(&partition) else {
                return Ok(());
            };
            t.in_flight.remove(&offset);
            let to = t.in_flight.first().copied().unwrap_or(t.next);
            if to <= t.committed {
                return Ok(());
            }
            t.committed = to;
            to
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(to))
            .map_err(|e| from_kafka("ack", e))?;
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| from_kafka("ack", e))
    }
}

fn attempt_of(m: &impl Message) -> u32 {
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == ATTEMPT_HEADER)
                .and_then(|h| h.value)
        })
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn run_group(shared: Arc<GroupShared>, tx: &mpsc::Sender<Job>, inner: &Weak<Inner>) {
    while !tx.is_closed() {
        let job = match shared.consumer.poll(POLL) {
            None => continue,
            Some(Err(e)) => {
                tracing::debug!(error = %e, topic = %shared.topic, "Kafka group consumer error");
                continue;
            }
            Some(Ok(m)) => {
                let (partition, offset) = (m.partition(), m.offset());
                shared.track(partition, offset);
                if m.key() != Some(shared.key.as_bytes()) {
                    // Another logical topic sharing the Kafka topic: not ours to deliver.
                    if let Err(e) = shared.settle(partition, offset) {
                        tracing::debug!(error = %e, "cannot commit a skipped record");
                    }
                    continue;
                }
                let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
                let acker = KafkaAcker {
                    shared: Arc::downgrade(&shared),
                    inner: inner.clone(),
                    topic: shared.key.clone(),
                    partition,
                    offset,
                    attempt: attempt_of(&m),
                    payload: payload.clone(),
                };
                Job::new(payload, acker.attempt, Box::new(acker))
            }
        };
        // Blocks while the local subscribers are busy (bounded prefetch); fails once they are
        // all gone, and the unsent job (unsettled, uncommitted) is redelivered to the group.
        if tx.blocking_send(job).is_err() {
            break;
        }
    }
}

struct KafkaAcker {
    /// Weak: the consumer closes (leaving the group) on its thread, not in an acker.
    shared: Weak<GroupShared>,
    inner: Weak<Inner>,
    topic: String,
    partition: i32,
    offset: i64,
    attempt: u32,
    payload: Bytes,
}

impl KafkaAcker {
    fn settle(&self) -> Result<()> {
        match self.shared.upgrade() {
            Some(s) => s.settle(self.partition, self.offset),
            // The member left the group; the uncommitted job goes to the next member.
            None => Ok(()),
        }
    }
}

impl JobAcker for KafkaAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.settle() })
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let Some(inner) = self.inner.upgrade() else {
                return Ok(());
            };
            inner
                .publish(
                    &self.topic,
                    &self.payload,
                    Some(self.attempt.saturating_add(1)),
                )
                .await?;
            self.settle()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The fan-out consumer has no group: librdkafka must accept incremental assignments (a
    /// local operation; nothing is sent until it fetches).
    #[test]
    fn the_group_less_fan_out_consumer_takes_incremental_assignments() {
        let consumer: BaseConsumer<HubContext> = KafkaConfig::new("127.0.0.1:1")
            .fanout_consumer()
            .create_with_context(HubContext::default())
            .unwrap();
        consumer
            .incremental_assign(&one_partition("t", 0, Some(5)).unwrap())
            .unwrap();
        consumer
            .incremental_assign(&one_partition("u", 1, Some(0)).unwrap())
            .unwrap();
        assert_eq!(consumer.assignment().unwrap().count(), 2);
        consumer
            .incremental_unassign(&one_partition("t", 0, None).unwrap())
            .unwrap();
        assert_eq!(consumer.assignment().unwrap().count(), 1);
    }
}

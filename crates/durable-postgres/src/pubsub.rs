//! [`PostgresPubSub`]: one LISTEN connection per pubsub multiplexing every topic, and work
//! queues on a table with `FOR UPDATE SKIP LOCKED`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    frame, AnnounceDomain, Delivery, ErrorKind, GroupSubscription, Job, JobAcker, PubSub,
    PubSubCapabilities, Result, Subscription,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::postgres::PgListener;
use sqlx::Row;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::config::{Postgres, Wake};
use crate::error::{check, err, from_sqlx, BACKEND};
use crate::exec::{QueryExt, ScalarExt};
use crate::notify::{self, Notice};

/// PubSub on PostgreSQL `LISTEN`/`NOTIFY`, with work queues in a table.
///
/// - **Fan-out.** One dedicated LISTEN connection (sqlx [`PgListener`]) per `PostgresPubSub`
///   (shared by its clones) carries every topic; each local subscriber has a bounded buffer
///   and gets [`Delivery::Lagged`] on overflow. `subscribe` returns once the `LISTEN` is
///   active. A topic is `LISTEN`ed while it has local subscribers or consumers.
/// - **Reconnects.** When the LISTEN connection drops, the listener reconnects, re-`LISTEN`s
///   every channel and gives every subscriber `Delivery::Lagged`, so event-log observers
///   re-read the log from their cursor: nothing published during the outage is lost to them.
/// - **Work queues.** `subscribe_group` registers the group in `queue_groups`; `publish`
///   inserts one `queue_jobs` row per group of the topic and sends the wake-up in the same
///   statement. Consumers take jobs with `FOR UPDATE SKIP LOCKED`; a taken job is invisible
///   for [`visibility_timeout`](crate::PostgresConfig::visibility_timeout) and delivered
///   again after it unless acked (deleted) or nacked (visible at once).
#[derive(Clone, Debug)]
pub struct PostgresPubSub {
    hub: Arc<Hub>,
}

struct Hub {
    pg: Postgres,
    registry: Arc<Registry>,
    /// The LISTEN session; `None` with [`Wake::Poll`].
    listen: Option<Listen>,
}

struct Listen {
    commands: mpsc::UnboundedSender<Command>,
    control: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("pg", &self.pg).finish()
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local subscribers and consumers of a pubsub, by topic.
#[derive(Default)]
pub(crate) struct Registry {
    topics: Mutex<HashMap<String, Topic>>,
}

/// What the listener hands a topic's local subscribers.
#[derive(Clone, Debug)]
enum Item {
    Delivery(Delivery),
    /// A subscriber's start marker: it drops everything before its own, which is exactly
    /// what was committed before its `LISTEN` took effect.
    Marker(u64),
}

struct Topic {
    tx: broadcast::Sender<Item>,
    consumers: usize,
    wake: Arc<Notify>,
}

enum Command {
    Listen(String, oneshot::Sender<Result<()>>),
    Unlisten(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    fn lagged_all(&self) {
        for t in lock(&self.topics).values() {
            let _ = t.tx.send(Item::Delivery(Delivery::Lagged));
            t.wake.notify_waiters();
        }
    }

    /// Hand `payload` to the local subscribers of `topic` and wake its local consumers
    /// ([`Wake::Poll`]: what this process appends or publishes is heard here at once).
    pub(crate) fn deliver(&self, topic: &str, payload: Bytes) {
        let topics = lock(&self.topics);
        if let Some(t) = topics.get(topic) {
            t.wake.notify_waiters();
            if t.tx.receiver_count() > 0 {
                let _ = t.tx.send(Item::Delivery(Delivery::Message(payload)));
            }
        }
    }
}

impl PostgresPubSub {
    pub(crate) async fn new(pg: Postgres) -> Result<Self> {
        if pg.config().wake == Wake::Poll {
            return Ok(Self {
                hub: Arc::new(Hub {
                    registry: pg.local().clone(),
                    pg,
                    listen: None,
                }),
            });
        }
        // Its own one-connection pool: the LISTEN session never takes a slot from the
        // pool that serves appends, and it is named so operators can find it.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(pg.config().acquire_timeout)
            .connect_lazy_with(
                pg.connect_options()
                    .clone()
                    .application_name(&listener_name(&pg.config().schema)),
            );
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| from_sqlx("subscribe", e))?;
        let control = format!(
            "dur_ctl_{:x}_{:x}",
            std::process::id(),
            CONTROL_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        listener
            .listen(&control)
            .await
            .map_err(|e| from_sqlx("subscribe", e))?;
        let registry = Arc::new(Registry::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(listen_loop(
            listener,
            rx,
            registry.clone(),
            pg.clone(),
            control.clone(),
        ));
        Ok(Self {
            hub: Arc::new(Hub {
                pg,
                registry,
                listen: Some(Listen {
                    commands,
                    control,
                    task,
                }),
            }),
        })
    }

    fn schema(&self) -> &str {
        &self.hub.pg.config().schema
    }

    /// Register interest in `topic` (a subscriber or consumer) and make sure its channel is
    /// listened to before returning.
    async fn attach(&self, op: &'static str, topic: &str, consumer: bool) -> Result<Attached> {
        let (rx, wake) = {
            let mut topics = lock(&self.hub.registry.topics);
            let t = topics.entry(topic.to_owned()).or_insert_with(|| Topic {
                tx: broadcast::channel(self.hub.pg.config().subscriber_capacity).0,
                consumers: 0,
                wake: Arc::new(Notify::new()),
            });
            if consumer {
                t.consumers += 1;
            }
            let rx = (!consumer).then(|| t.tx.subscribe());
            (rx, t.wake.clone())
        };
        let guard = Detach {
            hub: self.hub.clone(),
            topic: topic.to_owned(),
            consumer,
        };
        let Some(listen) = &self.hub.listen else {
            // Polling: nothing to LISTEN to, and only what is sent after this point can
            // reach the receiver.
            return Ok(Attached {
                rx,
                marker: None,
                wake,
                _guard: guard,
            });
        };
        let (ack, done) = oneshot::channel();
        let channel = notify::channel(self.schema(), topic);
        listen
            .commands
            .send(Command::Listen(channel, ack))
            .map_err(|_| err(ErrorKind::Unavailable, op, "the listener task has stopped"))?;
        // Wake the listener out of its wait so it runs the LISTEN now.
        crate::error::retry_idempotent(|| {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(&listen.control)
                .execute_on(&self.hub.pg)
        })
        .await
        .map_err(|e| from_sqlx(op, e))?;
        match tokio::time::timeout(self.hub.pg.config().acquire_timeout * 2, done).await {
            Ok(Ok(r)) => r.map_err(|e| e.with_operation(op))?,
            _ => {
                return Err(err(
                    ErrorKind::Unavailable,
                    op,
                    "the LISTEN connection did not confirm the subscription",
                ))
            }
        }
        let marker = if consumer {
            None
        } else {
            let token = CONTROL_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::error::retry_idempotent(|| {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(notify::channel(self.schema(), topic))
                    .bind(format!("{topic} s{token}"))
                    .execute_on(&self.hub.pg)
            })
            .await
            .map_err(|e| from_sqlx(op, e))?;
            Some(token)
        };
        Ok(Attached {
            rx,
            marker,
            wake,
            _guard: guard,
        })
    }
}

/// The `application_name` of a pubsub's LISTEN session on `schema` (PostgreSQL keeps its first
/// 63 bytes).
pub(crate) fn listener_name(schema: &str) -> String {
    format!("durable-listen-{schema}")
}

static CONTROL_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Attached {
    rx: Option<broadcast::Receiver<Item>>,
    marker: Option<u64>,
    wake: Arc<Notify>,
    _guard: Detach,
}

/// Drops one subscriber or consumer of a topic; the last one `UNLISTEN`s.
struct Detach {
    hub: Arc<Hub>,
    topic: String,
    consumer: bool,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let mut topics = lock(&self.hub.registry.topics);
        let Some(t) = topics.get_mut(&self.topic) else {
            return;
        };
        if self.consumer {
            t.consumers = t.consumers.saturating_sub(1);
        }
        if t.consumers == 0 && t.tx.receiver_count() == 0 {
            topics.remove(&self.topic);
            if let Some(listen) = &self.hub.listen {
                let channel = notify::channel(&self.hub.pg.config().schema, &self.topic);
                // Sent under the registry lock: a later subscribe's Listen comes after it.
                let _ = listen.commands.send(Command::Unlisten(channel));
            }
        }
    }
}

async fn listen_loop(
    mut listener: PgListener,
    mut commands: mpsc::UnboundedReceiver<Command>,
    registry: Arc<Registry>,
    pg: Postgres,
    control: String,
) {
    let mut listening: HashMap<String, usize> = HashMap::new();
    let mut failures: u32 = 0;
    loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Listen(channel, ack)) => {
                    let n = listening.entry(channel.clone()).or_insert(0);
                    let r = if *n == 0 {
                        listener
                            .listen(&channel)
                            .await
                            .map_err(|e| from_sqlx("subscribe", e))
                    } else {
                        Ok(())
                    };
                    if r.is_ok() {
                        *n += 1;
                    } else if *n == 0 {
                        listening.remove(&channel);
                    }
                    let _ = ack.send(r);
                }
                Ok(Command::Unlisten(channel)) => {
                    if let Some(n) = listening.get_mut(&channel) {
                        *n -= 1;
                        if *n == 0 {
                            listening.remove(&channel);
                            if let Err(e) = listener.unlisten(&channel).await {
                                tracing::debug!(error = %e, "UNLISTEN failed; the channel stays quiet");
                            }
                        }
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        match listener.try_recv().await {
            Ok(Some(n)) => {
                failures = 0;
                if n.channel() != control {
                    dispatch(&registry, &pg, n.payload()).await;
                }
            }
            Ok(None) => {
                // Reconnected and re-LISTENed: whatever was sent meanwhile is lost.
                tracing::warn!("LISTEN connection lost and re-established; subscribers catch up");
                registry.lagged_all();
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                registry.lagged_all();
                let backoff = Duration::from_millis(20u64 << failures.min(5));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

async fn dispatch(registry: &Registry, pg: &Postgres, payload: &str) {
    let Some((topic, notice)) = notify::decode(payload) else {
        tracing::debug!("ignoring a malformed notification");
        return;
    };
    let (tx, wake) = {
        let topics = lock(&registry.topics);
        let Some(t) = topics.get(topic) else { return };
        (t.tx.clone(), t.wake.clone())
    };
    wake.notify_waiters();
    if tx.receiver_count() == 0 {
        return;
    }
    let bytes = match notice {
        Notice::Inline(s) => Bytes::copy_from_slice(s.as_bytes()),
        Notice::Wake => return,
        Notice::Marker(token) => {
            let _ = tx.send(Item::Marker(token));
            return;
        }
        Notice::Frame {
            first,
            count,
            max,
            log,
        } => read_frame(pg, first, count, max, log).await,
        Notice::Outbox(id) => {
            let row: std::result::Result<Option<Vec<u8>>, _> =
                crate::error::retry_idempotent(|| {
                    sqlx::query_scalar("SELECT payload FROM outbox WHERE id = $1")
                        .bind(id)
                        .fetch_optional_on(pg)
                })
                .await;
            match row {
                Ok(Some(p)) => Bytes::from(p),
                _ => {
                    let _ = tx.send(Item::Delivery(Delivery::Lagged));
                    return;
                }
            }
        }
    };
    let _ = tx.send(Item::Delivery(Delivery::Message(bytes)));
}

/// The frame of a batch announced by reference: read from the log, or the range alone when
/// it cannot be read (the observer then reads the log itself).
async fn read_frame(pg: &Postgres, first: u64, count: u64, max: usize, log: &str) -> Bytes {
    let rows: std::result::Result<Vec<Vec<u8>>, _> = crate::error::retry_idempotent(|| {
        sqlx::query_scalar(
            "SELECT payload FROM log_events WHERE name = $1 AND cursor >= $2 AND cursor < $3 \
         ORDER BY cursor",
        )
        .bind(log)
        .bind(i64::try_from(first).unwrap_or(i64::MAX))
        .bind(i64::try_from(first.saturating_add(count)).unwrap_or(i64::MAX))
        .fetch_all_on(pg)
    })
    .await;
    match rows {
        Ok(rows) if rows.len() as u64 == count => {
            let payloads: Vec<Bytes> = rows.into_iter().map(Bytes::from).collect();
            frame::encode(first, &payloads, max)
        }
        _ => Bytes::from(format!("{first} {count}")),
    }
}

struct PgAcker {
    pg: Postgres,
    id: i64,
    channel: String,
    wake: String,
}

impl JobAcker for PgAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            crate::error::retry_idempotent(|| {
                sqlx::query("DELETE FROM queue_jobs WHERE id = $1")
                    .bind(self.id)
                    .execute_on(&self.pg)
            })
            .await
            .map_err(|e| from_sqlx("ack", e))?;
            Ok(())
        }
        .boxed()
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            crate::error::retry_idempotent(|| {
                sqlx::query(
                    "WITH u AS (UPDATE queue_jobs SET visible_at = now() WHERE id = $1) \
                 SELECT pg_notify($2, $3)",
                )
                .bind(self.id)
                .bind(&self.channel)
                .bind(&self.wake)
                .execute_on(&self.pg)
            })
            .await
            .map_err(|e| from_sqlx("nack", e))?;
            Ok(())
        }
        .boxed()
    }
}

struct Consumer {
    pg: Postgres,
    topic: String,
    group: String,
    channel: String,
    attached: Attached,
    backoff: bool,
}

impl Consumer {
    async fn fetch(&self) -> Result<Option<Job>> {
        let visibility =
            i64::try_from(self.pg.config().visibility_timeout.as_millis()).unwrap_or(i64::MAX);
        // Not run twice: a second run would take another job and leave the first invisible
        // (and counted as attempted) until its visibility timeout.
        let row = sqlx::query(
            "UPDATE queue_jobs SET attempt = attempt + 1, \
                visible_at = now() + $3 * interval '1 millisecond' \
             WHERE id = (SELECT id FROM queue_jobs \
                          WHERE topic = $1 AND grp = $2 AND visible_at <= now() \
                          ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, payload, attempt",
        )
        .bind(&self.topic)
        .bind(&self.group)
        .bind(visibility)
        .fetch_optional_on(&self.pg)
        .await
        .map_err(|e| from_sqlx("subscribe_group", e))?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row
            .try_get(0)
            .map_err(|e| from_sqlx("subscribe_group", e))?;
        let payload: Vec<u8> = row
            .try_get(1)
            .map_err(|e| from_sqlx("subscribe_group", e))?;
        let attempt: i32 = row
            .try_get(2)
            .map_err(|e| from_sqlx("subscribe_group", e))?;
        let acker = PgAcker {
            pg: self.pg.clone(),
            id,
            channel: self.channel.clone(),
            wake: format!("{} w", self.topic),
        };
        Ok(Some(Job::new(
            Bytes::from(payload),
            u32::try_from(attempt).unwrap_or(1),
            Box::new(acker),
        )))
    }

    async fn next(&mut self) -> Result<Job> {
        let poll = self.pg.config().group_poll;
        if std::mem::take(&mut self.backoff) {
            tokio::time::sleep(poll).await;
        }
        loop {
            let wake = self.attached.wake.clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.fetch().await {
                Ok(Some(job)) => return Ok(job),
                Ok(None) => {}
                Err(e) => {
                    self.backoff = true;
                    return Err(e);
                }
            }
            let _ = tokio::time::timeout(poll, notified).await;
        }
    }
}

#[async_trait]
impl PubSub for PostgresPubSub {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> PubSubCapabilities {
        // Polling: messages published by other processes are not delivered.
        PubSubCapabilities::default()
            .with_shared(self.hub.listen.is_some())
            .with_groups(true)
            .with_durable_groups(true)
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        check("publish", "topic", topic)?;
        let channel = notify::channel(self.schema(), topic);
        let (sql, tail) = match notify::message(topic, &payload) {
            Some(text) => (
                "WITH j AS (INSERT INTO queue_jobs (topic, grp, payload) \
                     SELECT $1, grp, $2 FROM queue_groups WHERE topic = $1) \
                 SELECT pg_notify($3, $4)",
                text,
            ),
            None => (
                "WITH j AS (INSERT INTO queue_jobs (topic, grp, payload) \
                     SELECT $1, grp, $2 FROM queue_groups WHERE topic = $1), \
                 o AS (INSERT INTO outbox (payload) VALUES ($2) RETURNING id) \
                 SELECT pg_notify($3, $4 || id) FROM o",
                format!("{topic} p"),
            ),
        };
        // Not run twice: a second run would deliver the message (and queue its jobs) again.
        sqlx::query(sql)
            .bind(topic)
            .bind(payload.as_ref())
            .bind(&channel)
            .bind(&tail)
            .execute_on(&self.hub.pg)
            .await
            .map_err(|e| from_sqlx("publish", e))?;
        if self.hub.listen.is_none() {
            // Polling: no notification comes back, so this process's subscribers hear it
            // here (the NOTIFY above still reaches listening processes).
            self.hub.registry.deliver(topic, payload);
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        check("subscribe", "topic", topic)?;
        let attached = self.attach("subscribe", topic, false).await?;
        Ok(Subscription::new(futures::stream::unfold(
            attached,
            |mut a| async move {
                loop {
                    let rx = a.rx.as_mut()?;
                    let item = match rx.recv().await {
                        Ok(Item::Marker(token)) => {
                            if a.marker == Some(token) {
                                a.marker = None;
                            }
                            continue;
                        }
                        Ok(Item::Delivery(d)) => d,
                        Err(broadcast::error::RecvError::Lagged(_)) => Delivery::Lagged,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    match (a.marker, item) {
                        // Before the marker: sent before this subscription began.
                        (Some(_), Delivery::Message(_)) => continue,
                        // Lost messages may include the marker itself: start now.
                        (Some(_), Delivery::Lagged) => {
                            a.marker = None;
                            return Some((Delivery::Lagged, a));
                        }
                        (None, d) => return Some((d, a)),
                    }
                }
            },
        )))
    }

    async fn subscribe_group(&self, topic: &str, group: &str) -> Result<GroupSubscription> {
        check("subscribe_group", "topic", topic)?;
        check("subscribe_group", "group", group)?;
        crate::error::retry_idempotent(|| {
            sqlx::query(
                "INSERT INTO queue_groups (topic, grp) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(topic)
            .bind(group)
            .execute_on(&self.hub.pg)
        })
        .await
        .map_err(|e| from_sqlx("subscribe_group", e))?;
        let attached = self.attach("subscribe_group", topic, true).await?;
        let consumer = Consumer {
            pg: self.hub.pg.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            channel: notify::channel(self.schema(), topic),
            attached,
            backoff: false,
        };
        Ok(GroupSubscription::new(futures::stream::unfold(
            consumer,
            |mut c| async move {
                let job = c.next().await;
                Some((job, c))
            },
        )))
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        Some(notify::domain(&self.hub.pg))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // The receiver goes before the guard counts receivers.
        drop(self.rx.take());
    }
}

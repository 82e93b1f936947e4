//! The event log: append events to a run, observe a run from any offset.
//!
//! One implementation serves every backend. The [`ServerCache`] run log is the source of truth;
//! [`PubSub`] only wakes observers (and, as an optimisation, carries the appended events so a
//! caught-up observer needs no extra read).
//!
//! **Observe hand-off.** An observer subscribes to the run's topic *before* its catch-up read, so
//! every append that its read misses is followed by a wake-up it receives. Wake-ups carry the
//! cursor range they announce; the observer delivers strictly by cursor, skips what it has, and
//! reads the log for any gap (a lagged subscription, a wake-up without payload, a reconnect).
//! Memory per observer is bounded by one read batch plus the subscription's bounded buffer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::cache::{AppendOptions, Cursor, ServerCache};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{put_dec, Event, EventKind, NewEvent};
use crate::id::RunId;
use crate::pubsub::{Delivery, PubSub, Subscription};
use crate::store::{now_ms, Epoch, RunStatus, WorkflowStore};

/// Settings of an [`EventLog`]. The defaults suit production; tests shorten the durations.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogConfig {
    /// Prefix of every key and topic (default `"durable"`).
    pub namespace: String,
    /// Maximum events per run; further appends fail with `LimitExceeded` (default 1,000,000).
    pub max_events: u64,
    /// How long a finished run's log and record are kept (default 24 h).
    pub retention: Duration,
    /// How long after retention an observe still answers `Gone` rather than `NotFound`
    /// (default 24 h). Nothing of the run is kept after `retention + tombstone`.
    pub tombstone: Duration,
    /// Events read per round trip while catching up (default 512). Bounds observer memory.
    pub read_batch: usize,
    /// Wake-ups carry the appended events when they fit in this many bytes (default 64 KiB);
    /// bigger batches send only the cursor range and observers read the log.
    pub max_wake_bytes: usize,
    /// An observer that hears nothing for this long re-reads the log and checks the producer's
    /// lease (default 5 s). This is a safety net: delivery itself is pushed.
    pub idle_check: Duration,
    /// A running run whose lease expired this long ago is reported as `ProducerLost`
    /// (default 30 s).
    pub producer_grace: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            namespace: "durable".to_owned(),
            max_events: 1_000_000,
            retention: Duration::from_secs(24 * 3600),
            tombstone: Duration::from_secs(24 * 3600),
            read_batch: 512,
            max_wake_bytes: 64 * 1024,
            idle_check: Duration::from_secs(5),
            producer_grace: Duration::from_secs(30),
        }
    }
}

/// What an observer does when it reaches a `suspended` event that is the last of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnSuspend {
    /// End the stream after the `suspended` event (default), so request/response clients close.
    #[default]
    End,
    /// Keep waiting for the run to be resumed.
    Wait,
}

/// Options of [`EventLog::observe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObserveOptions {
    /// The first cursor to deliver (0 = from the start).
    pub offset: Cursor,
    /// Behaviour at a trailing `suspended` event.
    pub on_suspend: OnSuspend,
}

impl ObserveOptions {
    /// Observe from `offset`.
    pub fn from(offset: Cursor) -> Self {
        Self {
            offset,
            ..Self::default()
        }
    }

    /// Set the behaviour at a trailing `suspended` event.
    #[must_use]
    pub fn on_suspend(mut self, on_suspend: OnSuspend) -> Self {
        self.on_suspend = on_suspend;
        self
    }
}

/// The events of one run from an offset: replay, then live, then the end of the run.
///
/// Dropping it only detaches this observer.
pub struct EventStream {
    inner: BoxStream<'static, Result<Event>>,
    buffered: Arc<AtomicUsize>,
}

impl EventStream {
    /// How many events this observer holds in memory right now (read-ahead and announced
    /// events not yet yielded). Bounded by [`LogConfig::read_batch`] plus one wake-up's events.
    pub fn buffered_events(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("buffered", &self.buffered_events())
            .finish()
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Appends and observes run events over any [`ServerCache`] + [`PubSub`] pair.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Option<Arc<dyn ServerCache>>,
    pubsub: Arc<dyn PubSub>,
    store: Option<Arc<dyn WorkflowStore>>,
    config: LogConfig,
    /// Cursor counters of live-only runs produced by this process.
    live: Mutex<HashMap<RunId, Cursor>>,
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("cache", &self.inner.cache.as_ref().map(|c| c.backend()))
            .field("pubsub", &self.inner.pubsub.backend())
            .field("store", &self.inner.store.as_ref().map(|s| s.backend()))
            .field("config", &self.inner.config)
            .finish()
    }
}

impl EventLog {
    /// A durable log: events stored in `cache`, observers woken over `pubsub`.
    pub fn new(cache: Arc<dyn ServerCache>, pubsub: Arc<dyn PubSub>) -> Self {
        Self::build(Some(cache), pubsub, None, LogConfig::default())
    }

    /// A live-only log (`no_cache`): events are only published. Observers see events produced
    /// after they attach; nothing is replayable and nothing survives the process.
    pub fn live_only(pubsub: Arc<dyn PubSub>) -> Self {
        Self::build(None, pubsub, None, LogConfig::default())
    }

    fn build(
        cache: Option<Arc<dyn ServerCache>>,
        pubsub: Arc<dyn PubSub>,
        store: Option<Arc<dyn WorkflowStore>>,
        config: LogConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                pubsub,
                store,
                config,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Use `store`'s run records to detect a producer that died (lease expired) and to expire the
    /// record with the log.
    #[must_use]
    pub fn with_store(self, store: Arc<dyn WorkflowStore>) -> Self {
        let i = &self.inner;
        Self::build(
            i.cache.clone(),
            i.pubsub.clone(),
            Some(store),
            i.config.clone(),
        )
    }

    /// Replace the configuration.
    #[must_use]
    pub fn with_config(self, config: LogConfig) -> Self {
        let i = &self.inner;
        Self::build(i.cache.clone(), i.pubsub.clone(), i.store.clone(), config)
    }

    /// The configuration.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Whether events are stored (false for [`EventLog::live_only`]).
    pub fn is_durable(&self) -> bool {
        self.inner.cache.is_some()
    }

    fn name(&self, run_id: &RunId, sep: char, suffix: &str) -> String {
        let ns = &self.inner.config.namespace;
        let mut s = String::with_capacity(ns.len() + run_id.as_str().len() + suffix.len() + 6);
        s.push_str(ns);
        s.push(sep);
        s.push_str("run");
        s.push(sep);
        s.push_str(run_id.as_str());
        s.push_str(suffix);
        s
    }

    /// The prefix of every cache key of `run_id` (`<ns>/run/<id>/`).
    pub fn run_prefix(&self, run_id: &RunId) -> String {
        self.name(run_id, '/', "/")
    }

    /// The cache log holding `run_id`'s events (`<ns>/run/<id>/events`).
    pub fn log_name(&self, run_id: &RunId) -> String {
        self.name(run_id, '/', "/events")
    }

    fn tombstone_name(&self, run_id: &RunId) -> String {
        self.name(run_id, '/', "/gone")
    }

    /// The PubSub topic announcing `run_id`'s appends (`<ns>.run.<id>`).
    pub fn topic(&self, run_id: &RunId) -> String {
        self.name(run_id, '.', "")
    }

    /// Create the run's log (idempotent). With `fence`, raise the log's fence to that epoch:
    /// from then on appends with an older epoch are rejected with `Fenced`.
    ///
    /// # Errors
    /// The backend's error; `Fenced` if the log has already seen a newer epoch.
    pub async fn create(&self, run_id: &RunId, fence: Option<Epoch>) -> Result<Cursor> {
        match &self.inner.cache {
            Some(cache) => {
                let opts = AppendOptions {
                    max_len: None,
                    fence,
                };
                cache.append_many(&self.log_name(run_id), &[], opts).await
            }
            None => {
                let mut live = self.lock_live();
                Ok(*live.entry(run_id.clone()).or_insert(0))
            }
        }
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Cursor>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Append `events` to the run in one backend round trip, then wake observers. Returns the
    /// cursor of the first event.
    ///
    /// The append is durable when this returns. The wake-up is best effort: if it cannot be
    /// published, observers still find the events at their next read (at the latest after
    /// [`LogConfig::idle_check`]).
    ///
    /// # Behavior
    /// - Concurrent appenders get contiguous cursors, each once
    ///   (`log_cursors_are_contiguous_under_concurrent_appenders`).
    /// - An append with an epoch older than the log's fence is rejected
    ///   (`fenced_writer_cannot_append`).
    /// - Past [`LogConfig::max_events`] the append fails and stores nothing
    ///   (`max_events_per_run_is_enforced`).
    ///
    /// # Errors
    /// `Fenced` for a stale `fence`, `LimitExceeded` past [`LogConfig::max_events`], or the
    /// backend's error. Nothing is stored on error.
    pub async fn append(
        &self,
        run_id: &RunId,
        events: &[NewEvent],
        fence: Option<Epoch>,
    ) -> Result<Cursor> {
        let at = now_ms();
        let stored: Vec<Bytes> = events.iter().map(|e| e.encode_stored(at)).collect();
        let first = match &self.inner.cache {
            Some(cache) => {
                let opts = AppendOptions {
                    max_len: Some(self.inner.config.max_events),
                    fence,
                };
                cache
                    .append_many(&self.log_name(run_id), &stored, opts)
                    .await?
            }
            None => {
                let mut live = self.lock_live();
                let next = live.entry(run_id.clone()).or_insert(0);
                let first = *next;
                *next += stored.len() as u64;
                if events.iter().any(|e| e.kind.is_terminal()) {
                    live.remove(run_id);
                }
                first
            }
        };
        if !stored.is_empty() {
            let frame = wake_frame(first, &stored, self.inner.config.max_wake_bytes);
            if let Err(e) = self.inner.pubsub.publish(&self.topic(run_id), frame).await {
                tracing::warn!(run_id = %run_id, error = %e, "wake-up not published; observers catch up on their next read");
            }
        }
        Ok(first)
    }

    /// A batching writer for one run: events sent while an append is in flight go out together
    /// in the next one, so a fast producer needs far fewer than one round trip per event.
    /// The writer's buffer is bounded (`capacity` events).
    ///
    /// # Behavior
    /// - Order is preserved; a failed append surfaces on the next call
    ///   (`writer_batches_and_preserves_order`).
    pub fn writer(&self, run_id: RunId, fence: Option<Epoch>, capacity: usize) -> RunWriter {
        RunWriter::spawn(self.clone(), run_id, fence, capacity.max(1))
    }

    /// The run's length (next cursor), or `None` if it has no log.
    ///
    /// # Errors
    /// The backend's error; `Unsupported` for a live-only log.
    pub async fn len(&self, run_id: &RunId) -> Result<Option<Cursor>> {
        self.cache("len")?.len(&self.log_name(run_id)).await
    }

    /// Read up to `limit` stored events from `from`.
    ///
    /// # Errors
    /// As [`ServerCache::read`]; `Unsupported` for a live-only log.
    pub async fn read(&self, run_id: &RunId, from: Cursor, limit: usize) -> Result<Vec<Event>> {
        let slice = self
            .cache("read")?
            .read(&self.log_name(run_id), from, limit)
            .await?;
        decode_slice(run_id, slice.first, &slice.entries)
    }

    fn cache(&self, op: &'static str) -> Result<&Arc<dyn ServerCache>> {
        self.inner.cache.as_ref().ok_or_else(|| {
            Error::unsupported("this event log is live-only (no cache): nothing is stored")
                .with_operation(op)
        })
    }

    /// Start the run's retention: its log and record expire after [`LogConfig::retention`], and a
    /// tombstone answers `Gone` for [`LogConfig::tombstone`] longer. Call once the run is terminal.
    ///
    /// # Behavior
    /// - Afterwards nothing of the run is left: log, record, tombstone, every key
    ///   (`retention_removes_log_and_record`).
    ///
    /// # Errors
    /// The backend's error.
    pub async fn retire(&self, run_id: &RunId) -> Result<()> {
        let cfg = &self.inner.config;
        if let Some(cache) = &self.inner.cache {
            cache.expire(&self.log_name(run_id), cfg.retention).await?;
            cache
                .set(
                    &self.tombstone_name(run_id),
                    Bytes::from_static(b"1"),
                    Some(cfg.retention + cfg.tombstone),
                )
                .await?;
        } else {
            self.lock_live().remove(run_id);
        }
        if let Some(store) = &self.inner.store {
            store.expire_run(run_id, cfg.retention).await?;
        }
        Ok(())
    }

    /// Delete everything stored for the run now (log, tombstone, record).
    ///
    /// # Errors
    /// The backend's error.
    pub async fn delete(&self, run_id: &RunId) -> Result<()> {
        if let Some(cache) = &self.inner.cache {
            cache.delete(&self.log_name(run_id)).await?;
            cache.delete(&self.tombstone_name(run_id)).await?;
        }
        if let Some(store) = &self.inner.store {
            store.delete_run(run_id).await?;
        }
        self.lock_live().remove(run_id);
        Ok(())
    }

    /// Observe the run from `options.offset`: every stored event from there, then live events,
    /// until the terminal event (`finish`, `error`, `abort`).
    ///
    /// Checks happen before the stream is returned:
    /// - unknown run: `NotFound`, at once;
    /// - retention elapsed: `Gone`;
    /// - offset beyond the next cursor: `OffsetAhead`.
    ///
    /// Dropping the stream only detaches this observer; it never deletes anything.
    ///
    /// # Behavior
    /// - `observe(k)` yields exactly the events from cursor `k`, for every `k`, on finished runs
    ///   and on live runs racing their producer (`observe_from_every_offset_is_exact`,
    ///   `observe_racing_live_producer_is_exact`, `observe_from_zero_replays_everything_then_ends`).
    /// - From the end of a finished run it ends at once; from the end of a live run it waits for
    ///   the next event (`observe_from_end_of_finished_run_ends_at_once`,
    ///   `observe_from_end_of_live_run_waits_for_next_event`).
    /// - A late observer gets the stored prefix, then live events
    ///   (`late_observer_gets_replay_then_live`).
    /// - Live events are pushed, not polled (`live_event_is_pushed_without_polling`); a slow
    ///   observer gets every event with bounded memory
    ///   (`slow_observer_gets_every_event_with_bounded_memory`).
    /// - `finish`, `error` and `abort` end every observer (`terminal_event_ends_every_observer`).
    /// - A trailing `suspended` ends the stream unless [`OnSuspend::Wait`]
    ///   (`suspended_run_ends_observe_by_default`, `suspended_run_waits_for_resume_when_asked`).
    /// - Unknown run: `NotFound`; expired: `Gone`; past the end: `OffsetAhead`
    ///   (`unknown_run_is_not_found`, `expired_run_is_gone`, `offset_ahead_is_rejected`).
    /// - A running run whose lease expired is reported as `ProducerLost`
    ///   (`dead_producer_is_reported`).
    /// - Dropping one observer never affects another (`cleanup_of_one_observer_keeps_others`).
    ///
    /// # Errors
    /// As above, or the backend's error.
    pub async fn observe(&self, run_id: &RunId, options: ObserveOptions) -> Result<EventStream> {
        let known_end = match &self.inner.cache {
            Some(cache) => match cache.len(&self.log_name(run_id)).await? {
                Some(len) => len,
                None => {
                    return Err(self.missing_run_error(cache.as_ref(), run_id).await?);
                }
            },
            None => match self.lock_live().get(run_id) {
                Some(next) => *next,
                None => {
                    return Err(Error::not_found(format!(
                        "run {run_id} is not live in this process (live-only log)"
                    ))
                    .with_operation("observe"))
                }
            },
        };
        if options.offset > known_end && self.is_durable() {
            return Err(Error::new(
                ErrorKind::OffsetAhead,
                format!(
                    "offset {} is beyond the next cursor {known_end} of run {run_id}",
                    options.offset
                ),
            )
            .with_operation("observe"));
        }
        // Subscribe before the catch-up read: an append the read misses wakes us.
        let sub = self.inner.pubsub.subscribe(&self.topic(run_id)).await?;
        let durable = self.is_durable();
        // Re-read the event before the offset too: if it ended the run (or suspended it), the
        // observer ends at once instead of waiting for an event that never comes.
        let peek = (durable && options.offset > 0).then(|| options.offset - 1);
        let buffered = Arc::new(AtomicUsize::new(0));
        let observer = Observer {
            log: self.clone(),
            log_name: self.log_name(run_id),
            run_id: run_id.clone(),
            sub,
            next: match peek {
                Some(p) => p,
                None if durable => options.offset,
                None => options.offset.max(known_end),
            },
            peek,
            need_read: durable,
            buf: VecDeque::new(),
            buffered: buffered.clone(),
            done: false,
            on_suspend: options.on_suspend,
        };
        let inner = futures::stream::unfold(observer, |mut o| async move {
            let item = o.next_event().await;
            o.buffered.store(o.buf.len(), Ordering::Relaxed);
            item.map(|r| (r, o))
        })
        .boxed();
        Ok(EventStream { inner, buffered })
    }

    async fn missing_run_error(&self, cache: &dyn ServerCache, run_id: &RunId) -> Result<Error> {
        Ok(
            if cache.get(&self.tombstone_name(run_id)).await?.is_some() {
                Error::new(
                    ErrorKind::Gone,
                    format!("run {run_id} finished and its retention elapsed"),
                )
            } else {
                Error::not_found(format!("run {run_id} does not exist"))
            }
            .with_operation("observe"),
        )
    }
}

struct Observer {
    log: EventLog,
    log_name: String,
    run_id: RunId,
    sub: Subscription,
    /// The next cursor to deliver.
    next: Cursor,
    /// The cursor before the requested offset, re-read only to see whether it ended the run.
    peek: Option<Cursor>,
    /// The log may hold events at `next` that are neither buffered nor announced.
    need_read: bool,
    buf: VecDeque<Event>,
    buffered: Arc<AtomicUsize>,
    done: bool,
    on_suspend: OnSuspend,
}

impl Observer {
    async fn next_event(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                if ev.cursor < self.next {
                    continue;
                }
                if ev.cursor > self.next {
                    if self.log.is_durable() {
                        // A hole between announced events: the log fills it.
                        self.buf.clear();
                        self.need_read = true;
                        continue;
                    }
                    // Live-only: nothing to fill the hole from; go on from what arrived.
                    self.next = ev.cursor;
                }
                self.next += 1;
                let hidden = self.peek.take_if(|p| *p == ev.cursor).is_some();
                if ev.kind.is_terminal() {
                    self.done = true;
                    self.buf.clear();
                } else if ev.kind == EventKind::Suspended
                    && self.on_suspend == OnSuspend::End
                    && self.buf.is_empty()
                {
                    match is_last(&self.log, &self.log_name, ev.cursor).await {
                        Ok(true) => self.done = true,
                        Ok(false) => self.need_read = true,
                        Err(e) => return Some(Err(self.fail(e))),
                    }
                }
                if hidden {
                    continue;
                }
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            if self.need_read {
                if let Err(e) = self.read_batch().await {
                    return Some(Err(self.fail(e)));
                }
                continue;
            }
            let idle = self.log.inner.config.idle_check;
            match tokio::time::timeout(idle, self.sub.next()).await {
                Ok(Some(Delivery::Message(frame))) => self.on_frame(&frame),
                Ok(Some(Delivery::Lagged)) => self.need_read = self.log.is_durable(),
                Ok(None) => {
                    let e = Error::new(ErrorKind::Unavailable, "subscription closed by backend")
                        .with_operation("observe");
                    return Some(Err(self.fail(e)));
                }
                Err(_) => {
                    if let Err(e) = self.on_idle().await {
                        return Some(Err(self.fail(e)));
                    }
                }
            }
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.done = true;
        self.buf.clear();
        e
    }

    async fn read_batch(&mut self) -> Result<()> {
        let cache = self.log.cache("observe")?;
        let limit = self.log.inner.config.read_batch;
        let slice = match cache.read(&self.log_name, self.next, limit).await {
            Ok(s) => s,
            // The log existed when this observer attached: its retention elapsed meanwhile.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::Gone,
                    format!(
                        "run {} expired while being observed, at cursor {}",
                        self.run_id, self.next
                    ),
                )
                .with_operation("observe"));
            }
            Err(e) => return Err(e),
        };
        self.need_read = slice.first + (slice.entries.len() as u64) < slice.next;
        self.buf
            .extend(decode_slice(&self.run_id, slice.first, &slice.entries)?);
        Ok(())
    }

    fn on_frame(&mut self, frame: &Bytes) {
        let Some((first, count, events)) = parse_frame(frame) else {
            self.need_read = self.log.is_durable();
            return;
        };
        if first + count <= self.next {
            return;
        }
        if first > self.next || events.is_none() {
            self.need_read = self.log.is_durable();
            if self.log.is_durable() {
                return;
            }
        }
        let Some(lines) = events else { return };
        let mut cursor = first;
        for line in lines {
            if cursor >= first + count {
                // More lines than announced: a malformed frame; the log is authoritative.
                self.need_read = self.log.is_durable();
                return;
            }
            if cursor >= self.next {
                match Event::decode_stored(&self.run_id, cursor, &line) {
                    Ok(ev) => self.buf.push_back(ev),
                    Err(_) => {
                        self.need_read = self.log.is_durable();
                        return;
                    }
                }
            }
            cursor += 1;
        }
        if cursor < first + count {
            self.need_read = self.log.is_durable();
        }
        if !self.log.is_durable() {
            // Live-only: there is no log to fill holes from; deliver what was announced.
            if let Some(front) = self.buf.front() {
                self.next = self.next.max(front.cursor);
            }
        }
    }

    /// Nothing heard for `idle_check`: re-read the log, and if the producer is gone, say so.
    async fn on_idle(&mut self) -> Result<()> {
        if !self.log.is_durable() {
            return Ok(());
        }
        self.read_batch().await?;
        if !self.buf.is_empty() {
            return Ok(());
        }
        let Some(store) = &self.log.inner.store else {
            return Ok(());
        };
        let Some(record) = store.get_run(&self.run_id).await? else {
            return Ok(());
        };
        let now = now_ms();
        let grace = crate::store::ttl_ms(self.log.inner.config.producer_grace);
        let lost = match record.status {
            s if s.is_terminal() => true,
            RunStatus::Running => {
                !record.lease_live(now)
                    && record
                        .lease_expires_at
                        .is_none_or(|t| now > t.saturating_add(grace))
            }
            _ => false,
        };
        if lost {
            return Err(Error::new(
                ErrorKind::ProducerLost,
                format!(
                    "run {} is {} but its producer stopped without a terminal event",
                    self.run_id,
                    record.status.as_str()
                ),
            )
            .with_operation("observe"));
        }
        Ok(())
    }
}

async fn is_last(log: &EventLog, log_name: &str, cursor: Cursor) -> Result<bool> {
    match &log.inner.cache {
        Some(cache) => Ok(cache.len(log_name).await?.unwrap_or(0) <= cursor + 1),
        None => Ok(true),
    }
}

fn decode_slice(run_id: &RunId, first: Cursor, entries: &[Bytes]) -> Result<Vec<Event>> {
    entries
        .iter()
        .zip(first..)
        .map(|(e, c)| Event::decode_stored(run_id, c, e))
        .collect()
}

/// `"<first> <count>\n"` followed by the stored events, one per line, when they fit.
fn wake_frame(first: Cursor, stored: &[Bytes], max_bytes: usize) -> Bytes {
    let body: usize = stored.iter().map(|s| s.len() + 1).sum();
    let with_events = body <= max_bytes;
    let mut buf = BytesMut::with_capacity(42 + if with_events { body } else { 0 });
    put_dec(&mut buf, first);
    buf.put_u8(b' ');
    put_dec(&mut buf, stored.len() as u64);
    if with_events {
        for s in stored {
            buf.put_u8(b'\n');
            buf.put_slice(s);
        }
    }
    buf.freeze()
}

/// Split a wake-up frame into `(first cursor, count, events)`; `events` is `None` when the frame
/// carries only the range. The events are slices of the frame (no copy).
fn parse_frame(frame: &Bytes) -> Option<(Cursor, u64, Option<impl Iterator<Item = Bytes> + '_>)> {
    let header_end = frame
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(frame.len());
    let header = std::str::from_utf8(&frame[..header_end]).ok()?;
    let (first, count) = header.split_once(' ')?;
    let (first, count): (Cursor, u64) = (first.parse().ok()?, count.parse().ok()?);
    if header_end == frame.len() {
        return Some((first, count, None));
    }
    let lines = frame[header_end + 1..]
        .split(|b| *b == b'\n')
        .map(|l| frame.slice_ref(l));
    Some((first, count, Some(lines)))
}

/// A batching, bounded writer for one run (see [`EventLog::writer`]).
///
/// Events are appended in the order sent. After a failed append the writer stops: every later
/// `send` and `flush` returns that error, so nothing is dropped silently.
pub struct RunWriter {
    tx: mpsc::Sender<WriterCmd>,
    failed: Arc<Mutex<Option<(ErrorKind, String)>>>,
    run_id: RunId,
}

impl fmt::Debug for RunWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunWriter")
            .field("run_id", &self.run_id)
            .finish()
    }
}

enum WriterCmd {
    Event(NewEvent),
    Batch(Vec<NewEvent>),
    Flush(oneshot::Sender<Result<Cursor>>),
}

const WRITER_MAX_BATCH: usize = 1024;

impl RunWriter {
    fn spawn(log: EventLog, run_id: RunId, fence: Option<Epoch>, capacity: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<WriterCmd>(capacity);
        let failed: Arc<Mutex<Option<(ErrorKind, String)>>> = Arc::default();
        let task_failed = failed.clone();
        let task_run = run_id.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            let mut flushes = Vec::new();
            let mut next: Option<Cursor> = None;
            while let Some(cmd) = rx.recv().await {
                let mut cmd = Some(cmd);
                while let Some(c) = cmd.take() {
                    match c {
                        WriterCmd::Event(e) => batch.push(e),
                        WriterCmd::Batch(mut v) => batch.append(&mut v),
                        WriterCmd::Flush(reply) => flushes.push(reply),
                    }
                    if batch.len() < WRITER_MAX_BATCH {
                        cmd = rx.try_recv().ok();
                    }
                }
                let err = lock(&task_failed).clone();
                let result = match err {
                    Some((kind, msg)) => Err(Error::new(kind, msg)),
                    None if batch.is_empty() => match next {
                        Some(n) => Ok(n),
                        None => log.len(&task_run).await.map(Option::unwrap_or_default),
                    },
                    None => match log.append(&task_run, &batch, fence).await {
                        Ok(first) => {
                            let n = first + batch.len() as u64;
                            next = Some(n);
                            Ok(n)
                        }
                        Err(e) => {
                            *lock(&task_failed) = Some((e.kind(), e.message().to_owned()));
                            Err(e)
                        }
                    },
                };
                batch.clear();
                for reply in flushes.drain(..) {
                    let r = match &result {
                        Ok(n) => Ok(*n),
                        Err(e) => Err(Error::new(e.kind(), e.message().to_owned())),
                    };
                    let _ = reply.send(r);
                }
            }
        });
        Self { tx, failed, run_id }
    }

    fn check(&self) -> Result<()> {
        match &*lock(&self.failed) {
            Some((kind, msg)) => Err(Error::new(*kind, msg.clone()).with_operation("append")),
            None => Ok(()),
        }
    }

    /// Queue an event (waits while the bounded buffer is full).
    ///
    /// # Errors
    /// The error of an earlier failed append.
    pub async fn send(&self, event: NewEvent) -> Result<()> {
        self.check()?;
        self.tx
            .send(WriterCmd::Event(event))
            .await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "run writer task stopped"))
    }

    /// Queue several events at once (one slot of the bounded buffer; keep batches small, a few
    /// hundred events at most).
    ///
    /// # Errors
    /// The error of an earlier failed append.
    pub async fn send_batch(&self, events: Vec<NewEvent>) -> Result<()> {
        self.check()?;
        if events.is_empty() {
            return Ok(());
        }
        self.tx
            .send(WriterCmd::Batch(events))
            .await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "run writer task stopped"))
    }

    /// Wait until everything sent so far is durable; returns the run's next cursor.
    ///
    /// # Errors
    /// The error of a failed append.
    pub async fn flush(&self) -> Result<Cursor> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterCmd::Flush(reply))
            .await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "run writer task stopped"))?;
        rx.await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "run writer task stopped"))?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{InMemoryCache, InMemoryPubSub};

    fn delta(i: u64) -> NewEvent {
        NewEvent::json(EventKind::TextDelta, &i).unwrap()
    }

    #[tokio::test]
    async fn live_only_log_delivers_live_events_and_stores_nothing() {
        let log = EventLog::live_only(Arc::new(InMemoryPubSub::new()));
        let run = RunId::generate();
        assert_eq!(
            log.observe(&run, ObserveOptions::default())
                .await
                .err()
                .map(|e| e.kind()),
            Some(ErrorKind::NotFound)
        );
        log.create(&run, None).await.unwrap();
        log.append(&run, &[delta(0)], None).await.unwrap();
        // Attached after cursor 0: live-only delivers what comes next, nothing replayed.
        let mut stream = log.observe(&run, ObserveOptions::default()).await.unwrap();
        log.append(&run, &[delta(1), delta(2)], None).await.unwrap();
        log.append(
            &run,
            &[NewEvent::json(EventKind::Finish, &()).unwrap()],
            None,
        )
        .await
        .unwrap();
        let mut cursors = Vec::new();
        while let Some(e) = stream.next().await {
            cursors.push(e.unwrap().cursor);
        }
        assert_eq!(cursors, [1, 2, 3]);
        assert_eq!(
            log.len(&run).await.unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            log.observe(&run, ObserveOptions::default())
                .await
                .err()
                .map(|e| e.kind()),
            Some(ErrorKind::NotFound),
            "a finished live-only run is forgotten"
        );
    }

    #[tokio::test]
    async fn wake_frames_without_events_make_observers_read_the_log() {
        let config = LogConfig {
            max_wake_bytes: 0,
            idle_check: Duration::from_secs(3600),
            ..LogConfig::default()
        };
        let log = EventLog::new(
            Arc::new(InMemoryCache::new()),
            Arc::new(InMemoryPubSub::new()),
        )
        .with_config(config);
        let run = RunId::generate();
        log.create(&run, None).await.unwrap();
        let mut stream = log.observe(&run, ObserveOptions::default()).await.unwrap();
        log.append(&run, &[delta(0), delta(1)], None).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().cursor, 0);
        assert_eq!(stream.next().await.unwrap().unwrap().cursor, 1);
    }

    #[test]
    fn frames_round_trip() {
        let stored = vec![Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        let f = wake_frame(5, &stored, 1024);
        let (first, count, lines) = parse_frame(&f).unwrap();
        assert_eq!((first, count), (5, 2));
        assert_eq!(lines.unwrap().collect::<Vec<_>>(), stored);
        let f = wake_frame(5, &stored, 4);
        let (first, count, lines) = parse_frame(&f).unwrap();
        assert_eq!((first, count), (5, 2));
        assert!(lines.is_none());
        assert!(parse_frame(&Bytes::from_static(b"garbage")).is_none());
    }
}

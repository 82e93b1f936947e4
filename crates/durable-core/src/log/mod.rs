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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::cache::{Announce, AppendOptions, Cursor, ServerCache};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, NewEvent};
use crate::id::RunId;
use crate::names::Names;
use crate::pubsub::PubSub;
use crate::store::{check_terminal, now_ms, Epoch, RunRecord, RunStatus, WorkflowStore};

pub mod frame;
mod observe;
mod writer;

pub use observe::{EventStream, ObserveOptions, OnSuspend};
pub use writer::RunWriter;

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
    /// Events per read while catching up (default 512).
    pub read_batch: usize,
    /// Reads an observer keeps in flight while it catches up on a log it knows to be longer
    /// than one `read_batch` (default 4): a replay over a network backend waits for one
    /// round trip per `read_ahead` batches instead of one per batch. An observer holds at
    /// most `read_batch × read_ahead` events it read (plus one wake-up's) in memory.
    pub read_ahead: usize,
    /// Wake-ups carry the appended events when they fit in this many bytes (default 64 KiB);
    /// bigger batches send only the cursor range and observers read the log.
    pub max_wake_bytes: usize,
    /// An observer that hears nothing for this long re-reads the log and checks the producer's
    /// lease (default 5 s). This is a safety net: delivery itself is pushed.
    pub idle_check: Duration,
    /// A running run whose lease expired this long ago is reported as `ProducerLost`
    /// (default 30 s).
    pub producer_grace: Duration,
    /// How long a run's writer and its observers retry a *retryable* backend error (a dropped
    /// connection, a restarting server) with bounded exponential backoff before they give up
    /// and report it (default 15 s). A writer's retry never duplicates a batch: before it
    /// appends again it checks, by cursor, whether the failed append landed.
    pub retry_for: Duration,
}

impl LogConfig {
    /// Check the settings: a valid namespace ([`validate_namespace`](crate::names::validate_namespace)),
    /// a non-zero `read_batch`, `read_ahead` and `max_events`.
    ///
    /// # Errors
    /// `InvalidInput` naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        crate::names::validate_namespace(&self.namespace)?;
        if self.read_batch == 0 {
            return Err(Error::invalid_input(
                "LogConfig.read_batch must be at least 1",
            ));
        }
        if self.read_ahead == 0 {
            return Err(Error::invalid_input(
                "LogConfig.read_ahead must be at least 1",
            ));
        }
        if self.max_events == 0 {
            return Err(Error::invalid_input(
                "LogConfig.max_events must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            namespace: "durable".to_owned(),
            max_events: 1_000_000,
            retention: Duration::from_secs(24 * 3600),
            tombstone: Duration::from_secs(24 * 3600),
            read_batch: 512,
            read_ahead: 4,
            max_wake_bytes: 64 * 1024,
            idle_check: Duration::from_secs(5),
            producer_grace: Duration::from_secs(30),
            retry_for: Duration::from_secs(15),
        }
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
    names: Names,
    /// Why `config` is unusable (an invalid namespace): every operation reports it.
    invalid: Option<Error>,
    /// The cache announces its appends to `pubsub` itself: no separate publish.
    announce: bool,
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
            .field("announce", &self.inner.announce)
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
        let (names, invalid) = match config.validate() {
            Ok(()) => (Names::new_unchecked(&config.namespace), None),
            Err(e) => (Names::new_unchecked("invalid"), Some(e)),
        };
        let announce = cache.as_ref().is_some_and(|c| {
            c.capabilities().announce
                && c.announce_domain()
                    .is_some_and(|d| pubsub.announce_domain().as_ref() == Some(&d))
        });
        Self {
            inner: Arc::new(Inner {
                cache,
                pubsub,
                store,
                config,
                names,
                invalid,
                announce,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn valid(&self, op: &'static str) -> Result<()> {
        match &self.inner.invalid {
            Some(e) => Err(e.clone().with_operation(op)),
            None => Ok(()),
        }
    }

    /// Whether appends are announced by the cache itself in the same backend operation
    /// (a paired cache and pubsub, see [`ServerCache::announce_domain`]).
    pub fn announces_in_append(&self) -> bool {
        self.inner.announce
    }

    /// The names of this log's keys and topics.
    pub fn names(&self) -> &Names {
        &self.inner.names
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

    /// The prefix of every cache key of `run_id` (`<ns>/run/<id>/`, see [`Names`]).
    pub fn run_prefix(&self, run_id: &RunId) -> String {
        self.inner.names.run_prefix(run_id)
    }

    /// The cache log holding `run_id`'s events (`<ns>/run/<id>/events`).
    pub fn log_name(&self, run_id: &RunId) -> String {
        self.inner.names.run_log(run_id)
    }

    fn tombstone_name(&self, run_id: &RunId) -> String {
        self.inner.names.run_tombstone(run_id)
    }

    /// The PubSub topic announcing `run_id`'s appends (`<ns>.run.<id>`).
    pub fn topic(&self, run_id: &RunId) -> String {
        self.inner.names.run_topic(run_id)
    }

    /// Create the run's log (idempotent). With `fence`, raise the log's fence to that epoch:
    /// from then on appends with an older epoch are rejected with `Fenced`.
    ///
    /// # Errors
    /// The backend's error; `Fenced` if the log has already seen a newer epoch.
    pub async fn create(&self, run_id: &RunId, fence: Option<Epoch>) -> Result<Cursor> {
        self.valid("create")?;
        match &self.inner.cache {
            Some(cache) => {
                let opts = AppendOptions {
                    fence,
                    ..AppendOptions::default()
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
    /// With a cache that announces its appends ([`EventLog::announces_in_append`]) the wake-up
    /// is part of the same backend operation. Otherwise it is published afterwards, best
    /// effort: if it cannot be published, observers still find the events at their next read
    /// (at the latest after [`LogConfig::idle_check`]). Either way the events are durable
    /// before any observer hears of them.
    ///
    /// The log must exist ([`EventLog::create`]): an append never recreates a deleted log, so a
    /// producer whose run was deleted under it fails with `NotFound` instead of starting a new
    /// log at cursor 0.
    ///
    /// # Behavior
    /// - Concurrent appenders get contiguous cursors, each once
    ///   (`log_cursors_are_contiguous_under_concurrent_appenders`).
    /// - An append with an epoch older than the log's fence is rejected
    ///   (`fenced_writer_cannot_append`).
    /// - Past [`LogConfig::max_events`] the append fails and stores nothing
    ///   (`max_events_per_run_is_enforced`).
    /// - After [`EventLog::delete`] the producer's appends fail and observers end with
    ///   `NotFound` or `Gone`, never a recreated log (`deleting_a_live_run_fences_its_producer`).
    ///
    /// # Errors
    /// `Fenced` for a stale `fence`, `LimitExceeded` past [`LogConfig::max_events`], `NotFound`
    /// if the log does not exist (never created, deleted, expired), or the backend's error.
    /// Nothing is stored on error.
    pub async fn append(
        &self,
        run_id: &RunId,
        events: &[NewEvent],
        fence: Option<Epoch>,
    ) -> Result<Cursor> {
        self.valid("append")?;
        let at = now_ms();
        let stored: Vec<Bytes> = events.iter().map(|e| e.encode_stored(at)).collect();
        let first = match &self.inner.cache {
            Some(cache) => {
                let opts = AppendOptions {
                    max_len: Some(self.inner.config.max_events),
                    fence,
                    must_exist: true,
                };
                let log = self.log_name(run_id);
                if self.inner.announce && !stored.is_empty() {
                    let topic = self.topic(run_id);
                    let announce = Announce::new(&topic, self.inner.config.max_wake_bytes);
                    return cache.append_announce(&log, &stored, opts, announce).await;
                }
                cache.append_many(&log, &stored, opts).await?
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
            let frame = frame::encode(first, &stored, self.inner.config.max_wake_bytes);
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
        RunWriter::spawn(self.clone(), run_id, fence, capacity.max(1), None)
    }

    /// The writer of an executing run. `next`, when the caller knows it (it just created or
    /// read the log), saves the writer a length query. With an in-process cache (not
    /// [`shared`](crate::CacheCapabilities::shared)) or no cache, the writer appends inline in
    /// the producer's task: an append there takes microseconds, and the hop to a writer task
    /// would only add latency between the model and its observers.
    pub(crate) fn run_writer(
        &self,
        run_id: RunId,
        fence: Option<Epoch>,
        capacity: usize,
        next: Option<Cursor>,
    ) -> RunWriter {
        let in_process = self
            .inner
            .cache
            .as_ref()
            .is_none_or(|c| !c.capabilities().shared);
        if in_process {
            RunWriter::inline(self.clone(), run_id, fence, next)
        } else {
            RunWriter::spawn(self.clone(), run_id, fence, capacity.max(1), next)
        }
    }

    /// The run's length (next cursor), or `None` if it has no log.
    ///
    /// # Errors
    /// The backend's error; `Unsupported` for a live-only log.
    pub async fn len(&self, run_id: &RunId) -> Result<Option<Cursor>> {
        self.cache("len")?.len(&self.log_name(run_id)).await
    }

    /// The run's next cursor as this process knows it: the log's length, or for a live-only
    /// log the counter of the run produced here (0 for a run it has not produced).
    pub(crate) async fn next_cursor(&self, run_id: &RunId) -> Result<Cursor> {
        match &self.inner.cache {
            Some(cache) => Ok(cache.len(&self.log_name(run_id)).await?.unwrap_or_default()),
            None => Ok(self.lock_live().get(run_id).copied().unwrap_or_default()),
        }
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
        observe::decode_slice(run_id, slice.first, &slice.entries)
    }

    /// The cache's [`CacheCapabilities::append_page`](crate::cache::CacheCapabilities::append_page)
    /// (0 without a cache).
    pub(super) fn append_page(&self) -> u64 {
        self.inner
            .cache
            .as_ref()
            .map_or(0, |c| c.capabilities().append_page)
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
        self.retire_log(run_id).await?;
        if let Some(store) = &self.inner.store {
            store
                .expire_run(run_id, self.inner.config.retention)
                .await?;
        }
        Ok(())
    }

    /// Make a run terminal with its retention, so that no crash can leave any of it without
    /// an expiry: first the log's retention (and tombstone), then `store`'s
    /// [`finish_run`](WorkflowStore::finish_run), which writes the terminal status and the
    /// record's expiry together. A crash between the two leaves a run that is not terminal
    /// and whose log has ended: recovery finds it and finishes it again.
    ///
    /// # Behavior
    /// - The record is terminal and everything of the run expires after
    ///   [`LogConfig::retention`] (`retention_removes_log_and_record`).
    ///
    /// # Errors
    /// The cache's or the store's error (nothing is terminal yet if the cache failed).
    pub async fn finish(
        &self,
        store: &dyn WorkflowStore,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
    ) -> Result<RunRecord> {
        check_terminal(status)?;
        self.retire_log(run_id).await?;
        store
            .finish_run(run_id, epoch, status, self.inner.config.retention)
            .await
    }

    /// The log's part of [`retire`](Self::retire): its expiry and the tombstone's.
    async fn retire_log(&self, run_id: &RunId) -> Result<()> {
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
        Ok(())
    }

    /// Delete everything stored for the run now (log, tombstone, record).
    ///
    /// A producer still appending to the run is fenced off by the deletion itself: its next
    /// append fails with `NotFound` (appends never recreate a log). Observers are woken and end
    /// with `NotFound` (or `Gone`) instead of waiting for events that will never come.
    ///
    /// # Behavior
    /// - The producer's next append fails; observers end with `NotFound`/`Gone`
    ///   (`deleting_a_live_run_fences_its_producer`).
    ///
    /// # Errors
    /// The backend's error.
    pub async fn delete(&self, run_id: &RunId) -> Result<()> {
        self.valid("delete")?;
        if let Some(cache) = &self.inner.cache {
            cache.delete(&self.log_name(run_id)).await?;
            cache.delete(&self.tombstone_name(run_id)).await?;
        }
        if let Some(store) = &self.inner.store {
            store.delete_run(run_id).await?;
        }
        self.lock_live().remove(run_id);
        let topic = self.topic(run_id);
        if let Err(e) = self
            .inner
            .pubsub
            .publish(&topic, Bytes::from_static(frame::DELETED))
            .await
        {
            tracing::warn!(run_id = %run_id, error = %e, "deletion not announced; observers notice at their idle check");
        }
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
    ///   `observe_racing_live_producer_is_exact`, `observe_from_zero_replays_everything_then_ends`),
    ///   also while it catches up with several reads in flight
    ///   (`catch_up_reads_ahead_in_order`).
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
    /// - Event data with any bytes (newlines, `\r`, NUL, megabyte strings) arrives exactly, on
    ///   durable and live-only logs: nothing is dropped silently
    ///   (`event_data_with_control_bytes_is_delivered_exactly`).
    ///
    /// # Errors
    /// As above, or the backend's error.
    pub async fn observe(&self, run_id: &RunId, options: ObserveOptions) -> Result<EventStream> {
        self.valid("observe")?;
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
        observe::start(self, run_id, options, known_end).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::memory::{InMemoryCache, InMemoryPubSub};
    use futures::StreamExt;

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

    /// Event data that keeps raw control bytes through `Json`'s `Deserialize` (pretty-printed
    /// JSON: newlines between tokens) must reach a live-only observer intact.
    fn awkward_events() -> Vec<NewEvent> {
        let raw: Vec<String> = vec![
            "{\n  \"text\": \"a\"\n}".to_owned(),
            "{\r\n\"text\":\"b\\r\\n\"}".to_owned(),
            "{\"text\":\"nul\\u0000\"}".to_owned(),
            format!("{{\"text\":\"{}\"}}", "x\\n".repeat(350_000)),
        ];
        raw.iter()
            .map(|r| {
                let data: crate::event::Json = serde_json::from_str(r).unwrap();
                NewEvent::new(EventKind::TextDelta, data)
            })
            .collect()
    }

    async fn observe_awkward(log: EventLog) {
        let run = RunId::generate();
        log.create(&run, None).await.unwrap();
        let mut stream = log.observe(&run, ObserveOptions::default()).await.unwrap();
        let events = awkward_events();
        for e in &events {
            log.append(&run, std::slice::from_ref(e), None)
                .await
                .unwrap();
        }
        log.append(
            &run,
            &[NewEvent::json(EventKind::Finish, &()).unwrap()],
            None,
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        while let Some(e) = stream.next().await {
            got.push(e.unwrap());
        }
        assert_eq!(got.len(), events.len() + 1, "no event may be dropped");
        for (g, e) in got.iter().zip(&events) {
            assert_eq!(g.data.as_bytes(), e.data.as_bytes());
        }
        assert_eq!(got.last().unwrap().kind, EventKind::Finish);
    }

    #[tokio::test]
    async fn live_only_observers_get_events_with_newlines_cr_nul_and_1mb_data() {
        let config = LogConfig {
            max_wake_bytes: 4 << 20,
            ..LogConfig::default()
        };
        observe_awkward(EventLog::live_only(Arc::new(InMemoryPubSub::new())).with_config(config))
            .await;
    }

    #[tokio::test]
    async fn durable_observers_get_events_with_newlines_cr_nul_and_1mb_data() {
        let pubsub = InMemoryPubSub::new();
        let cache = InMemoryCache::new().with_pubsub(&pubsub);
        let log = EventLog::new(Arc::new(cache), Arc::new(pubsub));
        assert!(log.announces_in_append());
        observe_awkward(log).await;
        let unpaired = EventLog::new(
            Arc::new(InMemoryCache::new()),
            Arc::new(InMemoryPubSub::new()),
        );
        assert!(!unpaired.announces_in_append());
        observe_awkward(unpaired).await;
    }

    #[tokio::test]
    async fn a_cache_paired_with_another_pubsub_does_not_announce() {
        let cache = InMemoryCache::new().with_pubsub(&InMemoryPubSub::new());
        let log = EventLog::new(Arc::new(cache), Arc::new(InMemoryPubSub::new()));
        assert!(
            !log.announces_in_append(),
            "domains differ: publish separately"
        );
        observe_awkward(log).await;
    }

    #[tokio::test]
    async fn writer_errors_keep_backend_operation_and_retryable() {
        let log = EventLog::new(
            Arc::new(InMemoryCache::new()),
            Arc::new(InMemoryPubSub::new()),
        );
        let run = RunId::generate();
        log.create(&run, Some(5)).await.unwrap();
        let writer = log.writer(run.clone(), Some(3), 8);
        writer.send(delta(0)).await.unwrap();
        let e = writer.flush().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Fenced);
        assert_eq!(e.backend(), "memory");
        assert_eq!(e.operation(), "append");
        assert!(!e.is_retryable());
        let again = writer.send(delta(1)).await.unwrap_err();
        assert_eq!(
            (again.kind(), again.backend(), again.operation()),
            (ErrorKind::Fenced, "memory", "append")
        );
    }

    #[tokio::test]
    async fn live_only_writer_flushes_before_any_send() {
        let log = EventLog::live_only(Arc::new(InMemoryPubSub::new()));
        let run = RunId::generate();
        log.create(&run, None).await.unwrap();
        let writer = log.writer(run.clone(), None, 8);
        assert_eq!(writer.flush().await.unwrap(), 0);
        writer.send(delta(0)).await.unwrap();
        assert_eq!(writer.flush().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_inline_writer_keeps_errors_whole_and_flushes_a_live_only_log() {
        let log = EventLog::new(
            Arc::new(InMemoryCache::new()),
            Arc::new(InMemoryPubSub::new()),
        );
        let run = RunId::generate();
        log.create(&run, Some(5)).await.unwrap();
        let writer = log.run_writer(run.clone(), Some(3), 1, None);
        let e = writer.send(delta(0)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.backend(), e.operation(), e.is_retryable()),
            (ErrorKind::Fenced, "memory", "append", false)
        );
        assert_eq!(writer.flush().await.unwrap_err().kind(), ErrorKind::Fenced);
        assert_eq!(log.len(&run).await.unwrap(), Some(0), "nothing stored");

        let live = EventLog::live_only(Arc::new(InMemoryPubSub::new()));
        live.create(&run, None).await.unwrap();
        let writer = live.run_writer(run.clone(), None, 1, None);
        assert_eq!(writer.flush().await.unwrap(), 0);
        writer.send_batch(vec![delta(0), delta(1)]).await.unwrap();
        assert_eq!(writer.flush().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn an_invalid_namespace_is_rejected_before_any_backend_call() {
        for ns in ["a*b", "{x}", "a b", "", "a..b", "x>y"] {
            let config = LogConfig {
                namespace: ns.to_owned(),
                ..LogConfig::default()
            };
            assert!(config.validate().is_err(), "{ns:?}");
            let cache = InMemoryCache::new();
            let log = EventLog::new(Arc::new(cache.clone()), Arc::new(InMemoryPubSub::new()))
                .with_config(config);
            let run = RunId::generate();
            assert_eq!(
                log.create(&run, None).await.unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
            assert_eq!(cache.key_count(), 0, "nothing stored for {ns:?}");
        }
    }

    #[tokio::test]
    async fn deleting_a_live_run_fences_its_producer_and_ends_observers() {
        let pubsub = InMemoryPubSub::new();
        let log = EventLog::new(
            Arc::new(InMemoryCache::new().with_pubsub(&pubsub)),
            Arc::new(pubsub),
        )
        .with_config(LogConfig {
            idle_check: Duration::from_secs(3600),
            ..LogConfig::default()
        });
        let run = RunId::generate();
        log.create(&run, Some(1)).await.unwrap();
        let batch: Vec<NewEvent> = (0..100).map(delta).collect();
        log.append(&run, &batch, Some(1)).await.unwrap();
        let mut stream = log.observe(&run, ObserveOptions::default()).await.unwrap();
        for c in 0..100 {
            assert_eq!(stream.next().await.unwrap().unwrap().cursor, c);
        }
        log.delete(&run).await.unwrap();
        let e = log.append(&run, &[delta(100)], Some(1)).await.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::NotFound,
            "never recreated from cursor 0"
        );
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the observer ends, it never stalls");
        let kind = end.unwrap().unwrap_err().kind();
        assert!(
            matches!(kind, ErrorKind::Gone | ErrorKind::NotFound),
            "{kind:?}"
        );
        assert!(stream.next().await.is_none());
        assert_eq!(log.len(&run).await.unwrap(), None);
    }
}

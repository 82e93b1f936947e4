//! Observing a run: replay from an offset, then live, then the end of the run.
//!
//! **Hand-off.** An observer subscribes to the run's topic *before* its catch-up read, so every
//! append that its read misses is followed by a wake-up it receives. Wake-ups carry the cursor
//! range they announce; the observer delivers strictly by cursor, skips what it has, and reads
//! the log for any gap (a lagged subscription, a wake-up without payload, a reconnect).
//!
//! **No subscription, no failure.** If the wake-up subscription cannot be established (a
//! backend under load, a restart) or is lost, a durable observer does not fail: it catches up
//! from the log, re-reads it with a bounded backoff, and subscribes again; after it is
//! subscribed it reads once more, so nothing announced meanwhile is missed.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use super::{frame, EventLog};
use crate::cache::Cursor;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventKind};
use crate::id::RunId;
use crate::pubsub::{Delivery, Subscription};
use crate::store::{now_ms, RunStatus};

/// First pause of an observer without a subscription before it re-reads and resubscribes.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(10);

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
    /// events not yet yielded). Bounded by [`LogConfig::read_batch`](crate::LogConfig::read_batch)
    /// × [`LogConfig::read_ahead`](crate::LogConfig::read_ahead) plus one wake-up's events.
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

/// Start an observer of a run whose log holds `known_end` events (checked by the caller).
pub(super) async fn start(
    log: &EventLog,
    run_id: &RunId,
    options: ObserveOptions,
    known_end: Cursor,
) -> Result<EventStream> {
    let durable = log.is_durable();
    // Subscribe before the catch-up read: an append the read misses wakes us.
    let sub = match log.inner.pubsub.subscribe(&log.topic(run_id)).await {
        Ok(sub) => Some(sub),
        // The log is the source of truth: catch up from it and subscribe again later.
        Err(e) if durable && e.is_retryable() => {
            tracing::debug!(run_id = %run_id, error = %e, "wake-up subscription pending; reading the log meanwhile");
            None
        }
        Err(e) => return Err(e),
    };
    // Re-read the event before the offset too: if it ended the run (or suspended it), the
    // observer ends at once instead of waiting for an event that never comes.
    let peek = (durable && options.offset > 0).then(|| options.offset - 1);
    let buffered = Arc::new(AtomicUsize::new(0));
    let observer = Observer {
        log: log.clone(),
        log_name: log.log_name(run_id),
        run_id: run_id.clone(),
        sub,
        backoff: RESUBSCRIBE_MIN,
        next: match peek {
            Some(p) => p,
            None if durable => options.offset,
            None => options.offset.max(known_end),
        },
        peek,
        tail: known_end,
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

struct Observer {
    log: EventLog,
    log_name: String,
    run_id: RunId,
    /// The wake-up subscription; `None` while it is being re-established (durable logs only).
    sub: Option<Subscription>,
    /// Pause before the next re-read and resubscribe while `sub` is `None`.
    backoff: Duration,
    /// The next cursor to deliver.
    next: Cursor,
    /// The cursor before the requested offset, re-read only to see whether it ended the run.
    peek: Option<Cursor>,
    /// The log's length as last read (or as known when the observer started).
    tail: Cursor,
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
            let Some(sub) = self.sub.as_mut() else {
                if let Err(e) = self.resubscribe().await {
                    return Some(Err(self.fail(e)));
                }
                continue;
            };
            match tokio::time::timeout(idle, sub.next()).await {
                Ok(Some(Delivery::Message(frame))) => {
                    if let Err(e) = self.on_frame(&frame) {
                        return Some(Err(self.fail(e)));
                    }
                }
                Ok(Some(Delivery::Lagged)) => self.need_read = self.log.is_durable(),
                Ok(None) if self.log.is_durable() => {
                    // The backend closed the subscription: catch up from the log and subscribe
                    // again, never leave the observer stranded.
                    self.sub = None;
                    self.need_read = true;
                }
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

    /// Without a subscription: wait out the backoff, try to subscribe, and read the log either
    /// way (after a successful subscribe, to close the hand-off window; after a failed one, as
    /// the only wake-up).
    async fn resubscribe(&mut self) -> Result<()> {
        tokio::time::sleep(self.backoff).await;
        let topic = self.log.topic(&self.run_id);
        match self.log.inner.pubsub.subscribe(&topic).await {
            Ok(sub) => {
                self.sub = Some(sub);
                self.backoff = RESUBSCRIBE_MIN;
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(run_id = %self.run_id, error = %e, "wake-up subscription still pending");
                self.backoff = (self.backoff * 2).min(self.log.inner.config.idle_check);
            }
            Err(e) => return Err(e),
        }
        self.read_batch().await?;
        if self.buf.is_empty() && self.sub.is_none() {
            // Nothing new, and no push to wait for: check the producer as an idle observer does.
            self.on_idle_checks().await?;
        }
        Ok(())
    }

    fn fail(&mut self, e: Error) -> Error {
        self.done = true;
        self.buf.clear();
        e
    }

    /// [`Observer::read_batch_once`], retrying a retryable backend error (a dropped connection,
    /// a restarting server) with bounded backoff for up to `LogConfig::retry_for`: an outage
    /// shorter than that is invisible to the client, a longer one is reported, never a hang.
    async fn read_batch(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.log.inner.config.retry_for;
        let mut delay = RESUBSCRIBE_MIN;
        loop {
            match self.read_batch_once().await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + delay < deadline => {
                    tracing::debug!(run_id = %self.run_id, error = %e, retry_in = ?delay, "observer read failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                r => return r,
            }
        }
    }

    /// Read the log from `next`: one read, or up to `read_ahead` at once (consecutive ranges
    /// of `read_batch`) when an earlier read showed the log holds that much more. The ranges'
    /// events are buffered in order up to the first range that came back short or failed;
    /// what follows it is read again.
    async fn read_batch_once(&mut self) -> Result<()> {
        let cache = self.log.cache("observe")?;
        let config = &self.log.inner.config;
        let limit = config.read_batch.max(1);
        let behind = self.tail.saturating_sub(self.next);
        let reads = usize::try_from(behind.div_ceil(limit as u64))
            .unwrap_or(usize::MAX)
            .clamp(1, config.read_ahead.max(1));
        let name = self.log_name.as_str();
        let from = self.next;
        let slices = futures::future::join_all(
            (0..reads).map(|i| cache.read(name, from + (i * limit) as u64, limit)),
        )
        .await;
        let mut at = from;
        for (i, slice) in slices.into_iter().enumerate() {
            let slice = match slice {
                Ok(s) if i == 0 || s.first == at => s,
                Ok(_) => break,
                // The log existed when this observer attached: its retention elapsed meanwhile.
                Err(e) if i == 0 && e.kind() == ErrorKind::NotFound => {
                    return Err(Error::new(
                        ErrorKind::Gone,
                        format!(
                            "run {} expired while being observed, at cursor {}",
                            self.run_id, self.next
                        ),
                    )
                    .with_operation("observe"));
                }
                Err(e) if i == 0 => return Err(e),
                // The ranges before it are delivered; the next read starts here and reports it.
                Err(_) => break,
            };
            self.tail = self.tail.max(slice.next);
            let n = slice.entries.len();
            self.buf
                .extend(decode_slice(&self.run_id, slice.first, &slice.entries)?);
            at = slice.first + n as u64;
            if n < limit {
                break;
            }
        }
        self.need_read = at < self.tail;
        Ok(())
    }

    fn on_frame(&mut self, raw: &Bytes) -> Result<()> {
        let durable = self.log.is_durable();
        let Some(frame) = frame::decode(raw) else {
            if durable {
                // Not a frame (a deletion notice, or foreign bytes): the log is authoritative.
                self.need_read = true;
                return Ok(());
            }
            // Live-only: there is nothing to read; never drop silently.
            return Err(if raw.as_ref() == frame::DELETED {
                Error::not_found(format!("run {} was deleted", self.run_id))
            } else {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("run {}: undecodable wake-up frame", self.run_id),
                )
            }
            .with_operation("observe"));
        };
        let (first, count) = (frame.first, frame.count);
        if first.saturating_add(count) <= self.next {
            return Ok(());
        }
        let Some(events) = frame.events else {
            self.need_read = durable;
            return Ok(());
        };
        if first > self.next && durable {
            self.need_read = true;
            return Ok(());
        }
        for (stored, cursor) in events.iter().zip(first..) {
            if cursor < self.next {
                continue;
            }
            match Event::decode_stored(&self.run_id, cursor, stored) {
                Ok(ev) => self.buf.push_back(ev),
                Err(e) if durable => {
                    let _ = e;
                    self.need_read = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if !durable {
            // Live-only: there is no log to fill holes from; deliver what was announced.
            if let Some(front) = self.buf.front() {
                self.next = self.next.max(front.cursor);
            }
        }
        Ok(())
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
        self.on_idle_checks().await
    }

    /// The producer checks of an idle observer: a terminal record or an expired lease means
    /// no event is coming.
    async fn on_idle_checks(&mut self) -> Result<()> {
        let Some(store) = &self.log.inner.store else {
            return Ok(());
        };
        let record = match store.get_run(&self.run_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            // The store is unreachable right now: no verdict; the next idle check asks again.
            Err(e) if e.is_retryable() => return Ok(()),
            Err(e) => return Err(e),
        };
        let now = now_ms();
        let grace = crate::store::ttl_ms(self.log.inner.config.producer_grace);
        let lost = match record.status {
            // The terminal event is stored before the terminal status: it may have landed
            // after the read that found nothing new, so look once more.
            s if s.is_terminal() => {
                self.read_batch().await?;
                self.buf.is_empty()
            }
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

pub(super) fn decode_slice(run_id: &RunId, first: Cursor, entries: &[Bytes]) -> Result<Vec<Event>> {
    entries
        .iter()
        .zip(first..)
        .map(|(e, c)| Event::decode_stored(run_id, c, e))
        .collect()
}

//! [`RunWriter`]: the batching, bounded writer of one run's events.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::EventLog;
use crate::cache::Cursor;
use crate::error::{Error, ErrorKind, Result};
use crate::event::NewEvent;
use crate::id::RunId;
use crate::store::Epoch;

/// A batching, bounded writer for one run (see [`EventLog::writer`]).
///
/// Events are appended in the order sent. After a failed append the writer stops: every later
/// `send` and `flush` returns that error, so nothing is dropped silently.
pub struct RunWriter {
    mode: Mode,
    run_id: RunId,
}

enum Mode {
    /// A task appends what is queued while the previous append is in flight (remote caches:
    /// the producer never waits for a round trip).
    Queued {
        tx: mpsc::Sender<WriterCmd>,
        failed: Arc<Mutex<Option<Error>>>,
    },
    /// The caller appends at once, in its own task (in-process caches, where an append takes
    /// microseconds: one task hop less between the model and the observer).
    Inline(tokio::sync::Mutex<Inline>),
}

struct Inline {
    log: EventLog,
    fence: Option<Epoch>,
    next: Option<Cursor>,
    failed: Option<Error>,
}

impl Inline {
    async fn append(&mut self, run_id: &RunId, events: &[NewEvent]) -> Result<Cursor> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if events.is_empty() {
            return match self.next {
                Some(n) => Ok(n),
                None => self.log.next_cursor(run_id).await,
            };
        }
        match append_paged(&self.log, run_id, events, self.fence, &mut self.next).await {
            Ok(first) => {
                let n = first + events.len() as u64;
                self.next = Some(n);
                Ok(n)
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }
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
    pub(super) fn inline(
        log: EventLog,
        run_id: RunId,
        fence: Option<Epoch>,
        start: Option<Cursor>,
    ) -> Self {
        Self {
            mode: Mode::Inline(tokio::sync::Mutex::new(Inline {
                log,
                fence,
                next: start,
                failed: None,
            })),
            run_id,
        }
    }

    pub(super) fn spawn(
        log: EventLog,
        run_id: RunId,
        fence: Option<Epoch>,
        capacity: usize,
        start: Option<Cursor>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<WriterCmd>(capacity);
        let failed: Arc<Mutex<Option<Error>>> = Arc::default();
        let task_failed = failed.clone();
        let task_run = run_id.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            let mut flushes = Vec::new();
            let mut next: Option<Cursor> = start;
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
                    Some(e) => Err(e),
                    None if batch.is_empty() => match next {
                        Some(n) => Ok(n),
                        None => log.next_cursor(&task_run).await,
                    },
                    None => match append_paged(&log, &task_run, &batch, fence, &mut next).await {
                        Ok(first) => {
                            let n = first + batch.len() as u64;
                            next = Some(n);
                            Ok(n)
                        }
                        Err(e) => {
                            *lock(&task_failed) = Some(e.clone());
                            Err(e)
                        }
                    },
                };
                batch.clear();
                for reply in flushes.drain(..) {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Self {
            mode: Mode::Queued { tx, failed },
            run_id,
        }
    }

    /// Queue an event (waits while the bounded buffer is full).
    ///
    /// # Errors
    /// The error of an earlier failed append, with every field the backend gave it (kind,
    /// backend, operation, retryable, source).
    pub async fn send(&self, event: NewEvent) -> Result<()> {
        match &self.mode {
            Mode::Queued { tx, failed } => {
                check(failed)?;
                tx.send(WriterCmd::Event(event))
                    .await
                    .map_err(|_| stopped())
            }
            Mode::Inline(state) => state
                .lock()
                .await
                .append(&self.run_id, std::slice::from_ref(&event))
                .await
                .map(drop),
        }
    }

    /// Queue several events at once (one slot of the bounded buffer; keep batches small, a few
    /// hundred events at most).
    ///
    /// # Errors
    /// The error of an earlier failed append.
    pub async fn send_batch(&self, events: Vec<NewEvent>) -> Result<()> {
        match &self.mode {
            Mode::Queued { tx, failed } => {
                check(failed)?;
                if events.is_empty() {
                    return Ok(());
                }
                tx.send(WriterCmd::Batch(events))
                    .await
                    .map_err(|_| stopped())
            }
            Mode::Inline(state) => {
                if events.is_empty() {
                    return state.lock().await.failed.clone().map_or(Ok(()), Err);
                }
                state
                    .lock()
                    .await
                    .append(&self.run_id, &events)
                    .await
                    .map(drop)
            }
        }
    }

    /// Wait until everything sent so far is durable; returns the run's next cursor.
    ///
    /// # Errors
    /// The error of a failed append.
    pub async fn flush(&self) -> Result<Cursor> {
        match &self.mode {
            Mode::Queued { tx, .. } => {
                let (reply, rx) = oneshot::channel();
                tx.send(WriterCmd::Flush(reply))
                    .await
                    .map_err(|_| stopped())?;
                rx.await.map_err(|_| stopped())?
            }
            Mode::Inline(state) => state.lock().await.append(&self.run_id, &[]).await,
        }
    }
}

fn stopped() -> Error {
    Error::new(ErrorKind::Unexpected, "run writer task stopped")
}

fn check(failed: &Mutex<Option<Error>>) -> Result<()> {
    match &*lock(failed) {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

/// Append `batch` with [`append_retrying`], cut where it crosses a page boundary of the cache
/// ([`CacheCapabilities::append_page`]) once the start cursor is known: each piece is then the
/// backend's cheap kind of append. Returns the batch's first cursor.
///
/// If a later piece fails, the earlier ones stay appended: the same state as a producer that
/// stopped between two batches, which a run recovers from like any interrupted step.
///
/// [`CacheCapabilities::append_page`]: crate::cache::CacheCapabilities::append_page
async fn append_paged(
    log: &EventLog,
    run_id: &RunId,
    batch: &[NewEvent],
    fence: Option<Epoch>,
    next: &mut Option<Cursor>,
) -> Result<Cursor> {
    let page = log.append_page();
    let Some(start) = next.filter(|_| page > 0) else {
        return append_retrying(log, run_id, batch, fence, next).await;
    };
    let (mut at, mut first) = (start, None);
    let mut rest = batch;
    while !rest.is_empty() {
        let room = usize::try_from(page - at % page).unwrap_or(usize::MAX);
        let (piece, tail) = rest.split_at(rest.len().min(room));
        let f = append_retrying(log, run_id, piece, fence, next).await?;
        first.get_or_insert(f);
        at = f + piece.len() as u64;
        *next = Some(at);
        rest = tail;
    }
    Ok(first.unwrap_or(start))
}

/// First and longest pause between retries of a failed append.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Append `batch`, retrying a retryable failure for up to [`LogConfig::retry_for`] without ever
/// storing the batch twice: the writer is the run's only producer (its epoch fences every
/// other), so after a failure the log's length tells whether the append landed (`next + n`),
/// did not (`next`), or something else wrote to the log (an error, never a guess).
///
/// `next` is the log's next cursor as the writer knows it; when unknown it is read before the
/// first append, so every append has a known place.
///
/// [`LogConfig::retry_for`]: super::LogConfig::retry_for
async fn append_retrying(
    log: &EventLog,
    run_id: &RunId,
    batch: &[crate::event::NewEvent],
    fence: Option<Epoch>,
    next: &mut Option<Cursor>,
) -> Result<Cursor> {
    let retry_for = log.config().retry_for;
    let deadline = Instant::now() + retry_for;
    let mut delay = RETRY_MIN;
    let mut expected = *next;
    loop {
        let err = match expected {
            None => match log.next_cursor(run_id).await {
                Ok(n) => {
                    expected = Some(n);
                    continue;
                }
                Err(e) => e,
            },
            Some(at) => match log.append(run_id, batch, fence).await {
                Ok(first) => return Ok(first),
                Err(e) => {
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    // Did it land? Ask until the backend answers (or the budget is spent).
                    loop {
                        if Instant::now() + delay > deadline {
                            return Err(e);
                        }
                        tracing::debug!(run_id = %run_id, error = %e, retry_in = ?delay, "append failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_MAX);
                        match log.len(run_id).await {
                            Ok(Some(len)) if len == at + batch.len() as u64 => {
                                *next = Some(len);
                                return Ok(at);
                            }
                            Ok(Some(len)) if len == at => break,
                            Ok(Some(len)) => {
                                return Err(Error::new(
                                    ErrorKind::Conflict,
                                    format!(
                                        "run {run_id}'s log is at cursor {len} while its writer expected {at}: another producer appended"
                                    ),
                                )
                                .with_operation("append")
                                .with_source(e))
                            }
                            Ok(None) => {
                                return Err(Error::not_found(format!(
                                    "run {run_id}'s log was deleted while its writer retried"
                                ))
                                .with_operation("append"))
                            }
                            Err(again) if again.is_retryable() => continue,
                            Err(again) => return Err(again),
                        }
                    }
                    continue;
                }
            },
        };
        // Reading the start cursor failed.
        if !err.is_retryable() || Instant::now() + delay > deadline {
            return Err(err);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

//! [`RunWriter`]: the batching, bounded writer of one run's events.

use std::fmt;
use std::sync::{Arc, Mutex};

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
    tx: mpsc::Sender<WriterCmd>,
    failed: Arc<Mutex<Option<Error>>>,
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
    pub(super) fn spawn(
        log: EventLog,
        run_id: RunId,
        fence: Option<Epoch>,
        capacity: usize,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<WriterCmd>(capacity);
        let failed: Arc<Mutex<Option<Error>>> = Arc::default();
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
                    Some(e) => Err(e),
                    None if batch.is_empty() => match next {
                        Some(n) => Ok(n),
                        None => log.next_cursor(&task_run).await,
                    },
                    None => match log.append(&task_run, &batch, fence).await {
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
        Self { tx, failed, run_id }
    }

    fn check(&self) -> Result<()> {
        match &*lock(&self.failed) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Queue an event (waits while the bounded buffer is full).
    ///
    /// # Errors
    /// The error of an earlier failed append, with every field the backend gave it (kind,
    /// backend, operation, retryable, source).
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

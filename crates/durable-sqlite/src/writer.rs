//! The one writer thread: every write of every handle goes through it, and it commits
//! everything queued in one transaction (group commit).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use durable_core::memory::InMemoryPubSub;
use durable_core::{Error, PubSub, Result};
use futures::FutureExt;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::config::SqliteConfig;
use crate::error::{from_sqlite, writer_gone};
use crate::sweep;

/// What a write leaves to do once its transaction committed: a wake-up frame to publish.
pub(crate) type Announcement = Option<(String, Bytes)>;

/// A write: runs inside the writer's transaction (in its own savepoint) and returns how to
/// finish once the transaction's fate is known.
/// Called with `Err` instead when the write cannot run (no transaction could be begun): it then
/// only answers.
type Work = Box<dyn FnOnce(std::result::Result<(&Connection, i64), Error>) -> Completion + Send>;

struct Completion {
    ok: bool,
    announce: Announcement,
    finish: Box<dyn FnOnce(Option<Error>) + Send>,
}

/// Counters of the writer, for benchmarks and monitoring.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) writes: AtomicU64,
}

/// Statistics of the writer thread since the backend was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed (each one fsync of the WAL with `synchronous = FULL`).
    pub commits: u64,
    /// Writes (appends, sets, store transitions, …) committed in them.
    pub writes: u64,
}

/// The handle to the writer thread. Dropping the last one ends the thread after it committed
/// what was queued.
pub(crate) struct Writer {
    tx: mpsc::Sender<Work>,
    counters: Arc<Counters>,
}

impl Writer {
    pub(crate) fn spawn(
        conn: Connection,
        config: &SqliteConfig,
        pubsub: Option<InMemoryPubSub>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        let counters = Arc::new(Counters::default());
        let checkpoint = Checkpointer::spawn(crate::db::open_checkpointer(config)?)?;
        let thread = WriterThread {
            conn,
            rx,
            checkpoint,
            pubsub,
            counters: counters.clone(),
            max_batch: config.max_batch.max(1),
            sweep_every: config.sweep_every,
            purge_chunk: config.purge_chunk.max(1),
        };
        std::thread::Builder::new()
            .name("durable-sqlite-writer".to_owned())
            .spawn(move || thread.run())
            .map_err(thread_failed)?;
        Ok(Self { tx, counters })
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Run `f` in the writer's next transaction and answer once that transaction committed.
    /// `f` gets the connection and the transaction's clock (Unix ms). An `Err` from `f`
    /// rolls back what `f` wrote (and only that).
    pub(crate) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<(T, Announcement)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let work: Work = Box::new(move |at| match at.and_then(|(conn, now)| f(conn, now)) {
            Ok((value, announce)) => Completion {
                ok: true,
                announce,
                finish: Box::new(move |failed| {
                    let _ = reply.send(match failed {
                        None => Ok(value),
                        Some(e) => Err(e.with_operation(op)),
                    });
                }),
            },
            Err(e) => Completion {
                ok: false,
                announce: None,
                finish: Box::new(move |failed| {
                    let _ = reply.send(Err(failed.unwrap_or(e).with_operation(op)));
                }),
            },
        });
        self.tx.send(work).map_err(|_| writer_gone(op))?;
        answer.await.map_err(|_| writer_gone(op))?
    }
}

fn thread_failed(e: std::io::Error) -> Error {
    Error::new(
        durable_core::ErrorKind::Unavailable,
        "cannot start a SQLite backend thread",
    )
    .with_backend(crate::error::SQLITE)
    .with_operation("open")
    .with_source(e)
}

/// Least time between two checkpoints: each copies every frame committed meanwhile.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies committed WAL frames into the database file on its own thread and connection
/// (`PRAGMA wal_checkpoint(PASSIVE)`), so the writer's commits never pay for it: it is nudged
/// after each commit and checkpoints at most every [`CHECKPOINT_EVERY`]. It ends with the
/// writer thread.
struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
}

impl Checkpointer {
    fn spawn(conn: Connection) -> Result<Self> {
        let (nudge, rx) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("durable-sqlite-checkpoint".to_owned())
            .spawn(move || {
                let mut last = Instant::now();
                while rx.recv().is_ok() {
                    let since = last.elapsed();
                    if since < CHECKPOINT_EVERY {
                        // Pacing, not synchronisation: commits meanwhile join this checkpoint.
                        std::thread::sleep(CHECKPOINT_EVERY - since);
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::debug!(error = %e, "SQLite checkpoint failed; retrying after the next commit");
                    }
                    last = Instant::now();
                }
            })
            .map_err(thread_failed)?;
        Ok(Self { nudge })
    }

    /// Ask for a checkpoint (coalesced with one already asked for).
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

struct WriterThread {
    conn: Connection,
    rx: mpsc::Receiver<Work>,
    checkpoint: Checkpointer,
    pubsub: Option<InMemoryPubSub>,
    counters: Arc<Counters>,
    max_batch: usize,
    sweep_every: Duration,
    purge_chunk: usize,
}

impl WriterThread {
    fn run(self) {
        let mut next_sweep = Instant::now() + self.sweep_every;
        let mut batch: Vec<Work> = Vec::new();
        let mut idle = true;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(w) => batch.push(w),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                idle = false;
                self.commit(&mut batch);
            }
            if Instant::now() >= next_sweep {
                if let Err(e) = sweep::sweep(&self.conn, now(), self.purge_chunk, idle) {
                    tracing::warn!(error = %e, "SQLite sweep failed; retrying at the next one");
                }
                next_sweep = Instant::now() + self.sweep_every;
                idle = true;
            }
        }
    }

    /// One transaction for the whole batch; each write in its own savepoint so a rejected
    /// write leaves no trace while the others commit.
    fn commit(&self, batch: &mut Vec<Work>) {
        let now = now();
        let mut done: Vec<Completion> = Vec::with_capacity(batch.len());
        let begun = self.exec("BEGIN IMMEDIATE");
        if let Err(e) = begun {
            let e = from_sqlite("commit", e);
            for w in batch.drain(..) {
                (w(Err(e.clone())).finish)(None);
            }
            return;
        }
        for w in batch.drain(..) {
            let c = match self.exec("SAVEPOINT w") {
                Ok(()) => {
                    // A panicking write (a bug) must not take the writer thread down: its
                    // savepoint is rolled back and its caller sees the write fail.
                    let c = std::panic::catch_unwind(AssertUnwindSafe(|| w(Ok((&self.conn, now)))))
                        .unwrap_or_else(|_| Completion {
                            ok: false,
                            announce: None,
                            finish: Box::new(|_| {}),
                        });
                    let end = if c.ok {
                        self.exec("RELEASE w")
                    } else {
                        self.exec("ROLLBACK TO w")
                            .and_then(|()| self.exec("RELEASE w"))
                    };
                    match end {
                        Ok(()) => c,
                        Err(e) => {
                            (c.finish)(Some(from_sqlite("commit", e)));
                            continue;
                        }
                    }
                }
                Err(e) => {
                    (w(Err(from_sqlite("commit", e))).finish)(None);
                    continue;
                }
            };
            done.push(c);
        }
        let committed = self.exec("COMMIT");
        let failed = match committed {
            Ok(()) => {
                self.checkpoint.nudge();
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                let accepted = done.iter().filter(|c| c.ok).count();
                self.counters
                    .writes
                    .fetch_add(accepted as u64, Ordering::Relaxed);
                None
            }
            Err(e) => {
                let _ = self.exec("ROLLBACK");
                Some(from_sqlite("commit", e))
            }
        };
        // Persist, then announce: frames leave after the commit, in commit order, so
        // a subscriber can read every event it hears of, and one log's frames follow its
        // cursors.
        for c in done {
            if failed.is_none() {
                if let (Some(pubsub), Some((topic, frame))) = (&self.pubsub, c.announce) {
                    publish(pubsub, &topic, frame);
                }
            }
            (c.finish)(failed.clone());
        }
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }
}

/// The in-memory publish completes at once (a bounded broadcast send); it is never awaited
/// on a runtime here.
fn publish(pubsub: &InMemoryPubSub, topic: &str, frame: Bytes) {
    match pubsub.publish(topic, frame).now_or_never() {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::warn!(topic, error = %e, "wake-up not published; observers catch up on their next read");
        }
        None => {
            tracing::warn!(
                topic,
                "wake-up publish did not complete at once; observers catch up on their next read"
            );
        }
    }
}

/// The clock of every stored time: Unix milliseconds, shared by every process on the file.
pub(crate) fn now() -> i64 {
    i64::try_from(durable_core::now_ms()).unwrap_or(i64::MAX)
}

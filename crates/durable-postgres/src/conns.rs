//! The connections this crate's statements run on: one round trip per statement.
//!
//! sqlx 0.8's pool sends a `Sync` and waits for its reply when it hands out a connection
//! (`test_before_acquire`, on by default) and again, in a task it spawns, when the connection
//! comes back (always): three round trips and a task for one statement. Here a connection is
//! taken and given back under a mutex, with no traffic:
//!
//! - A connection goes back only after a statement that ended (with its rows or a database
//!   error); one cut off (an I/O error, a dropped future) is closed, never reused.
//! - One idle for longer than [`IDLE_CHECK`] gets a `Sync` first (the server may have
//!   restarted while it idled); hot connections go straight to work.
//! - A connection's socket belongs to the tokio runtime it was opened on, so it is only handed
//!   to tasks of that runtime: a statement never goes out on a socket whose runtime has shut
//!   down. Idle connections of other runtimes give way (oldest first) when the budget is spent.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::{ConnectOptions, Connection};
use tokio::runtime::Id as RuntimeId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// An idle connection older than this is checked with a `Sync` before it is used.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// At most `max` connections to one database, opened on demand.
pub(crate) struct Conns {
    opts: PgConnectOptions,
    max: usize,
    acquire_timeout: Duration,
    state: Mutex<State>,
    returned: Notify,
}

struct State {
    /// Oldest first; taken from the back.
    idle: Vec<Idle>,
    /// Idle and in use.
    open: usize,
}

struct Idle {
    conn: PgConnection,
    runtime: RuntimeId,
    since: Instant,
}

enum Next {
    Reuse(Idle),
    Open(Option<Idle>),
    Wait,
}

/// Whether `e` says the connection is gone: an I/O, TLS or protocol failure, or a `FATAL`
/// server error (the server ends the session after it: an administrator's termination, a
/// server shutting down).
pub(crate) fn broken(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|p| matches!(p.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Whether the statement that gave `result` ended on the server and left the connection ready
/// for the next one: rows (or none), or an error of the statement (not [`broken`]).
fn ended<T>(result: &Result<T, sqlx::Error>) -> bool {
    match result {
        Ok(_) | Err(sqlx::Error::RowNotFound) => true,
        Err(e @ sqlx::Error::Database(_)) => !broken(e),
        Err(_) => false,
    }
}

impl Conns {
    pub(crate) fn new(opts: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        Self {
            opts,
            max: usize::try_from(max).unwrap_or(usize::MAX).max(1),
            acquire_timeout,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection of the current runtime: an idle one, a new one within the budget, or the
    /// first one given back within the acquire timeout (`PoolTimedOut` after it).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) async fn get(&self) -> Result<Conn<'_>, sqlx::Error> {
        let runtime = tokio::runtime::Handle::current().id();
        let deadline = Instant::now() + self.acquire_timeout;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let next = {
                let mut s = self.lock();
                if let Some(i) = s.idle.iter().rposition(|c| c.runtime == runtime) {
                    Next::Reuse(s.idle.remove(i))
                } else if s.open < self.max {
                    s.open += 1;
                    Next::Open(None)
                } else if s.idle.is_empty() {
                    Next::Wait
                } else {
                    // The budget is held by idle connections of other runtimes.
                    Next::Open(Some(s.idle.remove(0)))
                }
            };
            let slot = || Slot {
                conns: self,
                runtime,
                held: true,
            };
            match next {
                Next::Reuse(idle) => {
                    let mut conn = Conn {
                        conn: idle.conn,
                        slot: slot(),
                    };
                    if idle.since.elapsed() > IDLE_CHECK && conn.conn.ping().await.is_err() {
                        // Closed (and its place freed) as `conn` drops; try the next one.
                        continue;
                    }
                    return Ok(conn);
                }
                Next::Open(evicted) => {
                    let slot = slot();
                    drop(evicted);
                    // On failure `slot` drops and frees the place.
                    let conn = self.opts.connect().await?;
                    return Ok(Conn { conn, slot });
                }
                Next::Wait => {
                    if tokio::time::timeout_at(deadline, returned).await.is_err() {
                        return Err(sqlx::Error::PoolTimedOut);
                    }
                }
            }
        }
    }
}

/// A connection taken from [`Conns`]: closed when dropped, unless given back.
pub(crate) struct Conn<'a> {
    /// The connection (an executor as `&mut *conn.conn`).
    pub(crate) conn: PgConnection,
    slot: Slot<'a>,
}

impl Conn<'_> {
    /// Done with the statement that gave `result`: give the connection back if the statement
    /// [`ended`]; else close it, and when the connection was [`broken`] every idle connection
    /// too (opened before the failure: after a server restart they are all dead, and each
    /// would fail one statement).
    pub(crate) fn finish<T>(self, result: &Result<T, sqlx::Error>) {
        if ended(result) {
            self.give_back();
        } else if result.as_ref().err().is_some_and(broken) {
            let conns = self.slot.conns;
            drop(self);
            let idle = {
                let mut s = conns.lock();
                let idle = std::mem::take(&mut s.idle);
                s.open -= idle.len();
                idle
            };
            if !idle.is_empty() {
                drop(idle);
                conns.returned.notify_waiters();
            }
        }
    }

    /// Give the connection back for the next statement: only after one that [`ended`].
    pub(crate) fn give_back(self) {
        let Conn { conn, mut slot } = self;
        slot.held = false;
        slot.conns.lock().idle.push(Idle {
            conn,
            runtime: slot.runtime,
            since: Instant::now(),
        });
        slot.conns.returned.notify_one();
    }
}

/// A place in the budget of [`Conns`]; dropped, it frees the place.
struct Slot<'a> {
    conns: &'a Conns,
    runtime: RuntimeId,
    /// Whether dropping frees the place (not once the connection went back to idle).
    held: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            self.conns.lock().open -= 1;
            self.conns.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn options() -> Option<PgConnectOptions> {
        let Some(url) = durable_conformance::services::env_url("postgres") else {
            assert!(
                !durable_conformance::harness::require_backends(),
                "DURABLE_TEST_POSTGRES_URL is not set"
            );
            eprintln!("SKIPPED: DURABLE_TEST_POSTGRES_URL is not set");
            return None;
        };
        Some(url.parse().unwrap())
    }

    async fn pid(c: &mut Conn<'_>) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut c.conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_given_back_is_reused_and_one_dropped_is_closed() {
        let Some(opts) = options() else { return };
        let conns = Conns::new(opts, 2, Duration::from_secs(5));
        let mut c = conns.get().await.unwrap();
        let first = pid(&mut c).await;
        c.give_back();
        let mut c = conns.get().await.unwrap();
        assert_eq!(pid(&mut c).await, first, "the idle connection is reused");
        drop(c);
        assert_eq!(conns.lock().open, 0);
        let mut c = conns.get().await.unwrap();
        assert_ne!(
            pid(&mut c).await,
            first,
            "a dropped connection is not reused"
        );
    }

    #[tokio::test]
    async fn a_full_budget_waits_for_a_connection_then_times_out() {
        let Some(opts) = options() else { return };
        let conns = Conns::new(opts, 1, Duration::from_millis(200));
        let mut held = conns.get().await.unwrap();
        let first = pid(&mut held).await;
        let err = conns.get().await.err().expect("no place for a second one");
        assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
        let (waiting, gave) = tokio::join!(conns.get(), async move { held.give_back() });
        let () = gave;
        let mut c = waiting.unwrap();
        assert_eq!(
            pid(&mut c).await,
            first,
            "the waiter gets the given-back connection"
        );
    }

    #[tokio::test]
    async fn a_statement_error_keeps_the_connection_and_a_broken_one_closes_every_idle_one() {
        let Some(opts) = options() else { return };
        let conns = Conns::new(opts.clone(), 3, Duration::from_secs(5));
        let mut c = conns.get().await.unwrap();
        let first = pid(&mut c).await;
        let failed = sqlx::query("SELECT 1/0").execute(&mut c.conn).await;
        c.finish(&failed);
        let (mut a, mut b) = (conns.get().await.unwrap(), conns.get().await.unwrap());
        assert_eq!(pid(&mut a).await, first, "kept after a database error");
        let second = pid(&mut b).await;
        a.give_back();
        // The server ends `b`'s session: its next statement fails (FATAL 57P01 or I/O).
        let mut admin = opts.connect().await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(second)
            .execute(&mut admin)
            .await
            .unwrap();
        let failed = loop {
            let r = sqlx::query("SELECT 1").execute(&mut b.conn).await;
            if r.is_err() {
                break r;
            }
        };
        assert!(broken(failed.as_ref().unwrap_err()), "{failed:?}");
        b.finish(&failed);
        assert_eq!(conns.lock().open, 0, "the idle `a` went with it");
        let mut c = conns.get().await.unwrap();
        let now = pid(&mut c).await;
        assert!(now != first && now != second);
    }

    #[test]
    fn a_connection_is_only_handed_to_the_runtime_it_was_opened_on() {
        let Some(opts) = options() else { return };
        let rt = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        };
        let (a, b) = (rt(), rt());
        let conns = Conns::new(opts, 1, Duration::from_secs(5));
        // The backend pid of a connection taken and given back on `rt`.
        let pid_on = |rt: &tokio::runtime::Runtime| {
            rt.block_on(async {
                let mut c = conns.get().await.unwrap();
                let p = pid(&mut c).await;
                c.give_back();
                p
            })
        };
        let on_a = pid_on(&a);
        drop(a);
        // The budget of one is held by `a`'s idle connection: it gives way to a new one.
        let on_b = pid_on(&b);
        assert_ne!(on_a, on_b);
        assert_eq!(conns.lock().open, 1);
    }
}

//! Fault tests with two live observers of one run:
//!
//! - the pubsub's LISTEN session is killed with `pg_terminate_backend` in the middle of the run
//!   (against `DURABLE_TEST_POSTGRES_URL`, only this process's own session is touched);
//! - the PostgreSQL server itself is killed and restarted (a server of the test's own, same
//!   port and data).
//!
//! Either way the producer continues, and the run and both observers end with exactly the
//! cursors `0..=n`, each event once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code panics on purpose

mod support;

use std::sync::Arc;
use std::time::Duration;

use durable_conformance::agent::{follow, FaultGate};
use durable_conformance::harness::require_backends;
use durable_conformance::services;
use durable_core::{
    Event, EventKind, EventLog, LogConfig, NewEvent, NewRun, RunId, RunStatus, WorkflowStore,
};
use durable_postgres::{Postgres, PostgresConfig};
use tokio::sync::watch;

const EVENTS: u64 = 2000;
const FAULT_AT: u64 = 500;
const DEADLINE: Duration = Duration::from_secs(120);
fn event(i: u64) -> NewEvent {
    if i == EVENTS {
        NewEvent::json(EventKind::Finish, &serde_json::json!({})).unwrap()
    } else {
        NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "i": i })).unwrap()
    }
}

fn check_exact(events: &[Event]) {
    assert_eq!(events.len() as u64, EVENTS + 1);
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.cursor, i as u64);
        if (i as u64) < EVENTS {
            assert_eq!(
                ev.data.to_value()["i"],
                i as u64,
                "event {i} has the wrong data"
            );
        }
    }
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::Finish)
    );
}

struct Running {
    log: EventLog,
    run: RunId,
    progress: watch::Receiver<u64>,
    errors: watch::Receiver<usize>,
    /// Opened by the test once its fault is in.
    gate: FaultGate,
    producer: tokio::task::JoinHandle<()>,
    observers: Vec<tokio::task::JoinHandle<Vec<Event>>>,
}

/// A run on `pg` with two observers and a producer appending one event at a time.
async fn start_run(pg: &Postgres) -> Running {
    let store = pg.workflow_store();
    let mut config = LogConfig::default();
    config.idle_check = Duration::from_millis(500);
    config.retry_for = Duration::from_secs(60);
    let log = EventLog::new(
        Arc::new(pg.server_cache().with_announce()),
        Arc::new(pg.pubsub().await.unwrap()),
    )
    .with_store(Arc::new(store.clone()))
    .with_config(config);
    assert!(log.announces_in_append());
    let run = RunId::generate();
    store
        .create_run(NewRun::new(run.clone()).status(RunStatus::Running))
        .await
        .unwrap();
    let lease = store
        .claim(&run, "producer", Duration::from_secs(300))
        .await
        .unwrap();
    log.create(&run, Some(lease.epoch)).await.unwrap();
    let observers = (0..2)
        .map(|_| tokio::spawn(follow(log.clone(), run.clone())))
        .collect();
    let (progress_tx, progress) = watch::channel(0u64);
    let (errors_tx, errors) = watch::channel(0usize);
    let gate = FaultGate::new(FAULT_AT + 500);
    let producer = {
        let (log, run, gate) = (log.clone(), run.clone(), gate.clone());
        tokio::spawn(async move {
            for i in 0..=EVENTS {
                durable_conformance::agent::append_once(
                    &log,
                    &run,
                    i,
                    &event(i),
                    lease.epoch,
                    &errors_tx,
                )
                .await;
                let _ = progress_tx.send(i + 1);
                gate.pass(i).await;
            }
        })
    };
    Running {
        log,
        run,
        progress,
        errors,
        gate,
        producer,
        observers,
    }
}

async fn finish(r: Running) {
    tokio::time::timeout(DEADLINE, r.producer)
        .await
        .expect("producer did not finish")
        .expect("producer panicked");
    for o in r.observers {
        let events = tokio::time::timeout(DEADLINE, o)
            .await
            .expect("observer did not finish")
            .expect("observer panicked");
        check_exact(&events);
    }
    assert!(*r.progress.borrow() > FAULT_AT);
    let stored = r.log.read(&r.run, 0, (EVENTS + 1) as usize).await.unwrap();
    assert_eq!(stored.len() as u64, EVENTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_listen_session_mid_run_observers_finish_exact() {
    let Some(url) = support::url() else {
        assert!(!require_backends(), "DURABLE_TEST_POSTGRES_URL is not set");
        eprintln!("SKIPPED: DURABLE_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = support::schema("faults");
    let pg = PostgresConfig::new(url)
        .schema(&schema)
        .connect()
        .await
        .unwrap();
    let mut r = start_run(&pg).await;
    r.progress
        .wait_for(|p| *p >= FAULT_AT)
        .await
        .expect("producer stopped early");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("durable-listen-{schema}"))
    .fetch_all(pg.pool())
    .await
    .unwrap();
    assert_eq!(
        killed,
        vec![true],
        "expected exactly this process's LISTEN session"
    );
    r.gate.open();
    finish(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_mid_run_observers_finish_exact() {
    let server = match services::postgres(&services::PostgresOptions::default()) {
        Ok(s) => s,
        Err(why) if require_backends() => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
    let pg = PostgresConfig::new(url)
        .acquire_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let mut r = start_run(&pg).await;
    r.progress
        .wait_for(|p| *p >= FAULT_AT)
        .await
        .expect("producer stopped early");
    let mut server = server;
    server.kill();
    r.gate.open();
    r.errors
        .wait_for(|n| *n > 0)
        .await
        .expect("producer stopped early");
    let server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let dir = server.dir().to_path_buf();
        assert!(
            services::wait_until(Duration::from_secs(20), || services::postgres_released(
                &dir
            )),
            "the killed server's processes did not exit"
        );
        server.restart().map(|()| server)
    })
    .await
    .expect("restart task")
    .unwrap_or_else(|e| panic!("postgres did not come back: {e}"));
    finish(r).await;
    drop(server);
}

//! Fault test: nats-server is killed and restarted (same port, same JetStream file store) in the
//! middle of a run with two live observers. The producer retries retryable errors; the run and
//! both observers end with exactly the cursors 0..=n, each event once, in order. Core NATS
//! subscriptions lose what was published while disconnected: the observers learn it from the
//! `Lagged` every subscription reports after a reconnection, and read the log.
//!
//! Uses its own `nats-server` (never the one from `DURABLE_TEST_NATS_URL`).

use std::sync::Arc;
use std::time::Duration;

use durable_conformance::agent::follow;
use durable_conformance::services;
use durable_core::{ErrorKind, NewRun, PubSub, Result};
use durable_core::{EventKind, EventLog, LogConfig, NewEvent, RunId, RunStatus, WorkflowStore};
use durable_nats::NatsConfig;

const EVENTS: u64 = 5000;
const RESTART_AT: u64 = 1000;
fn delta(i: u64) -> NewEvent {
    NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "i": i })).expect("json")
}

/// Event `i` of the run: deltas, then `finish` at `EVENTS`.
fn event(i: u64) -> NewEvent {
    if i == EVENTS {
        NewEvent::json(EventKind::Finish, &serde_json::json!({})).expect("json")
    } else {
        delta(i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_keeps_the_exact_sequence() -> Result<()> {
    let server = match services::nats() {
        Ok(s) => s,
        Err(why) if durable_conformance::harness::require_backends() => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let url = format!("nats://127.0.0.1:{}", server.port());
    let nats = NatsConfig::new(url)
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let store = nats.workflow_store();
    let mut config = LogConfig::default();
    config.idle_check = Duration::from_millis(500);
    let pubsub = Arc::new(nats.pubsub());
    let log = EventLog::new(Arc::new(nats.server_cache()), pubsub.clone())
        .with_store(Arc::new(store.clone()))
        .with_config(config);

    let run = RunId::generate();
    store
        .create_run(NewRun::new(run.clone()).status(RunStatus::Running))
        .await?;
    let lease = store
        .claim(&run, "producer", Duration::from_secs(120))
        .await?;
    log.create(&run, Some(lease.epoch)).await?;

    let observers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(follow(log.clone(), run.clone())))
        .collect();

    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let (errors_tx, mut errors) = tokio::sync::watch::channel(0usize);
    let gate = durable_conformance::agent::FaultGate::new(RESTART_AT + 500);
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

    progress
        .wait_for(|p| *p >= RESTART_AT)
        .await
        .expect("producer stopped early");
    // Kill the server, keep it down until the producer has run into the outage, then start it
    // again on the same port and store (`restart` after `kill` only starts it).
    let mut server = server;
    server.kill();
    gate.open();
    errors
        .wait_for(|n| *n > 0)
        .await
        .expect("producer stopped early");
    // While it is down, a publish fails retryably instead of being dropped.
    let e = pubsub
        .publish("restart.probe", bytes::Bytes::from_static(b"x"))
        .await
        .expect_err("publish to a dead server succeeded");
    assert!(
        e.is_retryable() && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{e}"
    );
    let server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.restart().map(|()| server)
    })
    .await
    .expect("restart task")
    .unwrap_or_else(|e| panic!("nats-server did not come back: {e}"));

    let deadline = Duration::from_secs(120);
    tokio::time::timeout(deadline, producer)
        .await
        .expect("producer did not finish")
        .expect("producer panicked");
    for o in observers {
        let events = tokio::time::timeout(deadline, o)
            .await
            .expect("observer did not finish")
            .expect("observer panicked");
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
    assert!(
        *progress.borrow() > RESTART_AT,
        "the producer did not continue after the restart"
    );
    let stored = log.read(&run, 0, (EVENTS + 1) as usize).await?;
    assert_eq!(stored.len() as u64, EVENTS + 1);
    drop(server);
    Ok(())
}

//! Fault test: the Redis server is killed and restarted (same port, same append-only file) in
//! the middle of a run with two live observers. The producer retries retryable errors; the run
//! and both observers end with exactly the cursors 0..=n, each event once, in order.
//!
//! Uses its own `redis-server` (never the one from `DURABLE_TEST_REDIS_URL`).

use std::sync::Arc;
use std::time::Duration;

use durable_conformance::agent::follow;
use durable_conformance::services::{self, RedisOptions};
use durable_core::{ErrorKind, NewRun, PubSub, Result};
use durable_core::{EventKind, EventLog, LogConfig, NewEvent, RunId, RunStatus, WorkflowStore};
use durable_redis::RedisConfig;

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
    let server = match services::redis(&RedisOptions { appendonly: true }) {
        Ok(s) => s,
        Err(why) if durable_conformance::harness::require_backends() => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let url = format!("redis://127.0.0.1:{}", server.port());
    let redis = RedisConfig::new(url)
        .response_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let store = redis.workflow_store();
    let mut config = LogConfig::default();
    config.idle_check = Duration::from_millis(500);
    let pubsub = Arc::new(redis.pubsub().await?);
    let log = EventLog::new(Arc::new(redis.server_cache()), pubsub.clone())
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
    // again on the same port and data (`restart` after `kill` only starts it).
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
    .unwrap_or_else(|e| panic!("redis did not come back: {e}"));

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

/// A durable agent's run on Redis while the server is killed for 1.5 s and restarted: the run
/// continues by itself (its writer gives up after 200 ms, so the executing instance must
/// restart the interrupted step on its own, without anyone calling `recover()`), the tool runs
/// once, and an observer on another instance that re-observes from its last cursor after an
/// error ends with exactly the events of an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_agent_continues_by_itself_after_a_server_restart() -> Result<()> {
    use durable_conformance::agent::{assert_contiguous, client_view};
    use durable_core::agent::{
        Agent, DurableAgent, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError, Turn,
    };

    let server = match services::redis(&RedisOptions { appendonly: true }) {
        Ok(s) => s,
        Err(why) if durable_conformance::harness::require_backends() => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let url = format!("redis://127.0.0.1:{}", server.port());
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let script = || {
        vec![
            Turn::new().deltas(300, "word ").tool_call(
                "call-0",
                "lookup",
                serde_json::json!({"q": "x"}),
            ),
            Turn::new().deltas(300, "more "),
        ]
    };
    let agent = |model: ScriptedModel, runs: Arc<std::sync::atomic::AtomicU32>| {
        Agent::builder()
            .id("restarter")
            .model(model)
            .tool(FnTool::new(
                "lookup",
                "Look something up",
                move |_: serde_json::Value, _ctx: ToolContext| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok::<_, ToolError>(serde_json::json!("found"))
                    }
                },
            ))
            .build()
            .expect("agent")
    };
    // What a client sees of an uninterrupted run.
    let reference = {
        let a = DurableAgent::new(agent(ScriptedModel::new(script()), Arc::default()));
        let run = a.stream("go", StreamOptions::new()).await?;
        client_view(&durable_conformance::agent::collect(run, Duration::from_secs(30)).await)
    };
    let connect = |retry_for: Duration| {
        let url = url.clone();
        async move {
            let redis = RedisConfig::new(url)
                .key_prefix("restart-agent:")
                .response_timeout(Duration::from_secs(1))
                .connect()
                .await?;
            let mut config = LogConfig::default();
            config.idle_check = Duration::from_millis(500);
            config.retry_for = retry_for;
            Ok::<_, durable_core::Error>((redis.clone(), redis.pubsub().await?, config))
        }
    };
    let (redis, pubsub, config) = connect(Duration::from_millis(200)).await?;
    let worker = DurableAgent::builder(agent(
        ScriptedModel::new(script()).with_delay(Duration::from_micros(500)),
        runs.clone(),
    ))
    .cache(redis.server_cache())
    .pubsub(pubsub)
    .store(redis.workflow_store())
    .log_config(config)
    .build()?;
    let (redis_b, pubsub_b, config_b) = connect(Duration::from_secs(15)).await?;
    let viewer = DurableAgent::builder(agent(ScriptedModel::new(script()), Arc::default()))
        .cache(redis_b.server_cache())
        .pubsub(pubsub_b)
        .store(redis_b.workflow_store())
        .log_config(config_b)
        .build()?;

    let run = worker.stream("go", StreamOptions::new()).await?;
    let run_id = run.run_id().clone();
    drop(run);
    let follower = tokio::spawn(follow(viewer.log().clone(), run_id.clone()));
    // Mid-answer: kill the server and keep it down for 1.5 s (the fault, not a wait for a
    // condition), then bring it back on the same port and data.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while viewer.log().len(&run_id).await?.unwrap_or(0) < 150 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut server = server;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.restart().map(|()| server)
    })
    .await
    .expect("restart task")
    .unwrap_or_else(|e| panic!("redis did not come back: {e}"));

    let events = tokio::time::timeout(Duration::from_secs(120), follower)
        .await
        .expect("the run did not finish by itself")
        .expect("observer panicked");
    assert_contiguous(&events);
    assert!(
        events.iter().any(|e| e.kind == EventKind::StepRestart),
        "the interrupted step was restarted by the executing instance"
    );
    assert_eq!(client_view(&events), reference);
    assert_eq!(
        events.last().map(|e| e.kind.clone()),
        Some(EventKind::Finish)
    );
    let status =
        durable_conformance::agent::settled_status(&viewer, &run_id, Duration::from_secs(30)).await;
    assert_eq!(status, RunStatus::Completed);
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the tool ran once"
    );
    drop(server);
    Ok(())
}

//! Past one server: a Redis Cluster (three masters, one replica each).
//!
//! - The whole conformance suite and every durable-agent scenario against the cluster at
//!   `DURABLE_TEST_REDIS_CLUSTER_URL` (comma-separated seed URLs; `cargo xtask test` starts one).
//! - A failover test on a cluster of its own: a run streams with two live observers, the master
//!   holding the run's slot is killed (SIGKILL) mid-run and its replica takes over
//!   (`CLUSTER FAILOVER TAKEOVER`); the run completes with each event once at its cursor, and
//!   both observers' stitched sequences are exact. Writes wait for one replica
//!   (`RedisConfig::replica_acks`), so nothing acknowledged is lost with the master.

use std::sync::Arc;
use std::time::Duration;

use durable_conformance::agent::follow;
use durable_conformance::services::{self, RedisClusterOptions};
use durable_core::WorkflowStore;
use durable_core::{EventKind, EventLog, LogConfig, NewEvent, NewRun, Result, RunId, RunStatus};
use durable_redis::{Redis, RedisConfig};

const CLUSTER_URL: &str = "DURABLE_TEST_REDIS_CLUSTER_URL";

async fn connect(prefix: &str) -> std::result::Result<Redis, String> {
    let url = services::env_url_var(CLUSTER_URL).ok_or(format!("{CLUSTER_URL} is not set"))?;
    RedisConfig::new(url)
        .key_prefix(prefix)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn backend_of(redis: Redis) -> std::result::Result<durable_conformance::Backend, String> {
    let pubsub = redis.pubsub().await.map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("redis")
        .cache(redis.server_cache())
        .pubsub(pubsub)
        .store(redis.workflow_store()))
}

async fn backend() -> std::result::Result<durable_conformance::Backend, String> {
    backend_of(connect("durable-cluster-test:").await?).await
}

async fn agent_backend() -> std::result::Result<durable_conformance::Backend, String> {
    backend_of(connect("durable-cluster-agent:").await?).await
}

mod conformance {
    durable_conformance::suite!(super::backend);
}

mod agent {
    durable_conformance::agent_suite!(super::agent_backend);
}

const EVENTS: u64 = 2000;
const KILL_AT: u64 = 500;
/// Event `i` of the run: deltas, then `finish` at `EVENTS`.
fn event(i: u64) -> NewEvent {
    if i == EVENTS {
        NewEvent::json(EventKind::Finish, &serde_json::json!({})).expect("json")
    } else {
        NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "i": i })).expect("json")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_the_failover_of_its_master() -> Result<()> {
    let cluster = match services::redis_cluster(&RedisClusterOptions::default()) {
        Ok(c) => c,
        Err(why) if durable_conformance::harness::require_backends() => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let redis = RedisConfig::new(cluster.url())
        .response_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .replica_acks(1, Duration::from_secs(2))
        .connect()
        .await?;
    let store = redis.workflow_store();
    let mut config = LogConfig::default();
    config.idle_check = Duration::from_millis(500);
    let log = EventLog::new(
        Arc::new(redis.server_cache()),
        Arc::new(redis.pubsub().await?),
    )
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
    let (errors_tx, _errors) = tokio::sync::watch::channel(0usize);
    let gate = durable_conformance::agent::FaultGate::new(KILL_AT + 500);
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
        .wait_for(|p| *p >= KILL_AT)
        .await
        .expect("producer stopped early");
    // Everything of the run lives in the slot of its hash tag, the run id.
    let (cluster, master_port) = tokio::task::spawn_blocking({
        let tag = format!("{{{run}}}");
        let gate = gate.clone();
        move || {
            let mut cluster = cluster;
            let master = cluster.master_of(&tag).expect("the run's master");
            let replica = cluster
                .topology()
                .expect("topology")
                .into_iter()
                .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
                .expect("the master has a replica");
            cluster.node_mut(master.port).expect("master node").kill();
            gate.open();
            cluster.failover(replica.port).expect("takeover");
            (cluster, master.port)
        }
    })
    .await
    .expect("failover task");
    let failed_over_at = *progress.borrow();

    // The old master comes back as a replica of the new one, so writes find a replica again.
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster
            .node_mut(master_port)
            .expect("node")
            .restart()
            .and_then(|()| cluster.wait_ok(Duration::from_secs(30)))
            .map(|()| cluster)
    })
    .await
    .expect("restart task")
    .unwrap_or_else(|e| panic!("the cluster did not recover: {e}"));

    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, producer)
        .await
        .expect("producer did not finish")
        .expect("producer panicked");
    assert!(failed_over_at < EVENTS, "the failover came after the run");
    for o in observers {
        let events = tokio::time::timeout(deadline, o)
            .await
            .expect("observer did not finish")
            .expect("observer panicked");
        assert_eq!(events.len() as u64, EVENTS + 1);
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev.cursor, i as u64);
            if (i as u64) < EVENTS {
                assert_eq!(ev.data.to_value()["i"], i as u64, "event {i} is wrong");
            }
        }
        assert_eq!(
            events.last().map(|e| e.kind.clone()),
            Some(EventKind::Finish)
        );
    }
    assert_eq!(log.len(&run).await?, Some(EVENTS + 1));
    let stored = log.read(&run, 0, (EVENTS + 1) as usize).await?;
    assert_eq!(stored.len() as u64, EVENTS + 1);
    drop(cluster);
    Ok(())
}

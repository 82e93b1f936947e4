//! A worker process of the fault suite: runs durable agents on one backend until every run
//! given is complete, printing what its observer of each run receives.
//!
//! `durable-fault-worker --backend <redis|postgres|nats|sqlite> --ns <namespace>
//! --retention-ms <ms> --side <file>
//! --runs <id,id,…> --from <cursor,cursor,…> --deltas <n> --delay-ms <ms> [--gate <file>]` (the script's
//! size and pace, and a file the second tool call waits for: see `durable_faults::agent`), the server's URL in
//! `DURABLE_TEST_<BACKEND>_URL`. It first records in the side file which tool calls are already
//! checkpointed (`seen` lines: none of them may run here), calls `recover()`, starts each run
//! (or picks it up: `stream` with a run id is idempotent), observes each from its cursor
//! (observer `i` for run `i`), prints `observe(0)` of each final log (observer `runs + i`), and
//! exits 0 once every run is `completed`, with its retention scheduled.

use std::path::PathBuf;
use std::time::Duration;

use durable_conformance::agent::settled_status;
use durable_core::agent::{DurableAgent, StreamOptions};
use durable_core::{RunId, RunStatus};
use durable_faults::agent::{agent, record, INPUT};
use durable_faults::backend::{connect, Target};
use durable_faults::process::{follow_print, Flags};

fn main() {
    let flags = Flags::parse();
    let target = Target::from_flags(flags.all()).unwrap_or_else(|e| panic!("{e}"));
    let side = PathBuf::from(flags.required("side"));
    let (runs, from): (Vec<RunId>, Vec<u64>) = flags.observers().into_iter().unzip();
    let deltas: usize = flags.required("deltas").parse().expect("--deltas");
    let delay = Duration::from_millis(flags.required("delay-ms").parse().expect("--delay-ms"));
    let gate = flags.get("gate").map(PathBuf::from);

    durable_faults::runtime().block_on(async {
        let conn = connect(&target, 4).await.unwrap_or_else(|e| panic!("{e}"));
        let pid = std::process::id();
        for run in &runs {
            let snapshot = conn.store.load(run).await.expect("load");
            for (key, _) in snapshot.iter().flat_map(|s| &s.checkpoints) {
                if key.contains("-tool-") && !key.contains("-start-") {
                    record(&side, &format!("seen {pid} {run} {key}"));
                }
            }
        }
        let agent = DurableAgent::builder(agent(deltas, delay, Some(side), gate))
            .cache_arc(conn.cache.clone())
            .pubsub_arc(conn.pubsub.clone())
            .store_arc(conn.store.clone())
            .log_config(target.log_config())
            .worker_id("fault-worker")
            .build()
            .expect("durable agent");
        // A run that reached its terminal status in a killed worker may not have had its
        // retention scheduled (it is set after the status) and `recover()` skips terminal runs:
        // schedule it here, as `retire` is idempotent.
        retire_terminal(&agent, &runs).await;
        agent.recover().await.expect("recover");
        let mut observers = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            drop(
                agent
                    .stream(INPUT, StreamOptions::new().run_id(run.clone()))
                    .await
                    .expect("stream"),
            );
            observers.push(tokio::spawn(follow_print(
                agent.log().clone(),
                run.clone(),
                i,
                from[i],
            )));
        }
        for o in observers {
            o.await.expect("observer");
        }
        let ended = std::time::Instant::now();
        // `observe(0)` of each final log, as observer `runs.len() + i`.
        for (i, run) in runs.iter().enumerate() {
            let last = tokio::spawn(follow_print(
                agent.log().clone(),
                run.clone(),
                runs.len() + i,
                0,
            ));
            if let Err(e) = last.await {
                let record = agent.store().get_run(run).await;
                panic!(
                    "observe(0) of the final log of {run}, {:?} after the observers ended \
                     (record {record:?}): {e}",
                    ended.elapsed()
                );
            }
        }
        for run in &runs {
            let status = settled_status(&agent, run, Duration::from_secs(30)).await;
            assert_eq!(status, RunStatus::Completed, "run {run}");
        }
        // The executing task schedules retention after the terminal status; DurableAgent offers
        // no way to wait for it, and exiting now would cut it off.
        retire_terminal(&agent, &runs).await;
    });
}

async fn retire_terminal(agent: &DurableAgent, runs: &[RunId]) {
    for run in runs {
        match agent.status(run).await {
            Ok(record) if record.status.is_terminal() => {
                agent.log().retire(run).await.expect("retire");
            }
            Ok(_) => {}
            Err(e) if e.kind() == durable_core::ErrorKind::NotFound => {}
            Err(e) => panic!("status of {run}: {e}"),
        }
    }
}

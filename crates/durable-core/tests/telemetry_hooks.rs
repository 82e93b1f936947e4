//! The trace context of a run's creation is kept in its run record and attached to every
//! execution's `durable.run` span, in whichever instance executes it:
//! - the run is created on one instance and suspends for approval; a second instance, inside
//!   another trace, approves and executes the rest, under the first trace;
//! - a run is created on an instance whose runtime then dies mid-run (a crash); the instance
//!   that recovers it, inside another trace, continues the creating trace.

#![allow(clippy::unwrap_used)] // test code panics on purpose

mod support;

use std::sync::Mutex;
use std::time::Duration;

use durable_conformance::agent::settled_status;
use durable_core::agent::{Agent, DurableAgent, StreamOptions};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::telemetry::{set_trace_hooks, TraceHooks};
use durable_core::{EventKind, ObserveOptions, OnSuspend, RunStatus};
use futures::StreamExt;

static CURRENT: Mutex<Option<String>> = Mutex::new(None);
static ATTACHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

const TRACE_A: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_B: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_C: &str = "00-11111111111111111111111111111111-2222222222222222-01";
const DEADLINE: Duration = Duration::from_secs(20);

fn set_current(tp: Option<&str>) {
    *CURRENT.lock().unwrap() = tp.map(str::to_owned);
}

fn attached() -> Vec<String> {
    ATTACHED.lock().unwrap().clone()
}

struct Backends {
    cache: InMemoryCache,
    pubsub: InMemoryPubSub,
    store: InMemoryWorkflowStore,
}

impl Backends {
    fn agent(&self, agent: Agent, worker: &str) -> DurableAgent {
        DurableAgent::builder(agent)
            .cache(self.cache.clone())
            .pubsub(self.pubsub.clone())
            .store(self.store.clone())
            .worker_id(worker)
            .build()
            .unwrap()
    }
}

#[test]
fn every_execution_continues_the_creating_trace() {
    assert!(set_trace_hooks(TraceHooks {
        capture: || CURRENT.lock().unwrap().clone(),
        attach: |_span, tp| ATTACHED.lock().unwrap().push(tp.to_owned()),
    }));
    // Installed once per process.
    assert!(!set_trace_hooks(TraceHooks {
        capture: || None,
        attach: |_, _| {},
    }));
    let main = tokio::runtime::Runtime::new().unwrap();
    let b = Backends {
        cache: InMemoryCache::new(),
        pubsub: InMemoryPubSub::new(),
        store: InMemoryWorkflowStore::new(),
    };

    // Approval from another instance in another trace.
    main.block_on(async {
        let (one, two) = (
            b.agent(support::weather_agent(false), "one"),
            b.agent(support::weather_agent(false), "two"),
        );
        set_current(Some(TRACE_A));
        let run = one
            .stream(
                "Weather in Paris?",
                StreamOptions::new().require_tool_approval(true),
            )
            .await
            .unwrap();
        let run_id = run.run_id().clone();
        let events: Vec<_> = run.collect().await;
        assert_eq!(
            events.last().unwrap().as_ref().unwrap().kind,
            EventKind::Suspended
        );
        assert_eq!(attached(), [TRACE_A]);

        set_current(Some(TRACE_B));
        two.approve_tool_call(&run_id, "call-0").await.unwrap();
        let mut rest = two
            .observe(
                &run_id,
                ObserveOptions::from(events.len() as u64).on_suspend(OnSuspend::Wait),
            )
            .await
            .unwrap();
        let mut last = None;
        while let Some(e) = tokio::time::timeout(DEADLINE, rest.next()).await.unwrap() {
            let e = e.unwrap();
            if e.kind == EventKind::Suspended {
                two.approve_tool_call(&run_id, "call-1").await.unwrap();
            }
            last = Some(e.kind);
        }
        assert_eq!(last, Some(EventKind::Finish));
        assert_eq!(attached(), [TRACE_A, TRACE_A, TRACE_A]);
    });

    // A crash mid-run, recovered in another trace.
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let crashing = b.agent(
        support::weather_agent_paced(false, Duration::from_millis(20)),
        "node-1",
    );
    set_current(Some(TRACE_C));
    let run_id = doomed.block_on(async {
        let mut run = crashing
            .stream("Weather in Paris?", StreamOptions::new())
            .await
            .unwrap();
        let first = tokio::time::timeout(DEADLINE, run.next()).await.unwrap();
        assert!(first.unwrap().is_ok());
        run.run_id().clone()
    });
    drop(doomed);
    drop(crashing);
    assert_eq!(attached().last().map(String::as_str), Some(TRACE_C));
    let executions = attached().len();
    set_current(Some(TRACE_B));
    main.block_on(async {
        let recovering = b.agent(support::weather_agent(false), "node-1");
        assert!(recovering.recover().await.unwrap().contains(&run_id));
        let events: Vec<_> = recovering
            .observe(&run_id, ObserveOptions::from(0))
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(
            events.last().unwrap().as_ref().unwrap().kind,
            EventKind::Finish
        );
        assert_eq!(
            settled_status(&recovering, &run_id, DEADLINE).await,
            RunStatus::Completed
        );
    });
    let after = attached();
    assert!(after.len() > executions, "the recovery executed the run");
    assert!(
        after[executions..].iter().all(|t| t == TRACE_C),
        "{after:?}"
    );

    // Garbage from a hook is never stored or attached.
    set_current(Some("not a\ntraceparent"));
    let n = attached().len();
    main.block_on(async {
        let again = b.agent(support::weather_agent(false), "three");
        let run = again.stream("Again?", StreamOptions::new()).await.unwrap();
        let _: Vec<_> = run.collect().await;
    });
    assert_eq!(attached().len(), n);
}

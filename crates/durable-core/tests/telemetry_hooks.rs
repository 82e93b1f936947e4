//! The trace context of a run's creation is kept in its run record and attached to every
//! execution's `durable.run` span, in whichever instance executes it: here the run is created
//! on one instance, suspends for approval, and a second instance (with another current trace)
//! approves and executes the rest — under the first trace.

#![allow(clippy::unwrap_used)] // test code panics on purpose

mod support;

use std::sync::Mutex;
use std::time::Duration;

use durable_core::agent::{DurableAgent, StreamOptions};
use durable_core::memory::{InMemoryCache, InMemoryPubSub, InMemoryWorkflowStore};
use durable_core::telemetry::{set_trace_hooks, TraceHooks};
use durable_core::{EventKind, ObserveOptions, OnSuspend, RunStatus};
use futures::StreamExt;

static CURRENT: Mutex<Option<String>> = Mutex::new(None);
static ATTACHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

const TRACE_A: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_B: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn set_current(tp: Option<&str>) {
    *CURRENT.lock().unwrap() = tp.map(str::to_owned);
}

#[tokio::test(flavor = "current_thread")]
async fn every_execution_continues_the_creating_trace() {
    assert!(set_trace_hooks(TraceHooks {
        capture: || CURRENT.lock().unwrap().clone(),
        attach: |_span, tp| ATTACHED.lock().unwrap().push(tp.to_owned()),
    }));
    // Installed once per process.
    assert!(!set_trace_hooks(TraceHooks {
        capture: || None,
        attach: |_, _| {},
    }));
    let (cache, pubsub, store) = (
        InMemoryCache::new(),
        InMemoryPubSub::new(),
        InMemoryWorkflowStore::new(),
    );
    let instance = || {
        DurableAgent::builder(support::weather_agent(false))
            .cache(cache.clone())
            .pubsub(pubsub.clone())
            .store(store.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (instance(), instance());

    set_current(Some(TRACE_A));
    let run = a
        .stream(
            "Weather in Paris?",
            StreamOptions::new().require_tool_approval(true),
        )
        .await
        .unwrap();
    let run_id = run.run_id().clone();
    let events: Vec<_> = run.collect().await;
    assert!(events
        .iter()
        .any(|e| e.as_ref().unwrap().kind == EventKind::ToolCallApproval));
    assert_eq!(ATTACHED.lock().unwrap().as_slice(), [TRACE_A]);

    // Another instance, inside another trace, approves and executes the rest.
    set_current(Some(TRACE_B));
    b.approve_tool_call(&run_id, "call-0").await.unwrap();
    let rest: Vec<_> = b
        .observe(
            &run_id,
            ObserveOptions::from(events.len() as u64).on_suspend(OnSuspend::Wait),
        )
        .await
        .unwrap()
        .collect()
        .await;
    let kinds: Vec<_> = rest
        .iter()
        .map(|e| e.as_ref().unwrap().kind.clone())
        .collect();
    assert_eq!(kinds.last(), Some(&EventKind::Finish), "{kinds:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.status(&run_id).await.unwrap().status != RunStatus::Completed {
        assert!(tokio::time::Instant::now() < deadline, "run not completed");
        tokio::task::yield_now().await;
    }
    assert_eq!(ATTACHED.lock().unwrap().as_slice(), [TRACE_A, TRACE_A]);

    // Garbage from a hook is never stored.
    set_current(Some("not a\ntraceparent"));
    let run = b.stream("Again?", StreamOptions::new()).await.unwrap();
    let _: Vec<_> = run.collect().await;
    assert_eq!(ATTACHED.lock().unwrap().len(), 2);
}

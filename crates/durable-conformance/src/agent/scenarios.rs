//! Durable-agent scenarios every backend proves with one [`agent_suite!`](crate::agent_suite)
//! line: reconnecting, approval and abort across instances, crash recovery at every point of a
//! run, takeover by another worker, retention. Each takes a [`Rig`]; instances built on it stand
//! for processes sharing the backends.

use std::collections::HashMap;
use std::time::Duration;

use durable_core::agent::{
    checkpoints, DurableRun, EventedAgent, ResumeData, ScriptItem, ScriptedModel, StreamOptions,
    Turn,
};
use durable_core::{ErrorKind, Event, EventKind, ObserveOptions, RunId, RunStatus};
use futures::StreamExt;
use serde_json::{json, Value};

use super::rig::{process_runtime, script, Completions, Rig, Scenario};
use super::{assert_contiguous, client_view, collect, observe_all, settled_status};
use crate::harness::{ensure, skip_capability, CaseResult, Stop};

/// Bound on every wait for the next event or a settled state.
const DEADLINE: Duration = Duration::from_secs(30);

macro_rules! scenarios {
    ($($scenario:ident),* $(,)?) => {
        /// Calls `$m!{ $args [scenario, …] }` with every scenario name, in registry order.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __for_each_scenario {
            ($m:path, $args:tt) => {
                $m!{ $args [$($scenario),*] }
            };
        }

        /// Every scenario, in order.
        pub static ALL: &[Scenario] = &[$(Scenario { name: stringify!($scenario), run: $scenario }),*];
    };
}

scenarios!(
    reconnect_from_every_offset_is_exact_while_the_run_outlives_its_caller,
    approval_suspends_then_resumes_on_another_instance,
    abort_from_another_instance_ends_the_run,
    crash_at_every_event_then_recover_finishes_exactly_once,
    crash_mid_model_step_or_inside_a_tool_then_recover,
    superseded_owner_is_fenced_off,
    evented_run_survives_its_worker,
    finished_runs_leave_nothing_behind_after_retention,
);

/// The scenario called `name`.
pub(crate) fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// The next event of `run`, `None` at its end; fails on an error or a stall.
async fn next(run: &mut DurableRun) -> Result<Option<Event>, Stop> {
    match tokio::time::timeout(DEADLINE, run.next()).await {
        Err(_) => Err(Stop::Fail(format!(
            "run {} stalled for {DEADLINE:?}",
            run.run_id()
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Ok(e))) => Ok(Some(e)),
        Ok(Some(Err(e))) => Err(Stop::Fail(format!("observe yielded an error: {e}"))),
    }
}

/// The next event of `run`, which must not end yet.
async fn next_event(run: &mut DurableRun) -> Result<Event, Stop> {
    next(run)
        .await?
        .ok_or_else(|| Stop::Fail(format!("run {} ended early", run.run_id())))
}

/// Read `run` up to and including the first event `stop` accepts.
async fn until(run: &mut DurableRun, mut stop: impl FnMut(&Event) -> bool) -> CaseResult {
    loop {
        if stop(&next_event(run).await?) {
            return Ok(());
        }
    }
}

fn is_call(e: &Event, id: &str) -> bool {
    e.kind == EventKind::ToolCall && e.data.to_value()["tool_call_id"] == id
}

fn last_kind(events: &[Event]) -> Option<EventKind> {
    events.last().map(|e| e.kind.clone())
}

/// Every tool call of the script completed exactly once.
fn each_call_completed_once(done: &Completions, calls: usize) -> CaseResult {
    let done = done.snapshot();
    ensure(
        done.len() == calls && done.values().all(|n| *n == 1),
        || format!("completed tool calls {done:?}, want each of {calls} exactly once"),
    )
}

/// G5 across a crash, for the three calls of [`script`] (call `i` is the only call of step
/// `i`, checkpointed as `s{i}-tool-0`): a call whose result was checkpointed when the process
/// died never runs again; one the dead process completed without a visible checkpoint may run
/// once more (its checkpoint may also land late, from a write still in flight, and then it does
/// not); every call ends up completed.
fn no_checkpointed_call_ran_again(
    at_crash: &HashMap<String, u32>,
    after: &HashMap<String, u32>,
    checkpointed: &[String],
) -> CaseResult {
    for i in 0..3 {
        let call = format!("call-{i}");
        let (before, now) = (
            at_crash.get(&call).copied().unwrap_or(0),
            after.get(&call).copied().unwrap_or(0),
        );
        let ok = if checkpointed.contains(&checkpoints::tool_key(i, 0)) {
            before == 1 && now == 1
        } else {
            now == 1 || (before == 1 && now == 2)
        };
        ensure(ok, || {
            format!("{call}: {before} runs at the crash, {now} in the end (checkpointed: {checkpointed:?})")
        })?;
    }
    ensure(after.len() == 3, || {
        format!("unexpected tool calls {after:?}")
    })
}

/// What an uninterrupted run of [`script`] looks like to a client.
fn reference(rig: &Rig) -> Result<Vec<(String, Value)>, Stop> {
    let a = rig.instance(
        rig.forecaster(ScriptedModel::new(script()), &Completions::default(), None)?,
        "reference",
    )?;
    rig.block_on(async {
        let run = a.stream("Weather?", StreamOptions::new()).await?;
        Ok(client_view(&collect(run, DEADLINE).await))
    })
}

/// A client disconnects mid-run and reconnects on another instance from its offset: it sees
/// exactly what it missed, then the rest; the run went on without it. Afterwards
/// `observe(k)` is exactly the log from `k` for every `k`.
pub fn reconnect_from_every_offset_is_exact_while_the_run_outlives_its_caller(
    rig: &Rig,
) -> CaseResult {
    let done = Completions::default();
    let model = ScriptedModel::new(script()).with_delay(Duration::from_micros(200));
    let a = rig.instance(rig.forecaster(model.clone(), &done, None)?, "a")?;
    let b = rig.instance(rig.forecaster(model, &done, None)?, "b")?;
    rig.block_on(async {
        let mut run = a.stream("Weather?", StreamOptions::new()).await?;
        let run_id = run.run_id().clone();
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(next_event(&mut run).await?);
        }
        drop(run); // the client disconnects; the run goes on
        let offset = seen.last().map_or(0, |e| e.cursor + 1);
        let rest = b.observe(&run_id, ObserveOptions::from(offset)).await?;
        seen.extend(collect(rest, DEADLINE).await);
        let full = observe_all(&b, &run_id, DEADLINE).await;
        ensure(seen == full, || {
            format!(
                "prefix + observe({offset}) differs from observe(0): {:?} vs {:?}",
                kinds(&seen),
                kinds(&full)
            )
        })?;
        assert_contiguous(&full);
        ensure(last_kind(&full) == Some(EventKind::Finish), || {
            format!("the run did not finish: {:?}", kinds(&full))
        })?;
        let status = settled_status(&a, &run_id, DEADLINE).await;
        ensure(status == RunStatus::Completed, || {
            format!("status {status:?}")
        })?;
        for k in 0..=full.len() {
            let got = collect(
                b.observe(&run_id, ObserveOptions::from(k as u64)).await?,
                DEADLINE,
            )
            .await;
            ensure(got[..] == full[k..], || {
                format!(
                    "observe({k}) returned {} events, not the log from {k}",
                    got.len()
                )
            })?;
        }
        each_call_completed_once(&done, 3)
    })
}

/// A tool call that needs approval suspends the run, persisted before announced; a second
/// instance approves and the run finishes there, or declines and the model is told. Resuming a
/// run that is not suspended, or unknown, is a clear error.
pub fn approval_suspends_then_resumes_on_another_instance(rig: &Rig) -> CaseResult {
    let done = Completions::default();
    let model = ScriptedModel::new([
        Turn::new().tool_call("call-0", "weather", json!({"city": "Paris"})),
        Turn::text("Sunny."),
    ]);
    let a = rig.instance(rig.forecaster(model.clone(), &done, None)?, "a")?;
    let b = rig.instance(rig.forecaster(model, &done, None)?, "b")?;
    let opts = StreamOptions::new().require_tool_approval(true);
    rig.block_on(async {
        let run = a.stream("Weather?", opts.clone()).await?;
        let run_id = run.run_id().clone();
        let events = collect(run, DEADLINE).await;
        let k = kinds(&events);
        ensure(k.ends_with(&["tool-call-approval", "suspended"]), || {
            format!("a run waiting for approval ends with {k:?}")
        })?;
        let status = a.status(&run_id).await?.status;
        ensure(status == RunStatus::Suspended, || {
            format!("status {status:?} after `suspended` was announced")
        })?;
        ensure(done.snapshot().is_empty(), || {
            "the tool ran before approval".into()
        })?;

        let wrong = b.approve_tool_call(&run_id, "other-call").await;
        ensure(
            wrong
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::InvalidInput),
            || {
                format!(
                    "approving a call the run does not wait for: {:?}",
                    wrong.err()
                )
            },
        )?;
        let resumed = collect(b.approve_tool_call(&run_id, "call-0").await?, DEADLINE).await;
        ensure(
            resumed.first().map(|e| e.cursor) == Some(events.len() as u64),
            || "the resumed stream does not start after `suspended`".into(),
        )?;
        ensure(last_kind(&resumed) == Some(EventKind::Finish), || {
            format!("the approved run ended with {:?}", kinds(&resumed))
        })?;
        each_call_completed_once(&done, 1)?;
        let full = observe_all(&b, &run_id, DEADLINE).await;
        assert_contiguous(&full);
        ensure(full.len() == events.len() + resumed.len(), || {
            "the log is not the suspended part plus the resumed part".into()
        })?;

        let again = b.resume(&run_id, ResumeData::approve()).await;
        ensure(
            again
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::InvalidState),
            || format!("resuming a finished run: {:?}", again.err()),
        )?;
        let unknown = RunId::new(rig.unique("missing"))?;
        let missing = b.resume(&unknown, ResumeData::approve()).await;
        ensure(
            missing
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::NotFound),
            || format!("resuming an unknown run: {:?}", missing.err()),
        )?;

        // Declined on the other instance: the model is told, the tool never runs.
        let run = a.stream("Weather?", opts).await?;
        let run_id = run.run_id().clone();
        collect(run, DEADLINE).await;
        let declined = collect(
            b.decline_tool_call(&run_id, "call-0", Some("too expensive".into()))
                .await?,
            DEADLINE,
        )
        .await;
        let result = declined
            .iter()
            .find(|e| e.kind == EventKind::ToolResult)
            .map(|e| e.data.to_value())
            .ok_or_else(|| Stop::Fail("a declined call has no tool-result".into()))?;
        ensure(
            result["declined"] == true
                && result["result"]
                    .as_str()
                    .is_some_and(|r| r.contains("not approved by the user: too expensive")),
            || format!("declined tool result {result}"),
        )?;
        ensure(last_kind(&declined) == Some(EventKind::Finish), || {
            format!("the declined run ended with {:?}", kinds(&declined))
        })?;
        each_call_completed_once(&done, 1)
    })
}

/// A second instance observes a run started on the first and aborts it mid-step: every
/// observer ends with `abort`; aborting again is idempotent, an unknown run is `NotFound`.
pub fn abort_from_another_instance_ends_the_run(rig: &Rig) -> CaseResult {
    let done = Completions::default();
    let hanging = ScriptedModel::new([Turn::text("thinking about it").hang()]);
    let a = rig.instance(rig.forecaster(hanging.clone(), &done, None)?, "a")?;
    let other = rig.instance(rig.forecaster(hanging, &done, None)?, "b")?;
    rig.block_on(async {
        let mut run = a.stream("Weather?", StreamOptions::new()).await?;
        let run_id = run.run_id().clone();
        // Mid-step: it produced text and hangs in the model call.
        until(&mut run, |e| e.kind == EventKind::TextDelta).await?;
        let watcher = other.observe(&run_id, ObserveOptions::from(0)).await?;
        let status = other.abort(&run_id).await?;
        ensure(status == RunStatus::Aborted, || {
            format!("abort gave {status:?}")
        })?;
        let seen = collect(watcher, DEADLINE).await;
        ensure(last_kind(&seen) == Some(EventKind::Abort), || {
            format!(
                "the other instance's observer ended with {:?}",
                kinds(&seen)
            )
        })?;
        let rest = collect(run, DEADLINE).await;
        ensure(last_kind(&rest) == Some(EventKind::Abort), || {
            format!("the caller's stream ended with {:?}", kinds(&rest))
        })?;
        let settled = settled_status(&other, &run_id, DEADLINE).await;
        ensure(settled == RunStatus::Aborted, || {
            format!("the aborted run settled as {settled:?}")
        })?;
        let again = other.abort(&run_id).await?;
        ensure(again == RunStatus::Aborted, || {
            format!("a second abort gave {again:?}")
        })?;
        let unknown = RunId::new(rig.unique("no-such-run"))?;
        let e = other.abort(&unknown).await;
        ensure(
            e.as_ref().is_err_and(|e| e.kind() == ErrorKind::NotFound),
            || format!("aborting an unknown run: {e:?}"),
        )
    })
}

/// Start a run in a "process" of its own, let it progress until `stop_at` accepts an event
/// (and, if given, until checkpoint `checkpoint` is stored), then drop that process's runtime:
/// the executor dies mid-flight. A fresh instance with the same worker id recovers the run,
/// which must look to a client like `reference`; no tool call checkpointed before the crash
/// runs again.
fn crash_and_recover(
    rig: &Rig,
    reference: &[(String, Value)],
    model: ScriptedModel,
    hang_tool_on: Option<&str>,
    mut stop_at: impl FnMut(&Event) -> bool,
    checkpoint: Option<String>,
) -> CaseResult {
    let done = Completions::default();
    let doomed = process_runtime();
    let a = rig.instance(
        rig.forecaster(model.clone(), &done, hang_tool_on)?,
        "node-1",
    )?;
    let run_id = doomed
        .block_on(a.stream("Weather?", StreamOptions::new()))?
        .run_id()
        .clone();
    let viewer = rig.instance(
        rig.forecaster(model.without_faults(), &done, None)?,
        "viewer",
    )?;
    rig.block_on(async {
        let mut s = viewer.observe(&run_id, ObserveOptions::from(0)).await?;
        while let Some(ev) = next(&mut s).await? {
            if stop_at(&ev) || ev.kind.is_terminal() {
                break;
            }
        }
        if let Some(key) = checkpoint {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let snapshot = rig.shared().store.load(&run_id).await?;
                if snapshot.is_some_and(|s| s.checkpoint(&key).is_some()) {
                    break;
                }
                ensure(tokio::time::Instant::now() < deadline, || {
                    format!("checkpoint {key} never written")
                })?;
                tokio::task::yield_now().await;
            }
        }
        Ok::<_, Stop>(())
    })?;
    drop(doomed);
    drop(a);
    // Whatever the dead process completed is settled now; a call whose result it checkpointed
    // must never run again, one it completed without checkpointing may run once more.
    let at_crash = done.snapshot();
    let checkpointed: Vec<String> = rig
        .block_on(rig.shared().store.load(&run_id))?
        .map(|s| s.checkpoints.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default();
    // The process restarts with the same worker id: it recovers its runs at once.
    let restarted = rig.instance(
        rig.forecaster(model.without_faults(), &done, None)?,
        "node-1",
    )?;
    rig.block_on(async {
        let recovered = restarted.recover().await?;
        let status = restarted.status(&run_id).await?.status;
        ensure(
            recovered.contains(&run_id) || status == RunStatus::Completed,
            || format!("not recovered ({recovered:?}) and status {status:?}"),
        )?;
        let events = observe_all(&restarted, &run_id, DEADLINE).await;
        assert_contiguous(&events);
        let view = client_view(&events);
        ensure(view == reference, || {
            let at = view
                .iter()
                .zip(reference)
                .position(|(a, b)| a != b)
                .unwrap_or(view.len().min(reference.len()));
            format!(
                "the recovered run differs from the reference at {at}: {:?} instead of {:?}; \
                 events (cursor, kind, data): {:?}",
                view.get(at),
                reference.get(at),
                events
                    .iter()
                    .map(|e| (e.cursor, e.kind.as_str(), e.data.to_value()))
                    .collect::<Vec<_>>()
            )
        })?;
        let restarts = events
            .iter()
            .filter(|e| e.kind == EventKind::StepRestart)
            .count();
        ensure(restarts <= 1, || {
            format!("{restarts} step restarts: only the interrupted step may restart")
        })?;
        let status = settled_status(&restarted, &run_id, DEADLINE).await;
        ensure(status == RunStatus::Completed, || {
            format!("status {status:?}")
        })
    })?;
    no_checkpointed_call_ran_again(&at_crash, &done.snapshot(), &checkpointed)
}

/// The executor dies after each event of a run in turn (cursor 0, 1, … to the end); each time
/// a restarted instance recovers the run, which finishes exactly once, never re-runs a tool
/// call whose result was checkpointed, and looks like an uninterrupted run to a client.
pub fn crash_at_every_event_then_recover_finishes_exactly_once(rig: &Rig) -> CaseResult {
    let reference = reference(rig)?;
    let n = reference.len() as u64;
    let model = ScriptedModel::new(script()).with_delay(Duration::from_micros(300));
    for until in 1..=n {
        crash_and_recover(
            rig,
            &reference,
            model.clone(),
            None,
            |e| e.cursor + 1 >= until,
            None,
        )
        .map_err(|s| match s {
            Stop::Fail(why) => Stop::Fail(format!("crash after event {until}: {why}")),
            other => other,
        })?;
    }
    Ok(())
}

/// The executor dies halfway through streaming each model step, and inside each tool call
/// after its step was checkpointed; recovery restarts only the interrupted step.
pub fn crash_mid_model_step_or_inside_a_tool_then_recover(rig: &Rig) -> CaseResult {
    let reference = reference(rig)?;
    for step in 0..4u64 {
        // The model hangs after the first delta of `step`: a half-streamed step.
        let mut turns = script();
        let mut hung = Turn::new();
        for (i, item) in turns[step as usize].items().iter().enumerate() {
            match item {
                ScriptItem::Text(s) => hung = hung.delta(s.clone()),
                ScriptItem::ToolCall(c) => {
                    hung = hung.tool_call(c.id.clone(), c.name.clone(), c.arguments.clone())
                }
                _ => {}
            }
            if i == 0 {
                hung = hung.hang();
            }
        }
        turns[step as usize] = hung;
        let mut in_step = false;
        let stop = move |e: &Event| {
            if e.kind == EventKind::StepStart {
                in_step = e.data.to_value()["step"] == step;
            }
            in_step && e.kind == EventKind::TextDelta
        };
        crash_and_recover(rig, &reference, ScriptedModel::new(turns), None, stop, None).map_err(
            |s| match s {
                Stop::Fail(why) => Stop::Fail(format!("crash mid step {step}: {why}")),
                other => other,
            },
        )?;
    }
    for call in 0..3u32 {
        let id = format!("call-{call}");
        crash_and_recover(
            rig,
            &reference,
            ScriptedModel::new(script()),
            Some(&id),
            |e| is_call(e, &id),
            Some(checkpoints::model_key(call)),
        )
        .map_err(|s| match s {
            Stop::Fail(why) => Stop::Fail(format!("crash inside {id}: {why}")),
            other => other,
        })?;
    }
    Ok(())
}

/// A replacement with the same identity takes a run over (epoch + 1) while the old owner is
/// alive but stuck in a tool call: the old owner writes nothing more, the run finishes once.
pub fn superseded_owner_is_fenced_off(rig: &Rig) -> CaseResult {
    let reference = reference(rig)?;
    let done = Completions::default();
    let model = ScriptedModel::new(script());
    let old = rig.instance(
        rig.forecaster(model.clone(), &done, Some("call-1"))?,
        "node-1",
    )?;
    let new = rig.instance(rig.forecaster(model, &done, None)?, "node-1")?;
    rig.block_on(async {
        let mut s = old.stream("Weather?", StreamOptions::new()).await?;
        let run_id = s.run_id().clone();
        until(&mut s, |e| is_call(e, "call-1")).await?;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !new.recover().await?.contains(&run_id) {
            ensure(tokio::time::Instant::now() < deadline, || {
                "the replacement never took the run over".into()
            })?;
            tokio::task::yield_now().await;
        }
        let events = collect(s, DEADLINE).await;
        ensure(last_kind(&events) == Some(EventKind::Finish), || {
            format!("the run ended with {:?}", kinds(&events))
        })?;
        let all = observe_all(&new, &run_id, DEADLINE).await;
        assert_contiguous(&all);
        ensure(client_view(&all) == reference, || {
            format!(
                "the taken-over run differs from the reference: {:?}",
                kinds(&all)
            )
        })?;
        let status = settled_status(&new, &run_id, DEADLINE).await;
        ensure(status == RunStatus::Completed, || {
            format!("status {status:?}")
        })
    })?;
    each_call_completed_once(&done, 3)
}

/// An evented run is queued by an API instance and executed by worker 1, which dies inside a
/// tool call; worker 2's sweep takes the run over once the lease expires (bumping the epoch)
/// and finishes it, with no tool call completed twice.
pub fn evented_run_survives_its_worker(rig: &Rig) -> CaseResult {
    let done = Completions::default();
    let model = ScriptedModel::new(script());
    let doomed = process_runtime();
    // The API process only queues and observes.
    let api = rig.instance(rig.forecaster(model.clone(), &done, None)?, "api")?;
    let api = rig.block_on(EventedAgent::builder(api).workers(0).start())?;
    let w1 = rig.instance(
        rig.forecaster(model.clone(), &done, Some("call-1"))?,
        "worker-1",
    )?;
    let w1 = doomed.block_on(EventedAgent::builder(w1).workers(1).start())?;
    let run = rig.block_on(api.stream("Weather?", StreamOptions::new()))?;
    let run_id = run.run_id().clone();
    rig.block_on(async {
        let mut s = api.observe(&run_id, ObserveOptions::from(0)).await?;
        until(&mut s, |e| is_call(e, "call-1")).await?;
        let owner = api.durable().status(&run_id).await?.owner;
        ensure(owner == Some(rig.unique("worker-1")), || {
            format!("owner {owner:?}, want worker 1")
        })
    })?;
    drop(w1);
    drop(doomed);
    let w2 = rig.instance(rig.forecaster(model, &done, None)?, "worker-2")?;
    let w2 = rig.block_on(
        EventedAgent::builder(w2)
            .workers(1)
            .sweep_every(Duration::from_millis(50))
            .start(),
    )?;
    let checked = rig.block_on(async {
        let events = collect(run, DEADLINE).await;
        ensure(last_kind(&events) == Some(EventKind::Finish), || {
            format!("the run ended with {:?}", kinds(&events))
        })?;
        let status = settled_status(api.durable(), &run_id, DEADLINE).await;
        ensure(status == RunStatus::Completed, || {
            format!("status {status:?}")
        })?;
        let epoch = api.durable().status(&run_id).await?.epoch;
        ensure(epoch >= 2, || {
            format!("epoch {epoch}: the takeover did not bump it")
        })
    });
    w2.shutdown();
    api.shutdown();
    checked?;
    each_call_completed_once(&done, 3)
}

/// Once retention and the tombstone elapse, a finished run leaves no key and no record behind
/// (proved with `keys`, so only when the cache claims `list_keys`).
pub fn finished_runs_leave_nothing_behind_after_retention(rig: &Rig) -> CaseResult {
    let cache = rig.shared().cache.clone();
    if !cache.capabilities().list_keys {
        return skip_capability("cache does not claim list_keys: leftovers cannot be listed");
    }
    let mut config = rig.log_config();
    config.retention = Duration::from_millis(50);
    config.tombstone = Duration::from_millis(50);
    let a = rig.instance_with(
        rig.forecaster(ScriptedModel::new(script()), &Completions::default(), None)?,
        "a",
        config,
    )?;
    rig.block_on(async {
        let run = a.stream("Weather?", StreamOptions::new()).await?;
        let run_id = run.run_id().clone();
        collect(run, DEADLINE).await;
        let prefix = a.log().run_prefix(&run_id);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let keys = cache.keys(&prefix).await?;
            let record = rig.shared().store.get_run(&run_id).await?;
            if keys.is_empty() && record.is_none() {
                return Ok(());
            }
            ensure(tokio::time::Instant::now() < deadline, || {
                format!("left behind after retention: keys {keys:?}, record {record:?}")
            })?;
            // Waiting for TTLs to elapse on the backend's clock.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

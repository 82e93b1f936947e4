//! [`EventLog`](durable_core::EventLog) cases: the guarantees G1–G8 of SPEC §4, over the
//! backend's cache and pubsub (in-memory filling any missing part).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    AppendOptions, ErrorKind, Event, EventKind, EventLog, NewRun, ObserveOptions, OnSuspend, RunId,
    RunStatus,
};
use futures::StreamExt;
use serde_json::json;

use super::support::{
    collect, delta, event, eventually, expect_kind, next_event, run_id, same_events, test_config,
};
use crate::harness::{ensure, within_for, Backend, CaseResult, Stop};

const LONG: Duration = Duration::from_secs(60);

/// A run with `n` deltas and, if `finish`, a `finish` event; returns its full event list.
async fn seeded_run(log: &EventLog, id: &RunId, n: u64, finish: bool) -> Result<Vec<Event>, Stop> {
    log.create(id, None).await?;
    let mut batch: Vec<_> = (0..n).map(delta).collect();
    if finish {
        batch.push(event(EventKind::Finish));
    }
    for chunk in batch.chunks(500) {
        log.append(id, chunk, None).await?;
    }
    read_all(log, id).await
}

async fn read_all(log: &EventLog, id: &RunId) -> Result<Vec<Event>, Stop> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let got = log.read(id, out.len() as u64, 1000).await?;
        if got.is_empty() {
            return Ok(out);
        }
        out.extend(got);
    }
}

/// G1: 8 concurrent appenders × 500 appends through the event log get cursors 0..4000, each
/// once, in the order the backend stored them.
pub async fn log_cursors_are_contiguous_under_concurrent_appenders(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("g1");
    log.create(&id, None).await?;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (log, id) = (log.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(500);
            for i in 0..500u64 {
                let e =
                    durable_core::NewEvent::json(EventKind::TextDelta, &json!({"t": t, "i": i}))?;
                got.push((log.append(&id, &[e], None).await?, t, i));
            }
            Ok::<_, durable_core::Error>(got)
        }));
    }
    let mut by_cursor = BTreeMap::new();
    for task in tasks {
        let got = within_for(Duration::from_secs(120), "appenders", task)
            .await?
            .map_err(|e| Stop::Fail(e.to_string()))??;
        let mut last = None;
        for (cursor, t, i) in got {
            ensure(last.is_none_or(|l| cursor > l), || {
                format!("appender {t}'s cursors go backwards")
            })?;
            last = Some(cursor);
            ensure(by_cursor.insert(cursor, (t, i)).is_none(), || {
                format!("cursor {cursor} given twice")
            })?;
        }
    }
    ensure(by_cursor.keys().copied().eq(0..4000), || {
        "cursors are not exactly 0..4000".into()
    })?;
    let all = read_all(&log, &id).await?;
    ensure(all.len() == 4000, || {
        format!("log holds {} events", all.len())
    })?;
    for e in &all {
        let v = e.data.to_value();
        let (t, i) = by_cursor[&e.cursor];
        ensure(v == json!({"t": t, "i": i}), || {
            format!(
                "event at {} is {v}, its appender sent t={t} i={i}",
                e.cursor
            )
        })?;
    }
    log.delete(&id).await?;
    Ok(())
}

/// G2/G4: observe(0) of a finished run replays every event, then ends.
pub async fn observe_from_zero_replays_everything_then_ends(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("replay");
    let full = seeded_run(&log, &id, 10, true).await?;
    let got = collect(
        "observe",
        log.observe(&id, ObserveOptions::from(0)).await?,
        LONG,
    )
    .await?;
    same_events("observe(0)", &got, &full)?;
    ensure(full.iter().map(|e| e.cursor).eq(0..11), || {
        "cursors are not 0..11".into()
    })?;
    log.delete(&id).await?;
    Ok(())
}

/// G2/G4, k = n on a finished run: the stream ends at once, empty.
pub async fn observe_from_end_of_finished_run_ends_at_once(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("end");
    let full = seeded_run(&log, &id, 5, true).await?;
    let n = full.len() as u64;
    let got = collect(
        "observe",
        log.observe(&id, ObserveOptions::from(n)).await?,
        Duration::from_secs(5),
    )
    .await?;
    ensure(got.is_empty(), || {
        format!("observe(n) of a finished run yielded {got:?}")
    })?;
    log.delete(&id).await?;
    Ok(())
}

/// G2, k = n on a live run: the stream waits and delivers the next event.
pub async fn observe_from_end_of_live_run_waits_for_next_event(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("tail");
    let full = seeded_run(&log, &id, 5, false).await?;
    let mut stream = log
        .observe(&id, ObserveOptions::from(full.len() as u64))
        .await?;
    let early = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    ensure(early.is_err(), || {
        format!("observe(n) of a live run yielded {early:?} before any append")
    })?;
    log.append(&id, &[delta(99)], None).await?;
    let e = next_event("observe", &mut stream)
        .await?
        .ok_or_else(|| Stop::Fail("stream ended".into()))?;
    ensure(
        e.cursor == 5 && e.data.to_value() == json!({"i": 99}),
        || format!("next event {e:?}"),
    )?;
    log.delete(&id).await?;
    Ok(())
}

/// G2 on a finished run: for every k in 0..=n, observe(k) is exactly events[k..].
pub async fn observe_from_every_offset_is_exact(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("every");
    let full = seeded_run(&log, &id, 30, true).await?;
    for k in 0..=full.len() {
        let got = collect(
            "observe",
            log.observe(&id, ObserveOptions::from(k as u64)).await?,
            LONG,
        )
        .await?;
        same_events(&format!("observe({k})"), &got, &full[k..])?;
    }
    log.delete(&id).await?;
    Ok(())
}

/// Number of seeded cases of the G2 race property (`DURABLE_CONFORMANCE_CASES` overrides).
fn property_cases() -> u64 {
    std::env::var("DURABLE_CONFORMANCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// G2 as a property: a producer appends with random pauses and batch sizes; an observer starts
/// at a random k while it runs; `events[..k] ++ observe(k)` equals the full log. 200 seeded
/// cases by default; a failure names its seed (`DURABLE_CONFORMANCE_SEED` replays one).
pub async fn observe_racing_live_producer_is_exact(b: Backend) -> CaseResult {
    let base_seed = std::env::var("DURABLE_CONFORMANCE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases = if std::env::var("DURABLE_CONFORMANCE_SEED").is_ok() {
        1
    } else {
        property_cases()
    };
    let log = b.event_log(test_config());
    for case in 0..cases {
        let seed = base_seed.wrapping_add(case);
        race_once(&log, seed).await.map_err(|s| match s {
            Stop::Fail(why) => Stop::Fail(format!(
                "seed {seed} (DURABLE_CONFORMANCE_SEED={seed}): {why}"
            )),
            other => other,
        })?;
    }
    Ok(())
}

async fn race_once(log: &EventLog, seed: u64) -> CaseResult {
    let mut rng = fastrand::Rng::with_seed(seed);
    let id = run_id("race");
    let n = rng.u64(1..60);
    let k = rng.u64(0..=n);
    log.create(&id, None).await?;
    let producer = {
        let (log, id, mut rng) = (log.clone(), id.clone(), rng.fork());
        tokio::spawn(async move {
            let mut i = 0;
            while i < n {
                let size = rng.u64(1..=4).min(n - i);
                let batch: Vec<_> = (i..i + size).map(delta).collect();
                log.append(&id, &batch, None).await?;
                i += size;
                match rng.u8(0..4) {
                    0 => tokio::task::yield_now().await,
                    1 => tokio::time::sleep(Duration::from_micros(rng.u64(0..300))).await,
                    _ => {}
                }
            }
            log.append(&id, &[event(EventKind::Finish)], None).await
        })
    };
    // Observe once the log has reached k (observe(k) beyond the end is OffsetAhead by design).
    eventually("log reaches k", LONG, || async {
        Ok(log.len(&id).await?.unwrap_or(0) >= k)
    })
    .await?;
    let got = collect(
        "observe",
        log.observe(&id, ObserveOptions::from(k)).await?,
        LONG,
    )
    .await?;
    within_for(LONG, "producer", producer)
        .await?
        .map_err(|e| Stop::Fail(e.to_string()))??;
    let full = read_all(log, &id).await?;
    ensure(full.len() as u64 == n + 1, || {
        format!("log has {} events, want {}", full.len(), n + 1)
    })?;
    same_events(&format!("n={n} k={k}"), &got, &full[k as usize..])?;
    log.delete(&id).await?;
    Ok(())
}

/// G2/G3: an observer that joins mid-run gets the stored prefix, then live events, then the end.
pub async fn late_observer_gets_replay_then_live(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("late");
    seeded_run(&log, &id, 10, false).await?;
    let mut stream = log.observe(&id, ObserveOptions::from(0)).await?;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(
            next_event("replay", &mut stream)
                .await?
                .ok_or_else(|| Stop::Fail("ended early".into()))?,
        );
    }
    for i in 10..20 {
        log.append(&id, &[delta(i)], None).await?;
    }
    log.append(&id, &[event(EventKind::Finish)], None).await?;
    got.extend(collect("live", stream, LONG).await?);
    let full = read_all(&log, &id).await?;
    same_events("replay then live", &got, &full)?;
    log.delete(&id).await?;
    Ok(())
}

/// G1/G2: an observer catching up on a long log reads several ranges at once
/// (`LogConfig::read_ahead`) and still delivers exactly, in order: from offsets at, just before
/// and just after range boundaries, while a producer keeps appending.
pub async fn catch_up_reads_ahead_in_order(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.read_batch = 7;
    config.read_ahead = 3;
    let log = b.event_log(config);
    let id = run_id("ahead");
    log.create(&id, None).await?;
    let first: Vec<_> = (0..300).map(delta).collect();
    log.append(&id, &first, None).await?;
    let offsets = [0u64, 1, 6, 7, 8, 20, 21, 150, 293, 299, 300];
    let mut observers = Vec::new();
    for &k in &offsets {
        observers.push((k, log.observe(&id, ObserveOptions::from(k)).await?));
    }
    // More while they catch up, in batches that straddle the ranges.
    let mut i = 300;
    for size in [1u64, 13, 7, 50, 2] {
        let batch: Vec<_> = (i..i + size).map(delta).collect();
        log.append(&id, &batch, None).await?;
        i += size;
    }
    log.append(&id, &[event(EventKind::Finish)], None).await?;
    let full = read_all(&log, &id).await?;
    ensure(full.len() as u64 == i + 1, || {
        format!("log has {} events, want {}", full.len(), i + 1)
    })?;
    for (k, stream) in observers {
        let got = collect(&format!("observe from {k}"), stream, LONG).await?;
        same_events(&format!("from {k}"), &got, &full[k as usize..])?;
    }
    log.delete(&id).await?;
    Ok(())
}

/// G3: a deliberately slow observer of a 50,000-event run receives every event in order, while
/// the events it holds stay under `read_batch × read_ahead + 1024` (the largest wake-up batch of
/// this case is 500 events) and the backend's subscription buffer stays bounded by construction.
pub async fn slow_observer_gets_every_event_with_bounded_memory(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.read_batch = 256;
    let bound = config.read_batch * config.read_ahead + 1024;
    let log = b.event_log(config);
    let id = run_id("slow");
    log.create(&id, None).await?;
    let mut stream = log.observe(&id, ObserveOptions::from(0)).await?;
    let total = 50_000u64;
    let producer = {
        let (log, id) = (log.clone(), id.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while i < total {
                let batch: Vec<_> = (i..i + 500).map(delta).collect();
                log.append(&id, &batch, None).await?;
                i += 500;
            }
            log.append(&id, &[event(EventKind::Finish)], None).await
        })
    };
    let mut expected = 0u64;
    let mut max_buffered = 0;
    loop {
        let Some(e) = within_for(LONG, "slow observe", stream.next()).await? else {
            break;
        };
        let e = e.map_err(|e| Stop::Fail(format!("observe error: {e}")))?;
        ensure(e.cursor == expected, || {
            format!("got cursor {} want {expected}", e.cursor)
        })?;
        max_buffered = max_buffered.max(stream.buffered_events());
        expected += 1;
        if expected.is_multiple_of(1000) {
            // Slow: let the producer run far ahead.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    ensure(expected == total + 1, || {
        format!("observer got {expected} events, want {}", total + 1)
    })?;
    ensure(max_buffered <= bound, || {
        format!("observer buffered {max_buffered} events, bound {bound}")
    })?;
    within_for(LONG, "producer", producer)
        .await?
        .map_err(|e| Stop::Fail(e.to_string()))??;
    log.delete(&id).await?;
    Ok(())
}

/// G3 by construction: with the safety-net re-read set to an hour, a caught-up observer still
/// gets a new event promptly, so it was pushed by PubSub, not found by polling.
pub async fn live_event_is_pushed_without_polling(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.idle_check = Duration::from_secs(3600);
    let log = b.event_log(config);
    let id = run_id("push");
    seeded_run(&log, &id, 3, false).await?;
    let mut stream = log.observe(&id, ObserveOptions::from(0)).await?;
    for _ in 0..3 {
        next_event("replay", &mut stream).await?;
    }
    for i in 0..5 {
        log.append(&id, &[delta(100 + i)], None).await?;
        let e = next_event("pushed event", &mut stream)
            .await?
            .ok_or_else(|| Stop::Fail("ended".into()))?;
        ensure(e.cursor == 3 + i, || {
            format!("pushed cursor {} want {}", e.cursor, 3 + i)
        })?;
    }
    log.delete(&id).await?;
    Ok(())
}

/// G4: observing an unknown run fails with `NotFound` at once.
pub async fn unknown_run_is_not_found(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let r = log
        .observe(&run_id("nobody"), ObserveOptions::from(0))
        .await;
    expect_kind("observe unknown", r.map(|_| ()), ErrorKind::NotFound)
}

/// G4: once retention has elapsed, observe fails with `Gone`.
pub async fn expired_run_is_gone(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.retention = Duration::from_millis(300);
    let log = b.event_log(config);
    let id = run_id("gone");
    seeded_run(&log, &id, 3, true).await?;
    log.retire(&id).await?;
    eventually("log expires", Duration::from_secs(10), || async {
        Ok(log.len(&id).await?.is_none())
    })
    .await?;
    let r = log.observe(&id, ObserveOptions::from(0)).await;
    expect_kind("observe expired", r.map(|_| ()), ErrorKind::Gone)?;
    log.delete(&id).await?;
    Ok(())
}

/// G4: an offset beyond the next cursor is `OffsetAhead`; the next cursor itself is fine.
pub async fn offset_ahead_is_rejected(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("ahead");
    seeded_run(&log, &id, 3, false).await?;
    let r = log.observe(&id, ObserveOptions::from(4)).await;
    expect_kind(
        "observe(4) of 3 events",
        r.map(|_| ()),
        ErrorKind::OffsetAhead,
    )?;
    log.observe(&id, ObserveOptions::from(3)).await?;
    log.delete(&id).await?;
    Ok(())
}

/// G4: `finish`, `error` and `abort` each end every attached observer.
pub async fn terminal_event_ends_every_observer(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    for kind in [EventKind::Finish, EventKind::Error, EventKind::Abort] {
        let id = run_id("terminal");
        seeded_run(&log, &id, 2, false).await?;
        let mut observers = Vec::new();
        for k in [0, 1, 2] {
            observers.push(log.observe(&id, ObserveOptions::from(k)).await?);
        }
        log.append(&id, &[delta(2), event(kind.clone())], None)
            .await?;
        let full = read_all(&log, &id).await?;
        for (k, o) in observers.into_iter().enumerate() {
            let got = collect("observe", o, LONG).await?;
            same_events(&format!("{kind} observer from {k}"), &got, &full[k..])?;
        }
        log.delete(&id).await?;
    }
    Ok(())
}

/// G4: by default observe ends after a trailing `suspended` event (from any offset, including
/// the end), but not after one the run has moved past.
pub async fn suspended_run_ends_observe_by_default(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("susp");
    seeded_run(&log, &id, 3, false).await?;
    log.append(&id, &[event(EventKind::Suspended)], None)
        .await?;
    let got = collect(
        "observe",
        log.observe(&id, ObserveOptions::from(0)).await?,
        Duration::from_secs(5),
    )
    .await?;
    ensure(
        got.len() == 4 && got[3].kind == EventKind::Suspended,
        || format!("observe of suspended run: {got:?}"),
    )?;
    let got = collect(
        "observe",
        log.observe(&id, ObserveOptions::from(4)).await?,
        Duration::from_secs(5),
    )
    .await?;
    ensure(got.is_empty(), || {
        format!("observe(end) of suspended run: {got:?}")
    })?;
    // Resumed: the suspension is history, observers go on to the end of the run.
    log.append(&id, &[delta(4), event(EventKind::Finish)], None)
        .await?;
    let got = collect(
        "observe",
        log.observe(&id, ObserveOptions::from(0)).await?,
        LONG,
    )
    .await?;
    ensure(got.len() == 6 && got[5].kind == EventKind::Finish, || {
        format!("observe of resumed run: {got:?}")
    })?;
    log.delete(&id).await?;
    Ok(())
}

/// G4/G7: with `OnSuspend::Wait`, observe delivers `suspended` and waits for the resumed run.
pub async fn suspended_run_waits_for_resume_when_asked(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("wait");
    seeded_run(&log, &id, 1, false).await?;
    log.append(&id, &[event(EventKind::Suspended)], None)
        .await?;
    let opts = ObserveOptions::from(0).on_suspend(OnSuspend::Wait);
    let mut stream = log.observe(&id, opts).await?;
    for _ in 0..2 {
        next_event("replay", &mut stream).await?;
    }
    let early = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    ensure(early.is_err(), || {
        format!("waiting observer yielded {early:?} while suspended")
    })?;
    log.append(&id, &[delta(1), event(EventKind::Finish)], None)
        .await?;
    let rest = collect("resumed", stream, LONG).await?;
    ensure(rest.len() == 2 && rest[1].kind == EventKind::Finish, || {
        format!("after resume: {rest:?}")
    })?;
    log.delete(&id).await?;
    Ok(())
}

/// G4: a running run whose lease expired without a terminal event is reported as
/// `ProducerLost`, not an endless silent stream.
pub async fn dead_producer_is_reported(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.idle_check = Duration::from_millis(100);
    config.producer_grace = Duration::from_millis(100);
    let store = b.store_or_memory();
    let log = durable_core::EventLog::new(b.cache_or_memory(), b.pubsub_or_memory())
        .with_store(store.clone())
        .with_config(config);
    let id = run_id("dead");
    store
        .create_run(NewRun::new(id.clone()).status(RunStatus::Running))
        .await?;
    let lease = store
        .claim(&id, "doomed", Duration::from_millis(200))
        .await?;
    log.create(&id, Some(lease.epoch)).await?;
    log.append(&id, &[delta(0), delta(1)], Some(lease.epoch))
        .await?;
    let stream = log.observe(&id, ObserveOptions::from(0)).await?;
    let items: Vec<_> = within_for(
        Duration::from_secs(20),
        "observe of a dead run",
        stream.collect::<Vec<_>>(),
    )
    .await?;
    ensure(items.len() == 3, || {
        format!("got {} items, want 2 events and an error", items.len())
    })?;
    ensure(items[..2].iter().all(Result::is_ok), || {
        "events before the error missing".into()
    })?;
    match &items[2] {
        Err(e) if e.kind() == ErrorKind::ProducerLost => {}
        other => {
            return Err(Stop::Fail(format!(
                "last item {other:?}, want ProducerLost"
            )))
        }
    }
    log.delete(&id).await?;
    Ok(())
}

/// G5: once a new owner fenced the log, the old owner's appends are rejected.
pub async fn fenced_writer_cannot_append(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("fenced");
    log.create(&id, Some(1)).await?;
    log.append(&id, &[delta(0)], Some(1)).await?;
    log.create(&id, Some(2)).await?;
    let r = log.append(&id, &[delta(1)], Some(1)).await;
    expect_kind("old owner append", r, ErrorKind::Fenced)?;
    ensure(log.len(&id).await? == Some(1), || {
        "fenced append stored something".into()
    })?;
    let c = log.append(&id, &[delta(2)], Some(2)).await?;
    ensure(c == 1, || format!("new owner's append got cursor {c}"))?;
    log.delete(&id).await?;
    Ok(())
}

/// G6: dropping one observer detaches only it; others and later observers see everything.
pub async fn cleanup_of_one_observer_keeps_others(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("detach");
    seeded_run(&log, &id, 3, false).await?;
    let mut first = log.observe(&id, ObserveOptions::from(0)).await?;
    let second = log.observe(&id, ObserveOptions::from(0)).await?;
    next_event("first", &mut first).await?;
    drop(first);
    log.append(&id, &[delta(3), event(EventKind::Finish)], None)
        .await?;
    let full = read_all(&log, &id).await?;
    same_events(
        "remaining observer",
        &collect("second", second, LONG).await?,
        &full,
    )?;
    let later = log.observe(&id, ObserveOptions::from(0)).await?;
    same_events(
        "later observer",
        &collect("later", later, LONG).await?,
        &full,
    )?;
    log.delete(&id).await?;
    Ok(())
}

/// G6: retention after the terminal state removes the log, the record and (after the
/// tombstone) every key of the run; then the run is unknown.
pub async fn retention_removes_log_and_record(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.retention = Duration::from_millis(300);
    config.tombstone = Duration::from_millis(300);
    let store = b.store_or_memory();
    let cache = b.cache_or_memory();
    let log = durable_core::EventLog::new(cache.clone(), b.pubsub_or_memory())
        .with_store(store.clone())
        .with_config(config);
    let id = run_id("retain");
    store.create_run(NewRun::new(id.clone())).await?;
    seeded_run(&log, &id, 3, true).await?;
    store
        .set_status(&id, None, RunStatus::Completed, None)
        .await?;
    log.retire(&id).await?;
    let prefix = log.run_prefix(&id);
    eventually(
        "everything of the run expires",
        Duration::from_secs(15),
        || async {
            let log_gone = log.len(&id).await?.is_none();
            let record_gone = store.get_run(&id).await?.is_none();
            let keys_gone =
                !cache.capabilities().list_keys || cache.keys(&prefix).await?.is_empty();
            Ok(log_gone && record_gone && keys_gone)
        },
    )
    .await?;
    let r = log.observe(&id, ObserveOptions::from(0)).await;
    expect_kind(
        "observe after retention and tombstone",
        r.map(|_| ()),
        ErrorKind::NotFound,
    )
}

/// G8: run ids with `*`, `>`, `.`, `:`, `/`, spaces, `..`, 0 or 129 characters, or non-ASCII are
/// `InvalidInput`; names built from them never reach the backend and nothing is written.
pub async fn invalid_run_ids_are_rejected_and_nothing_is_written(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let cache = b.cache_or_memory();
    let pubsub = b.pubsub_or_memory();
    let ns = log.config().namespace.clone();
    let bad_ids = [
        "a*".to_owned(),
        "a>".to_owned(),
        "a.b".to_owned(),
        "a:b".to_owned(),
        "a/b".to_owned(),
        "a b".to_owned(),
        "..".to_owned(),
        String::new(),
        "x".repeat(129),
        "caf\u{e9}".to_owned(),
        "\u{0}".to_owned(),
        "{tag}".to_owned(),
        "a\r\nDEL *".to_owned(),
        "a'; DROP TABLE runs; --".to_owned(),
    ];
    for bad in &bad_ids {
        expect_kind(
            &format!("RunId::new({bad:?})"),
            RunId::new(bad),
            ErrorKind::InvalidInput,
        )?;
        // Names a careless adapter would build from the raw id.
        let name = format!("{ns}/run/{bad}/events");
        if durable_core::validate_name("log", &name).is_ok() {
            continue; // e.g. "a.b" is a fine key name; RunId::new rejected it already.
        }
        expect_kind(
            &format!("append to {name:?}"),
            cache
                .append_many(&name, &[Bytes::from_static(b"x")], AppendOptions::default())
                .await,
            ErrorKind::InvalidInput,
        )?;
        expect_kind(
            &format!("publish to {bad:?}"),
            pubsub
                .publish(&format!("{ns}.run.{bad}"), Bytes::from_static(b"x"))
                .await,
            ErrorKind::InvalidInput,
        )?;
    }
    if cache.capabilities().list_keys {
        let keys = cache.keys(&ns).await?;
        ensure(keys.is_empty(), || {
            format!("rejected input wrote keys: {keys:?}")
        })?;
    }
    let ok = RunId::new("x".repeat(128))?;
    log.create(&ok, None).await?;
    log.delete(&ok).await?;
    Ok(())
}

/// G6: a run's log holds at most `max_events`; the append past it fails and stores nothing.
pub async fn max_events_per_run_is_enforced(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.max_events = 5;
    let log = b.event_log(config);
    let id = run_id("max");
    seeded_run(&log, &id, 5, false).await?;
    let r = log.append(&id, &[delta(5)], None).await;
    expect_kind("append past max_events", r, ErrorKind::LimitExceeded)?;
    ensure(log.len(&id).await? == Some(5), || {
        "rejected append stored something".into()
    })?;
    log.delete(&id).await?;
    Ok(())
}

/// The batching writer keeps order, reports the next cursor on flush, and surfaces a failed
/// append (here: a fenced writer) on the next call instead of dropping events.
pub async fn writer_batches_and_preserves_order(b: Backend) -> CaseResult {
    let log = b.event_log(test_config());
    let id = run_id("writer");
    log.create(&id, Some(1)).await?;
    let writer = log.writer(id.clone(), Some(1), 256);
    for i in 0..2000 {
        writer.send(delta(i)).await?;
    }
    let next = within_for(LONG, "flush", writer.flush()).await??;
    ensure(next == 2000, || format!("flush returned {next}"))?;
    let all = read_all(&log, &id).await?;
    ensure(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.cursor == i as u64 && e.data.to_value() == json!({"i": i})),
        || "writer reordered events".into(),
    )?;
    log.create(&id, Some(2)).await?;
    writer.send(delta(2000)).await?;
    let r = writer.flush().await;
    expect_kind("flush of fenced writer", r, ErrorKind::Fenced)?;
    let r = writer.send(delta(2001)).await;
    expect_kind("send after failure", r, ErrorKind::Fenced)?;
    ensure(log.len(&id).await? == Some(2000), || {
        "fenced writer stored events".into()
    })?;
    log.delete(&id).await?;
    Ok(())
}

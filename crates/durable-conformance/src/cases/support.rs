//! Shared helpers of the cases.

use std::future::Future;
use std::time::Duration;

use durable_core::{
    ErrorKind, Event, EventKind, EventStream, LogConfig, NewEvent, Result as CoreResult, RunId,
};
use futures::StreamExt;

use crate::harness::{within, within_for, CaseResult, Stop};

/// A name unique to this case run: `conf-<tag>-<random>`.
pub(crate) fn unique(tag: &str) -> String {
    format!("conf-{tag}-{:016x}", fastrand::u64(..))
}

/// A run id unique to this case run.
pub(crate) fn run_id(tag: &str) -> RunId {
    RunId::new(unique(tag)).unwrap_or_else(|_| RunId::generate())
}

/// A log configuration with a namespace unique to the case and short safety-net timers.
pub(crate) fn test_config() -> LogConfig {
    let mut c = LogConfig::default();
    c.namespace = unique("ns");
    c.idle_check = Duration::from_millis(500);
    c
}

/// `text-delta` with `{"i": i}`.
pub(crate) fn delta(i: u64) -> NewEvent {
    NewEvent::json(EventKind::TextDelta, &serde_json::json!({ "i": i }))
        .unwrap_or_else(|_| NewEvent::new(EventKind::TextDelta, durable_core::Json::null()))
}

/// An event of `kind` with `{}`.
pub(crate) fn event(kind: EventKind) -> NewEvent {
    NewEvent::new(kind, durable_core::Json::from(serde_json::json!({})))
}

/// Expect `r` to fail with `kind`.
pub(crate) fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    r: CoreResult<T>,
    kind: ErrorKind,
) -> CaseResult {
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(Stop::Fail(format!(
            "{what}: expected {kind}, got error {e}"
        ))),
        Ok(v) => Err(Stop::Fail(format!(
            "{what}: expected {kind}, got Ok({v:?})"
        ))),
    }
}

/// Collect a stream to its end (bounded by `limit`), failing on an error item.
pub(crate) async fn collect(
    what: &str,
    stream: EventStream,
    limit: Duration,
) -> Result<Vec<Event>, Stop> {
    let items: Vec<CoreResult<Event>> = within_for(limit, what, stream.collect()).await?;
    items
        .into_iter()
        .map(|r| r.map_err(|e| Stop::Fail(format!("{what}: observe yielded an error: {e}"))))
        .collect()
}

/// The next item of a stream within the operation timeout; `None` means it ended.
pub(crate) async fn next_event(
    what: &str,
    stream: &mut EventStream,
) -> Result<Option<Event>, Stop> {
    match within(what, stream.next()).await? {
        None => Ok(None),
        Some(Ok(e)) => Ok(Some(e)),
        Some(Err(e)) => Err(Stop::Fail(format!("{what}: observe yielded an error: {e}"))),
    }
}

/// Check that `events` are exactly cursors `from..from+len` with the expected kinds/data of `full`.
pub(crate) fn same_events(what: &str, got: &[Event], want: &[Event]) -> CaseResult {
    if got.len() != want.len() {
        return Err(Stop::Fail(format!(
            "{what}: got {} events (cursors {:?}..), want {} (cursors {:?}..)",
            got.len(),
            got.first().map(|e| e.cursor),
            want.len(),
            want.first().map(|e| e.cursor)
        )));
    }
    for (g, w) in got.iter().zip(want) {
        if g != w {
            return Err(Stop::Fail(format!(
                "{what}: at cursor {} got {g:?}, want {w:?}",
                w.cursor
            )));
        }
    }
    Ok(())
}

/// Poll `cond` (an async check) until it returns true, or fail after `limit`.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F) -> CaseResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Stop>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Stop::Fail(format!("{what}: not true within {limit:?}")));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

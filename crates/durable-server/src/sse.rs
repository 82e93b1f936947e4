//! The native SSE wire format: `id: <cursor>`, `event: <kind>`, `data: <event JSON>`.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use durable_core::{Error, Event};
use futures::stream::{Stream, StreamExt};
use serde_json::json;

/// One run event as an SSE frame. The same frame on every route (stream, events, observe,
/// resume): the SSE id is the event's cursor, so `Last-Event-ID` resumes after it.
pub fn event_frame(ev: &Event) -> SseEvent {
    let data = ev.to_json();
    SseEvent::default()
        .id(ev.cursor.to_string())
        .event(ev.kind.as_str())
        // Event JSON never has a raw newline (the log compacts it); `data` would split it.
        .data(String::from_utf8_lossy(&data))
}

/// The frame sent when the stream fails after its headers: `event: error` without an id (the
/// last cursor delivered stays the resume point), then the response ends.
pub fn error_frame(e: &Error) -> SseEvent {
    SseEvent::default().event("error").data(
        json!({"kind": e.kind().as_str(), "message": e.to_string(), "retryable": e.is_retryable()})
            .to_string(),
    )
}

/// The keep-alive comment (`: ping`) at most every `every`.
pub fn keep_alive(every: Duration) -> KeepAlive {
    KeepAlive::new().interval(every).text("ping")
}

/// A run's events as SSE frames, ending after the run's last frame (or an error frame). The
/// first frame carries `retry: <retry>`: how soon a browser's `EventSource` reconnects.
pub fn native<S>(
    events: S,
    heartbeat: Duration,
    retry: Duration,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>
where
    S: Stream<Item = durable_core::Result<Event>> + Send + 'static,
{
    let frames = events.enumerate().scan(false, move |failed, (i, item)| {
        let out = match item {
            _ if *failed => None,
            Ok(ev) if i == 0 => Some(Ok(event_frame(&ev).retry(retry))),
            Ok(ev) => Some(Ok(event_frame(&ev))),
            Err(e) => {
                *failed = true;
                tracing::debug!(error = %e, "run stream failed after its headers");
                Some(Ok(error_frame(&e)))
            }
        };
        futures::future::ready(out)
    });
    Sse::new(frames).keep_alive(keep_alive(heartbeat))
}

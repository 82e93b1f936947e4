//! The native SSE wire format: `id: <cursor>`, `event: <kind>`, `data: <event JSON>`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::sse::KeepAlive;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use durable_core::Event;
use futures::stream::Stream;
use serde_json::json;

/// The keep-alive comment (`: ping`) at most every `every`.
pub fn keep_alive(every: Duration) -> KeepAlive {
    KeepAlive::new().interval(every).text("ping")
}

/// Most frames written in one body chunk.
const MAX_BATCH: usize = 256;

/// Append one event's frame to `buf`: `id: <cursor>`, `event: <kind>`, `data: <event JSON>`.
/// The same frame on every native route (stream, events, observe, resume), so
/// `Last-Event-ID` resumes after it.
pub fn write_frame(buf: &mut BytesMut, ev: &Event) {
    buf.put_slice(b"id: ");
    buf.put_slice(ev.cursor.to_string().as_bytes());
    buf.put_slice(b"\nevent: ");
    buf.put_slice(ev.kind.as_str().as_bytes());
    let json = ev.to_json();
    // Event JSON has no raw line break (the log compacts it); split defensively all the same.
    for line in json.split(|b| *b == b'\n' || *b == b'\r') {
        buf.put_slice(b"\ndata: ");
        buf.put_slice(line);
    }
    buf.put_slice(b"\n\n");
}

/// The native SSE body: every frame ready at one wake-up goes out in one chunk (one write for
/// many events when an observer is behind), a `: ping` comment after `heartbeat` without a
/// frame, an `event: error` frame (without id) if the stream fails, then the end.
pub struct NativeBody<S> {
    events: Pin<Box<S>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    heartbeat: Duration,
    retry: Option<Duration>,
    done: bool,
    meter: crate::metrics::Meter,
}

impl<S> Stream for NativeBody<S>
where
    S: Stream<Item = durable_core::Result<Event>>,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::new();
        if let Some(retry) = this.retry.take() {
            buf.put_slice(format!("retry: {}\n\n", retry.as_millis()).as_bytes());
        }
        let mut frames = 0;
        while frames < MAX_BATCH {
            match this.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(ev))) => {
                    write_frame(&mut buf, &ev);
                    this.meter.delivered(&ev);
                    frames += 1;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "run stream failed after its headers");
                    let data = json!({"kind": e.kind().as_str(), "message": e.to_string(), "retryable": e.is_retryable()});
                    buf.put_slice(format!("event: error\ndata: {data}\n\n").as_bytes());
                    this.done = true;
                    break;
                }
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if frames > 0 {
            let next = tokio::time::Instant::now() + this.heartbeat;
            this.idle.as_mut().reset(next);
        } else if !this.done && this.idle.as_mut().poll(cx).is_ready() {
            buf.put_slice(b": ping\n\n");
            let next = tokio::time::Instant::now() + this.heartbeat;
            this.idle.as_mut().reset(next);
            // Register the new deadline's wake-up.
            let _ = this.idle.as_mut().poll(cx);
        }
        if buf.is_empty() {
            return if this.done {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}

/// A run's events as an SSE response body (see [`NativeBody`]); the first chunk carries
/// `retry: <retry>`, how soon a browser's `EventSource` reconnects.
pub(crate) fn native<S>(
    events: S,
    heartbeat: Duration,
    retry: Duration,
    meter: crate::metrics::Meter,
) -> Response
where
    S: Stream<Item = durable_core::Result<Event>> + Send + 'static,
{
    let body = NativeBody {
        events: Box::pin(events),
        idle: Box::pin(tokio::time::sleep(heartbeat)),
        heartbeat,
        retry: Some(retry),
        done: false,
        meter,
    };
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

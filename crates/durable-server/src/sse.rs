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
///
/// The envelope is written straight into `buf` (no intermediate JSON buffer, no number
/// formatting allocation): the bytes equal `data: ` + [`Event::to_json`].
pub fn write_frame(buf: &mut BytesMut, ev: &Event) {
    let data = ev.data.as_bytes();
    buf.reserve(80 + ev.run_id.as_str().len() + data.len());
    buf.put_slice(b"id: ");
    put_dec(buf, ev.cursor);
    buf.put_slice(b"\nevent: ");
    buf.put_slice(ev.kind.as_str().as_bytes());
    buf.put_slice(b"\ndata: {\"run_id\":\"");
    // Run ids are validated names: no quote, backslash or line break.
    buf.put_slice(ev.run_id.as_str().as_bytes());
    buf.put_slice(b"\",\"cursor\":");
    put_dec(buf, ev.cursor);
    buf.put_slice(b",\"kind\":\"");
    buf.put_slice(ev.kind.as_str().as_bytes());
    buf.put_slice(b"\",\"at\":");
    put_dec(buf, ev.at);
    buf.put_slice(b",\"data\":");
    // Event JSON has no raw line break (the log compacts it); split defensively all the same:
    // a line break may only come from the data.
    let mut lines = data.split(|b| *b == b'\n' || *b == b'\r');
    if let Some(first) = lines.next() {
        buf.put_slice(first);
    }
    for line in lines {
        buf.put_slice(b"\ndata: ");
        buf.put_slice(line);
    }
    buf.put_slice(b"}\n\n");
}

fn put_dec(buf: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

/// The native SSE body: every frame ready at one wake-up goes out in one chunk (one write for
/// many events when an observer is behind), a `: ping` comment after `heartbeat` without a
/// frame, an `event: error` frame (without id) if the stream fails, then the end.
pub struct NativeBody<S> {
    events: Pin<Box<S>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// When the last frame or ping went out.
    last_frame: tokio::time::Instant,
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
        let mut oldest = None;
        while frames < MAX_BATCH {
            match this.events.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(ev))) => {
                    write_frame(&mut buf, &ev);
                    oldest = Some(oldest.map_or(ev.at, |t: u64| t.min(ev.at)));
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
        if let Some(oldest) = oldest {
            this.meter.delivered(frames as u64, oldest);
            // Only noted: the timer keeps its deadline (re-arming it per frame would cost two
            // timer-wheel operations per delivery) and, when it fires, waits out the rest.
            this.last_frame = tokio::time::Instant::now();
        } else if !this.done && this.idle.as_mut().poll(cx).is_ready() {
            let quiet_until = this.last_frame + this.heartbeat;
            let now = tokio::time::Instant::now();
            if quiet_until <= now {
                buf.put_slice(b": ping\n\n");
                this.last_frame = now;
            }
            this.idle.as_mut().reset(this.last_frame + this.heartbeat);
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
        last_frame: tokio::time::Instant::now(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use durable_core::{EventKind, Json, RunId};

    #[test]
    fn frames_are_the_event_json_and_split_any_line_break() {
        for (data, cursor, at) in [
            ("{\"text\":\"a\"}", 0, 0),
            ("{\n\"text\":\"b\"\r\n}", 7, 1_700_000_000_123),
            ("null", u64::MAX, u64::MAX),
        ] {
            let ev = Event {
                run_id: RunId::new("run-1").unwrap(),
                cursor,
                kind: EventKind::TextDelta,
                data: Json::from_text(data.to_owned()).unwrap(),
                at,
            };
            let mut buf = BytesMut::new();
            write_frame(&mut buf, &ev);
            let json = ev.to_json();
            let mut expected = format!("id: {cursor}\nevent: text-delta");
            for line in json.split(|b| *b == b'\n' || *b == b'\r') {
                expected.push_str("\ndata: ");
                expected.push_str(std::str::from_utf8(line).unwrap());
            }
            expected.push_str("\n\n");
            assert_eq!(std::str::from_utf8(&buf).unwrap(), expected);
        }
    }
}

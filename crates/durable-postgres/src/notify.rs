//! What travels over `NOTIFY`: channel names and payloads.
//!
//! Topics are validated names of up to 512 bytes; channel names are identifiers of at most 63.
//! A topic maps to the channel `dur_<16 hex digits>`, a stable FNV-1a hash of the schema and
//! the topic, so user input never becomes an identifier. Hash collisions are harmless: every
//! payload starts with its topic, and the listener delivers by exact topic.
//!
//! ```text
//! <topic> f<frame>                        a wake-up frame, exactly as frame::encode makes it
//! <topic> r<first> <count> <max> <log>    a frame too big or not text: the listener reads it
//! <topic> m<payload>                      a published payload
//! <topic> p<id>                           a published payload too big or not text (outbox row)
//! <topic> w                               wake the topic's consumer groups only (a nack)
//! <topic> s<token>                        a new subscriber's start marker
//! ```
//!
//! `NOTIFY` payloads are text shorter than 8000 bytes without NUL; anything else goes by
//! reference.

use bytes::Bytes;
use durable_core::{frame, AnnounceDomain};

use crate::config::{redact, Postgres, Wake};

/// `NOTIFY` payloads must be shorter than this many bytes.
pub(crate) const MAX_PAYLOAD: usize = 8000;

/// The largest decimal cursor.
const MAX_CURSOR_DIGITS: usize = 20;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The channel of `topic` in `schema`.
pub(crate) fn channel(schema: &str, topic: &str) -> String {
    format!("dur_{:016x}", fnv1a(&[schema.as_bytes(), topic.as_bytes()]))
}

/// The announce domain of everything built on `pg`: its database and schema, and with
/// [`Wake::Poll`] also the handle itself (appends are then announced to the handle's own
/// local subscribers, which a pubsub built on another handle does not share).
pub(crate) fn domain(pg: &Postgres) -> AnnounceDomain {
    let url = redact(&pg.config().url);
    let url = url.split('?').next().unwrap_or_default();
    let schema = &pg.config().schema;
    match pg.config().wake {
        Wake::Listen => AnnounceDomain::new(format!("postgres:{url}#{schema}")),
        Wake::Poll => AnnounceDomain::new(format!(
            "postgres-poll:{url}#{schema}#{}.{}",
            std::process::id(),
            pg.handle_id()
        )),
    }
}

/// Whether `s` can be sent as (part of) a NOTIFY payload.
fn is_notify_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

/// The head and tail of the `pg_notify` payload announcing `payloads` of `log` on `topic`; the
/// database puts the first cursor between them.
pub(crate) fn frame_parts(
    topic: &str,
    log: &str,
    payloads: &[Bytes],
    max_frame_bytes: usize,
) -> (String, String) {
    let frame0 = frame::encode(0, payloads, max_frame_bytes);
    let tail = &frame0[1..];
    let head_len = topic.len() + 2;
    if head_len + MAX_CURSOR_DIGITS + tail.len() < MAX_PAYLOAD && is_notify_text(tail) {
        if let Ok(tail) = std::str::from_utf8(tail) {
            return (format!("{topic} f"), tail.to_owned());
        }
    }
    (
        format!("{topic} r"),
        format!(" {} {max_frame_bytes} {log}", payloads.len()),
    )
}

/// A publish payload to send inline, or `None` when it must go through the outbox.
pub(crate) fn message(topic: &str, payload: &[u8]) -> Option<String> {
    if topic.len() + 2 + payload.len() < MAX_PAYLOAD && is_notify_text(payload) {
        let text = std::str::from_utf8(payload).ok()?;
        return Some(format!("{topic} m{text}"));
    }
    None
}

/// A decoded notification.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Notice<'a> {
    /// Deliver these bytes.
    Inline(&'a str),
    /// Read the frame of `count` events from `first` of `log`.
    Frame {
        first: u64,
        count: u64,
        max: usize,
        log: &'a str,
    },
    /// Fetch outbox row `id`.
    Outbox(i64),
    /// Only wake the topic's consumer groups (a nacked job).
    Wake,
    /// A new subscriber's start marker.
    Marker(u64),
}

/// Split a payload into its topic and notice; `None` for anything malformed.
pub(crate) fn decode(payload: &str) -> Option<(&str, Notice<'_>)> {
    let (topic, rest) = payload.split_once(' ')?;
    let kind = rest.as_bytes().first()?;
    let body = &rest[1..];
    let notice = match kind {
        b'f' | b'm' => Notice::Inline(body),
        b'r' => {
            let mut it = body.splitn(4, ' ');
            let first = it.next()?.parse().ok()?;
            let count = it.next()?.parse().ok()?;
            let max = it.next()?.parse().ok()?;
            let log = it.next()?;
            Notice::Frame {
                first,
                count,
                max,
                log,
            }
        }
        b'p' => Notice::Outbox(body.parse().ok()?),
        b'w' => Notice::Wake,
        b's' => Notice::Marker(body.parse().ok()?),
        _ => return None,
    };
    Some((topic, notice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_short_identifiers_and_depend_on_schema() {
        let c = channel("durable", &"x".repeat(512));
        assert_eq!(c.len(), 20);
        assert!(c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert_ne!(channel("a", "t"), channel("b", "t"));
        assert_ne!(channel("a", "t1"), channel("a", "t2"));
    }

    #[test]
    fn small_text_frames_go_inline_as_frame_encode_makes_them() {
        let p = vec![
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"x\ny"),
        ];
        let (head, tail) = frame_parts("ns.run.r", "ns/run/r/events", &p, 1024);
        let payload = format!("{head}42{tail}");
        let (topic, notice) = decode(&payload).unwrap();
        assert_eq!(topic, "ns.run.r");
        let Notice::Inline(f) = notice else {
            panic!("{notice:?}")
        };
        assert_eq!(f.as_bytes(), &frame::encode(42, &p, 1024)[..]);
    }

    #[test]
    fn binary_or_big_frames_go_by_reference() {
        for p in [
            vec![Bytes::from_static(b"nul\0")],
            vec![Bytes::from(vec![b'a'; 9000])],
        ] {
            let (head, tail) = frame_parts("t", "ns/log", &p, 1 << 20);
            let payload = format!("{head}7{tail}");
            assert_eq!(
                decode(&payload),
                Some((
                    "t",
                    Notice::Frame {
                        first: 7,
                        count: 1,
                        max: 1 << 20,
                        log: "ns/log"
                    }
                ))
            );
        }
        assert_eq!(message("t", b"nul\0"), None);
        assert_eq!(message("t", b"hi").as_deref(), Some("t mhi"));
        assert_eq!(decode("t p12"), Some(("t", Notice::Outbox(12))));
        assert_eq!(decode("garbage"), None);
    }
}

//! Wake-up frames: what a run's topic carries after each append.
//!
//! A frame announces the cursor range of one appended batch and, when the batch fits in the
//! configured size, carries the stored events themselves so that a caught-up observer needs no
//! read. The encoding is *injective*: payloads are length-prefixed, so no byte of an event
//! (newline, `\r`, NUL, anything) can be mistaken for a boundary.
//!
//! ```text
//! range only:   "<first> <count>"
//! with events:  "<first> <count> <len_1>,<len_2>,…,<len_count>\n" <payload_1> <payload_2> …
//! ```
//!
//! All numbers are ASCII decimal without sign or leading `+`. A frame with events is exactly the
//! header, one `\n` and the concatenated payloads: any other length is malformed. Backends that
//! announce inside their append (see [`ServerCache::append_announce`]) build the same bytes — a
//! Redis Lua script, a Postgres function, a Rust adapter through [`encode`].
//!
//! [`ServerCache::append_announce`]: crate::ServerCache::append_announce

use bytes::{BufMut, Bytes, BytesMut};

use crate::cache::Cursor;
use crate::event::put_dec;

/// Published on a run's topic when the run is deleted: not a frame (it never decodes), so
/// every observer re-reads the log and ends with `NotFound` or `Gone`.
pub const DELETED: &[u8] = b"deleted";

/// A decoded frame: the announced range and, when carried, the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Cursor of the first announced event.
    pub first: Cursor,
    /// Number of announced events.
    pub count: u64,
    /// The stored events (`count` of them), or `None` for a range-only frame.
    pub events: Option<Vec<Bytes>>,
}

/// The bytes of the payloads' part of a frame with events (for the size decision).
pub fn body_len(payloads: &[Bytes]) -> usize {
    payloads
        .iter()
        .map(|p| p.len() + dec_len(p.len() as u64) + 1)
        .sum()
}

/// Encode the frame announcing `payloads` stored from cursor `first`. The events are carried
/// when their encoded size is at most `max_bytes`; otherwise the frame holds only the range.
pub fn encode(first: Cursor, payloads: &[Bytes], max_bytes: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_len_bound(payloads, max_bytes));
    encode_into(&mut buf, first, payloads, max_bytes);
    buf.freeze()
}

/// At least the bytes [`encode`] writes for these arguments.
pub fn encoded_len_bound(payloads: &[Bytes], max_bytes: usize) -> usize {
    let body = body_len(payloads);
    42 + if !payloads.is_empty() && body <= max_bytes {
        body
    } else {
        0
    }
}

/// [`encode`] appended to `buf`. Returns the length of the frame's header (the offset of the
/// first payload from where the frame starts), or `None` when the frame holds only the range.
/// A backend that stores the frame itself can keep its events as slices of it.
pub fn encode_into(
    buf: &mut BytesMut,
    first: Cursor,
    payloads: &[Bytes],
    max_bytes: usize,
) -> Option<usize> {
    let body = body_len(payloads);
    let with_events = !payloads.is_empty() && body <= max_bytes;
    let start = buf.len();
    put_dec(buf, first);
    buf.put_u8(b' ');
    put_dec(buf, payloads.len() as u64);
    if !with_events {
        return None;
    }
    for (i, p) in payloads.iter().enumerate() {
        buf.put_u8(if i == 0 { b' ' } else { b',' });
        put_dec(buf, p.len() as u64);
    }
    buf.put_u8(b'\n');
    let header = buf.len() - start;
    for p in payloads {
        buf.put_slice(p);
    }
    Some(header)
}

/// Decode a frame. Returns `None` for anything that is not exactly a frame as specified in
/// the module docs (a malformed frame is never partially trusted). Events are slices of
/// `frame` (no copy).
pub fn decode(frame: &Bytes) -> Option<Frame> {
    let (header, header_end) = header(frame)?;
    let mut parts = header.split(' ');
    let first = parse_dec(parts.next()?)?;
    let count = parse_dec(parts.next()?)?;
    let lens = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let (Some(lens), Some(header_end)) = (lens, header_end) else {
        // Range only: no length list and no body.
        return (lens.is_none() && header_end.is_none()).then_some(Frame {
            first,
            count,
            events: None,
        });
    };
    let mut events = Vec::with_capacity(usize::try_from(count).ok()?.min(4096));
    let mut at = header_end + 1;
    for len in lens.split(',') {
        let len = usize::try_from(parse_dec(len)?).ok()?;
        let end = at.checked_add(len)?;
        if end > frame.len() {
            return None;
        }
        events.push(frame.slice(at..end));
        at = end;
    }
    (at == frame.len() && events.len() as u64 == count).then_some(Frame {
        first,
        count,
        events: Some(events),
    })
}

/// The announced range of a frame (first cursor, count), read from its header alone: for a
/// backend that looks for one frame among many before decoding it. A frame this accepts may
/// still fail [`decode`].
pub fn range(frame: &[u8]) -> Option<(Cursor, u64)> {
    let (header, _) = header(frame)?;
    let mut parts = header.split(' ');
    Some((parse_dec(parts.next()?)?, parse_dec(parts.next()?)?))
}

/// A frame's header line, and where its newline is (none in a range-only frame).
fn header(frame: &[u8]) -> Option<(&str, Option<usize>)> {
    let end = frame.iter().position(|b| *b == b'\n');
    let text = std::str::from_utf8(&frame[..end.unwrap_or(frame.len())]).ok()?;
    Some((text, end))
}

fn parse_dec(s: &str) -> Option<u64> {
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if s.is_empty() || s.len() > 20 || leading_zero || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn dec_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn encode_into_appends_the_same_frame_and_says_where_its_events_start() {
        let payloads = vec![b(b"{\"a\":1}"), b(b""), b(b"xyz")];
        let mut buf = BytesMut::from(&b"before"[..]);
        let header = encode_into(&mut buf, 7, &payloads, usize::MAX).unwrap();
        let frame = buf.split_off(6).freeze();
        assert_eq!(frame, encode(7, &payloads, usize::MAX));
        assert_eq!(&frame[header..], b"{\"a\":1}xyz");
        assert!(frame.len() <= encoded_len_bound(&payloads, usize::MAX));
        // Too large to carry: the range only, and no events to point at.
        let mut buf = BytesMut::new();
        assert_eq!(encode_into(&mut buf, 7, &payloads, 3), None);
        assert_eq!(buf.freeze(), encode(7, &payloads, 3));
    }

    #[test]
    fn range_reads_the_header_alone() {
        let payloads = vec![b(b"ab"), b(b"c")];
        assert_eq!(range(&encode(9, &payloads, usize::MAX)), Some((9, 2)));
        assert_eq!(range(&encode(9, &payloads, 0)), Some((9, 2)));
        assert_eq!(range(b"09 1"), None);
        assert_eq!(range(b"x"), None);
    }

    #[test]
    fn frames_round_trip_with_any_bytes() {
        let payloads = vec![
            b(b"{\"a\":1}"),
            b(b"line\nbreak"),
            b(b"cr\r\nlf"),
            b(b"nul\0byte"),
            b(b""),
            b(b"1,2 3\n4"),
            Bytes::from(vec![b'\n'; 1 << 20]),
        ];
        let f = encode(5, &payloads, usize::MAX);
        let d = decode(&f).unwrap();
        assert_eq!((d.first, d.count), (5, payloads.len() as u64));
        assert_eq!(d.events.unwrap(), payloads);
    }

    #[test]
    fn oversized_batches_announce_only_the_range() {
        let payloads = vec![b(b"{}"), b(b"{}")];
        let f = encode(7, &payloads, 3);
        assert_eq!(&f[..], b"7 2");
        assert_eq!(
            decode(&f),
            Some(Frame {
                first: 7,
                count: 2,
                events: None
            })
        );
        assert_eq!(body_len(&payloads), 8);
        assert!(decode(&encode(7, &payloads, 8)).unwrap().events.is_some());
    }

    #[test]
    fn malformed_frames_are_rejected_never_half_trusted() {
        for bad in [
            &b""[..],
            b"garbage",
            b"1",
            b"1 2 3",
            b"1 1 3\nab",
            b"1 1 1\nab",
            b"1 2 1\na",
            b"1 1 1,1\nab",
            b"-1 1",
            b"+1 1",
            b"1 1 \na",
            b"1 1 x\na",
            b"1 1\n",
            b"99999999999999999999999 1",
            b"01 1",
            b"1 1 01\na",
        ] {
            assert_eq!(decode(&b(bad)), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let alphabet = b"0123456789 ,\n\rab";
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            let frame = b(&bytes);
            if let Some(d) = decode(&frame) {
                // Whatever decodes re-encodes to the same bytes: the encoding is injective.
                let events = d.events.clone().unwrap_or_default();
                if d.events.is_some() {
                    assert_eq!(encode(d.first, &events, usize::MAX), frame);
                }
            }
        }
    }
}

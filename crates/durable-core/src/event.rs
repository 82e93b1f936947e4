//! The event envelope and its encodings.
//!
//! An event is `{run_id, cursor, kind, data, at}`. In a run log the backend stores only
//! `{"kind":…,"at":…,"data":…}` (the run id is in the log's name and the cursor is the entry's
//! position, assigned by the backend); [`Event::to_json`] produces the full envelope.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::cache::Cursor;
use crate::error::{Error, ErrorKind, Result};
use crate::id::RunId;

/// The kind of an event. Names are stable on the wire (kebab-case).
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The run started.
    Start,
    /// A model step started.
    StepStart,
    /// A chunk of model text.
    TextDelta,
    /// A chunk of model reasoning.
    ReasoningDelta,
    /// The model called a tool.
    ToolCall,
    /// A tool call waits for approval.
    ToolCallApproval,
    /// A tool returned.
    ToolResult,
    /// A tool failed.
    ToolError,
    /// A step finished.
    StepFinish,
    /// A step is re-run after a crash: drop the partial output of that step seen so far.
    StepRestart,
    /// The run is suspended (waiting for approval).
    Suspended,
    /// The run finished. Terminal.
    Finish,
    /// The run failed. Terminal.
    Error,
    /// The run was aborted. Terminal.
    Abort,
    /// An application-defined kind (`[a-z0-9-]`, 1 to 64 characters).
    Custom(Arc<str>),
}

impl EventKind {
    #[cfg(test)]
    const KNOWN: [(&'static str, EventKind); 14] = [
        ("start", EventKind::Start),
        ("step-start", EventKind::StepStart),
        ("text-delta", EventKind::TextDelta),
        ("reasoning-delta", EventKind::ReasoningDelta),
        ("tool-call", EventKind::ToolCall),
        ("tool-call-approval", EventKind::ToolCallApproval),
        ("tool-result", EventKind::ToolResult),
        ("tool-error", EventKind::ToolError),
        ("step-finish", EventKind::StepFinish),
        ("step-restart", EventKind::StepRestart),
        ("suspended", EventKind::Suspended),
        ("finish", EventKind::Finish),
        ("error", EventKind::Error),
        ("abort", EventKind::Abort),
    ];

    /// Parse a kind name.
    ///
    /// # Errors
    /// `InvalidInput` if a custom name is not `[a-z0-9-]{1,64}`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "start" => EventKind::Start,
            "step-start" => EventKind::StepStart,
            "text-delta" => EventKind::TextDelta,
            "reasoning-delta" => EventKind::ReasoningDelta,
            "tool-call" => EventKind::ToolCall,
            "tool-call-approval" => EventKind::ToolCallApproval,
            "tool-result" => EventKind::ToolResult,
            "tool-error" => EventKind::ToolError,
            "step-finish" => EventKind::StepFinish,
            "step-restart" => EventKind::StepRestart,
            "suspended" => EventKind::Suspended,
            "finish" => EventKind::Finish,
            "error" => EventKind::Error,
            "abort" => EventKind::Abort,
            _ => {
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(Error::invalid_input(format!(
                        "event kind must be [a-z0-9-]{{1,64}}, got {name:?}"
                    )));
                }
                EventKind::Custom(Arc::from(name))
            }
        })
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Start => "start",
            EventKind::StepStart => "step-start",
            EventKind::TextDelta => "text-delta",
            EventKind::ReasoningDelta => "reasoning-delta",
            EventKind::ToolCall => "tool-call",
            EventKind::ToolCallApproval => "tool-call-approval",
            EventKind::ToolResult => "tool-result",
            EventKind::ToolError => "tool-error",
            EventKind::StepFinish => "step-finish",
            EventKind::StepRestart => "step-restart",
            EventKind::Suspended => "suspended",
            EventKind::Finish => "finish",
            EventKind::Error => "error",
            EventKind::Abort => "abort",
            EventKind::Custom(s) => s,
        }
    }

    /// `finish`, `error` and `abort` end a run: observers stop after them.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Finish | EventKind::Error | EventKind::Abort
        )
    }
}

impl fmt::Debug for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        EventKind::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A JSON document kept as its encoded text (no parse on the hot path).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(Bytes);

impl Json {
    /// JSON `null`.
    pub fn null() -> Self {
        Json(Bytes::from_static(b"null"))
    }

    /// Encode a value.
    ///
    /// # Errors
    /// The serializer's error (for example a map with non-string keys).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Json(Bytes::from(serde_json::to_vec(value)?)))
    }

    /// Wrap JSON text produced by a serializer in this crate (valid by construction, no
    /// newlines); only checked in debug builds.
    pub(crate) fn from_trusted(bytes: Vec<u8>) -> Result<Self> {
        debug_assert!(serde_json::from_slice::<&RawValue>(&bytes).is_ok());
        debug_assert!(!bytes.contains(&b'\n'));
        Ok(Json(Bytes::from(bytes)))
    }

    /// Wrap JSON text after checking that it is one valid JSON value.
    ///
    /// # Errors
    /// `InvalidInput` if it is not valid JSON.
    pub fn from_text(text: impl Into<Bytes>) -> Result<Self> {
        let bytes = text.into();
        serde_json::from_slice::<&RawValue>(&bytes)
            .map_err(|e| Error::invalid_input("not a JSON value").with_source(e))?;
        Ok(Self::compact(bytes))
    }

    /// Re-encode without newlines if the text has any (run-log frames are newline-separated).
    fn compact(bytes: Bytes) -> Self {
        if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            Json(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
        } else {
            Json(bytes)
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Constructed only from serde_json output or validated UTF-8 JSON text.
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The JSON text as bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Decode into `T`.
    ///
    /// # Errors
    /// `Corrupt` if it does not match `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.0)?)
    }

    /// Decode into a [`serde_json::Value`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0).unwrap_or_default()
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Json(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_slice(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(Json(Bytes::from(raw.get().to_owned())))
    }
}

/// An event to append: its kind and data. The backend assigns the cursor; `at` is taken at encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The kind.
    pub kind: EventKind,
    /// The payload.
    pub data: Json,
}

impl NewEvent {
    /// An event of `kind` with `data`.
    pub fn new(kind: EventKind, data: Json) -> Self {
        Self { kind, data }
    }

    /// An event of `kind` whose data is `value` encoded as JSON.
    ///
    /// # Errors
    /// The serializer's error.
    pub fn json<T: Serialize + ?Sized>(kind: EventKind, value: &T) -> Result<Self> {
        Ok(Self::new(kind, Json::encode(value)?))
    }

    /// Encode for storage in a run log: `{"kind":…,"at":…,"data":…}`.
    pub(crate) fn encode_stored(&self, at: u64) -> Bytes {
        let kind = self.kind.as_str();
        let data = self.data.as_bytes();
        // Exactly sized: a `Vec` whose length equals its capacity becomes a `Bytes` without a
        // second allocation (a stored event is one allocation for as long as it is retained).
        let len = 25 + kind.len() + dec_len(at) + data.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(b"{\"kind\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(b"\",\"at\":");
        put_dec(&mut buf, at);
        buf.extend_from_slice(b",\"data\":");
        buf.extend_from_slice(data);
        buf.push(b'}');
        debug_assert_eq!(buf.len(), len);
        Bytes::from(buf)
    }
}

/// One event of a run, as observers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The run.
    pub run_id: RunId,
    /// Position in the run's log.
    pub cursor: Cursor,
    /// The kind.
    pub kind: EventKind,
    /// The payload.
    pub data: Json,
    /// When it was appended, Unix milliseconds.
    pub at: u64,
}

impl Event {
    /// Decode an entry of a run log.
    ///
    /// # Errors
    /// `Corrupt` if the entry is not a stored event.
    pub fn decode_stored(run_id: &RunId, cursor: Cursor, stored: &Bytes) -> Result<Self> {
        if let Some(ev) = Self::decode_own_format(run_id, cursor, stored) {
            return Ok(ev);
        }
        #[derive(Deserialize)]
        struct Stored<'a> {
            #[serde(borrow)]
            kind: Cow<'a, str>,
            at: u64,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let s: Stored<'_> = serde_json::from_slice(stored).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("run log entry {cursor} is not an event"),
            )
            .with_source(e)
        })?;
        let kind = EventKind::parse(&s.kind)
            .map_err(|e| Error::new(ErrorKind::Corrupt, e.message().to_owned()))?;
        let data = Json(stored.slice_ref(s.data.get().as_bytes()));
        Ok(Event {
            run_id: run_id.clone(),
            cursor,
            kind,
            data,
            at: s.at,
        })
    }

    /// The replay hot path: entries written by [`NewEvent::encode_stored`] have exactly the shape
    /// `{"kind":"<kind>","at":<digits>,"data":<json>}`, so they are split without building a
    /// JSON value (the data is only checked to be one JSON value). Anything else takes the
    /// serde path.
    fn decode_own_format(run_id: &RunId, cursor: Cursor, stored: &Bytes) -> Option<Self> {
        let rest = stored.strip_prefix(b"{\"kind\":\"")?;
        let kind_end = rest.iter().position(|b| *b == b'"')?;
        let kind = EventKind::parse(std::str::from_utf8(&rest[..kind_end]).ok()?).ok()?;
        let rest = rest[kind_end..].strip_prefix(b"\",\"at\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 {
            return None;
        }
        let at = rest[..digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        let data = rest[digits..].strip_prefix(b",\"data\":")?;
        let data = data.strip_suffix(b"}")?;
        // One JSON value and nothing after it: a corrupted or foreign entry (a field after
        // `data`, a cut value, bad UTF-8) takes the serde path and is reported, never passed
        // on as data. serde_json's validating skip, no allocation (a hand-written scan
        // measured no faster).
        serde_json::from_slice::<&RawValue>(data).ok()?;
        Some(Event {
            run_id: run_id.clone(),
            cursor,
            kind,
            data: Json(stored.slice_ref(data)),
            at,
        })
    }

    /// The full envelope as JSON: `{"run_id":…,"cursor":…,"kind":…,"at":…,"data":…}`.
    pub fn to_json(&self) -> Bytes {
        let data = self.data.as_bytes();
        let mut buf = BytesMut::with_capacity(64 + self.run_id.as_str().len() + data.len());
        buf.put_slice(b"{\"run_id\":\"");
        buf.put_slice(self.run_id.as_str().as_bytes());
        buf.put_slice(b"\",\"cursor\":");
        put_dec(&mut buf, self.cursor);
        buf.put_slice(b",\"kind\":\"");
        buf.put_slice(self.kind.as_str().as_bytes());
        buf.put_slice(b"\",\"at\":");
        put_dec(&mut buf, self.at);
        buf.put_slice(b",\"data\":");
        buf.put_slice(data);
        buf.put_u8(b'}');
        buf.freeze()
    }

    /// Decode the data into `T`.
    ///
    /// # Errors
    /// `Corrupt` if it does not match `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.data.decode()
    }
}

/// The number of decimal digits of `n`.
fn dec_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Write `n` in decimal without allocating.
pub(crate) fn put_dec(buf: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_round_trip_keeps_everything() {
        let run = RunId::new("r1").unwrap();
        let ev =
            NewEvent::json(EventKind::TextDelta, &serde_json::json!({"text": "hi\n"})).unwrap();
        let stored = ev.encode_stored(42);
        assert!(!stored.contains(&b'\n'));
        let back = Event::decode_stored(&run, 7, &stored).unwrap();
        assert_eq!(back.kind, EventKind::TextDelta);
        assert_eq!(back.at, 42);
        assert_eq!(back.cursor, 7);
        assert_eq!(back.data.to_value()["text"], "hi\n");
        let full: serde_json::Value = serde_json::from_slice(&back.to_json()).unwrap();
        assert_eq!(full["run_id"], "r1");
        assert_eq!(full["cursor"], 7);
        assert_eq!(full["kind"], "text-delta");
        let via_serde: Event = serde_json::from_slice(&back.to_json()).unwrap();
        assert_eq!(via_serde, back);
    }

    #[test]
    fn foreign_stored_shapes_take_the_serde_path() {
        let run = RunId::new("r").unwrap();
        let reordered = Bytes::from_static(br#"{"at": 5, "data": {"x": [1]}, "kind": "finish"}"#);
        let e = Event::decode_stored(&run, 0, &reordered).unwrap();
        assert_eq!(
            (e.kind, e.at, e.data.to_value()),
            (EventKind::Finish, 5, serde_json::json!({"x": [1]}))
        );
        for bad in [
            &b"{}"[..],
            b"{\"kind\":\"x\",\"at\":1,\"data\":}",
            b"not json",
        ] {
            let r = Event::decode_stored(&run, 0, &Bytes::copy_from_slice(bad));
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Corrupt);
        }
    }

    #[test]
    fn kinds_parse_and_validate() {
        for (name, kind) in EventKind::KNOWN {
            assert_eq!(EventKind::parse(name).unwrap(), kind);
            assert_eq!(kind.as_str(), name);
        }
        assert_eq!(EventKind::parse("my-kind").unwrap().as_str(), "my-kind");
        assert!(EventKind::parse("Bad Kind").is_err());
        assert!(EventKind::Finish.is_terminal() && !EventKind::Suspended.is_terminal());
    }

    #[test]
    fn json_text_is_validated_and_compacted() {
        assert!(Json::from_text("{nope").is_err());
        let j = Json::from_text("{\n \"a\": 1\n}").unwrap();
        assert_eq!(j.as_str(), "{\"a\":1}");
    }

    #[test]
    fn put_dec_matches_display() {
        for n in [0u64, 1, 9, 10, 12345, u64::MAX] {
            let mut b = BytesMut::new();
            put_dec(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
        }
    }
}

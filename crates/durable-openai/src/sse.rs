//! An incremental, bounded Server-Sent Events parser (the WHATWG event-stream format).
//!
//! Bytes arrive in arbitrary pieces (a line, a multi-byte character or a `\r\n` pair may be split
//! across TCP reads); [`SseParser::feed`] keeps the unfinished line and returns every event that a
//! blank line completed. Only what a chat-completions client needs is kept: the `data` (lines
//! joined with `\n`) and the `event` name; `id`, `retry`, unknown fields and `:` comments
//! (keep-alives) are skipped.

use std::fmt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, when the server named the event.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: Vec<u8>,
}

/// The stream broke the parser's bound on one line or one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SseTooLarge {
    pub(crate) limit: usize,
}

impl fmt::Display for SseTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an SSE event is larger than {} bytes", self.limit)
    }
}

impl std::error::Error for SseTooLarge {}

/// Incremental SSE parser with a bound on the bytes held for one event.
#[derive(Debug)]
pub(crate) struct SseParser {
    max_event_bytes: usize,
    /// The current, unfinished line.
    line: Vec<u8>,
    /// A `\r` ended the previous piece: a `\n` starting the next one belongs to it.
    after_cr: bool,
    /// The byte-order mark is only skipped at the very start of the stream.
    at_start: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
}

impl SseParser {
    /// A parser that refuses lines or events longer than `max_event_bytes`.
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: Vec::new(),
            has_data: false,
            event: None,
        }
    }

    /// Feed the next piece of the body; complete events are pushed onto `out`.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<SseEvent>,
    ) -> Result<(), SseTooLarge> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_line_bytes(&bytes[..pos])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
            self.line = line;
            self.line.clear();
            let was_cr = bytes[pos] == b'\r';
            bytes = &bytes[pos + 1..];
            if was_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push_line_bytes(bytes)
    }

    /// The body ended: dispatch what a final blank line would have (servers sometimes omit it).
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseTooLarge> {
        if self.line.len() + bytes.len() + self.data.len() > self.max_event_bytes {
            return Err(SseTooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        let mut line = line;
        if self.at_start {
            self.at_start = false;
            if let Some(rest) = line.strip_prefix("\u{feff}".as_bytes()) {
                line = rest;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + value.len() > self.max_event_bytes {
                    return Err(SseTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if self.has_data {
            self.has_data = false;
            out.push(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            p.feed(chunk, &mut out).unwrap();
        }
        p.finish(&mut out).unwrap();
        out
    }

    fn data(events: &[SseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8(e.data.clone()).unwrap())
            .collect()
    }

    #[test]
    fn lf_crlf_and_cr_line_endings_give_the_same_events() {
        let lf = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let crlf = b"data: {\"a\":1}\r\n\r\ndata: [DONE]\r\n\r\n";
        let cr = b"data: {\"a\":1}\r\rdata: [DONE]\r\r";
        for input in [&lf[..], &crlf[..], &cr[..]] {
            for piece in [1, 2, 3, 7, 1000] {
                assert_eq!(
                    data(&parse_in_pieces(input, piece)),
                    ["{\"a\":1}", "[DONE]"],
                    "piece size {piece} of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn comments_and_unknown_fields_are_skipped() {
        let input =
            b": keep-alive\n\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n: OPENROUTER PROCESSING\n\n";
        assert_eq!(data(&parse_in_pieces(input, 1)), ["x"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let input = b"data: {\"a\":\ndata:  1}\n\n";
        let events = parse_in_pieces(input, 1);
        assert_eq!(data(&events), ["{\"a\":\n 1}"]);
        let v: serde_json::Value = serde_json::from_slice(&events[0].data).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn event_names_are_kept_for_one_event() {
        let input = b"event: error\ndata: {}\n\ndata: y\n\n";
        let events = parse_in_pieces(input, 4);
        assert_eq!(events[0].event.as_deref(), Some("error"));
        assert_eq!(events[1].event, None);
    }

    #[test]
    fn a_multi_byte_character_split_across_pieces_survives() {
        let input = "data: {\"t\":\"héllo 🌍\"}\n\n".as_bytes();
        for piece in 1..8 {
            assert_eq!(
                data(&parse_in_pieces(input, piece)),
                ["{\"t\":\"héllo 🌍\"}"]
            );
        }
    }

    #[test]
    fn a_last_event_without_blank_line_is_dispatched_at_the_end() {
        assert_eq!(data(&parse_in_pieces(b"data: [DONE]", 3)), ["[DONE]"]);
        assert_eq!(data(&parse_in_pieces(b"data: [DONE]\n", 3)), ["[DONE]"]);
    }

    #[test]
    fn a_bom_and_a_field_without_colon_are_handled() {
        let input = "\u{feff}data: a\n\ndata\n\n".as_bytes();
        assert_eq!(data(&parse_in_pieces(input, 1)), ["a", ""]);
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        assert!(parse_in_pieces(b"\n\n\r\n: x\n\n", 1).is_empty());
    }

    #[test]
    fn an_oversized_line_is_an_error_not_unbounded_growth() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        let mut result = Ok(());
        for _ in 0..100 {
            result = p.feed(b"data: aaaaaaaa", &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseTooLarge { limit: 16 }));
    }

    #[test]
    fn an_oversized_multi_line_event_is_an_error() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        let result = p.feed(b"data: 0123456789\ndata: 0123456789\n", &mut out);
        assert!(result.is_err());
    }
}

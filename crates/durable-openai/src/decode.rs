//! Turns the SSE events of one chat-completions stream into [`ModelChunk`]s.
//!
//! Text and reasoning deltas pass straight through. Tool-call fragments are assembled by their
//! `index` and emitted complete, with parsed JSON arguments, when the choice finishes (or the
//! stream ends). `Finish` comes last, after the usage-only chunk that `include_usage` adds.

use std::collections::VecDeque;

use durable_core::agent::{FinishReason, ModelChunk, ToolCall, Usage};
use durable_core::{Error, ErrorKind, Result};
use serde_json::Value;

use crate::sse::SseEvent;
use crate::wire::{error_message, Chunk, ToolCallDelta};
use crate::BACKEND;

/// Longest argument text accepted for one tool call.
pub(crate) const MAX_ARGUMENT_BYTES: usize = 8 << 20;

fn stream_error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message.into())
        .with_backend(BACKEND)
        .with_operation("stream")
}

#[derive(Debug, Default)]
struct PartialCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

/// What the decoder makes of one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Keep reading.
    More,
    /// `[DONE]`: the stream is complete and `Finish` was pushed.
    Done,
}

/// The decoding state of one stream.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    calls: Vec<PartialCall>,
    emitted_tool_calls: bool,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Decoder {
    /// Decode one event, pushing the chunks it completes onto `out`.
    pub(crate) fn on_event(
        &mut self,
        event: &SseEvent,
        out: &mut VecDeque<ModelChunk>,
    ) -> Result<Progress> {
        if event.data.trim_ascii() == b"[DONE]" {
            self.finish(out)?;
            return Ok(Progress::Done);
        }
        if event.event.as_deref() == Some("error") {
            let error = serde_json::from_slice::<Chunk>(&event.data)
                .ok()
                .and_then(|c| c.error);
            return Err(match error {
                Some(error) => in_stream_error(&error),
                None => stream_error(
                    ErrorKind::Unexpected,
                    format!(
                        "the server sent an error event: {}",
                        preview(&String::from_utf8_lossy(&event.data))
                    ),
                ),
            });
        }
        let chunk: Chunk = serde_json::from_slice(&event.data).map_err(|e| {
            stream_error(
                ErrorKind::Unexpected,
                format!(
                    "the server sent a stream chunk that is not valid JSON: {}",
                    preview(&String::from_utf8_lossy(&event.data))
                ),
            )
            .with_source(e)
        })?;
        if let Some(error) = &chunk.error {
            return Err(in_stream_error(error));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            });
        }
        // We never ask for `n > 1`; other choices would interleave with the first one.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.message.unwrap_or(choice.delta);
            for reasoning in [delta.reasoning_content, delta.reasoning]
                .into_iter()
                .flatten()
            {
                if !reasoning.is_empty() {
                    out.push_back(ModelChunk::ReasoningDelta { text: reasoning });
                }
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                out.push_back(ModelChunk::TextDelta { text });
            }
            for fragment in delta.tool_calls {
                self.add_fragment(fragment)?;
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
                self.flush_tool_calls(out)?;
            }
        }
        Ok(Progress::More)
    }

    /// The body ended without `[DONE]`. That is fine once the choice finished (some servers
    /// close right after the last chunk), and a truncated stream otherwise.
    pub(crate) fn on_end(&mut self, out: &mut VecDeque<ModelChunk>) -> Result<()> {
        if self.finish_reason.is_none() {
            return Err(stream_error(
                ErrorKind::Unavailable,
                "the stream ended before the model finished (no finish_reason and no [DONE])",
            ));
        }
        self.finish(out)
    }

    fn finish(&mut self, out: &mut VecDeque<ModelChunk>) -> Result<()> {
        self.flush_tool_calls(out)?;
        let reason = match self.finish_reason.as_deref() {
            // Some servers (older Ollama) say `stop` after calling tools.
            Some("stop") | None if self.emitted_tool_calls => FinishReason::ToolCalls,
            Some("stop") | None => FinishReason::Stop,
            Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
            Some("length") => FinishReason::Length,
            Some("content_filter") => FinishReason::ContentFilter,
            Some(other) => FinishReason::Other(other.to_owned()),
        };
        out.push_back(ModelChunk::Finish {
            reason,
            usage: self.usage.unwrap_or_default(),
        });
        Ok(())
    }

    fn add_fragment(&mut self, fragment: ToolCallDelta) -> Result<()> {
        let slot = match fragment.index {
            Some(index) => self.calls.iter().position(|c| c.index == index),
            // Without an index (some servers), a new id starts a call; no id continues the last.
            None => match &fragment.id {
                Some(id) => self.calls.iter().position(|c| &c.id == id),
                None => self.calls.len().checked_sub(1),
            },
        };
        let slot = match slot {
            Some(slot) => slot,
            None => {
                let index = fragment.index.unwrap_or_else(|| {
                    self.calls
                        .iter()
                        .map(|c| c.index + 1)
                        .max()
                        .unwrap_or_default()
                });
                self.calls.push(PartialCall {
                    index,
                    ..PartialCall::default()
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[slot];
        if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
            if call.id.is_empty() {
                call.id = id;
            }
        }
        // OpenAI sends the name once; servers that repeat it every fragment are not doubled.
        if let Some(name) = fragment.function.name.filter(|n| !n.is_empty()) {
            if call.name != name {
                call.name.push_str(&name);
            }
        }
        if let Some(arguments) = fragment.function.arguments {
            if call.arguments.len() + arguments.len() > MAX_ARGUMENT_BYTES {
                return Err(stream_error(
                    ErrorKind::LimitExceeded,
                    format!(
                        "the arguments of tool call {} are longer than {MAX_ARGUMENT_BYTES} bytes",
                        call.index
                    ),
                ));
            }
            call.arguments.push_str(&arguments);
        }
        Ok(())
    }

    fn flush_tool_calls(&mut self, out: &mut VecDeque<ModelChunk>) -> Result<()> {
        let mut calls = std::mem::take(&mut self.calls);
        calls.sort_by_key(|c| c.index);
        for call in calls {
            out.push_back(ModelChunk::ToolCall(complete(call)?));
            self.emitted_tool_calls = true;
        }
        Ok(())
    }
}

fn complete(call: PartialCall) -> Result<ToolCall> {
    if call.name.is_empty() {
        return Err(stream_error(
            ErrorKind::Unexpected,
            format!("tool call {} has no function name", call.index),
        ));
    }
    let arguments = if call.arguments.trim().is_empty() {
        // A tool without parameters: some servers send "" rather than "{}".
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(&call.arguments).map_err(|e| {
            stream_error(
                ErrorKind::Unexpected,
                format!(
                    "tool call `{}` has arguments that are not valid JSON: {}",
                    call.name,
                    preview(&call.arguments)
                ),
            )
            .with_source(e)
        })?
    };
    let id = if call.id.is_empty() {
        format!("call_{:016x}", fastrand::u64(..))
    } else {
        call.id
    };
    Ok(ToolCall {
        id,
        name: call.name,
        arguments,
    })
}

fn in_stream_error(error: &Value) -> Error {
    let code = error.get("code").and_then(Value::as_u64);
    let kind = match (error.get("type").and_then(Value::as_str), code) {
        (Some("invalid_request_error"), _) => ErrorKind::InvalidInput,
        (Some("server_error"), _) => ErrorKind::Unavailable,
        (_, Some(500..=599)) => ErrorKind::Unavailable,
        (_, Some(400..=499)) => ErrorKind::InvalidInput,
        _ => ErrorKind::Unexpected,
    };
    stream_error(
        kind,
        format!(
            "the server reported an error mid-stream: {}",
            error_message(error)
        ),
    )
}

/// The first 200 characters of `text`, for error messages.
pub(crate) fn preview(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.as_bytes().to_vec(),
        }
    }

    fn run(events: &[&str]) -> (Vec<ModelChunk>, Result<Progress>) {
        let mut d = Decoder::default();
        let mut out = VecDeque::new();
        let mut last = Ok(Progress::More);
        for e in events {
            last = d.on_event(&ev(e), &mut out);
            if last.is_err() {
                break;
            }
        }
        (out.into(), last)
    }

    fn tool_fragment(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> String {
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": id, "type": "function",
             "function": {"name": name, "arguments": args}}]}, "finish_reason": null}]})
        .to_string()
    }

    #[test]
    fn interleaved_fragments_are_assembled_by_index() {
        let events = [
            tool_fragment(0, Some("a"), Some("one"), ""),
            tool_fragment(1, Some("b"), Some("two"), "{\"x\""),
            tool_fragment(0, None, None, "{\"y\":"),
            tool_fragment(1, None, None, ":1}"),
            tool_fragment(0, None, None, " [true]}"),
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#.into(),
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#.into(),
            "[DONE]".into(),
        ];
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let (out, last) = run(&refs);
        assert_eq!(last.unwrap(), Progress::Done);
        assert_eq!(
            out,
            [
                ModelChunk::ToolCall(ToolCall {
                    id: "a".into(),
                    name: "one".into(),
                    arguments: json!({"y": [true]}),
                }),
                ModelChunk::ToolCall(ToolCall {
                    id: "b".into(),
                    name: "two".into(),
                    arguments: json!({"x": 1}),
                }),
                ModelChunk::Finish {
                    reason: FinishReason::ToolCalls,
                    usage: Usage {
                        input_tokens: 5,
                        output_tokens: 7
                    },
                },
            ]
        );
    }

    #[test]
    fn invalid_argument_json_is_an_error_naming_the_tool() {
        let events = [
            tool_fragment(0, Some("a"), Some("get_weather"), "{\"city\": "),
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#.into(),
        ];
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let (_, last) = run(&refs);
        let e = last.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unexpected);
        assert!(e.message().contains("get_weather"), "{e}");
    }

    #[test]
    fn fragments_without_index_are_keyed_by_id_and_empty_arguments_are_an_object() {
        let a = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "c1", "function": {"name": "now", "arguments": ""}},
            {"id": "c2", "function": {"name": "echo", "arguments": "{\"t\":"}}]}}]})
        .to_string();
        let b = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"function": {"arguments": "\"hi\"}"}}]}, "finish_reason": "tool_calls"}]})
        .to_string();
        let (out, _) = run(&[&a, &b, "[DONE]"]);
        assert_eq!(
            out[..2],
            [
                ModelChunk::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "now".into(),
                    arguments: json!({}),
                }),
                ModelChunk::ToolCall(ToolCall {
                    id: "c2".into(),
                    name: "echo".into(),
                    arguments: json!({"t": "hi"}),
                }),
            ]
        );
    }

    #[test]
    fn a_repeated_name_is_not_doubled_and_a_missing_id_is_generated() {
        let events = [
            tool_fragment(0, None, Some("get_weather"), "{}"),
            tool_fragment(0, None, Some("get_weather"), ""),
            "[DONE]".into(),
        ];
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let (out, _) = run(&refs);
        let ModelChunk::ToolCall(call) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(call.name, "get_weather");
        assert!(call.id.starts_with("call_"));
        assert_eq!(
            out[1],
            ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: Usage::default()
            }
        );
    }

    #[test]
    fn a_tool_call_without_name_is_an_error() {
        let events = [tool_fragment(0, Some("x"), None, "{}"), "[DONE]".into()];
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        assert!(run(&refs).1.is_err());
    }

    #[test]
    fn finish_reasons_map_and_stop_after_tools_means_tool_calls() {
        for (wire, reason) in [
            ("stop", FinishReason::Stop),
            ("length", FinishReason::Length),
            ("tool_calls", FinishReason::ToolCalls),
            ("content_filter", FinishReason::ContentFilter),
            ("eos", FinishReason::Other("eos".into())),
        ] {
            let finish =
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": wire}]}).to_string();
            let (out, _) = run(&[&finish, "[DONE]"]);
            assert_eq!(
                out,
                [ModelChunk::Finish {
                    reason,
                    usage: Usage::default()
                }]
            );
        }
        let events = [
            tool_fragment(0, Some("a"), Some("t"), "{}"),
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.into(),
            "[DONE]".into(),
        ];
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let (out, _) = run(&refs);
        assert!(matches!(
            out.last(),
            Some(ModelChunk::Finish {
                reason: FinishReason::ToolCalls,
                ..
            })
        ));
    }

    #[test]
    fn text_and_reasoning_deltas_pass_through_and_empty_ones_are_dropped() {
        let (out, _) = run(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning":"ok"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
        ]);
        assert_eq!(
            out,
            [
                ModelChunk::ReasoningDelta { text: "hm".into() },
                ModelChunk::ReasoningDelta { text: "ok".into() },
                ModelChunk::TextDelta { text: "Hi".into() },
            ]
        );
    }

    #[test]
    fn malformed_json_and_error_objects_are_errors_not_panics() {
        let e = run(&["{not json"]).1.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unexpected);
        let e = run(&[r#"{"error":{"code":500,"message":"boom","type":"server_error"}}"#])
            .1
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.message().contains("boom"));
        let e = run(&[r#"{"error":"quota"}"#]).1.unwrap_err();
        assert!(e.message().contains("quota"));
        let e = run(&["[1,2]"]).1.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unexpected);

        let mut d = Decoder::default();
        let mut out = VecDeque::new();
        let named = |data: &str| SseEvent {
            event: Some("error".into()),
            data: data.as_bytes().to_vec(),
        };
        let e = d
            .on_event(&named("upstream overloaded"), &mut out)
            .unwrap_err();
        assert!(e.message().contains("upstream overloaded"), "{e}");
        let e = d
            .on_event(&named(r#"{"error":{"message":"m","code":503}}"#), &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn end_without_finish_is_truncation_and_with_finish_is_fine() {
        let mut d = Decoder::default();
        let mut out = VecDeque::new();
        d.on_event(
            &ev(r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            d.on_end(&mut out).unwrap_err().kind(),
            ErrorKind::Unavailable
        );

        let mut d = Decoder::default();
        d.on_event(
            &ev(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#),
            &mut out,
        )
        .unwrap();
        out.clear();
        d.on_end(&mut out).unwrap();
        assert!(matches!(
            out.pop_back(),
            Some(ModelChunk::Finish {
                reason: FinishReason::Length,
                ..
            })
        ));
    }

    #[test]
    fn oversized_arguments_are_refused() {
        let mut d = Decoder::default();
        let big = "x".repeat(MAX_ARGUMENT_BYTES / 2 + 1);
        let mut out = VecDeque::new();
        let first = tool_fragment(0, Some("a"), Some("t"), &big);
        let next = tool_fragment(0, None, None, &big);
        d.on_event(&ev(&first), &mut out).unwrap();
        let e = d.on_event(&ev(&next), &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    }

    #[test]
    fn preview_cuts_on_a_character_boundary() {
        let long = "é".repeat(300);
        assert_eq!(preview(&long).chars().count(), 201);
        assert_eq!(preview("short"), "short");
    }
}

/// The parser and the decoder together, over whole recorded transcripts.
#[cfg(test)]
mod transcript_tests {
    use std::collections::VecDeque;

    use durable_core::agent::ModelChunk;
    use durable_core::Result;

    use super::{Decoder, Progress};
    use crate::sse::SseParser;

    const TRANSCRIPTS: &[&[u8]] = &[
        include_bytes!("../tests/fixtures/openai_text_usage.sse"),
        include_bytes!("../tests/fixtures/openai_tool_call_fragments.sse"),
        include_bytes!("../tests/fixtures/parallel_tool_calls_interleaved.sse"),
        include_bytes!("../tests/fixtures/llamacpp_reasoning.sse"),
        include_bytes!("../tests/fixtures/llamacpp_tool_call.sse"),
        include_bytes!("../tests/fixtures/llamacpp_error_mid_stream.sse"),
        include_bytes!("../tests/fixtures/ollama_tool_call.sse"),
        include_bytes!("../tests/fixtures/crlf_keepalive_multiline.sse"),
        include_bytes!("../tests/fixtures/truncated.sse"),
        include_bytes!("../tests/fixtures/invalid_tool_arguments.sse"),
    ];

    /// Decode `body` delivered in `pieces`; the chunks, and the error that ended it, if any.
    fn decode(pieces: &[&[u8]]) -> (Vec<ModelChunk>, Option<String>) {
        let mut parser = SseParser::new(1 << 20);
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let mut out = VecDeque::new();
        let mut step = |events: &mut Vec<_>, out: &mut VecDeque<_>| -> Result<bool> {
            for event in events.drain(..) {
                if decoder.on_event(&event, out)? == Progress::Done {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        for piece in pieces {
            if parser.feed(piece, &mut events).is_err() {
                return (out.into(), Some("too large".into()));
            }
            match step(&mut events, &mut out) {
                Ok(true) => return (out.into(), None),
                Ok(false) => {}
                Err(e) => return (out.into(), Some(e.to_string())),
            }
        }
        let _ = parser.finish(&mut events);
        let end = match step(&mut events, &mut out) {
            Ok(true) => Ok(()),
            Ok(false) => decoder.on_end(&mut out),
            Err(e) => Err(e),
        };
        (out.into(), end.err().map(|e| e.to_string()))
    }

    fn random_pieces<'a>(body: &'a [u8], rng: &mut fastrand::Rng) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(40));
            let (piece, tail) = rest.split_at(n);
            pieces.push(piece);
            rest = tail;
        }
        pieces
    }

    #[test]
    fn every_split_of_a_transcript_decodes_like_the_whole() {
        let mut rng = fastrand::Rng::with_seed(7);
        for body in TRANSCRIPTS {
            let whole = decode(&[body]);
            for _ in 0..50 {
                assert_eq!(decode(&random_pieces(body, &mut rng)), whole);
            }
        }
    }

    #[test]
    fn mangled_transcripts_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        for body in TRANSCRIPTS {
            for _ in 0..200 {
                let mut mangled = body.to_vec();
                for _ in 0..rng.usize(1..8) {
                    let i = rng.usize(..mangled.len());
                    match rng.u8(..4) {
                        0 => mangled[i] = rng.u8(..),
                        1 => mangled.truncate(i),
                        2 => {
                            mangled.remove(i);
                        }
                        _ => mangled.insert(i, b"\n\r:{}\"\\"[rng.usize(..7)]),
                    }
                    if mangled.is_empty() {
                        break;
                    }
                }
                let _ = decode(&random_pieces(&mangled, &mut rng));
            }
        }
    }
}

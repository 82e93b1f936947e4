//! The fuzz targets: every decoder of untrusted bytes (stored event envelopes, wake frames,
//! SSE frames, run ids, HTTP request bodies and paths) on arbitrary and mutated inputs. See the
//! crate docs for the inputs, the case count and the regression files.

#![allow(clippy::unwrap_used)] // test code panics on purpose

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use bytes::Bytes;
use durable_core::agent::{Agent, DurableAgent, ScriptedModel, Turn};
use durable_core::{frame, Event, RunId};
use durable_fuzz::{alloc_bound, cases, corpus, input, peak_alloc, CountingAlloc};
use durable_server::client::SseParser;
use durable_server::DurableServer;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::value::RawValue;
use tower::ServiceExt;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/decoders.txt"
        )))),
        ..ProptestConfig::default()
    }
}

fn run_id() -> RunId {
    RunId::new("fuzz-run").unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// A stored envelope decodes to an event whose data is one JSON value, or to `Corrupt`;
    /// whenever the envelope is a JSON object with `kind`, `at` and `data`, the fast path
    /// agrees with serde.
    #[test]
    fn event_envelope(bytes in input(corpus("event_envelope")), cursor in any::<u64>()) {
        let stored = Bytes::from(bytes);
        let len = stored.len();
        let (decoded, peak) = peak_alloc(|| Event::decode_stored(&run_id(), cursor, &stored));
        prop_assert!(peak <= alloc_bound(len), "{peak} bytes for {len}");
        #[derive(serde::Deserialize)]
        struct Reference<'a> {
            kind: String,
            at: u64,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let reference = serde_json::from_slice::<Reference<'_>>(&stored)
            .ok()
            .filter(|r| durable_core::EventKind::parse(&r.kind).is_ok());
        match (decoded, reference) {
            (Ok(ev), reference) => {
                prop_assert_eq!(ev.cursor, cursor);
                prop_assert!(
                    serde_json::from_slice::<&RawValue>(ev.data.as_bytes()).is_ok(),
                    "data is not one JSON value: {:?}", String::from_utf8_lossy(ev.data.as_bytes())
                );
                serde_json::from_slice::<serde_json::Value>(&ev.to_json()).unwrap();
                if let Some(r) = reference {
                    prop_assert_eq!(ev.kind.as_str(), r.kind.as_str());
                    prop_assert_eq!(ev.at, r.at);
                    // The same value (the fast path may keep whitespace around it).
                    let value = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
                    prop_assert_eq!(value(ev.data.as_bytes()), value(r.data.get().as_bytes()));
                }
            }
            (Err(e), reference) => {
                prop_assert_eq!(e.kind(), durable_core::ErrorKind::Corrupt);
                prop_assert!(reference.is_none(), "a valid envelope was rejected: {e}");
            }
        }
    }

    /// A wake frame decodes only if it is exactly what `encode` writes for what it holds.
    #[test]
    fn wake_frame(bytes in input(corpus("wake_frame"))) {
        let raw = Bytes::from(bytes);
        let len = raw.len();
        let (decoded, peak) = peak_alloc(|| frame::decode(&raw));
        prop_assert!(peak <= alloc_bound(len), "{peak} bytes for {len}");
        if let Some(f) = decoded {
            let again = match &f.events {
                Some(events) => frame::encode(f.first, events, usize::MAX),
                None => Bytes::from(format!("{} {}", f.first, f.count)),
            };
            prop_assert_eq!(&again[..], &raw[..]);
        }
    }

    /// Encoding then decoding gives back the payloads, whatever bytes they hold.
    #[test]
    fn wake_frame_round_trip(
        first in any::<u64>(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8),
    ) {
        let payloads: Vec<Bytes> = payloads.into_iter().map(Bytes::from).collect();
        let f = frame::decode(&frame::encode(first, &payloads, usize::MAX)).unwrap();
        prop_assert_eq!(f.first, first);
        prop_assert_eq!(f.count, payloads.len() as u64);
        prop_assert_eq!(f.events, Some(payloads));
    }

    /// The SSE parser yields the same frames however the stream is cut into reads.
    #[test]
    fn sse(bytes in input(corpus("sse")), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let len = bytes.len();
        let mut whole = Vec::new();
        let ((), peak) = peak_alloc(|| {
            let mut p = SseParser::new();
            p.push(&bytes, &mut whole).unwrap();
        });
        prop_assert!(peak <= alloc_bound(len), "{peak} bytes for {len}");
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut p = SseParser::new();
        let mut from = 0;
        for to in at.into_iter().chain([len]) {
            p.push(&bytes[from..to], &mut pieces).unwrap();
            from = to;
        }
        prop_assert_eq!(pieces, whole);
    }

    /// A run id is accepted only if it is 1..=128 of `[A-Za-z0-9_-]`, and then unchanged.
    #[test]
    fn run_ids(bytes in input(corpus("run_id"))) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let valid = !text.is_empty()
            && text.len() <= durable_core::MAX_RUN_ID_LEN
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match RunId::new(&text) {
            Ok(id) => {
                prop_assert!(valid, "accepted {text:?}");
                prop_assert_eq!(id.as_str(), text.as_str());
            }
            Err(e) => {
                prop_assert!(!valid, "rejected {text:?}: {e}");
                prop_assert!(e.message().len() < 512, "an error echoes its input unbounded");
            }
        }
    }
}

/// One server for every HTTP case (a memory backend, an agent that answers anything).
fn server() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let router = rt.block_on(async {
            let turns = (0..100_000).map(|_| Turn::text("ok"));
            let agent = Agent::builder()
                .id("a")
                .model(ScriptedModel::new(turns))
                .build()
                .unwrap();
            DurableServer::builder()
                .agent(DurableAgent::new(agent))
                .build()
                .unwrap()
                .router()
        });
        (rt, router)
    })
}

const POSTS: &[&str] = &[
    "/api/agents/a/stream",
    "/api/agents/a/observe",
    "/api/agents/a/runs/fuzz-run/approve-tool-call",
    "/api/agents/a/runs/fuzz-run/decline-tool-call",
    "/api/agents/a/runs/fuzz-run/resume-stream",
    "/api/agents/a/runs/fuzz-run/abort",
    "/api/chat",
    "/a2a/a",
];

/// Status of one request (the response body is dropped unread: streams end with it).
fn status(method: Method, uri: &str, content_type: &str, body: Vec<u8>) -> u16 {
    let (rt, router) = server();
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    rt.block_on(router.clone().oneshot(request))
        .unwrap()
        .status()
        .as_u16()
}

proptest! {
    #![proptest_config(config())]

    /// Any body on any POST route is answered, and never with a server error.
    #[test]
    fn http_body(
        bytes in input(corpus("http_body")),
        route in prop::sample::select(POSTS),
        content_type in prop::sample::select(&["application/json", "text/plain", ""][..]),
    ) {
        let code = status(Method::POST, route, content_type, bytes);
        prop_assert!(code < 500, "{route}: {code}");
    }

    /// Any path segment where a run id goes is answered, and never with a server error.
    #[test]
    fn http_run_id_paths(bytes in input(corpus("run_id"))) {
        let segment: String = bytes
            .iter()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(*b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        for path in [
            format!("/api/agents/a/runs/{segment}"),
            format!("/api/agents/a/runs/{segment}/events?offset=0"),
            format!("/api/agents/{segment}/runs"),
        ] {
            let code = status(Method::GET, &path, "", Vec::new());
            prop_assert!(code < 500, "{path}: {code}");
        }
    }
}

//! Shared test helpers: a server on 127.0.0.1:0, SSE reading with deadlines.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use durable_core::agent::{Agent, DurableAgent, ScriptedModel};
use durable_server::client::{SseFrame, SseParser};
use durable_server::DurableServer;
use futures::StreamExt;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Serve `router` on a fresh loopback port; returns `http://127.0.0.1:<port>`.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = durable_server::serve(listener, router, std::future::pending()).await;
    });
    format!("http://{addr}")
}

pub async fn start(server: &DurableServer) -> String {
    serve(server.router()).await
}

pub fn agent(id: &str, model: ScriptedModel) -> DurableAgent {
    DurableAgent::new(Agent::builder().id(id).model(model).build().unwrap())
}

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Read a whole SSE body into frames.
pub async fn frames(res: reqwest::Response) -> Vec<SseFrame> {
    within("SSE body", async {
        let mut body = res.bytes_stream();
        let mut p = SseParser::new();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            p.push(&chunk.unwrap(), &mut out).unwrap();
        }
        out
    })
    .await
}

/// An SSE body read frame by frame.
pub struct FrameReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    ready: std::collections::VecDeque<SseFrame>,
    pub raw: Vec<u8>,
}

impl FrameReader {
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            body: res.bytes_stream().boxed(),
            parser: SseParser::new(),
            ready: Default::default(),
            raw: Vec::new(),
        }
    }

    /// The next frame, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<SseFrame> {
        within("next SSE frame", async {
            loop {
                if let Some(f) = self.ready.pop_front() {
                    return Some(f);
                }
                let chunk = self.body.next().await?.ok()?;
                self.raw.extend_from_slice(&chunk);
                let mut out = Vec::new();
                self.parser.push(&chunk, &mut out).unwrap();
                self.ready.extend(out);
            }
        })
        .await
    }

    /// Read raw bytes until `needle` appears.
    pub async fn until_raw(&mut self, needle: &[u8]) {
        within("raw bytes", async {
            while !self.raw.windows(needle.len()).any(|w| w == needle) {
                let chunk = self.body.next().await.unwrap().unwrap();
                self.raw.extend_from_slice(&chunk);
                let mut out = Vec::new();
                self.parser.push(&chunk, &mut out).unwrap();
                self.ready.extend(out);
            }
        })
        .await
    }
}

/// Poll `check` until it holds, failing after the deadline (a condition wait, not a sleep).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// `DURABLE_TEST_REQUIRE=1`: a missing client is a failure, not a skip.
pub fn require() -> bool {
    std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1")
}

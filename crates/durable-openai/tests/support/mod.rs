//! A loopback HTTP/1.1 server that replays canned responses (recorded SSE transcripts) and
//! records what the client sent. No network beyond 127.0.0.1.

// Test support: each test binary uses a part of it, and a failed setup should panic loudly.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use durable_core::agent::{LanguageModel, Message, ModelChunk, ModelRequest};
use durable_core::Result;
use durable_openai::OpenAiModel;

pub mod live;

/// Deadline for anything a test waits on; a hang fails instead of stalling CI.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A recorded transcript from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = durable_services::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How the body of a reply is cut into HTTP chunks (each written with its own TCP write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One write.
    Whole,
    /// Each SSE line (up to and including its line ending) in its own write.
    Lines,
    /// One byte per write.
    Bytewise,
}

/// One canned response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delivery: Delivery,
    /// Stream the body (chunked) and, instead of ending it, wait for the client to close.
    pub hold_open: bool,
    /// Accept the request and never answer it.
    pub silent: bool,
    /// Keep the connection open for the next request (HTTP/1.1 keep-alive).
    pub keep_alive: bool,
    /// Hold the end of the chunked body back until this is notified.
    pub end_after: Option<Arc<Notify>>,
}

impl Reply {
    /// A `200 text/event-stream` reply with this transcript.
    pub fn sse(body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body,
            delivery: Delivery::Lines,
            hold_open: false,
            silent: false,
            keep_alive: false,
            end_after: None,
        }
    }

    /// A JSON error reply.
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            delivery: Delivery::Whole,
            hold_open: false,
            silent: false,
            keep_alive: false,
            end_after: None,
        }
    }

    pub fn delivered(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn end_after(mut self, release: Arc<Notify>) -> Self {
        self.end_after = Some(release);
        self
    }

    pub fn kept_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }

    pub fn held_open(mut self) -> Self {
        self.hold_open = true;
        self
    }

    pub fn never_answered() -> Self {
        Self {
            silent: true,
            ..Self::json(200, "")
        }
    }
}

/// What the client sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which TCP connection (0, 1, … in accept order) carried the request.
    pub connection: usize,
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the client sent JSON")
    }
}

/// The server. Request `n` gets reply `n` (the last reply repeats).
pub struct TestServer {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    closed: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let replies = Arc::new(replies);
        let counter = Arc::new(AtomicUsize::new(0));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((socket, _)) = listener.accept().await {
                let replies = replies.clone();
                let counter = counter.clone();
                let recorded = recorded.clone();
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    serve(
                        socket, connection, &replies, &counter, &recorded, &closed_tx,
                    )
                    .await;
                });
                connection += 1;
            }
        });
        Self {
            base_url,
            requests,
            closed,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Wait (with [`DEADLINE`]) until the client closed a held-open connection.
    pub async fn client_closed(&mut self) {
        tokio::time::timeout(DEADLINE, self.closed.recv())
            .await
            .expect("the client did not close the connection in time")
            .expect("server gone");
    }

    /// A model pointed at this server, with fast retries.
    pub fn model(&self) -> OpenAiModel {
        self.builder().build().unwrap()
    }

    pub fn builder(&self) -> durable_openai::OpenAiModelBuilder {
        OpenAiModel::builder()
            .base_url(&self.base_url)
            .model("test-model")
            .retry_backoff(Duration::from_millis(1), Duration::from_millis(20))
    }
}

async fn serve(
    mut socket: TcpStream,
    connection: usize,
    replies: &[Reply],
    counter: &AtomicUsize,
    recorded: &Mutex<Vec<Recorded>>,
    closed_tx: &mpsc::UnboundedSender<()>,
) {
    socket.set_nodelay(true).unwrap();
    while let Some(mut request) = read_request(&mut socket).await {
        request.connection = connection;
        recorded.lock().unwrap().push(request);
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let reply = &replies[n.min(replies.len() - 1)];
        if !answer(&mut socket, reply, closed_tx).await || !reply.keep_alive {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

/// Write `reply`; whether the connection can carry another request.
async fn answer(
    socket: &mut TcpStream,
    reply: &Reply,
    closed_tx: &mpsc::UnboundedSender<()>,
) -> bool {
    if reply.silent {
        wait_for_close(socket).await;
        return false;
    }
    let streamed = reply.status == 200;
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    if !reply.keep_alive {
        head.push_str("connection: close\r\n");
    }
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if streamed {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("content-length: {}\r\n\r\n", reply.body.len()));
    }
    if socket.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    if !streamed {
        return socket.write_all(&reply.body).await.is_ok();
    }
    for piece in pieces(&reply.body, reply.delivery) {
        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
        frame.extend_from_slice(piece);
        frame.extend_from_slice(b"\r\n");
        if socket.write_all(&frame).await.is_err() {
            let _ = closed_tx.send(());
            return false;
        }
    }
    if reply.hold_open {
        wait_for_close(socket).await;
        let _ = closed_tx.send(());
        return false;
    }
    if let Some(release) = &reply.end_after {
        release.notified().await;
    }
    socket.write_all(b"0\r\n\r\n").await.is_ok()
}

/// Read until the peer closes (EOF or reset).
async fn wait_for_close(socket: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn pieces(body: &[u8], delivery: Delivery) -> Vec<&[u8]> {
    match delivery {
        Delivery::Whole => vec![body],
        Delivery::Bytewise => body.chunks(1).collect(),
        Delivery::Lines => body.split_inclusive(|&b| b == b'\n').collect(),
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        connection: 0,
        method,
        path,
        headers,
        body,
    })
}

/// A one-message request.
pub fn ask(text: &str) -> ModelRequest {
    ModelRequest {
        messages: vec![Message::user(text)],
        ..Default::default()
    }
}

/// Every item of a call, the stream under [`DEADLINE`].
pub async fn collect(
    model: &OpenAiModel,
    request: ModelRequest,
) -> Result<Vec<Result<ModelChunk>>> {
    let stream = tokio::time::timeout(DEADLINE, model.stream(request))
        .await
        .expect("stream() hung")?;
    Ok(tokio::time::timeout(DEADLINE, stream.collect::<Vec<_>>())
        .await
        .expect("the stream hung"))
}

/// The chunks of a call that must succeed.
pub async fn chunks(model: &OpenAiModel, request: ModelRequest) -> Vec<ModelChunk> {
    collect(model, request)
        .await
        .expect("stream() failed")
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .expect("the stream yielded an error")
}

/// The concatenated text deltas.
pub fn text(chunks: &[ModelChunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            ModelChunk::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

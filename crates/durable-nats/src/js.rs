//! The JetStream requests this crate needs, spoken directly over the core client: publishes whose
//! acknowledgement we parse ourselves (expected-sequence failures are a normal answer here, not
//! an exception), atomic batches, direct gets (single and batched) and filtered purges.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{Client, StatusCode};
use bytes::Bytes;
use durable_core::Result;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::error::{corrupt, timeout, unavailable, unexpected};

/// `Nats-Expected-Last-Subject-Sequence`.
pub(crate) const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
/// `Nats-Expected-Last-Subject-Sequence-Subject`: the (wildcard) subject the check above is
/// made against, so a whole run's subjects share one optimistic-concurrency counter.
pub(crate) const EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";
/// `Nats-Msg-Id`: de-duplication of retried publishes within the stream's window.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
/// Per-message TTL (server 2.11+, `allow_msg_ttl`).
pub(crate) const TTL: &str = "Nats-TTL";
/// `Nats-Rollup`.
pub(crate) const ROLLUP: &str = "Nats-Rollup";

/// JetStream API error code of a failed expected-sequence check.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// The same failure as a clustered stream reports it (without the sequence).
const WRONG_LAST_SEQUENCE_CLUSTERED: u64 = 10164;

/// JetStream API error code of an atomic batch carrying an already stored message id.
const BATCH_DUPLICATE_ID: u64 = 10201;

/// The most messages the server accepts in one atomic batch (its default `max_batch_size`).
pub(crate) const MAX_BATCH: usize = 1000;

/// The outcome of a publish the server answered.
#[derive(Debug)]
pub(crate) enum Published {
    /// Stored at this stream sequence.
    Stored(u64),
    /// The expected-sequence check failed: someone else wrote first.
    WrongLastSequence,
}

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub(crate) struct StoredMsg {
    pub(crate) subject: String,
    pub(crate) seq: u64,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

impl StoredMsg {
    /// A header parsed as an integer.
    pub(crate) fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name).and_then(|v| v.as_str().parse().ok())
    }
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream API error code of "JetStream system temporarily unavailable" (no leader yet).
const TEMPORARILY_UNAVAILABLE: u64 = 10008;

/// JetStream API error code of "atomic publish batch is incomplete": the server dropped the
/// batch (nothing of it is stored), e.g. because more batches were in flight on the stream
/// than its `max_inflight_per_stream` (50 by default) allows.
const BATCH_INCOMPLETE: u64 = 10176;

/// Atomic batches one process keeps in flight on the log stream: below the server's default
/// `max_inflight_per_stream` (50), so one process alone never has a batch dropped; several
/// processes together can, and then [`BATCH_INCOMPLETE`] is retried.
pub(crate) const BATCHES_IN_FLIGHT: usize = 32;

impl ApiError {
    /// The error for an API call that failed with this: retryable `Unavailable` when the
    /// cluster has no leader for the moment (an election after a node loss) or an atomic
    /// batch was dropped whole, else `Unexpected`.
    fn into_error(self, op: &'static str, what: &str) -> durable_core::Error {
        if self.code == 503
            || self.err_code == TEMPORARILY_UNAVAILABLE
            || self.err_code == BATCH_INCOMPLETE
        {
            return unavailable(op, format!("{what}: {}", self.description));
        }
        unexpected(
            op,
            format!("{what} ({}): {}", self.err_code, self.description),
        )
    }
}

#[derive(Deserialize)]
struct AckReply {
    #[serde(default)]
    seq: u64,
    error: Option<ApiError>,
}

/// A JetStream API handle over one core connection.
///
/// **Reads on replicated streams** (`replicated`). A direct get may be answered by any replica,
/// and a follower can be a little behind the leader: a record just created, or an entry just
/// announced, could read as missing from it (nats-server 2.15 has no read-after-write option
/// for direct gets). So on replicated streams every read is a message get
/// (`$JS.API.STREAM.MSG.GET`), which the stream leader answers: reads see every acknowledged
/// write, from any process. Batch reads become one get per message; [`Js::last_many`] sends
/// those of a log slice together, so a slice still costs about one round trip of latency.
#[derive(Debug, Clone)]
pub(crate) struct Js {
    pub(crate) client: Client,
    pub(crate) timeout: Duration,
    pub(crate) replicated: bool,
    /// Permits for atomic batches in flight ([`BATCHES_IN_FLIGHT`]).
    pub(crate) batches: Arc<tokio::sync::Semaphore>,
}

/// Gets of one log slice in flight at once on a replicated stream.
const GETS_IN_FLIGHT: usize = 256;

impl Js {
    /// Fail fast while disconnected instead of handing the client a message it would buffer
    /// and send after reconnecting: a write that has already been reported as failed must
    /// never land later (the caller may have retried it meanwhile).
    pub(crate) fn connected(&self, op: &'static str) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(unavailable(op, "not connected to the NATS server")),
        }
    }

    async fn request(
        &self,
        op: &'static str,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<async_nats::Message> {
        self.connected(op)?;
        let fut = async {
            match headers {
                Some(h) => self.client.request_with_headers(subject, h, payload).await,
                None => self.client.request(subject, payload).await,
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(timeout(op)),
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::TimedOut => Err(timeout(op)),
                async_nats::RequestErrorKind::MaxPayloadExceeded => Err(too_big(op, e)),
                _ => Err(unavailable(op, e)),
            },
            Ok(Ok(m)) => Ok(m),
        }
    }

    fn parse_ack(op: &'static str, m: &async_nats::Message) -> Result<Published> {
        if m.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(unavailable(op, "no stream answers this subject"));
        }
        let ack: AckReply = serde_json::from_slice(&m.payload)
            .map_err(|e| unexpected(op, format!("bad publish ack: {e}")))?;
        match ack.error {
            None => Ok(Published::Stored(ack.seq)),
            // A batch resent after a lost acknowledgement is rejected for its ids rather than
            // de-duplicated; the caller resolves both by looking for its own ids.
            Some(e)
                if matches!(
                    e.err_code,
                    WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CLUSTERED | BATCH_DUPLICATE_ID
                ) =>
            {
                Ok(Published::WrongLastSequence)
            }
            Some(e) => Err(e.into_error(op, "publish rejected")),
        }
    }

    /// Publish one message and wait for the stream's acknowledgement.
    pub(crate) async fn publish(
        &self,
        op: &'static str,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published> {
        let m = self.request(op, subject, Some(headers), payload).await?;
        Self::parse_ack(op, &m)
    }

    /// Publish `msgs` as one atomic batch (server 2.12+, stream `allow_atomic`): all are stored
    /// or none. Only the commit is acknowledged, so the whole batch costs one round trip.
    pub(crate) async fn publish_atomic(
        &self,
        op: &'static str,
        msgs: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<Published> {
        let n = msgs.len();
        if n == 1 {
            let Some((s, h, p)) = msgs.into_iter().next() else {
                return Err(unexpected(op, "empty batch"));
            };
            return self.publish(op, s, h, p).await;
        }
        // Held until the commit is acknowledged: the server counts a batch in flight from
        // its first message to its commit.
        let _permit = self
            .batches
            .acquire()
            .await
            .map_err(|_| unavailable(op, "the connection is closing"))?;
        self.connected(op)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut last = None;
        for (i, (subject, mut headers, payload)) in msgs.into_iter().enumerate() {
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i + 1 == n {
                headers.insert("Nats-Batch-Commit", "1");
                last = Some((subject, headers, payload));
            } else {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| match e.kind() {
                        async_nats::client::PublishErrorKind::MaxPayloadExceeded => too_big(op, e),
                        _ => unavailable(op, e),
                    })?;
            }
        }
        let Some((subject, headers, payload)) = last else {
            return Err(unexpected(op, "empty batch"));
        };
        let m = self.request(op, subject, Some(headers), payload).await?;
        Self::parse_ack(op, &m)
    }

    /// A message get answered by the stream leader: the first message matching `body`
    /// (`{"last_by_subj": …}` or `{"seq": …, "next_by_subj": …}`), or `None`.
    async fn leader_get(
        &self,
        op: &'static str,
        stream: &str,
        body: serde_json::Value,
    ) -> Result<Option<StoredMsg>> {
        #[derive(Deserialize)]
        struct Msg {
            subject: String,
            seq: u64,
            #[serde(default)]
            hdrs: Option<String>,
            #[serde(default)]
            data: Option<String>,
        }
        #[derive(Deserialize)]
        struct Reply {
            message: Option<Msg>,
            error: Option<ApiError>,
        }
        /// JetStream API error code of "no message found".
        const NO_MESSAGE: u64 = 10037;
        let m = self
            .request(
                op,
                format!("$JS.API.STREAM.MSG.GET.{stream}"),
                None,
                Bytes::from(body.to_string()),
            )
            .await?;
        if m.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(unavailable(op, "the stream is not there"));
        }
        let r: Reply = serde_json::from_slice(&m.payload)
            .map_err(|e| unexpected(op, format!("bad message get reply: {e}")))?;
        match (r.error, r.message) {
            (Some(e), _) if e.err_code == NO_MESSAGE => Ok(None),
            (Some(e), _) => Err(e.into_error(op, "message get failed")),
            (None, None) => Ok(None),
            (None, Some(msg)) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                let decode = |v: Option<String>| {
                    b64.decode(v.unwrap_or_default())
                        .map_err(|e| corrupt(op, format!("bad base64 in a message get: {e}")))
                };
                let headers = parse_headers(&decode(msg.hdrs)?);
                Ok(Some(StoredMsg {
                    subject: msg.subject,
                    seq: msg.seq,
                    headers,
                    payload: Bytes::from(decode(msg.data)?),
                }))
            }
        }
    }

    /// The last message of each of `subjects` (no wildcards), in order; on a replicated stream
    /// the gets are sent together (up to [`GETS_IN_FLIGHT`] at a time).
    pub(crate) async fn last_many(
        &self,
        op: &'static str,
        stream: &str,
        subjects: impl Iterator<Item = String>,
    ) -> Result<Vec<Option<StoredMsg>>> {
        use futures::TryStreamExt as _;
        futures::stream::iter(subjects)
            .map(|s| async move { self.last(op, stream, &s).await })
            .buffered(GETS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// The last message stored on `subject` (wildcards allowed), or `None`.
    pub(crate) async fn last(
        &self,
        op: &'static str,
        stream: &str,
        subject: &str,
    ) -> Result<Option<StoredMsg>> {
        self.get(op, stream, json!({ "last_by_subj": subject }))
            .await
    }

    /// The first message on `filter` (wildcards allowed) at stream sequence `seq` or later, or
    /// `None`.
    pub(crate) async fn next(
        &self,
        op: &'static str,
        stream: &str,
        filter: &str,
        seq: u64,
    ) -> Result<Option<StoredMsg>> {
        self.get(
            op,
            stream,
            json!({ "seq": seq.max(1), "next_by_subj": filter }),
        )
        .await
    }

    /// One message get: a direct get, or on a replicated stream one the leader answers (see
    /// [`Js`]).
    async fn get(
        &self,
        op: &'static str,
        stream: &str,
        body: serde_json::Value,
    ) -> Result<Option<StoredMsg>> {
        if self.replicated {
            return self.leader_get(op, stream, body).await;
        }
        let m = self
            .request(
                op,
                format!("$JS.API.DIRECT.GET.{stream}"),
                None,
                Bytes::from(body.to_string()),
            )
            .await?;
        match m.status {
            Some(StatusCode::NOT_FOUND) => Ok(None),
            Some(StatusCode::NO_RESPONDERS) => Err(unavailable(op, "the stream is not there")),
            Some(s) if s != StatusCode::OK => Err(unexpected(
                op,
                format!("direct get answered {s}: {:?}", m.description),
            )),
            _ => stored(op, m).map(Some),
        }
    }

    /// Up to `batch` messages matching `filter` from stream sequence `seq` on, in stream order,
    /// in one request (batch direct get, server 2.11+). On a replicated stream: the last
    /// message of each matching subject, read from the leader (see [`Js`]); every caller reads
    /// key-value subjects, which hold one message each.
    pub(crate) async fn batch(
        &self,
        op: &'static str,
        stream: &str,
        filter: &str,
        seq: u64,
        batch: usize,
    ) -> Result<Vec<StoredMsg>> {
        if self.replicated {
            // The subjects holding messages (stream info, answered by the leader), then the
            // last message of each, fetched together from the leader: the same messages as the
            // batch on the bucket's streams (history 1, one message per subject), in about two
            // round trips instead of one per message.
            let subjects = self.subjects(op, stream, filter).await?;
            let mut out: Vec<StoredMsg> = self
                .last_many(op, stream, subjects.into_iter())
                .await?
                .into_iter()
                .flatten()
                .filter(|m| m.seq >= seq)
                .collect();
            out.sort_by_key(|m| m.seq);
            out.truncate(batch);
            return Ok(out);
        }
        self.connected(op)?;
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(op, e))?;
        let body = json!({ "seq": seq.max(1), "next_by_subj": filter, "batch": batch }).to_string();
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.into())
            .await
            .map_err(|e| unavailable(op, e))?;
        let mut out = Vec::with_capacity(batch.min(1024));
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, sub.next()).await;
            let m = match next {
                Err(_) => return Err(timeout(op)),
                Ok(None) => return Err(unavailable(op, "connection closed during a batch get")),
                Ok(Some(m)) => m,
            };
            match m.status {
                // 204: end of batch; 404: nothing (more) matches; 408: the server's own cap.
                Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => return Ok(out),
                Some(s) if s.as_u16() == 204 => return Ok(out),
                Some(StatusCode::NO_RESPONDERS) => {
                    return Err(unavailable(op, "the stream is not there"))
                }
                Some(s) if s != StatusCode::OK => {
                    return Err(unexpected(
                        op,
                        format!("batch get answered {s}: {:?}", m.description),
                    ))
                }
                _ => {
                    out.push(stored(op, m)?);
                    if out.len() >= batch {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Purge every message of `stream` on `filter`; returns how many were removed.
    pub(crate) async fn purge(&self, op: &'static str, stream: &str, filter: &str) -> Result<u64> {
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            purged: u64,
            error: Option<ApiError>,
        }
        let body = json!({ "filter": filter }).to_string();
        let m = self
            .request(
                op,
                format!("$JS.API.STREAM.PURGE.{stream}"),
                None,
                Bytes::from(body),
            )
            .await?;
        let r: Reply = serde_json::from_slice(&m.payload)
            .map_err(|e| unexpected(op, format!("bad purge reply: {e}")))?;
        match r.error {
            Some(e) => Err(e.into_error(op, "purge failed")),
            None => Ok(r.purged),
        }
    }

    /// The subjects of `stream` that match `filter` and hold messages.
    pub(crate) async fn subjects(
        &self,
        op: &'static str,
        stream: &str,
        filter: &str,
    ) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct State {
            #[serde(default)]
            subjects: Option<std::collections::HashMap<String, u64>>,
        }
        #[derive(Deserialize)]
        struct Reply {
            state: Option<State>,
            #[serde(default)]
            total: usize,
            error: Option<ApiError>,
        }
        let mut out = Vec::new();
        loop {
            let body = json!({ "subjects_filter": filter, "offset": out.len() }).to_string();
            let m = self
                .request(
                    op,
                    format!("$JS.API.STREAM.INFO.{stream}"),
                    None,
                    Bytes::from(body),
                )
                .await?;
            let r: Reply = serde_json::from_slice(&m.payload)
                .map_err(|e| unexpected(op, format!("bad stream info: {e}")))?;
            if let Some(e) = r.error {
                return Err(e.into_error(op, "stream info failed"));
            }
            let page: Vec<String> = r
                .state
                .and_then(|s| s.subjects)
                .map(|m| m.into_keys().collect())
                .unwrap_or_default();
            let got = page.len();
            out.extend(page);
            if got == 0 || out.len() >= r.total {
                return Ok(out);
            }
        }
    }
}

/// A message over the server's `max_payload` (1 MB by default): not retryable.
fn too_big(op: &'static str, e: impl std::fmt::Display) -> durable_core::Error {
    durable_core::Error::new(
        durable_core::ErrorKind::LimitExceeded,
        format!("an entry is larger than the server's max_payload: {e}"),
    )
    .with_backend(crate::error::NATS)
    .with_operation(op)
}

/// The headers of a message get (`NATS/1.0\r\nName: value\r\n…\r\n\r\n`).
fn parse_headers(raw: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(raw).split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim(), value.trim());
        }
    }
    headers
}

fn stored(op: &'static str, m: async_nats::Message) -> Result<StoredMsg> {
    let headers = m.headers.unwrap_or_default();
    let get = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    let subject =
        get("Nats-Subject").ok_or_else(|| corrupt(op, "stored message without subject"))?;
    let seq = get("Nats-Sequence")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(op, "stored message without sequence"))?;
    Ok(StoredMsg {
        subject,
        seq,
        headers,
        payload: m.payload,
    })
}

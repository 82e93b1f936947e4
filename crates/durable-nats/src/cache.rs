//! [`NatsServerCache`]: the run logs and keys, in one JetStream stream.
//!
//! Every logical name owns the subjects `<prefix>.c.<token>.>` (see [`crate::subject`]):
//!
//! | subject | what |
//! |---|---|
//! | `….<token>.p.<page>` | the chunks of one page of the log (entries `256 × page` to `256 × page + 255`), each one message holding entries `first, first + 1, …` |
//! | `….<token>.h` | log head: written by an empty append or `expire` |
//! | `….<token>.v` | key value (rolled up: only the latest is kept) |
//!
//! The last message on `<token>.>` is the name's whole state (a key, or a log with its next
//! cursor, fence and expiry in headers), read with one direct get. Every write carries
//! `Nats-Expected-Last-Subject-Sequence` against that wildcard: the server stores it only if
//! nothing of the name changed since the state was read. That one check gives contiguous
//! cursors under concurrent appenders (G1), the epoch fence in the same operation, and the
//! key/log exclusion.
//!
//! The check's cost on the server grows with the number of subjects under the wildcard (it
//! matches them all), so chunks share a subject per page of [`PAGE`] entries: a name has a
//! subject per 256 entries, not one per append (one per chunk made a 5,000-append log's
//! appends twice as slow as its first ones).
//!
//! An appended batch is one message, a *chunk*, whose body is the batch as a wake-up frame
//! ([`frame`]: the first cursor, the lengths, the payloads): JetStream's cost is per message,
//! so a batch of 100 events costs about what one does, and a replay reads a hundred events
//! per message. A batch is split only where it crosses a multiple of [`PAGE`] entries (or
//! would exceed the server's `max_payload`); its chunks are then one atomic batch publish:
//! all or nothing, one round trip. A read from cursor `c` gets the last chunk of `c`'s page
//! together with the state, in one round trip: a reader near the end of the log finds `c` in
//! it. Otherwise it reads the page's chunks from its start. The chunks after it come in a
//! batch direct get per page, sent together: no consumer, no scan of other runs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    frame, now_ms, ttl_ms, validate_name, validate_prefix, Announce, AnnounceDomain, AppendOptions,
    CacheCapabilities, Cursor, ErrorKind, LogSlice, Result, ServerCache,
};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::config::Shared;
use crate::error::{corrupt, err, unavailable, NATS};
use crate::js::{
    Published, StoredMsg, EXPECTED_LAST_SUBJECT_SEQ, EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, MAX_BATCH,
    MSG_ID, ROLLUP, TTL,
};
use crate::subject::{token, untoken};

const H_NEXT: &str = "Durable-Next";
const H_FENCE: &str = "Durable-Fence";
const H_EXPIRES: &str = "Durable-Expires";

/// Pages a read asks for at once.
const PAGES_IN_FLIGHT: usize = 16;

/// Optimistic-concurrency retries before an append gives up as `Unavailable`.
const MAX_RETRIES: usize = 10_000;

/// How long an append keeps resending a batch the server did not answer (callers such as the
/// event log's writer retry longer, checking by cursor whether a failed append landed).
const RETRY_FOR: Duration = Duration::from_secs(5);
/// How long after an unanswered publish its buffered copy is still looked for.
const OUTAGE_MEMORY_MS: u64 = 120_000;
/// Pause between resends (the client reconnects meanwhile).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What a name is, read from its last message.
#[derive(Debug, Clone)]
enum State {
    Missing,
    Key {
        seq: u64,
        value: Bytes,
        expires: Option<u64>,
    },
    Log(LogState),
    /// A key or log whose expiry has passed but whose messages are still stored.
    Expired,
}

#[derive(Debug, Clone, Copy)]
struct LogState {
    /// Stream sequence of the log's last message (the expected-sequence check value).
    seq: u64,
    next: u64,
    fence: u64,
    expires: Option<u64>,
}

/// Keys with TTL and run logs on NATS JetStream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsServerCache {
    shared: Arc<Shared>,
    /// The state after this instance's own last write per log: lets a single writer append in
    /// one round trip (a stale entry only costs one failed check and a re-read).
    known: Arc<Mutex<HashMap<String, LogState>>>,
    /// Identifies this instance (and its clones) in message ids.
    instance: Arc<str>,
    /// Message-id stems of the appends in progress in this instance.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// When a publish of this instance last went unanswered (Unix ms): for a while after, a
    /// publish the client buffered may still land, so a failed sequence check is resolved by
    /// looking for our own message id.
    last_outage: Arc<AtomicU64>,
    /// Announcing appends of one log take its stripe for append and publish together, so the
    /// frames of concurrent appenders in this instance leave in cursor order (an
    /// acknowledgement does not say when its task will run next).
    announce_order: Arc<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`NatsServerCache::announce_order`].
const ANNOUNCE_STRIPES: usize = 1024;

/// A message-id stem, reserved while its append is in progress.
struct Nonce(String, Arc<Mutex<HashSet<String>>>);

impl Drop for Nonce {
    fn drop(&mut self) {
        if let Ok(mut s) = self.1.lock() {
            s.remove(&self.0);
        }
    }
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(NATS).with_operation(op))
}

fn conflict(op: &'static str, name: &str) -> durable_core::Error {
    err(
        ErrorKind::Conflict,
        op,
        format!("{name:?} is a log and a key at once: a key and a log may not share a name"),
    )
}

impl NatsServerCache {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            known: Arc::default(),
            instance: uuid::Uuid::new_v4().simple().to_string().into(),
            in_flight: Arc::default(),
            last_outage: Arc::default(),
            announce_order: (0..ANNOUNCE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Take the stripe of `name` (see `announce_order`): writes of one name in this instance
    /// then run one at a time instead of racing each other's sequence checks.
    async fn serialize(&self, name: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the same name must map to the same stripe every time.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let stripe = (h.finish() % ANNOUNCE_STRIPES as u64) as usize;
        self.announce_order[stripe].lock().await
    }

    /// The message-id stem of appending `payloads` after stream sequence `seq`: the same for a
    /// retry of the same append from the same state (so a publish the client buffered during
    /// an outage and sent later is de-duplicated against, or recognised by, the retry), and
    /// different for everything else: another instance, another state, other payloads, or a
    /// concurrent identical append in this instance.
    fn nonce(&self, log: &str, seq: u64, fence: u64, payloads: &[Bytes]) -> Nonce {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (log, fence, payloads).hash(&mut h);
        // A new log (nothing stored yet: `seq` 0) looks the same after every delete, so its
        // first append gets a stem of its own.
        let stem = if seq == 0 {
            format!("{}:0:{}", self.instance, uuid::Uuid::new_v4().simple())
        } else {
            format!("{}:{seq}:{:016x}", self.instance, h.finish())
        };
        let mut taken = match self.in_flight.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let mut id = stem.clone();
        let mut n = 0u64;
        while taken.contains(&id) {
            n += 1;
            id = format!("{stem}-{n}");
        }
        taken.insert(id.clone());
        Nonce(id, self.in_flight.clone())
    }

    fn base(&self, name: &str) -> String {
        format!("{}.c.{}", self.shared.prefix(), token(name))
    }

    /// Up to `limit` chunks on the page subject `page` (see [`page_subject`]) from stream
    /// sequence `seq` on: one batch direct get, or one message get on a replicated stream.
    async fn page_chunks(
        &self,
        op: &'static str,
        page: &str,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMsg>> {
        let (js, stream) = (&self.shared.js, self.shared.log_stream());
        if js.replicated {
            Ok(js.next(op, stream, page, seq).await?.into_iter().collect())
        } else {
            js.batch(op, stream, page, seq, limit).await
        }
    }

    fn forget(&self, log: &str) {
        if let Ok(mut k) = self.known.lock() {
            k.remove(log);
        }
    }

    fn remember(&self, log: &str, st: LogState) {
        if let Ok(mut k) = self.known.lock() {
            if k.len() > 10_000 {
                k.clear();
            }
            k.insert(log.to_owned(), st);
        }
    }

    fn known(&self, log: &str) -> Option<LogState> {
        let st = self.known.lock().ok()?.get(log).copied()?;
        match st.expires {
            Some(t) if t <= now_ms() => None,
            _ => Some(st),
        }
    }

    async fn state(&self, op: &'static str, name: &str) -> Result<State> {
        let base = self.base(name);
        let Some(m) = self
            .shared
            .js
            .last(op, self.shared.log_stream(), &format!("{base}.>"))
            .await?
        else {
            return Ok(State::Missing);
        };
        parse_state(op, &base, m)
    }

    /// Remove an expired name's leftovers so a new write starts from nothing.
    async fn purge(&self, op: &'static str, name: &str) -> Result<u64> {
        self.forget(name);
        let filter = format!("{}.>", self.base(name));
        self.shared
            .js
            .purge(op, self.shared.log_stream(), &filter)
            .await
    }

    fn purge_later(&self, name: &str) {
        let this = self.clone();
        let name = name.to_owned();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                // Re-check: only what is still expired goes.
                if let Ok(State::Expired) = this.state("purge", &name).await {
                    let _ = this.purge("purge", &name).await;
                }
            });
        }
    }

    fn guarded(&self, name: &str, seq: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(EXPECTED_LAST_SUBJECT_SEQ, seq.to_string().as_str());
        h.insert(
            EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
            format!("{}.>", self.base(name)).as_str(),
        );
        h
    }

    async fn write_key(
        &self,
        op: &'static str,
        key: &str,
        seq: u64,
        value: Bytes,
        expires: Option<u64>,
    ) -> Result<Published> {
        let mut h = self.guarded(key, seq);
        h.insert(ROLLUP, "sub");
        if let Some(t) = expires {
            h.insert(H_EXPIRES, t.to_string().as_str());
            // Server-side removal (whole seconds, rounded up); reads honour the exact time.
            let secs = t.saturating_sub(now_ms()).div_ceil(1000).max(1) + 1;
            h.insert(TTL, format!("{secs}s").as_str());
        }
        self.shared
            .js
            .publish(op, format!("{}.v", self.base(key)), h, value)
            .await
    }

    /// The state for a write: expired leftovers are purged first.
    async fn state_for_write(&self, op: &'static str, name: &str) -> Result<State> {
        match self.state(op, name).await? {
            State::Expired => {
                self.purge(op, name).await?;
                self.state(op, name).await
            }
            st => Ok(st),
        }
    }

    async fn append(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        const OP: &str = "append";
        let mut cached = self.known(log);
        for _ in 0..MAX_RETRIES {
            let st = match cached.take() {
                Some(st) => st,
                None => match self.state_for_write(OP, log).await? {
                    State::Key { .. } => return Err(conflict(OP, log)),
                    State::Missing | State::Expired => {
                        if options.must_exist {
                            return Err(err(
                                ErrorKind::NotFound,
                                OP,
                                format!("log {log:?} does not exist"),
                            ));
                        }
                        LogState {
                            seq: 0,
                            next: 0,
                            fence: 0,
                            expires: None,
                        }
                    }
                    State::Log(st) => st,
                },
            };
            if let Some(f) = options.fence {
                if f < st.fence {
                    return Err(err(
                        ErrorKind::Fenced,
                        OP,
                        format!("epoch {f} is older than the log's fence {}", st.fence),
                    ));
                }
            }
            let n = payloads.len() as u64;
            if let Some(max) = options.max_len {
                if st.next + n > max {
                    return Err(err(
                        ErrorKind::LimitExceeded,
                        OP,
                        format!(
                            "the log would hold {} entries, more than {max}",
                            st.next + n
                        ),
                    ));
                }
            }
            let fence = options.fence.unwrap_or(0).max(st.fence);
            let nonce = self.nonce(log, st.seq, fence, payloads);
            match self
                .publish_entries(log, st, fence, payloads, &nonce.0)
                .await?
            {
                Some(seq) => {
                    self.remember(
                        log,
                        LogState {
                            seq,
                            next: st.next + n,
                            fence,
                            expires: st.expires,
                        },
                    );
                    return Ok(st.next);
                }
                None => self.forget(log),
            }
        }
        Err(err(
            ErrorKind::Unavailable,
            OP,
            "too much contention on one log: gave up after many optimistic retries",
        )
        .with_retryable(true))
    }

    /// Write `payloads` after `st` (or a head for an empty batch). `Some(last seq)` when stored,
    /// `None` when the log changed meanwhile.
    async fn publish_entries(
        &self,
        log: &str,
        st: LogState,
        fence: u64,
        payloads: &[Bytes],
        nonce: &str,
    ) -> Result<Option<u64>> {
        const OP: &str = "append";
        let base = self.base(log);
        if payloads.is_empty() {
            if st.seq != 0 && fence == st.fence {
                return Ok(Some(st.seq));
            }
            let mut h = self.guarded(log, st.seq);
            h.insert(H_NEXT, st.next.to_string().as_str());
            h.insert(H_FENCE, fence.to_string().as_str());
            if let Some(t) = st.expires {
                h.insert(H_EXPIRES, t.to_string().as_str());
            }
            return match self
                .shared
                .js
                .publish(OP, format!("{base}.h"), h, Bytes::new())
                .await?
            {
                Published::Stored(seq) => Ok(Some(seq)),
                Published::WrongLastSequence => Ok(None),
            };
        }
        let ranges = chunk_ranges(st.next, payloads, self.chunk_budget());
        let mut seq = st.seq;
        // More chunks than the server takes in one atomic batch (more than ~256k entries)
        // are chained: each group is atomic and checked against the previous one's last
        // sequence.
        for (g, group) in ranges.chunks(MAX_BATCH).enumerate() {
            let msgs = group
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let first = st.next + r.start as u64;
                    // The sequence check on the first chunk guards the whole atomic batch.
                    let mut h = if i == 0 {
                        self.guarded(log, seq)
                    } else {
                        HeaderMap::new()
                    };
                    h.insert(H_NEXT, (st.next + r.end as u64).to_string().as_str());
                    h.insert(H_FENCE, fence.to_string().as_str());
                    if let Some(t) = st.expires {
                        h.insert(H_EXPIRES, t.to_string().as_str());
                    }
                    h.insert(MSG_ID, format!("{nonce}:{first}").as_str());
                    let body = frame::encode(first, &payloads[r.clone()], usize::MAX);
                    (page_subject(&base, first), h, body)
                })
                .collect();
            let commit = st.next + group.last().map_or(0, |r| r.start) as u64;
            match self.publish_retrying(log, commit, nonce, msgs).await {
                Ok(Published::Stored(s)) => seq = s,
                Ok(Published::WrongLastSequence) if g == 0 => return Ok(None),
                Ok(Published::WrongLastSequence) => {
                    return Err(err(
                        ErrorKind::Conflict,
                        OP,
                        "the log changed in the middle of an append of more than 256,000 entries",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(seq))
    }

    /// The most body bytes of one chunk: the server's `max_payload` less room for headers.
    fn chunk_budget(&self) -> usize {
        let max = self.shared.js.client.server_info().max_payload;
        max.saturating_sub(4096).max(1024)
    }

    /// `want` (at least one) entries of `log` from cursor `from`, which the log holds; `tail` is
    /// the last chunk of `from`'s page when the first lookup found one.
    ///
    /// The chunk holding `from` is on its page's subject: the page's last chunk (a reader near
    /// the end of the log) or one before it, read from the page's start. The chunks after it
    /// come in one batch direct get per page, all sent at once (single server), or one leader
    /// get each (replicated stream, see `Js`).
    async fn read_chunks(
        &self,
        log: &str,
        base: &str,
        from: Cursor,
        want: usize,
        tail: Option<StoredMsg>,
    ) -> Result<Vec<Bytes>> {
        const OP: &str = "read";
        let mut reader = ChunkReader {
            base,
            from,
            want,
            entries: Vec::with_capacity(want.min(4096)),
            next: None,
            seq: 0,
            chunks: 0,
            seen: 0,
        };
        // Otherwise `from` is further back in its page, or the chunk holding it was appended
        // after the lookup: read the page from its start.
        let held = match &tail {
            Some(m) => reader.seek(m)? == Seek::Holds,
            None => false,
        };
        if !held {
            let page = page_subject(base, from);
            // Each chunk before `from` in its page holds at least one entry.
            let limit = usize::try_from(from % PAGE).unwrap_or(usize::MAX) + 1;
            let mut seq = 1;
            'page: loop {
                let msgs = self.page_chunks(OP, &page, seq, limit).await?;
                if msgs.is_empty() {
                    return Err(corrupt(
                        OP,
                        format!("the chunk holding entry {from} of {log:?} is missing"),
                    ));
                }
                for m in &msgs {
                    seq = m.seq + 1;
                    match reader.seek(m)? {
                        Seek::Before => {}
                        Seek::Holds => break 'page,
                        Seek::After => {
                            return Err(corrupt(
                                OP,
                                format!("the chunk holding entry {from} of {log:?} is missing"),
                            ))
                        }
                    }
                }
            }
        }
        // The chunks after it: the rest of its page and the pages after it, each page read
        // on its own subject, all at once. A literal subject is an index lookup for the
        // server; the same batch get on the log's wildcard made some reads several times
        // slower.
        let end = from + want as u64;
        while !reader.done() {
            let Some(next) = reader.next else {
                return Err(corrupt(OP, "a read made no progress"));
            };
            let seq = reader.seq + 1;
            // A replicated stream answers one message per get: one page at a time.
            let last_page = if self.shared.js.replicated {
                next / PAGE
            } else {
                (end - 1) / PAGE
            };
            let pages: Vec<_> = (next / PAGE..=last_page)
                .map(|p| {
                    let (lo, hi) = (next.max(p * PAGE), end.min((p + 1) * PAGE));
                    // A page wanted to its end: all its chunks from `lo` on, and never more
                    // than one per entry. Otherwise as many as the chunks so far suggest.
                    let limit = if hi == (p + 1) * PAGE {
                        usize::try_from(hi - lo).unwrap_or(usize::MAX)
                    } else {
                        reader.estimate(hi - lo)
                    };
                    (page_subject(base, lo), limit)
                })
                .collect();
            let got: Vec<Vec<StoredMsg>> = futures::stream::iter(pages)
                .map(|(page, limit)| async move { self.page_chunks(OP, &page, seq, limit).await })
                .buffered(PAGES_IN_FLIGHT)
                .try_collect()
                .await?;
            // A page that came back short (more chunks than estimated, or a replicated
            // stream's one message per get) leaves a gap: read again from there.
            for m in got.iter().flatten() {
                if reader.done() || Some(chunk_span(base, m)?.0) != reader.next {
                    break;
                }
                reader.take(m)?;
            }
            if reader.next == Some(next) {
                return Err(corrupt(OP, format!("chunk {next} of {log:?} is missing")));
            }
        }
        Ok(reader.entries)
    }
}

/// The subject of the chunks of the page holding entry `cursor` of the log at `base`.
fn page_subject(base: &str, cursor: Cursor) -> String {
    format!("{base}.p.{}", cursor / PAGE)
}

/// Entries per page: no chunk spans a multiple of `PAGE`, so the entry at each multiple starts
/// a chunk, which a read from inside a chunk starts from.
const PAGE: u64 = 256;

/// The index ranges of `payloads` (stored from cursor `first`) that become one chunk each:
/// split at page boundaries and where a chunk's body would exceed `budget` bytes (a single
/// larger entry is a chunk of its own).
fn chunk_ranges(first: Cursor, payloads: &[Bytes], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::with_capacity(payloads.len() / PAGE as usize + 2);
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in payloads.iter().enumerate() {
        // The payload and its length in the frame's header.
        let cost = p.len() + 21;
        let page_start = (first + i as u64).is_multiple_of(PAGE);
        if i > start && (page_start || bytes + cost > budget) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < payloads.len() {
        out.push(start..payloads.len());
    }
    out
}

/// The state of one read: it takes the entries of consecutive chunks from `from` on.
struct ChunkReader<'a> {
    base: &'a str,
    from: Cursor,
    want: usize,
    entries: Vec<Bytes>,
    /// The cursor the next chunk must start at (`None` before the first).
    next: Option<Cursor>,
    /// The stream sequence of the last chunk taken.
    seq: u64,
    /// Chunks and entries taken, for [`ChunkReader::estimate`].
    chunks: u64,
    seen: u64,
}

impl ChunkReader<'_> {
    fn done(&self) -> bool {
        self.entries.len() >= self.want
    }

    /// Where chunk `m` lies against the read's first entry; the chunk holding it is taken.
    fn seek(&mut self, m: &StoredMsg) -> Result<Seek> {
        let (first, n) = chunk_span(self.base, m)?;
        if first + n <= self.from {
            Ok(Seek::Before)
        } else if first > self.from {
            Ok(Seek::After)
        } else {
            self.take(m)?;
            Ok(Seek::Holds)
        }
    }

    /// Take the entries of chunk `m` that the read wants; it must be the chunk holding the
    /// read's first entry (see [`ChunkReader::seek`]) or, after it, the next chunk.
    fn take(&mut self, m: &StoredMsg) -> Result<()> {
        const OP: &str = "read";
        let (first, events) = decode_chunk(OP, self.base, m)?;
        let expected = self.next.unwrap_or(first);
        if first != expected || (self.next.is_none() && first > self.from) {
            return Err(corrupt(
                OP,
                format!(
                    "expected the chunk of entry {}, read chunk {first}",
                    expected.max(self.from)
                ),
            ));
        }
        let n = events.len() as u64;
        let skip = usize::try_from(self.from.saturating_sub(first)).unwrap_or(usize::MAX);
        let room = self.want - self.entries.len();
        self.entries
            .extend(events.into_iter().skip(skip).take(room));
        self.next = Some(first + n);
        self.seq = m.seq;
        self.chunks += 1;
        self.seen += n;
        Ok(())
    }

    /// How many chunks to ask for to get `entries` more: enough at the average chunk size so
    /// far, and never more than `entries` (a chunk holds at least one).
    fn estimate(&self, entries: u64) -> usize {
        let per_chunk = (self.seen / self.chunks.max(1)).max(1);
        let chunks = (entries.div_ceil(per_chunk) + 1).min(entries).max(1);
        usize::try_from(chunks).unwrap_or(usize::MAX).min(MAX_BATCH)
    }
}

/// Where a chunk lies against a read's first entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seek {
    /// The chunk ends at or before it.
    Before,
    /// The chunk holds it.
    Holds,
    /// The chunk starts after it.
    After,
}

/// The page a chunk subject of the log at `base` names.
fn chunk_page(op: &'static str, base: &str, subject: &str) -> Result<u64> {
    subject
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix(".p."))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| corrupt(op, format!("{subject} is not a chunk of this log")))
}

/// The first cursor and the number of entries of the chunk `m`, from its frame's header.
fn chunk_span(base: &str, m: &StoredMsg) -> Result<(Cursor, u64)> {
    const OP: &str = "read";
    let page = chunk_page(OP, base, &m.subject)?;
    // The entries are decoded once the chunk is taken.
    match frame::range(&m.payload) {
        Some((first, n)) if n > 0 && first / PAGE == page => Ok((first, n)),
        _ => Err(corrupt(
            OP,
            format!("a chunk of page {page} does not decode"),
        )),
    }
}

/// The first cursor and the entries of the chunk `m` of the log at `base`.
fn decode_chunk(op: &'static str, base: &str, m: &StoredMsg) -> Result<(Cursor, Vec<Bytes>)> {
    let page = chunk_page(op, base, &m.subject)?;
    match frame::decode(&m.payload) {
        Some(frame::Frame {
            first,
            events: Some(events),
            ..
        }) if first / PAGE == page && !events.is_empty() => Ok((first, events)),
        _ => Err(corrupt(
            op,
            format!("a chunk of page {page} does not decode"),
        )),
    }
}

impl NatsServerCache {
    /// The chunk of `log` starting at entry `first`, if one does.
    async fn find_chunk(&self, log: &str, first: Cursor) -> Result<Option<StoredMsg>> {
        const OP: &str = "append";
        let base = self.base(log);
        let page = page_subject(&base, first);
        let mut seq = 1;
        loop {
            let msgs = self.page_chunks(OP, &page, seq, PAGE as usize).await?;
            let Some(last) = msgs.last() else {
                return Ok(None);
            };
            seq = last.seq + 1;
            for m in msgs {
                match chunk_span(&base, &m)? {
                    (f, _) if f == first => return Ok(Some(m)),
                    (f, _) if f > first => return Ok(None),
                    _ => {}
                }
            }
        }
    }

    /// Publish one atomic batch; while the server cannot be reached (a restart, a reconnection)
    /// resend the identical batch: same expected sequence, same message ids. If an earlier
    /// attempt was stored and only its acknowledgement was lost, the resend is either
    /// de-duplicated by its ids or fails the sequence check, and then the batch's commit entry
    /// carrying our id proves the batch is in: it is never appended twice. Nothing is handed to
    /// a disconnected client (see [`Js::connected`]), so once this returns an error no copy of
    /// the batch can land later.
    async fn publish_retrying(
        &self,
        log: &str,
        commit: Cursor,
        nonce: &str,
        msgs: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<Published> {
        const OP: &str = "append";
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            match self.shared.js.publish_atomic(OP, msgs.clone()).await {
                Ok(Published::WrongLastSequence)
                    if now_ms().saturating_sub(self.last_outage.load(Ordering::Relaxed))
                        < OUTAGE_MEMORY_MS =>
                {
                    // The commit is the batch's last chunk (starting at entry `commit`):
                    // atomic, so if it is in, all are.
                    let ours = format!("{nonce}:{commit}");
                    loop {
                        match self.find_chunk(log, commit).await {
                            Ok(Some(m))
                                if m.headers.get(MSG_ID).map(|v| v.as_str()) == Some(&ours) =>
                            {
                                return Ok(Published::Stored(m.seq))
                            }
                            Ok(_) => return Ok(Published::WrongLastSequence),
                            Err(e)
                                if e.is_retryable() && tokio::time::Instant::now() < deadline =>
                            {
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    self.last_outage.store(now_ms(), Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }
}

fn parse_state(op: &'static str, base: &str, m: StoredMsg) -> Result<State> {
    let expires = m.header_u64(H_EXPIRES);
    if expires.is_some_and(|t| t <= now_ms()) {
        return Ok(State::Expired);
    }
    let rest = m
        .subject
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| corrupt(op, "state message on a foreign subject"))?;
    let fence = m.header_u64(H_FENCE).unwrap_or(0);
    match rest {
        "v" => Ok(State::Key {
            seq: m.seq,
            value: m.payload,
            expires,
        }),
        "h" => Ok(State::Log(LogState {
            seq: m.seq,
            next: m
                .header_u64(H_NEXT)
                .ok_or_else(|| corrupt(op, "log head without next cursor"))?,
            fence,
            expires,
        })),
        r if r.starts_with("e.") => Err(corrupt(
            op,
            "a log in the layout of durable-nats before pages (one subject per chunk): \
             not readable by this version; delete it or drain it with the version that wrote it",
        )),
        r => {
            let page: u64 = r
                .strip_prefix("p.")
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| corrupt(op, format!("unknown log subject {r:?}")))?;
            let next = m
                .header_u64(H_NEXT)
                .filter(|n| *n > page.saturating_mul(PAGE))
                .ok_or_else(|| corrupt(op, "log chunk without a valid next cursor"))?;
            Ok(State::Log(LogState {
                seq: m.seq,
                next,
                fence,
                expires,
            }))
        }
    }
}

#[async_trait]
impl ServerCache for NatsServerCache {
    fn backend(&self) -> &'static str {
        NATS
    }

    fn capabilities(&self) -> CacheCapabilities {
        CacheCapabilities::ALL.with_append_page(PAGE)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        check("get", "key", key)?;
        match self.state("get", key).await? {
            State::Missing => Ok(None),
            State::Expired => {
                self.purge_later(key);
                Ok(None)
            }
            State::Key { value, .. } => Ok(Some(value)),
            State::Log(_) => Err(conflict("get", key)),
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        const OP: &str = "set";
        check(OP, "key", key)?;
        let expires = ttl.map(|t| now_ms() + ttl_ms(t));
        for _ in 0..MAX_RETRIES {
            let seq = match self.state_for_write(OP, key).await? {
                State::Log(_) => return Err(conflict(OP, key)),
                State::Key { seq, .. } => seq,
                State::Missing | State::Expired => 0,
            };
            if let Published::Stored(_) =
                self.write_key(OP, key, seq, value.clone(), expires).await?
            {
                return Ok(());
            }
        }
        Err(err(ErrorKind::Unavailable, OP, "too much contention on one key").with_retryable(true))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check("delete", "key", key)?;
        let existed = matches!(
            self.state("delete", key).await?,
            State::Key { .. } | State::Log(_)
        );
        self.purge("delete", key).await?;
        Ok(existed)
    }

    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        const OP: &str = "increment";
        check(OP, "key", key)?;
        // Increments of one key in this instance take turns: on a replicated stream each
        // attempt costs a quorum write, and racing ones would mostly fail their check.
        let _turn = self.serialize(key).await;
        for _ in 0..MAX_RETRIES {
            let (seq, current, expires) = match self.state_for_write(OP, key).await? {
                State::Log(_) => return Err(conflict(OP, key)),
                State::Key {
                    seq,
                    value,
                    expires,
                } => {
                    let n: i64 = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            err(
                                ErrorKind::InvalidInput,
                                OP,
                                "the key does not hold an integer",
                            )
                        })?;
                    (seq, n, expires)
                }
                State::Missing | State::Expired => (0, 0, ttl.map(|t| now_ms() + ttl_ms(t))),
            };
            let next = current
                .checked_add(by)
                .ok_or_else(|| err(ErrorKind::InvalidInput, OP, "integer overflow"))?;
            let value = Bytes::from(next.to_string());
            if let Published::Stored(_) = self.write_key(OP, key, seq, value, expires).await? {
                return Ok(next);
            }
        }
        Err(err(ErrorKind::Unavailable, OP, "too much contention on one key").with_retryable(true))
    }

    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        check("append", "log", log)?;
        // Appenders of one log in this instance queue here instead of racing each other's
        // sequence checks (16 racing producers: ~130 appends/s; queued: one round trip each).
        let _order = self.serialize(log).await;
        self.append(log, payloads, options).await
    }

    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        const OP: &str = "read";
        check(OP, "log", log)?;
        let base = self.base(log);
        let stream = self.shared.log_stream();
        // Both lookups at once, one round trip of latency: the state, and the last chunk of
        // `from`'s page (it holds `from` when the reader is near the end of the log). The two
        // may be served in either order; a chunk appended between them is then found from its
        // page (see `read_chunks`).
        let page = page_subject(&base, from);
        let (state, tail) =
            futures::join!(self.state(OP, log), self.shared.js.last(OP, stream, &page));
        let st = match state? {
            State::Missing => {
                return Err(err(
                    ErrorKind::NotFound,
                    OP,
                    format!("log {log:?} does not exist"),
                ))
            }
            State::Expired => {
                self.purge_later(log);
                return Err(err(
                    ErrorKind::NotFound,
                    OP,
                    format!("log {log:?} does not exist"),
                ));
            }
            State::Key { .. } => return Err(conflict(OP, log)),
            State::Log(st) => st,
        };
        if from > st.next {
            return Err(err(
                ErrorKind::OffsetAhead,
                OP,
                format!("offset {from} is beyond the log's next cursor {}", st.next),
            ));
        }
        let want = usize::try_from(st.next - from)
            .unwrap_or(usize::MAX)
            .min(limit);
        if want == 0 {
            return Ok(LogSlice {
                first: from,
                entries: Vec::new(),
                next: st.next,
            });
        }
        let entries = self.read_chunks(log, &base, from, want, tail?).await?;
        Ok(LogSlice {
            first: from,
            entries,
            next: st.next,
        })
    }

    async fn len(&self, log: &str) -> Result<Option<u64>> {
        check("len", "log", log)?;
        match self.state("len", log).await? {
            State::Missing => Ok(None),
            State::Expired => {
                self.purge_later(log);
                Ok(None)
            }
            State::Key { .. } => Err(conflict("len", log)),
            State::Log(st) => Ok(Some(st.next)),
        }
    }

    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        const OP: &str = "expire";
        check(OP, "log", log)?;
        let expires = now_ms() + ttl_ms(ttl);
        for _ in 0..MAX_RETRIES {
            let st = match self.state_for_write(OP, log).await? {
                State::Missing | State::Expired => return Ok(false),
                State::Key { .. } => return Err(conflict(OP, log)),
                State::Log(st) => st,
            };
            let mut h = self.guarded(log, st.seq);
            h.insert(H_NEXT, st.next.to_string().as_str());
            h.insert(H_FENCE, st.fence.to_string().as_str());
            h.insert(H_EXPIRES, expires.to_string().as_str());
            match self
                .shared
                .js
                .publish(OP, format!("{}.h", self.base(log)), h, Bytes::new())
                .await?
            {
                Published::Stored(seq) => {
                    self.remember(
                        log,
                        LogState {
                            seq,
                            expires: Some(expires),
                            ..st
                        },
                    );
                    return Ok(true);
                }
                Published::WrongLastSequence => self.forget(log),
            }
        }
        Err(err(ErrorKind::Unavailable, OP, "too much contention on one log").with_retryable(true))
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        const OP: &str = "keys";
        validate_prefix("prefix", prefix).map_err(|e| e.with_backend(NATS).with_operation(OP))?;
        let root = format!("{}.c.", self.shared.prefix());
        let subjects = self
            .shared
            .js
            .subjects(OP, self.shared.log_stream(), &format!("{root}>"))
            .await?;
        let names: BTreeSet<String> = subjects
            .iter()
            .filter_map(|s| s.strip_prefix(&root)?.split('.').next())
            .filter_map(untoken)
            .filter(|n| n.starts_with(prefix))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.state(OP, &name).await? {
                State::Key { .. } | State::Log(_) => out.push(name),
                State::Expired => self.purge_later(&name),
                State::Missing => {}
            }
        }
        Ok(out)
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        Some(AnnounceDomain::new(self.shared.domain()))
    }

    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        check("append", "log", log)?;
        check("append", "topic", announce.topic)?;
        let _order = self.serialize(log).await;
        let first = self.append(log, payloads, options).await?;
        if !payloads.is_empty() {
            // Persist, then announce: the frame leaves only after the stream acknowledged the
            // batch. It is a core publish, buffered behind the same connection, so it adds no
            // round trip.
            //
            // Observers in this process get the frame from here, without the trip through the
            // server; the server's echo carries this connection's origin and is skipped (see
            // `crate::fanout`).
            let body = frame::encode(first, payloads, announce.max_frame_bytes);
            let subject = crate::pubsub::topic_subject(self.shared.prefix(), announce.topic);
            let fanout = &self.shared.fanout;
            fanout.deliver(&subject, &body);
            let mut h = HeaderMap::new();
            h.insert(crate::fanout::ORIGIN, fanout.origin());
            self.shared
                .js
                .client
                .publish_with_headers(subject, h, body)
                .await
                .map_err(|e| unavailable("append_announce", e))?;
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize, len: usize) -> Vec<Bytes> {
        (0..n).map(|_| Bytes::from(vec![b'x'; len])).collect()
    }

    #[test]
    fn a_batch_is_one_chunk_unless_it_crosses_a_page() {
        assert_eq!(chunk_ranges(0, &entries(100, 16), 1 << 20), vec![0..100]);
        assert_eq!(chunk_ranges(200, &entries(50, 16), 1 << 20), vec![0..50]);
        // 200..256 and 256..300: the entry at 256 starts a chunk.
        assert_eq!(
            chunk_ranges(200, &entries(100, 16), 1 << 20),
            vec![0..56, 56..100]
        );
        assert_eq!(
            chunk_ranges(0, &entries(600, 16), 1 << 20),
            vec![0..256, 256..512, 512..600]
        );
        assert!(chunk_ranges(7, &[], 1 << 20).is_empty());
    }

    #[test]
    fn a_chunk_stays_within_the_byte_budget_and_a_large_entry_is_alone() {
        // 37 bytes per entry in the budget's count: 10 entries fit in 370.
        let ranges = chunk_ranges(0, &entries(25, 16), 370);
        assert_eq!(ranges, vec![0..10, 10..20, 20..25]);
        let mut mixed = entries(3, 16);
        mixed.insert(1, Bytes::from(vec![b'y'; 1000]));
        assert_eq!(chunk_ranges(0, &mixed, 370), vec![0..1, 1..2, 2..4]);
    }

    #[test]
    fn every_page_start_starts_a_chunk() {
        for first in [0, 1, 255, 256, 257, 1000] {
            let ranges = chunk_ranges(first, &entries(1500, 8), 4096);
            let starts: std::collections::HashSet<u64> =
                ranges.iter().map(|r| first + r.start as u64).collect();
            for k in first..first + 1500 {
                if k.is_multiple_of(PAGE) {
                    assert!(starts.contains(&k), "first {first}: no chunk starts at {k}");
                }
            }
            // Contiguous and complete.
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(ranges.last().map(|r| r.end), Some(1500));
        }
    }
}

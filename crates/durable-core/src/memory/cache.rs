use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{lock, InMemoryPubSub, BACKEND};
use crate::cache::{
    Announce, AnnounceDomain, AppendOptions, CacheCapabilities, Cursor, LogSlice, ServerCache,
};
use crate::error::{Error, ErrorKind, Result};
use crate::id::validate_name;

const SHARDS: usize = 16;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// In-memory [`ServerCache`]: sharded maps with per-key TTL.
///
/// There is no global key cap: a log lives until it is deleted or its own TTL elapses, so one
/// busy run can never evict another (Mastra's 1000-key LRU did). Expired entries are removed on
/// access and by a sweep of each shard at most once a second, driven by writes.
///
/// Paired with an [`InMemoryPubSub`] ([`InMemoryCache::with_pubsub`]) it announces each append
/// itself, publishing the wake-up frame under the log's lock: one operation, frames in cursor
/// order, and no frame before its events are readable.
#[derive(Clone, Debug)]
pub struct InMemoryCache {
    shards: Arc<[Mutex<Shard>]>,
    announcer: Option<InMemoryPubSub>,
}

#[derive(Debug)]
struct Shard {
    map: HashMap<String, Entry>,
    next_sweep: Instant,
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

#[derive(Debug)]
enum Value {
    Bytes(Bytes),
    Int(i64),
    Log { entries: Entries, fence: u64 },
}

/// Entries of a log held as a handle each before they are sealed.
const SEAL: usize = 16;
/// The smallest and largest staging block of a log's recent entries.
const MIN_BLOCK: usize = 1024;
const MAX_BLOCK: usize = 16 * 1024;

/// A log's entries.
///
/// The most recent (fewer than [`SEAL`]) are a `Bytes` handle each: slices of the staging
/// block they were appended into, written there as their wake-up frame when the append is
/// announced (so observers and the log share one copy). Every [`SEAL`] entries are then copied
/// back to back into a sealed block that keeps 4 bytes per entry (its end offset) instead of a
/// 32-byte handle; a batch of [`SEAL`] or more is sealed as written, without a copy. An entry used to be an allocation of its own (with allocator overhead, its
/// encoding buffer's spare capacity and a reference count): ~150 bytes beside a ~70-byte
/// event, ~10 now (the end offset and a share of its block's bookkeeping).
#[derive(Debug, Default)]
struct Entries {
    sealed: Vec<Sealed>,
    /// Entries in `sealed`.
    sealed_len: u64,
    recent: Vec<Bytes>,
    /// Where the recent entries are written.
    staging: BytesMut,
    /// Bytes of the last sealed block: how large a staging block to take.
    last_sealed: usize,
}

#[derive(Debug)]
struct Sealed {
    /// The cursor of its first entry.
    first: Cursor,
    data: Bytes,
    /// Where the first entry starts in `data` (after a frame's header).
    start: u32,
    /// The end offset of each entry in `data`.
    ends: Box<[u32]>,
}

impl Entries {
    fn len(&self) -> u64 {
        self.sealed_len + self.recent.len() as u64
    }

    /// Entries `start..end` (within the log).
    fn range(&self, start: Cursor, end: Cursor) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
        let mut at = start;
        let sealed_end = end.min(self.sealed_len);
        if at < sealed_end {
            let mut b = self.sealed.partition_point(|s| s.first <= at) - 1;
            while at < sealed_end {
                let s = &self.sealed[b];
                let i = (at - s.first) as usize;
                let Some(&stop) = s.ends.get(i) else {
                    b += 1;
                    continue;
                };
                let from = if i == 0 { s.start } else { s.ends[i - 1] };
                out.push(s.data.slice(from as usize..stop as usize));
                at += 1;
            }
        }
        if end > at {
            let recent = (at - self.sealed_len) as usize..(end - self.sealed_len) as usize;
            out.extend_from_slice(&self.recent[recent]);
        }
        out
    }

    /// Append `payloads`. With `frame` (the announcement's size limit) the batch is written as
    /// its wake-up frame, which is returned: the entries are slices of it, so an announcement
    /// costs no copy of its events.
    fn push(&mut self, payloads: &[Bytes], frame: Option<usize>) -> Option<Bytes> {
        let first = self.len();
        // A frame too large to carry its events is the range only: a few bytes of its own.
        let carried = frame.filter(|max| crate::frame::body_len(payloads) <= *max);
        let need = match carried {
            Some(max) => crate::frame::encoded_len_bound(payloads, max),
            None => payloads.iter().map(Bytes::len).sum(),
        };
        // A batch of a seal's size or more is sealed as written (as its frame when it is
        // announced): no handles and no copy.
        let whole = payloads.len() >= SEAL && u32::try_from(need).is_ok();
        if whole {
            self.seal();
        }
        if self.staging.capacity() - self.staging.len() < need {
            let block = self.last_sealed.clamp(MIN_BLOCK, MAX_BLOCK).max(need);
            self.staging = BytesMut::with_capacity(block);
        }
        let encoded = if let Some(max) = carried {
            let start = crate::frame::encode_into(&mut self.staging, first, payloads, max);
            let f = self.staging.split().freeze();
            let mut at = start.unwrap_or(f.len());
            if whole {
                self.seal_written(f.clone(), at, payloads);
            } else {
                for p in payloads {
                    self.recent.push(f.slice(at..at + p.len()));
                    at += p.len();
                }
            }
            Some(f)
        } else {
            if whole {
                for p in payloads {
                    self.staging.extend_from_slice(p);
                }
                let written = self.staging.split().freeze();
                self.seal_written(written, 0, payloads);
            } else {
                for p in payloads {
                    self.staging.extend_from_slice(p);
                    self.recent.push(self.staging.split().freeze());
                }
            }
            frame.map(|max| crate::frame::encode(first, payloads, max))
        };
        if self.recent.len() >= SEAL {
            self.seal();
        }
        encoded
    }

    /// Seal `payloads`, just written back to back into `data` from offset `start`.
    fn seal_written(&mut self, data: Bytes, start: usize, payloads: &[Bytes]) {
        let mut end = start;
        let ends: Box<[u32]> = payloads
            .iter()
            .map(|p| {
                end += p.len();
                end as u32
            })
            .collect();
        let n = ends.len() as u64;
        self.sealed.push(Sealed {
            first: self.sealed_len,
            data,
            start: start as u32,
            ends,
        });
        self.sealed_len += n;
        self.last_sealed = end - start;
    }

    /// Copy the recent entries into a sealed block.
    fn seal(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let bytes: usize = self.recent.iter().map(Bytes::len).sum();
        if u32::try_from(bytes).is_err() {
            // Offsets are 32-bit: such entries stay handles.
            return;
        }
        let mut recent = std::mem::take(&mut self.recent);
        let mut data = BytesMut::with_capacity(bytes);
        for e in &recent {
            data.extend_from_slice(e);
        }
        self.seal_written(data.freeze(), 0, &recent);
        // Keep the handles' room for the next ones.
        recent.clear();
        self.recent = recent;
    }
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

impl Default for InMemoryCache {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        let now = Instant::now();
        let shards: Vec<Mutex<Shard>> = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    next_sweep: now + SWEEP_EVERY,
                })
            })
            .collect();
        Self {
            shards: shards.into(),
            announcer: None,
        }
    }

    /// Announce appends on `pubsub` (see [`ServerCache::append_announce`]). Observers of an
    /// event log over this cache and `pubsub` are then woken by the append itself.
    #[must_use]
    pub fn with_pubsub(mut self, pubsub: &InMemoryPubSub) -> Self {
        self.announcer = Some(pubsub.clone());
        self
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Run `f` on the live entry for `key` (expired entries are removed first).
    fn with_entry<R>(&self, key: &str, write: bool, f: impl FnOnce(&mut Shard, Instant) -> R) -> R {
        let mut shard = lock(self.shard(key));
        let now = Instant::now();
        if write && now >= shard.next_sweep {
            shard.map.retain(|_, e| e.live(now));
            shard.next_sweep = now + SWEEP_EVERY;
        } else if shard.map.get(key).is_some_and(|e| !e.live(now)) {
            shard.map.remove(key);
        }
        f(&mut shard, now)
    }

    /// The number of live keys and logs (for tests and metrics).
    pub fn key_count(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| lock(s).map.values().filter(|e| e.live(now)).count())
            .sum()
    }
}

fn err(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
        .with_backend(BACKEND)
        .with_operation(op)
}

fn check(op: &'static str, what: &'static str, name: &str) -> Result<()> {
    validate_name(what, name).map_err(|e| e.with_backend(BACKEND).with_operation(op))
}

/// A key operation on a log's name, or a log operation on a key's name.
fn wrong_type(op: &'static str, key: &str) -> Error {
    err(
        ErrorKind::Conflict,
        op,
        format!("{key:?} is a log and a key at once: a key and a log may not share a name"),
    )
}

impl InMemoryCache {
    /// The append itself, under the shard lock; `announce` runs under the same lock after a
    /// successful append.
    fn append_locked(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Option<(&InMemoryPubSub, Announce<'_>)>,
    ) -> Result<Cursor> {
        self.with_entry(log, true, |s, _| {
            if !s.map.contains_key(log) {
                if options.must_exist {
                    return Err(err(
                        ErrorKind::NotFound,
                        "append",
                        format!("no log {log} (it was never created, or it was deleted or expired)"),
                    ));
                }
                // A rejected append creates nothing either.
                if let Some(max) = options.max_len {
                    if payloads.len() as u64 > max {
                        return Err(err(
                            ErrorKind::LimitExceeded,
                            "append",
                            format!("log {log} would exceed {max} entries"),
                        ));
                    }
                }
                s.map.insert(
                    log.to_owned(),
                    Entry {
                        value: Value::Log {
                            entries: Entries::default(),
                            fence: 0,
                        },
                        expires_at: None,
                    },
                );
            }
            let Some(entry) = s.map.get_mut(log) else {
                return Err(wrong_type("append", log));
            };
            let Value::Log { entries, fence } = &mut entry.value else {
                return Err(wrong_type("append", log));
            };
            if let Some(f) = options.fence {
                if f < *fence {
                    return Err(err(
                        ErrorKind::Fenced,
                        "append",
                        format!("epoch {f} is older than the log's fence {fence}"),
                    ));
                }
            }
            let first = entries.len();
            if let Some(max) = options.max_len {
                if first + payloads.len() as u64 > max {
                    return Err(err(
                        ErrorKind::LimitExceeded,
                        "append",
                        format!("log {log} would exceed {max} entries"),
                    ));
                }
            }
            // Accepted: only now does the fence move (a rejected append has no effect).
            if let Some(f) = options.fence {
                *fence = f;
            }
            let announce = announce.filter(|_| !payloads.is_empty());
            let frame = entries.push(payloads, announce.as_ref().map(|(_, a)| a.max_frame_bytes));
            if let (Some((pubsub, a)), Some(frame)) = (announce, frame) {
                if let Err(e) = pubsub.publish_now(a.topic, frame) {
                    tracing::warn!(log, error = %e, "wake-up not published; observers catch up on their next read");
                }
            }
            Ok(first)
        })
    }
}

#[async_trait]
impl ServerCache for InMemoryCache {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> CacheCapabilities {
        CacheCapabilities::ALL
            .with_shared(false)
            .with_announce(self.announcer.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        check("get", "key", key)?;
        self.with_entry(key, false, |s, _| match s.map.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Bytes(b),
                ..
            }) => Ok(Some(b.clone())),
            Some(Entry {
                value: Value::Int(i),
                ..
            }) => Ok(Some(Bytes::from(i.to_string()))),
            Some(_) => Err(wrong_type("get", key)),
        })
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        check("set", "key", key)?;
        self.with_entry(key, true, |s, now| {
            if matches!(
                s.map.get(key),
                Some(Entry {
                    value: Value::Log { .. },
                    ..
                })
            ) {
                return Err(wrong_type("set", key));
            }
            s.map.insert(
                key.to_owned(),
                Entry {
                    value: Value::Bytes(value),
                    expires_at: ttl.map(|t| now + t),
                },
            );
            Ok(())
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check("delete", "key", key)?;
        Ok(self.with_entry(key, true, |s, _| s.map.remove(key).is_some()))
    }

    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        check("increment", "key", key)?;
        self.with_entry(key, true, |s, now| {
            let entry = s.map.entry(key.to_owned()).or_insert_with(|| Entry {
                value: Value::Int(0),
                expires_at: ttl.map(|t| now + t),
            });
            let current = match &entry.value {
                Value::Int(i) => *i,
                Value::Bytes(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| wrong_type("increment", key))?,
                Value::Log { .. } => return Err(wrong_type("increment", key)),
            };
            let new = current
                .checked_add(by)
                .ok_or_else(|| err(ErrorKind::InvalidInput, "increment", "integer overflow"))?;
            entry.value = Value::Int(new);
            Ok(new)
        })
    }

    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        check("append", "log", log)?;
        self.append_locked(log, payloads, options, None)
    }

    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        check("read", "log", log)?;
        self.with_entry(log, false, |s, _| match s.map.get(log) {
            None => Err(err(ErrorKind::NotFound, "read", format!("no log {log}"))),
            Some(Entry {
                value: Value::Log { entries, .. },
                ..
            }) => {
                let len = entries.len();
                if from > len {
                    return Err(err(
                        ErrorKind::OffsetAhead,
                        "read",
                        format!("cursor {from} is beyond the end {len} of {log}"),
                    ));
                }
                let end = from
                    .saturating_add(u64::try_from(limit).unwrap_or(u64::MAX))
                    .min(len);
                Ok(LogSlice {
                    first: from,
                    entries: entries.range(from, end),
                    next: len,
                })
            }
            Some(_) => Err(wrong_type("read", log)),
        })
    }

    async fn len(&self, log: &str) -> Result<Option<u64>> {
        check("len", "log", log)?;
        self.with_entry(log, false, |s, _| match s.map.get(log) {
            None => Ok(None),
            Some(Entry {
                value: Value::Log { entries, .. },
                ..
            }) => Ok(Some(entries.len())),
            Some(_) => Err(wrong_type("len", log)),
        })
    }

    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        check("expire", "log", log)?;
        Ok(
            self.with_entry(log, true, |s, now| match s.map.get_mut(log) {
                Some(
                    e @ Entry {
                        value: Value::Log { .. },
                        ..
                    },
                ) => {
                    e.expires_at = Some(now + ttl);
                    Ok(true)
                }
                Some(_) => Err(wrong_type("expire", log)),
                None => Ok(false),
            })?,
        )
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        crate::id::validate_prefix("keys", prefix)
            .map_err(|e| e.with_backend(BACKEND).with_operation("keys"))?;
        let now = Instant::now();
        let mut out: Vec<String> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .map
                    .iter()
                    .filter(|(k, e)| e.live(now) && k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        // Shards are disjoint, so a name appears once; sorted as the trait promises.
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn announce_domain(&self) -> Option<AnnounceDomain> {
        self.announcer.as_ref().map(|p| p.domain().clone())
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
        let Some(pubsub) = &self.announcer else {
            return Err(err(
                ErrorKind::Unsupported,
                "append_announce",
                "this InMemoryCache has no pubsub to announce on (see InMemoryCache::with_pubsub)",
            ));
        };
        self.append_locked(log, payloads, options, Some((pubsub, announce)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InMemoryPubSub;
    use crate::pubsub::{Delivery, PubSub};
    use futures::StreamExt;

    #[tokio::test]
    async fn sealed_and_recent_entries_read_back_exactly_from_every_offset() {
        let pubsub = InMemoryPubSub::new();
        let cache = InMemoryCache::new().with_pubsub(&pubsub);
        let entry = |k: usize| Bytes::from("x".repeat(k % 13) + &k.to_string());
        let mut all = Vec::new();
        let mut k = 0;
        // Batches of 1 to 7 and a few of more than a seal, announced or not (carrying their
        // events or only the range), across several seals.
        for round in 0..40 {
            let n = if round % 9 == 4 {
                SEAL + 3
            } else {
                1 + round % 7
            };
            let batch: Vec<Bytes> = (k..k + n).map(entry).collect();
            k += batch.len();
            let first = if round % 3 == 0 {
                cache
                    .append_many("log", &batch, AppendOptions::default())
                    .await
            } else {
                let announce = Announce {
                    topic: "wake",
                    max_frame_bytes: if round % 5 == 0 { 4 } else { 1 << 20 },
                };
                cache
                    .append_announce("log", &batch, AppendOptions::default(), announce)
                    .await
            };
            assert_eq!(first.unwrap(), all.len() as u64);
            all.extend(batch);
        }
        assert!(all.len() > 3 * SEAL);
        assert_eq!(cache.len("log").await.unwrap(), Some(all.len() as u64));
        for from in 0..=all.len() {
            for limit in [1, 5, SEAL, 1000] {
                let s = cache.read("log", from as u64, limit).await.unwrap();
                let end = all.len().min(from + limit);
                assert_eq!(s.entries, all[from..end], "from {from} limit {limit}");
                assert_eq!(s.next, all.len() as u64);
            }
        }
    }

    /// Append `payloads` to "log", announced on "wake" (`sub`): the events its frame carries.
    async fn announce(
        cache: &InMemoryCache,
        sub: &mut crate::pubsub::Subscription,
        payloads: &[Bytes],
        max_frame_bytes: usize,
    ) -> Option<Vec<Bytes>> {
        let a = Announce {
            topic: "wake",
            max_frame_bytes,
        };
        cache
            .append_announce("log", payloads, AppendOptions::default(), a)
            .await
            .unwrap();
        let Some(Delivery::Message(frame)) = sub.next().await else {
            panic!("no frame");
        };
        crate::frame::decode(&frame).unwrap().events
    }

    #[tokio::test]
    async fn an_announced_batch_is_stored_once_as_its_frame() {
        let pubsub = InMemoryPubSub::new();
        let cache = InMemoryCache::new().with_pubsub(&pubsub);
        let mut sub = pubsub.subscribe("wake").await.unwrap();
        let payloads = [Bytes::from_static(b"one"), Bytes::from_static(b"two")];
        let events = announce(&cache, &mut sub, &payloads, 1024).await.unwrap();
        let stored = cache.read("log", 0, 10).await.unwrap().entries;
        assert_eq!(stored, payloads);
        // The same bytes in memory, not a copy.
        for (s, e) in stored.iter().zip(&events) {
            assert_eq!(s.as_ptr(), e.as_ptr());
        }
        // A batch too large for the frame is stored all the same; the frame is the range.
        assert_eq!(announce(&cache, &mut sub, &payloads, 2).await, None);
        let stored = cache.read("log", 0, 10).await.unwrap().entries;
        assert_eq!(stored.len(), 4);
        assert_eq!(stored[2..], payloads);
    }
}

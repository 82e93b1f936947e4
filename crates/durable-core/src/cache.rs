//! [`ServerCache`]: key/value with TTL, and the append-only run log.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// A position in a run log. Cursors start at 0 and are contiguous.
pub type Cursor = u64;

/// What a [`ServerCache`] backend supports.
///
/// `Default` is "nothing": a backend starts from it (or from [`CacheCapabilities::ALL`]) and
/// turns on what it implements with the `with_*` setters. The conformance suite runs the cases
/// of every claimed capability and fails a backend whose claim does not hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheCapabilities {
    /// Key/value TTLs and log `expire` are honoured by the backend itself.
    pub ttl: bool,
    /// [`ServerCache::keys`] is implemented (used to prove no key is left behind).
    pub list_keys: bool,
    /// Data is shared between processes and survives a restart of the process that wrote it
    /// (false for the in-memory backend).
    ///
    /// # Behavior
    /// - A second instance of the backend reads what the first wrote, and appends from both
    ///   continue one cursor sequence (`shared_cache_is_seen_by_another_instance`).
    pub shared: bool,
    /// [`ServerCache::append_announce`] is implemented: the append and its wake-up frame are
    /// one backend operation (see [`ServerCache::announce_domain`] for which PubSub hears it).
    pub announce: bool,
    /// An append that stays within one page of this many entries (cursors `k·n .. (k+1)·n`)
    /// is cheaper than one that crosses a page boundary; 0 (the default) when all are alike.
    /// A performance hint, never a rule: every append must work. The run writer cuts its
    /// batches at page boundaries (on NATS a batch within a page is one message, one across
    /// pages an atomic batch, which the server stages in a store of its own).
    pub append_page: u64,
}

impl CacheCapabilities {
    /// All capabilities on.
    pub const ALL: Self = Self {
        ttl: true,
        list_keys: true,
        shared: true,
        announce: true,
        append_page: 0,
    };

    /// Set whether TTLs are honoured.
    #[must_use]
    pub const fn with_ttl(mut self, ttl: bool) -> Self {
        self.ttl = ttl;
        self
    }

    /// Set whether the data is shared between processes.
    #[must_use]
    pub const fn with_shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// Set whether [`ServerCache::keys`] is implemented.
    #[must_use]
    pub const fn with_list_keys(mut self, list_keys: bool) -> Self {
        self.list_keys = list_keys;
        self
    }

    /// Set whether [`ServerCache::append_announce`] is implemented.
    #[must_use]
    pub const fn with_announce(mut self, announce: bool) -> Self {
        self.announce = announce;
        self
    }

    /// Set the page size appends are cheapest within ([`CacheCapabilities::append_page`]).
    #[must_use]
    pub const fn with_append_page(mut self, entries: u64) -> Self {
        self.append_page = entries;
        self
    }
}

/// Identifies where a cache's [`ServerCache::append_announce`] publishes and which [`PubSub`]
/// subscribers hear it. A cache and a pubsub with equal domains are *paired*: a frame the cache
/// publishes to topic `t` reaches every subscriber of `t` on the pubsub.
///
/// A backend derives it from what makes two handles talk to the same channel space (for Redis
/// the server and key prefix; in memory the identity of the `InMemoryPubSub`).
///
/// [`PubSub`]: crate::PubSub
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AnnounceDomain(Arc<str>);

impl AnnounceDomain {
    /// A domain named `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The domain's id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Debug for AnnounceDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids may embed a server address; never credentials (backends strip them).
        write!(f, "AnnounceDomain({:?})", &*self.0)
    }
}

/// Where [`ServerCache::append_announce`] publishes the wake-up frame of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Announce<'a> {
    /// The logical topic (validated like every name).
    pub topic: &'a str,
    /// The frame carries the events when their encoded size is at most this many bytes
    /// ([`frame::body_len`](crate::frame::body_len)); otherwise only the range.
    pub max_frame_bytes: usize,
}

impl<'a> Announce<'a> {
    /// Announce on `topic`, carrying events up to `max_frame_bytes`.
    pub const fn new(topic: &'a str, max_frame_bytes: usize) -> Self {
        Self {
            topic,
            max_frame_bytes,
        }
    }
}

/// Options of one [`ServerCache::append_many`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendOptions {
    /// Reject the append (and store nothing) if the log would hold more than this many entries.
    pub max_len: Option<u64>,
    /// The writer's epoch. The log remembers the highest fence of its *accepted* appends; an
    /// append carrying a lower fence is rejected with `Fenced` and stores nothing. `None` skips
    /// the check.
    ///
    /// A rejected append (for any reason: fence, `max_len`, a missing log) has no effect at
    /// all — in particular it does not raise the fence. The fence is checked before `max_len`.
    pub fence: Option<u64>,
    /// Reject the append with `NotFound` (storing nothing, creating nothing) when the log does
    /// not exist. The event log sets it on every append after [`EventLog::create`], so a
    /// deleted or expired log is never silently recreated from cursor 0 by a late producer.
    ///
    /// [`EventLog::create`]: crate::EventLog::create
    pub must_exist: bool,
}

impl AppendOptions {
    /// Options with an epoch fence.
    #[must_use]
    pub const fn fenced(fence: u64) -> Self {
        Self {
            max_len: None,
            fence: Some(fence),
            must_exist: false,
        }
    }

    /// Fail with `NotFound` instead of creating a missing log.
    #[must_use]
    pub const fn with_must_exist(mut self) -> Self {
        self.must_exist = true;
        self
    }

    /// Set the maximum number of entries.
    #[must_use]
    pub const fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = Some(max_len);
        self
    }
}

/// A contiguous slice of a log returned by [`ServerCache::read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSlice {
    /// Cursor of `entries[0]` (equal to the requested `from`).
    pub first: Cursor,
    /// The entries, in cursor order.
    pub entries: Vec<Bytes>,
    /// The log's next cursor (its length) when it was read.
    pub next: Cursor,
}

/// Key/value storage with TTL, and the append-only run logs that are the source of truth for
/// every event of every run.
///
/// Keys and logs are logical names validated by [`validate_name`](crate::validate_name); a
/// backend maps them into its own namespace. A log and a key may not share a name: a key
/// operation on a log's name, or a log operation on a key's name, fails with `Conflict` and
/// changes nothing (`key_and_log_cannot_share_a_name`). Names follow the grammar of
/// [`names`](crate::names), whose [`locality`](crate::names::locality) tells a sharded backend
/// which names must live together.
///
/// A log *exists* from its first `append_many` (even one of zero entries) until it is deleted or
/// expires. Its length is its next cursor.
#[async_trait]
pub trait ServerCache: Send + Sync + Debug + 'static {
    /// The backend's name, for errors and logs (`"memory"`, `"redis"`, …).
    fn backend(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> CacheCapabilities;

    /// Read a key.
    ///
    /// # Behavior
    /// - Returns `None` for a missing or expired key (`cache_set_get_delete`, `cache_ttl_expires`).
    /// - A key operation on a log's name, or a log operation on a key's name, is `Conflict` and
    ///   changes nothing (`key_and_log_cannot_share_a_name`).
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Write a key, replacing any value, with an optional TTL.
    ///
    /// # Behavior
    /// - A later `get` returns the value until the TTL elapses (`cache_ttl_expires`).
    /// - Invalid names are rejected with `InvalidInput` before reaching the backend
    ///   (`cache_rejects_invalid_names`).
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Delete a key or a log. Returns whether something was deleted.
    ///
    /// # Behavior
    /// - Deleting a missing key returns `false` (`cache_set_get_delete`).
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Atomically add `by` to an integer key (missing = 0) and return the new value. A TTL, if
    /// given, is set when the key is created.
    ///
    /// # Behavior
    /// - Concurrent increments never lose an update (`cache_increment_is_atomic`).
    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64>;

    /// Append `payloads` to `log` and return the cursor of the first one. Cursor allocation and
    /// storage are one atomic backend operation: one round trip for the whole batch.
    ///
    /// # Behavior
    /// - Cursors start at 0 and are contiguous; concurrent appenders never get a gap or a
    ///   duplicate (`concurrent_appends_get_contiguous_cursors`, `append_many_is_contiguous`).
    /// - An empty batch creates the log if missing, applies the fence, and returns the next
    ///   cursor (`empty_append_creates_log`).
    /// - A lower fence than the log has seen is rejected with `Fenced`, storing nothing
    ///   (`stale_fence_is_rejected`).
    /// - Exceeding `max_len` is rejected with `LimitExceeded`, storing nothing
    ///   (`log_max_len_is_enforced`); a rejected first append does not create the log
    ///   (`rejected_first_append_creates_no_log`).
    /// - With `must_exist`, a missing log is `NotFound` and is not created
    ///   (`append_must_exist_never_recreates_a_log`).
    /// - A rejected append does not raise the fence: after an over-`max_len` append at epoch 5,
    ///   an append at epoch 3 succeeds if the log had seen no epoch above 3
    ///   (`rejected_append_does_not_raise_fence`).
    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor>;

    /// Read up to `limit` entries of `log` starting at cursor `from`.
    ///
    /// # Behavior
    /// - Entries come back by cursor, never by a position that can shift
    ///   (`read_returns_entries_by_cursor`).
    /// - `from == len` returns an empty slice; `from > len` fails with `OffsetAhead`
    ///   (`read_past_end_is_offset_ahead`).
    /// - A missing log fails with `NotFound` (`read_missing_log_is_not_found`).
    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice>;

    /// The log's length (its next cursor), or `None` if the log does not exist.
    ///
    /// # Behavior
    /// - Missing logs are `None`, not `Some(0)` (`read_missing_log_is_not_found`).
    async fn len(&self, log: &str) -> Result<Option<u64>>;

    /// Make the log (with everything the backend stores for it) expire after `ttl`. Returns
    /// whether the log exists.
    ///
    /// # Behavior
    /// - After the TTL the log is gone: `len` is `None` (`log_expire_removes_everything`).
    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool>;

    /// List the logical names of keys and logs that start with `prefix` (only when
    /// [`CacheCapabilities::list_keys`]). Used to prove nothing is left behind for a run.
    ///
    /// # Behavior
    /// - Lists both keys and logs, including backend-internal companions of a log under the log's
    ///   own name (`keys_lists_everything_under_prefix`).
    /// - Sorted ascending by byte order, each name once (`keys_are_sorted_and_unique`).
    /// - `prefix` is empty or a valid name prefix (the characters of
    ///   [`validate_name`](crate::validate_name)); anything else is `InvalidInput`
    ///   (`keys_prefix_is_validated`).
    async fn keys(&self, prefix: &str) -> Result<Vec<String>>;

    /// Where [`append_announce`](Self::append_announce) publishes, or `None` (the default) when
    /// the cache cannot announce. The event log uses `append_announce` only when this equals
    /// the PubSub's [`announce_domain`](crate::PubSub::announce_domain).
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        None
    }

    /// [`append_many`](Self::append_many), and publish the batch's wake-up frame
    /// ([`frame::encode`](crate::frame::encode) of the first cursor and `payloads`) to
    /// `announce.topic` in the same backend operation: one round trip, and no subscriber can
    /// see the frame before the events are readable (persist, then announce, by construction).
    /// Only when [`CacheCapabilities::announce`]; the default returns `Unsupported`.
    ///
    /// An empty batch announces nothing.
    ///
    /// # Behavior
    /// - A subscriber of the topic on the paired PubSub receives exactly one frame per
    ///   non-empty batch, naming its cursors, and can read the events when it arrives
    ///   (`append_announce_wakes_paired_subscribers`).
    /// - Frames arrive in cursor order for one log (`append_announce_frames_follow_cursor_order`).
    /// - A rejected append (fence, `max_len`) announces nothing
    ///   (`rejected_append_announces_nothing`).
    /// - Events with any bytes (newlines, `\r`, NUL, 1 MB strings) are carried or announced
    ///   exactly (`announced_frames_are_injective`).
    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        let _ = (log, payloads, options, announce);
        Err(crate::Error::unsupported(
            "this cache cannot announce appends; the event log publishes separately",
        )
        .with_backend(self.backend())
        .with_operation("append_announce"))
    }
}

/// Convenience methods on every [`ServerCache`].
#[async_trait]
pub trait ServerCacheExt: ServerCache {
    /// Append one payload; see [`ServerCache::append_many`].
    async fn append(&self, log: &str, payload: Bytes) -> Result<Cursor> {
        self.append_many(
            log,
            std::slice::from_ref(&payload),
            AppendOptions::default(),
        )
        .await
    }
}

impl<T: ServerCache + ?Sized> ServerCacheExt for T {}

#[async_trait]
impl<T: ServerCache + ?Sized> ServerCache for Arc<T> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn capabilities(&self) -> CacheCapabilities {
        (**self).capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        (**self).get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        (**self).set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        (**self).increment(key, by, ttl).await
    }
    async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        (**self).append_many(log, payloads, options).await
    }
    async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        (**self).read(log, from, limit).await
    }
    async fn len(&self, log: &str) -> Result<Option<u64>> {
        (**self).len(log).await
    }
    async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        (**self).expire(log, ttl).await
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).keys(prefix).await
    }
    fn announce_domain(&self) -> Option<AnnounceDomain> {
        (**self).announce_domain()
    }
    async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        (**self)
            .append_announce(log, payloads, options, announce)
            .await
    }
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheCapabilities {
    /// Key/value TTLs and log `expire` are honoured by the backend itself.
    pub ttl: bool,
    /// [`ServerCache::keys`] is implemented (used to prove no key is left behind).
    pub list_keys: bool,
    /// Data survives a restart of the process that wrote it (false for the in-memory backend).
    pub shared: bool,
}

impl CacheCapabilities {
    /// All capabilities on.
    pub const ALL: Self = Self {
        ttl: true,
        list_keys: true,
        shared: true,
    };

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
}

/// Options of one [`ServerCache::append_many`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendOptions {
    /// Reject the append (and store nothing) if the log would hold more than this many entries.
    pub max_len: Option<u64>,
    /// The writer's epoch. The log remembers the highest fence it has seen; an append carrying a
    /// lower fence is rejected with `Fenced` and stores nothing. `None` skips the check.
    pub fence: Option<u64>,
}

impl AppendOptions {
    /// Options with an epoch fence.
    #[must_use]
    pub const fn fenced(fence: u64) -> Self {
        Self {
            max_len: None,
            fence: Some(fence),
        }
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
/// backend maps them into its own namespace. A log and a key may not share a name.
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
    ///   (`log_max_len_is_enforced`).
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
    async fn keys(&self, prefix: &str) -> Result<Vec<String>>;
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
}

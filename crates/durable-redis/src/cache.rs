//! [`RedisServerCache`]: keys with TTL and the run logs, over any [`Transport`].

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    ttl_ms, validate_name, validate_prefix, Announce, AnnounceDomain, AppendOptions,
    CacheCapabilities, Cursor, ErrorKind, LogSlice, Result, ServerCache,
};

use crate::error::err;
use crate::keys::KeySpace;
use crate::scripts::{APPEND, EXPIRE, GET, INCREMENT, LEN, SET};
use crate::transport::{RedisTransport, Reply, Transport};

/// The cache logic shared by the Redis and Upstash types.
#[derive(Debug)]
pub(crate) struct CacheCore<T> {
    pub(crate) transport: T,
    pub(crate) keys: KeySpace,
    /// Where appends can be announced (`PUBLISH` inside the append script), if anywhere.
    pub(crate) announce: Option<AnnounceDomain>,
}

impl<T: Transport> CacheCore<T> {
    fn check(&self, op: &'static str, what: &'static str, name: &str) -> Result<()> {
        validate_name(what, name)
            .map_err(|e| e.with_backend(self.transport.backend()).with_operation(op))
    }

    fn bad(&self, op: &'static str, what: &str) -> durable_core::Error {
        self.transport.unexpected(op, what)
    }

    fn conflict(&self, op: &'static str, name: &str) -> durable_core::Error {
        err(
            self.transport.backend(),
            ErrorKind::Conflict,
            op,
            format!("{name:?} is a log and a key at once: a key and a log may not share a name"),
        )
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.check("get", "key", key)?;
        let (k, m) = (self.keys.cache_key(key), self.keys.meta_key(key));
        let reply = self.transport.eval("get", &GET, &[&k, &m], &[]).await?;
        let mut parts = reply
            .into_array()
            .ok_or_else(|| self.bad("get", "get"))?
            .into_iter();
        match parts.next().and_then(|r| r.int()) {
            Some(0) => match parts.next() {
                None | Some(Reply::Nil) => Ok(None),
                Some(v) => v
                    .into_bytes()
                    .map(Some)
                    .ok_or_else(|| self.bad("get", "GET")),
            },
            Some(1) => Err(self.conflict("get", key)),
            _ => Err(self.bad("get", "get")),
        }
    }

    pub(crate) async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.check("set", "key", key)?;
        let (k, m) = (self.keys.cache_key(key), self.keys.meta_key(key));
        let ttl = ttl.map(|t| ttl_ms(t).to_string()).unwrap_or_default();
        let code = self
            .transport
            .eval("set", &SET, &[&k, &m], &[&value, ttl.as_bytes()])
            .await?
            .int();
        match code {
            Some(0) => Ok(()),
            Some(1) => Err(self.conflict("set", key)),
            _ => Err(self.bad("set", "set")),
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool> {
        self.check("delete", "key", key)?;
        let (k, m) = (self.keys.cache_key(key), self.keys.meta_key(key));
        let n = self.transport.command("delete", &[b"DEL", &k, &m]).await?;
        Ok(n.int().ok_or_else(|| self.bad("delete", "DEL"))? > 0)
    }

    pub(crate) async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
        self.check("increment", "key", key)?;
        let (k, m) = (self.keys.cache_key(key), self.keys.meta_key(key));
        let by = by.to_string();
        let ttl = ttl.map(|t| ttl_ms(t).to_string()).unwrap_or_default();
        let reply = self
            .transport
            .eval(
                "increment",
                &INCREMENT,
                &[&k, &m],
                &[by.as_bytes(), ttl.as_bytes()],
            )
            .await?;
        let mut parts = reply
            .into_array()
            .ok_or_else(|| self.bad("increment", "increment"))?
            .into_iter();
        match parts.next().and_then(|r| r.int()) {
            Some(0) => parts
                .next()
                .and_then(|v| v.int())
                .ok_or_else(|| self.bad("increment", "INCRBY")),
            Some(1) => Err(self.conflict("increment", key)),
            Some(2) => Err(err(
                self.transport.backend(),
                ErrorKind::InvalidInput,
                "increment",
                "integer overflow",
            )),
            _ => Err(self.bad("increment", "increment")),
        }
    }

    pub(crate) async fn append_many(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
    ) -> Result<Cursor> {
        self.check("append", "log", log)?;
        self.append(log, payloads, options, None).await
    }

    pub(crate) async fn append_announce(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Announce<'_>,
    ) -> Result<Cursor> {
        self.check("append", "log", log)?;
        self.check("append", "topic", announce.topic)?;
        if self.announce.is_none() {
            return Err(err(
                self.transport.backend(),
                ErrorKind::Unsupported,
                "append_announce",
                "this cache has no channel space to announce in",
            ));
        }
        self.append(log, payloads, options, Some(announce)).await
    }

    /// The append script, announcing the batch on `announce`'s topic channel if given.
    async fn append(
        &self,
        log: &str,
        payloads: &[Bytes],
        options: AppendOptions,
        announce: Option<Announce<'_>>,
    ) -> Result<Cursor> {
        let (k, m) = (self.keys.cache_key(log), self.keys.meta_key(log));
        let fence = options.fence.map(|f| f.to_string()).unwrap_or_default();
        let max = options.max_len.map(|f| f.to_string()).unwrap_or_default();
        let must_exist: &[u8] = if options.must_exist { b"1" } else { b"" };
        let (channel, frame_max) = match announce {
            Some(a) => (
                self.keys.topic_channel(a.topic),
                a.max_frame_bytes.to_string(),
            ),
            None => (Vec::new(), String::new()),
        };
        let mut args: Vec<&[u8]> = Vec::with_capacity(payloads.len() + 5);
        args.push(fence.as_bytes());
        args.push(max.as_bytes());
        args.push(must_exist);
        args.push(&channel);
        args.push(frame_max.as_bytes());
        args.extend(payloads.iter().map(|p| &p[..]));
        let reply = self
            .transport
            .eval("append", &APPEND, &[&k, &m], &args)
            .await?;
        let (code, value) = code_and_value(reply).ok_or_else(|| self.bad("append", "append"))?;
        let backend = self.transport.backend();
        match code {
            0 => Ok(value),
            1 => Err(err(
                backend,
                ErrorKind::Fenced,
                "append",
                format!("epoch {fence} is older than the log's fence {value}"),
            )),
            2 => Err(err(
                backend,
                ErrorKind::LimitExceeded,
                "append",
                format!("log {log} would exceed {max} entries"),
            )),
            3 => Err(err(
                backend,
                ErrorKind::NotFound,
                "append",
                format!("no log {log} (it was never created, or it was deleted or expired)"),
            )),
            4 => Err(self.conflict("append", log)),
            _ => Err(self.bad("append", "append")),
        }
    }

    pub(crate) async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
        self.check("read", "log", log)?;
        let (k, m) = (self.keys.cache_key(log), self.keys.meta_key(log));
        let reply = self.transport.read_log(&k, &m, from, limit).await?;
        let mut parts = reply
            .into_array()
            .ok_or_else(|| self.bad("read", "read"))?
            .into_iter();
        let head = parts.next().and_then(|r| r.int());
        let backend = self.transport.backend();
        match head {
            Some(-1) => Err(err(
                backend,
                ErrorKind::NotFound,
                "read",
                format!("no log {log}"),
            )),
            Some(-3) => Err(self.conflict("read", log)),
            Some(-2) => Err(err(
                backend,
                ErrorKind::OffsetAhead,
                "read",
                format!("cursor {from} is beyond the end of {log}"),
            )),
            Some(len) if len >= 0 => {
                let entries = parts
                    .next()
                    .and_then(Reply::into_array)
                    .ok_or_else(|| self.bad("read", "read"))?
                    .into_iter()
                    .map(|e| e.into_bytes().ok_or_else(|| self.bad("read", "entry")))
                    .collect::<Result<Vec<_>>>()?;
                Ok(LogSlice {
                    first: from,
                    entries,
                    next: len as u64,
                })
            }
            _ => Err(self.bad("read", "read")),
        }
    }

    pub(crate) async fn len(&self, log: &str) -> Result<Option<u64>> {
        self.check("len", "log", log)?;
        let (k, m) = (self.keys.cache_key(log), self.keys.meta_key(log));
        let n = self
            .transport
            .eval("len", &LEN, &[&k, &m], &[])
            .await?
            .int()
            .ok_or_else(|| self.bad("len", "len"))?;
        match n {
            -2 => Err(self.conflict("len", log)),
            n => Ok(u64::try_from(n).ok()),
        }
    }

    pub(crate) async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
        self.check("expire", "log", log)?;
        let (k, m) = (self.keys.cache_key(log), self.keys.meta_key(log));
        let ms = ttl_ms(ttl).to_string();
        let n = self
            .transport
            .eval("expire", &EXPIRE, &[&k, &m], &[ms.as_bytes()])
            .await?
            .int()
            .ok_or_else(|| self.bad("expire", "expire"))?;
        match n {
            -1 => Err(self.conflict("expire", log)),
            n => Ok(n == 1),
        }
    }

    pub(crate) async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix("prefix", prefix).map_err(|e| {
            e.with_backend(self.transport.backend())
                .with_operation("keys")
        })?;
        let pattern = self.keys.cache_scan_pattern(prefix);
        let found = self.transport.scan("keys", pattern.as_bytes()).await?;
        let mut out = BTreeSet::new();
        for key in found {
            if let Some(name) = self.keys.logical_name(&key) {
                if name.starts_with(prefix) {
                    out.insert(name.to_owned());
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// `{code, value}` replies of the scripts.
fn code_and_value(reply: Reply) -> Option<(i64, u64)> {
    let mut parts = reply.into_array()?.into_iter();
    let code = parts.next()?.int()?;
    let value = u64::try_from(parts.next()?.int()?).ok()?;
    Some((code, value))
}

/// Implements [`ServerCache`] for a newtype over `Arc<CacheCore<_>>`.
macro_rules! server_cache_impl {
    ($ty:ty) => {
        #[async_trait]
        impl ServerCache for $ty {
            fn backend(&self) -> &'static str {
                self.core.transport.backend()
            }
            fn capabilities(&self) -> CacheCapabilities {
                CacheCapabilities::ALL.with_announce(self.core.announce.is_some())
            }
            async fn get(&self, key: &str) -> Result<Option<Bytes>> {
                self.core.get(key).await
            }
            async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
                self.core.set(key, value, ttl).await
            }
            async fn delete(&self, key: &str) -> Result<bool> {
                self.core.delete(key).await
            }
            async fn increment(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64> {
                self.core.increment(key, by, ttl).await
            }
            async fn append_many(
                &self,
                log: &str,
                payloads: &[Bytes],
                options: AppendOptions,
            ) -> Result<Cursor> {
                self.core.append_many(log, payloads, options).await
            }
            async fn read(&self, log: &str, from: Cursor, limit: usize) -> Result<LogSlice> {
                self.core.read(log, from, limit).await
            }
            async fn len(&self, log: &str) -> Result<Option<u64>> {
                self.core.len(log).await
            }
            async fn expire(&self, log: &str, ttl: Duration) -> Result<bool> {
                self.core.expire(log, ttl).await
            }
            async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
                self.core.keys(prefix).await
            }
            fn announce_domain(&self) -> Option<AnnounceDomain> {
                self.core.announce.clone()
            }
            async fn append_announce(
                &self,
                log: &str,
                payloads: &[Bytes],
                options: AppendOptions,
                announce: Announce<'_>,
            ) -> Result<Cursor> {
                self.core
                    .append_announce(log, payloads, options, announce)
                    .await
            }
        }
    };
}
#[cfg(feature = "upstash")]
pub(crate) use server_cache_impl;

/// [`ServerCache`] on Redis.
///
/// A log is a Redis list whose index is the cursor (nothing is ever trimmed from its head) plus a
/// small companion hash (fence, existence of an empty log) in the same hash slot. Every
/// operation is one round trip; `append_many` is one atomic Lua script (fence check, `max_len`
/// check, cursor allocation, store). TTLs are set only by [`ServerCache::expire`] (the run's
/// retention), on the log and its companion together.
///
/// It announces ([`ServerCache::append_announce`]): the same script `PUBLISH`es the batch's
/// wake-up frame on the topic's channel, so an [`EventLog`](durable_core::EventLog) over this
/// cache and a [`RedisPubSub`](crate::RedisPubSub) of the same server and key prefix (its
/// [`announce_domain`](ServerCache::announce_domain)) needs one round trip per batch.
///
/// Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct RedisServerCache {
    pub(crate) core: std::sync::Arc<CacheCore<RedisTransport>>,
}

server_cache_impl!(RedisServerCache);

//! What the cache logic needs from a connection: commands and scripts, one round trip each.
//! Implemented by the Redis connection manager and by the Upstash REST client, so both speak
//! the same Lua scripts and key layout.

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{ErrorKind, Result};
use redis::aio::ConnectionManager;

use crate::error::{err, from_redis, REDIS};
use crate::scripts::Script;

/// A decoded reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Nil,
    Int(i64),
    Bulk(Bytes),
    Array(Vec<Reply>),
}

impl Reply {
    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(a) => Some(a),
            Reply::Nil => Some(Vec::new()),
            _ => None,
        }
    }

    pub(crate) fn into_bytes(self) -> Option<Bytes> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Int(i) => Some(Bytes::from(i.to_string())),
            _ => None,
        }
    }
}

/// A connection that runs commands and scripts.
#[async_trait]
pub(crate) trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// `"redis"` or `"upstash"`.
    fn backend(&self) -> &'static str;

    /// Run one command.
    async fn command(&self, op: &'static str, args: &[&[u8]]) -> Result<Reply>;

    /// Run a script (by SHA, loading it once if the server does not know it).
    async fn eval(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply>;

    /// Read a log slice: the reply of [`READ`](crate::scripts::READ) (`{-1}`, `{-2, len}` or
    /// `{len, {entries…}}`). The default runs the script; a transport may do better.
    async fn read_log(&self, list: &[u8], meta: &[u8], from: u64, limit: usize) -> Result<Reply> {
        let (from_s, limit_s) = (from.to_string(), limit.to_string());
        self.eval(
            "read",
            &crate::scripts::READ,
            &[list, meta],
            &[from_s.as_bytes(), limit_s.as_bytes()],
        )
        .await
    }

    /// The error for a reply of the wrong shape.
    fn unexpected(&self, op: &'static str, what: &str) -> durable_core::Error {
        err(
            self.backend(),
            ErrorKind::Unexpected,
            op,
            format!("unexpected reply to {what}"),
        )
    }
}

/// Convert a `redis` value into a [`Reply`].
pub(crate) fn from_value(v: redis::Value) -> Reply {
    use redis::Value as V;
    match v {
        V::Nil => Reply::Nil,
        V::Int(i) => Reply::Int(i),
        V::BulkString(b) => Reply::Bulk(Bytes::from(b)),
        V::Array(a) | V::Set(a) => Reply::Array(a.into_iter().map(from_value).collect()),
        V::Map(m) => Reply::Array(
            m.into_iter()
                .flat_map(|(k, v)| [from_value(k), from_value(v)])
                .collect(),
        ),
        V::SimpleString(s) => Reply::Bulk(Bytes::from(s)),
        V::Okay => Reply::Bulk(Bytes::from_static(b"OK")),
        V::Boolean(b) => Reply::Int(i64::from(b)),
        V::Double(d) => Reply::Bulk(Bytes::from(d.to_string())),
        V::VerbatimString { text, .. } => Reply::Bulk(Bytes::from(text)),
        V::Attribute { data, .. } => from_value(*data),
        _ => Reply::Nil,
    }
}

/// The Redis transport: a multiplexed connection manager that reconnects by itself.
#[derive(Clone)]
pub(crate) struct RedisTransport {
    pub(crate) conn: ConnectionManager,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisTransport")
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        || e.code() == Some("NOSCRIPT")
}

/// A `WRONGTYPE` reply, alone or inside a pipeline's failures.
fn is_wrongtype(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errs| errs.iter().any(|(_, s)| s.code() == "WRONGTYPE"))
}

impl RedisTransport {
    pub(crate) fn new(conn: ConnectionManager) -> Self {
        Self { conn }
    }

    pub(crate) async fn query(&self, op: &'static str, cmd: &redis::Cmd) -> Result<Reply> {
        let mut conn = self.conn.clone();
        cmd.query_async::<redis::Value>(&mut conn)
            .await
            .map(from_value)
            .map_err(|e| from_redis(op, e))
    }

    pub(crate) async fn pipeline(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Reply>> {
        let mut conn = self.conn.clone();
        pipe.query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .map(|v| v.into_iter().map(from_value).collect())
            .map_err(|e| from_redis(op, e))
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn backend(&self) -> &'static str {
        REDIS
    }

    async fn command(&self, op: &'static str, args: &[&[u8]]) -> Result<Reply> {
        let mut cmd = redis::Cmd::new();
        for a in args {
            cmd.arg(*a);
        }
        self.query(op, &cmd).await
    }

    /// One `MULTI`/`EXEC` (atomic, one round trip) instead of the Lua script: Lua would copy
    /// every entry into a Lua table and back, which costs more than the read itself.
    async fn read_log(&self, list: &[u8], meta: &[u8], from: u64, limit: usize) -> Result<Reply> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("EXISTS").arg(meta).cmd("LLEN").arg(list);
        let end = from.saturating_add(limit as u64).saturating_sub(1);
        if limit > 0 {
            pipe.cmd("LRANGE").arg(list).arg(from).arg(end);
        }
        let mut conn = self.conn.clone();
        let replies = match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
            Ok(v) => v,
            // `LLEN` on a string: the name is a key, not a log.
            Err(e) if is_wrongtype(&e) => return Ok(Reply::Array(vec![Reply::Int(-3)])),
            Err(e) => return Err(from_redis("read", e)),
        };
        let mut parts = replies.into_iter().map(from_value);
        let (exists, len) = match (parts.next(), parts.next()) {
            (Some(e), Some(l)) => (e.int(), l.int()),
            _ => return Err(self.unexpected("read", "MULTI read")),
        };
        let (Some(exists), Some(len)) = (exists, len) else {
            return Err(self.unexpected("read", "MULTI read"));
        };
        if exists == 0 {
            return Ok(Reply::Array(vec![Reply::Int(-1)]));
        }
        if from > len as u64 {
            return Ok(Reply::Array(vec![Reply::Int(-2), Reply::Int(len)]));
        }
        let entries = parts.next().unwrap_or(Reply::Array(Vec::new()));
        Ok(Reply::Array(vec![Reply::Int(len), entries]))
    }

    async fn eval(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply> {
        let build = |verb: &str, body: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body).arg(keys.len());
            for k in keys {
                cmd.arg(*k);
            }
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        let mut conn = self.conn.clone();
        match build("EVALSHA", &script.sha)
            .query_async::<redis::Value>(&mut conn)
            .await
        {
            Ok(v) => Ok(from_value(v)),
            Err(e) if is_noscript(&e) => build("EVAL", script.source)
                .query_async::<redis::Value>(&mut conn)
                .await
                .map(from_value)
                .map_err(|e| from_redis(op, e)),
            Err(e) => Err(from_redis(op, e)),
        }
    }
}

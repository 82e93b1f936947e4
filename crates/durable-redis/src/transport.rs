//! What the cache logic needs from a connection: commands and scripts, one round trip each.
//! Implemented by the Redis connection manager and by the Upstash REST client, so both speak
//! the same Lua scripts and key layout.

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{ErrorKind, Result};
use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

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

    /// Every key matching the `SCAN MATCH` `pattern` (may repeat a key). The default walks
    /// `SCAN` on the one server; a cluster walks it on every master.
    async fn scan(&self, op: &'static str, pattern: &[u8]) -> Result<Vec<Bytes>> {
        scan_one(op, pattern, |args| async move {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            self.command(op, &args).await
        })
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

/// Keys fetched per `SCAN` step.
const SCAN_COUNT: &[u8] = b"1000";

/// Walk `SCAN … MATCH pattern` to its end with `run` (one server).
async fn scan_one<F, Fut>(op: &'static str, pattern: &[u8], run: F) -> Result<Vec<Bytes>>
where
    F: Fn(Vec<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = Result<Reply>>,
{
    let mut cursor = Bytes::from_static(b"0");
    let mut out = Vec::new();
    loop {
        let args = [
            &b"SCAN"[..],
            &cursor,
            b"MATCH",
            pattern,
            b"COUNT",
            SCAN_COUNT,
        ]
        .map(<[u8]>::to_vec)
        .to_vec();
        let reply = run(args).await?;
        let mut parts = reply.into_array().unwrap_or_default().into_iter();
        let (Some(next), Some(found)) = (
            parts.next().and_then(Reply::into_bytes),
            parts.next().and_then(Reply::into_array),
        ) else {
            return Err(err(
                REDIS,
                ErrorKind::Unexpected,
                op,
                "unexpected reply to SCAN",
            ));
        };
        out.extend(found.into_iter().filter_map(Reply::into_bytes));
        if &next[..] == b"0" {
            return Ok(out);
        }
        cursor = next;
    }
}

/// One connection: to a single server (or proxy), or to a Redis Cluster (commands routed by
/// key slot, `MOVED`/`ASK` followed, the slot map refreshed after a failover).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Commands sent together: one pipeline on a single server; on a cluster, one pipeline per
/// hash slot, all in flight at once (a pipeline may not cross slots there). Commands of one
/// slot keep their order; commands of different slots have none.
#[derive(Default)]
pub(crate) struct Batch {
    /// (hash tag of the command's key, command, whether its reply is returned)
    cmds: Vec<(Vec<u8>, redis::Cmd, bool)>,
}

impl Batch {
    /// Add `cmd` on `key`; its reply is returned.
    pub(crate) fn add(&mut self, key: &[u8], cmd: redis::Cmd) -> &mut Self {
        self.cmds.push((hash_tag(key).to_vec(), cmd, true));
        self
    }

    /// Add `cmd` on `key`; its reply is dropped (errors still fail the batch).
    pub(crate) fn ignored(&mut self, key: &[u8], cmd: redis::Cmd) -> &mut Self {
        self.cmds.push((hash_tag(key).to_vec(), cmd, false));
        self
    }
}

/// The part of `key` Redis Cluster hashes: the first non-empty `{…}`, else the whole key.
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|b| *b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The Redis transport: a multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub(crate) struct RedisTransport {
    pub(crate) conn: Conn,
    /// `WAIT <replicas> <ms>` after every writing script (`RedisConfig::replica_acks`).
    pub(crate) wait: Option<(usize, u64)>,
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
    pub(crate) fn new(conn: Conn, wait: Option<(usize, u64)>) -> Self {
        Self { conn, wait }
    }

    /// `EVALSHA` (or `EVAL`) of a writing script followed by `WAIT`, pipelined (one round
    /// trip; on a cluster both go to the node of the script's keys). Fewer replicas than asked
    /// within the timeout is a retryable `Unavailable`: the write happened on the master but
    /// may not survive its loss, so the caller treats it like a lost answer (it checks what
    /// was stored, or retries under its fence).
    async fn eval_waiting(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
        replicas: usize,
        ms: u64,
    ) -> std::result::Result<Result<Reply>, redis::RedisError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(replicas)
            .arg(ms);
        let mut conn = self.conn.clone();
        let replies = pipe.query_async::<Vec<redis::Value>>(&mut conn).await?;
        let mut it = replies.into_iter().map(from_value);
        let (Some(reply), Some(acked)) = (it.next(), it.next()) else {
            return Ok(Err(self.unexpected(op, "EVALSHA + WAIT")));
        };
        if acked.int().unwrap_or(0) < replicas as i64 {
            return Ok(Err(err(
                REDIS,
                ErrorKind::Unavailable,
                op,
                format!("written, but not acknowledged by {replicas} replica(s) in {ms} ms"),
            )
            .with_retryable(true)));
        }
        Ok(Ok(reply))
    }

    /// Whether this is a Redis Cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Run `batch` (see [`Batch`]): the replies of the commands added with [`Batch::add`], in
    /// order.
    pub(crate) async fn batch(&self, op: &'static str, batch: &Batch) -> Result<Vec<Reply>> {
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for (_, cmd, keep) in &batch.cmds {
                pipe.add_command(cmd.clone());
                if !keep {
                    pipe.ignore();
                }
            }
            return self.pipeline(op, &pipe).await;
        }
        let mut groups: Vec<(&[u8], Vec<usize>)> = Vec::new();
        for (i, (tag, _, _)) in batch.cmds.iter().enumerate() {
            match groups.iter_mut().find(|(t, _)| *t == tag.as_slice()) {
                Some((_, members)) => members.push(i),
                None => groups.push((tag, vec![i])),
            }
        }
        let sent = groups.iter().map(|(_, members)| {
            let mut pipe = redis::pipe();
            for &i in members {
                pipe.add_command(batch.cmds[i].1.clone());
            }
            async move { self.pipeline(op, &pipe).await }
        });
        let answers = try_join_all(sent).await?;
        let mut replies: Vec<Option<Reply>> = vec![None; batch.cmds.len()];
        for ((_, members), answer) in groups.iter().zip(answers) {
            for (&i, reply) in members.iter().zip(answer) {
                replies[i] = Some(reply);
            }
        }
        Ok(batch
            .cmds
            .iter()
            .zip(replies)
            .filter(|((_, _, keep), _)| *keep)
            .map(|(_, r)| r.unwrap_or(Reply::Nil))
            .collect())
    }

    /// The masters of the cluster that serve slots, as `(host, port)` (`CLUSTER NODES`).
    async fn masters(&self, op: &'static str) -> Result<Vec<(String, u16)>> {
        let nodes = self
            .query(op, &redis::cmd("CLUSTER").arg("NODES").to_owned())
            .await?;
        let text = nodes
            .into_bytes()
            .ok_or_else(|| self.unexpected(op, "CLUSTER NODES"))?;
        let text = String::from_utf8_lossy(&text);
        Ok(text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let serving = f.len() > 8;
                let flags = f.get(2)?;
                let master = flags.split(',').any(|x| x == "master")
                    && !flags.split(',').any(|x| x == "fail" || x == "fail?");
                if !(master && serving) {
                    return None;
                }
                let addr = f.get(1)?.split('@').next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect())
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

    async fn scan(&self, op: &'static str, pattern: &[u8]) -> Result<Vec<Bytes>> {
        let Conn::Cluster(conn) = &self.conn else {
            return scan_one(op, pattern, |args| async move {
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                self.command(op, &args).await
            })
            .await;
        };
        let mut out = Vec::new();
        for (host, port) in self.masters(op).await? {
            let found = scan_one(op, pattern, |args| {
                let mut conn = conn.clone();
                let (host, port) = (host.clone(), port);
                async move {
                    let mut cmd = redis::Cmd::new();
                    for a in args {
                        cmd.arg(a);
                    }
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    conn.route_command(cmd, route)
                        .await
                        .map(from_value)
                        .map_err(|e| from_redis(op, e))
                }
            })
            .await?;
            out.extend(found);
        }
        Ok(out)
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
        if let (Some((replicas, ms)), true) = (self.wait, script.writes) {
            return match self
                .eval_waiting(op, &build("EVALSHA", &script.sha), replicas, ms)
                .await
            {
                Ok(r) => r,
                Err(e) if is_noscript(&e) => self
                    .eval_waiting(op, &build("EVAL", script.source), replicas, ms)
                    .await
                    .map_err(|e| from_redis(op, e))?,
                Err(e) => Err(from_redis(op, e)),
            };
        }
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

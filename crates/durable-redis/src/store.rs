//! [`RedisWorkflowStore`]: run records, checkpoints and leases in Redis hashes, every transition
//! one Lua script with epoch fencing.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use durable_core::{
    check_terminal, now_ms, ttl_ms, validate_name, Epoch, Error, ErrorKind, Lease, NewRun, Result,
    RunId, RunRecord, RunSnapshot, RunStatus, StoreCapabilities, WorkflowStore,
};
use serde_json::Value;

use crate::error::{err, REDIS};
use crate::keys::KeySpace;
use crate::scripts::{
    Script, CHECKPOINT, CLAIM, CREATE_RUN, EXPIRE_RUN, RELEASE, RENEW, SET_STATUS,
};
use crate::transport::{Batch, RedisTransport, Reply, Transport};

const ALL_STATUSES: [RunStatus; 6] = [
    RunStatus::Pending,
    RunStatus::Running,
    RunStatus::Suspended,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Aborted,
];

/// [`WorkflowStore`] on Redis.
///
/// - Record: hash `<prefix>s:{<run id>}r`; checkpoints: hash `<prefix>s:{<run id>}c` (field =
///   step key, value = `<seq> <json>`, so write order survives). Both in the run's hash slot.
/// - Every transition (`create_run`, `claim`, `renew`, `release`, `checkpoint`, `set_status`,
///   `expire_run`) is one Lua script that checks the epoch fence and the status rules
///   atomically. Lease times use the **Redis server clock** (`TIME`), so all clients agree on
///   when a lease has expired.
/// - `list_runs(status)` reads a per-status sorted set (member = run id, score = expiry time or
///   `+inf`), never a `KEYS`/`SCAN`. The sets are global keys (their own slot), updated in the
///   same pipeline as the transition; a member whose record is gone or in another status is
///   filtered out and removed when listed, and `expire_run` gives the membership the record's
///   expiry, so index entries leave with their runs.
#[derive(Clone, Debug)]
pub struct RedisWorkflowStore {
    pub(crate) transport: RedisTransport,
    pub(crate) keys: KeySpace,
}

fn fail(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    err(REDIS, kind, op, msg)
}

fn bad(op: &'static str) -> Error {
    fail(
        ErrorKind::Unexpected,
        op,
        "unexpected reply from a store script",
    )
}

fn not_found(op: &'static str, run_id: &RunId) -> Error {
    fail(ErrorKind::NotFound, op, format!("no run {run_id}"))
}

fn fenced(op: &'static str, run_id: &RunId, epoch: Epoch) -> Error {
    fail(
        ErrorKind::Fenced,
        op,
        format!("epoch {epoch} is stale for run {run_id}"),
    )
}

fn parse_status(s: &str) -> Option<RunStatus> {
    ALL_STATUSES.into_iter().find(|st| st.as_str() == s)
}

/// Decode `HGETALL` of a record hash (`None` for an empty hash).
fn decode_record(run_id: &RunId, fields: Vec<Reply>) -> Result<Option<RunRecord>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut obj = serde_json::Map::new();
    obj.insert("run_id".into(), Value::from(run_id.as_str()));
    for v in ["owner", "lease_expires_at", "resource_id"] {
        obj.insert(v.into(), Value::Null);
    }
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let (Some(k), Some(v)) = (k.into_bytes(), v.into_bytes()) else {
            return Err(bad("decode"));
        };
        let text = || std::str::from_utf8(&v).map_err(|_| corrupt(run_id));
        let int = || -> Result<Value> {
            text()?
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| corrupt(run_id))
        };
        match &k[..] {
            b"st" => {
                parse_status(text()?).ok_or_else(|| corrupt(run_id))?;
                obj.insert("status".into(), Value::from(text()?));
            }
            b"ep" => {
                obj.insert("epoch".into(), int()?);
            }
            b"ow" => {
                obj.insert("owner".into(), Value::from(text()?));
            }
            b"le" => {
                obj.insert("lease_expires_at".into(), int()?);
            }
            b"rs" => {
                obj.insert("resource_id".into(), Value::from(text()?));
            }
            b"ca" => {
                obj.insert("created_at".into(), int()?);
            }
            b"ua" => {
                obj.insert("updated_at".into(), int()?);
            }
            b"d" => {
                obj.insert("data".into(), serde_json::from_slice(&v)?);
            }
            _ => {}
        }
    }
    Ok(Some(serde_json::from_value(Value::Object(obj))?))
}

fn corrupt(run_id: &RunId) -> Error {
    fail(
        ErrorKind::Corrupt,
        "decode",
        format!("run record of {run_id} cannot be decoded"),
    )
}

/// Split a script reply into its code and the rest.
fn code(reply: Reply, op: &'static str) -> Result<(i64, std::vec::IntoIter<Reply>)> {
    let mut it = reply.into_array().ok_or_else(|| bad(op))?.into_iter();
    let c = it.next().and_then(|r| r.int()).ok_or_else(|| bad(op))?;
    Ok((c, it))
}

impl RedisWorkflowStore {
    async fn eval(
        &self,
        op: &'static str,
        script: &Script,
        run_id: &RunId,
        with_checkpoints: bool,
        args: &[&[u8]],
    ) -> Result<(i64, std::vec::IntoIter<Reply>)> {
        let rec = self.keys.run_key(run_id.as_str());
        let ck = self.keys.checkpoints_key(run_id.as_str());
        let keys: &[&[u8]] = if with_checkpoints {
            &[&rec, &ck]
        } else {
            &[&rec]
        };
        code(self.transport.eval(op, script, keys, args).await?, op)
    }

    /// Run a transition script, then add the run to `status`'s index with `score` (its expiry
    /// in ms, `+inf` for none), in one round trip.
    #[allow(clippy::too_many_arguments)]
    async fn eval_indexed(
        &self,
        op: &'static str,
        script: &Script,
        run_id: &RunId,
        with_checkpoints: bool,
        args: &[&[u8]],
        status: RunStatus,
        score: &str,
    ) -> Result<(i64, std::vec::IntoIter<Reply>)> {
        let rec = self.keys.run_key(run_id.as_str());
        let ck = self.keys.checkpoints_key(run_id.as_str());
        let index = self.keys.status_index(status.as_str());
        if self.transport.is_cluster() {
            // The index is a global key in another slot than the run, so it cannot share a
            // pipeline with the script there: the transition first, then the index (never the
            // other way round, or a concurrent `list_runs` could drop the new member as stale).
            let keys: &[&[u8]] = if with_checkpoints {
                &[&rec, &ck]
            } else {
                &[&rec]
            };
            let reply = self.transport.eval(op, script, keys, args).await?;
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&index).arg(score).arg(run_id.as_str());
            self.transport.query(op, &zadd).await?;
            return code(reply, op);
        }
        let mut pipe = redis::pipe();
        // EVAL (not EVALSHA) inside the pipeline: a NOSCRIPT there could not be retried alone.
        pipe.cmd("EVAL")
            .arg(script.source)
            .arg(if with_checkpoints { 2 } else { 1 })
            .arg(&rec);
        if with_checkpoints {
            pipe.arg(&ck);
        }
        for a in args {
            pipe.arg(*a);
        }
        pipe.cmd("ZADD")
            .arg(&index)
            .arg(score)
            .arg(run_id.as_str())
            .ignore();
        let mut replies = self.transport.pipeline(op, &pipe).await?;
        let first = replies.drain(..).next().ok_or_else(|| bad(op))?;
        code(first, op)
    }

    /// Give the run's members of every status index the score `expires` (where it has one), so
    /// `list_runs` drops them once the record is gone.
    fn expire_in_indexes(&self, batch: &mut Batch, run_id: &RunId, expires: &str) {
        for s in ALL_STATUSES {
            let idx = self.keys.status_index(s.as_str());
            batch.ignored(
                &idx,
                redis::cmd("ZADD")
                    .arg(&idx)
                    .arg("XX")
                    .arg(expires)
                    .arg(run_id.as_str())
                    .to_owned(),
            );
        }
    }

    /// `SET_STATUS`, optionally with an expiry (`ttl` ms, and the same instant in Unix ms as the
    /// new index member's score) written by the same script (G6).
    async fn change_status(
        &self,
        op: &'static str,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
        expiry: Option<(u64, &str)>,
    ) -> Result<RunRecord> {
        let ep = epoch.map(|e| e.to_string()).unwrap_or_default();
        let fenced_flag: &[u8] = if epoch.is_some() { b"1" } else { b"0" };
        let encoded = data.as_ref().map(serde_json::to_vec).transpose()?;
        let (has_data, d): (&[u8], &[u8]) = match &encoded {
            Some(d) => (b"1", d),
            None => (b"0", b""),
        };
        let ttl = expiry.map(|(ms, _)| ms.to_string()).unwrap_or_default();
        let (c, mut rest) = self
            .eval_indexed(
                op,
                &SET_STATUS,
                run_id,
                true,
                &[
                    fenced_flag,
                    ep.as_bytes(),
                    status.as_str().as_bytes(),
                    has_data,
                    d,
                    ttl.as_bytes(),
                ],
                status,
                expiry.map_or("+inf", |(_, score)| score),
            )
            .await?;
        match c {
            0 => Self::record(run_id, &mut rest, op),
            1 => Err(not_found(op, run_id)),
            2 => Err(fail(
                ErrorKind::InvalidState,
                op,
                format!("run {run_id} is already terminal"),
            )),
            4 => Err(fenced(op, run_id, epoch.unwrap_or_default())),
            _ => Err(bad(op)),
        }
    }

    fn record(
        run_id: &RunId,
        rest: &mut std::vec::IntoIter<Reply>,
        op: &'static str,
    ) -> Result<RunRecord> {
        let fields = rest
            .next()
            .and_then(Reply::into_array)
            .ok_or_else(|| bad(op))?;
        decode_record(run_id, fields)?.ok_or_else(|| bad(op))
    }

    /// Records of `ids` that are in `status` (or any status), removing stale index members of
    /// the set of `indexed`.
    async fn fetch_listed(
        &self,
        ids: Vec<(RunStatus, String)>,
        status: Option<RunStatus>,
    ) -> Result<Vec<RunRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::default();
        for (_, id) in &ids {
            let key = self.keys.run_key(id);
            batch.add(&key, redis::cmd("HGETALL").arg(&key).to_owned());
        }
        let replies = self.transport.batch("list_runs", &batch).await?;
        let mut out = Vec::new();
        let mut stale = Batch::default();
        let mut any_stale = false;
        for ((indexed, id), reply) in ids.into_iter().zip(replies) {
            let Ok(run_id) = RunId::new(&id) else {
                continue;
            };
            let rec = decode_record(&run_id, reply.into_array().unwrap_or_default())?;
            match rec {
                Some(r) if r.status == indexed => {
                    if status.is_none_or(|s| s == r.status) {
                        out.push(r);
                    }
                }
                _ => {
                    any_stale = true;
                    let index = self.keys.status_index(indexed.as_str());
                    stale.ignored(&index, redis::cmd("ZREM").arg(&index).arg(&id).to_owned());
                }
            }
        }
        if any_stale {
            self.transport.batch("list_runs", &stale).await?;
        }
        out.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        out.dedup_by(|a, b| a.run_id == b.run_id);
        Ok(out)
    }
}

#[async_trait]
impl WorkflowStore for RedisWorkflowStore {
    fn backend(&self) -> &'static str {
        REDIS
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::ALL
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        let data = serde_json::to_vec(&run.data)?;
        let (has_rs, rs) = match &run.resource_id {
            Some(r) => (&b"1"[..], r.as_bytes()),
            None => (&b"0"[..], &b""[..]),
        };
        let (c, mut rest) = self
            .eval_indexed(
                "create_run",
                &CREATE_RUN,
                &run.run_id,
                true,
                &[run.status.as_str().as_bytes(), has_rs, rs, &data],
                run.status,
                "+inf",
            )
            .await?;
        match c {
            0 => Self::record(&run.run_id, &mut rest, "create_run"),
            1 => Err(fail(
                ErrorKind::Conflict,
                "create_run",
                format!("run {} already exists", run.run_id),
            )),
            _ => Err(bad("create_run")),
        }
    }

    async fn get_run(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        let key = self.keys.run_key(run_id.as_str());
        let reply = self
            .transport
            .command("get_run", &[b"HGETALL", &key])
            .await?;
        decode_record(run_id, reply.into_array().ok_or_else(|| bad("get_run"))?)
    }

    async fn load(&self, run_id: &RunId) -> Result<Option<RunSnapshot>> {
        let (rec, ck) = (
            self.keys.run_key(run_id.as_str()),
            self.keys.checkpoints_key(run_id.as_str()),
        );
        let mut batch = Batch::default();
        batch
            .add(&rec, redis::cmd("HGETALL").arg(&rec).to_owned())
            .add(&ck, redis::cmd("HGETALL").arg(&ck).to_owned());
        let mut replies = self.transport.batch("load", &batch).await?.into_iter();
        let (Some(rec), Some(cks)) = (replies.next(), replies.next()) else {
            return Err(bad("load"));
        };
        let Some(record) = decode_record(run_id, rec.into_array().ok_or_else(|| bad("load"))?)?
        else {
            return Ok(None);
        };
        let mut checkpoints = Vec::new();
        let mut it = cks.into_array().ok_or_else(|| bad("load"))?.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let (Some(k), Some(v)) = (k.into_bytes(), v.into_bytes()) else {
                return Err(bad("load"));
            };
            let key = String::from_utf8(k.to_vec()).map_err(|_| corrupt(run_id))?;
            let (seq, output) = split_checkpoint(&v).ok_or_else(|| corrupt(run_id))?;
            checkpoints.push((seq, key, serde_json::from_slice::<Value>(output)?));
        }
        checkpoints.sort_by_key(|(seq, _, _)| *seq);
        Ok(Some(RunSnapshot {
            record,
            checkpoints: checkpoints.into_iter().map(|(_, k, v)| (k, v)).collect(),
        }))
    }

    async fn claim(&self, run_id: &RunId, owner: &str, ttl: Duration) -> Result<Lease> {
        validate_name("owner", owner).map_err(|e| e.with_backend(REDIS).with_operation("claim"))?;
        let ms = ttl_ms(ttl).to_string();
        let (c, mut rest) = self
            .eval(
                "claim",
                &CLAIM,
                run_id,
                false,
                &[owner.as_bytes(), ms.as_bytes()],
            )
            .await?;
        match c {
            0 => {
                let rec = Self::record(run_id, &mut rest, "claim")?;
                Ok(Lease {
                    run_id: run_id.clone(),
                    owner: owner.to_owned(),
                    epoch: rec.epoch,
                    expires_at: rec.lease_expires_at.unwrap_or_default(),
                })
            }
            1 => Err(not_found("claim", run_id)),
            2 => Err(fail(
                ErrorKind::InvalidState,
                "claim",
                format!("run {run_id} is terminal"),
            )),
            3 => Err(fail(
                ErrorKind::Conflict,
                "claim",
                format!("run {run_id} is leased by another owner"),
            )),
            _ => Err(bad("claim")),
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let (ep, ms) = (lease.epoch.to_string(), ttl_ms(ttl).to_string());
        let (c, mut rest) = self
            .eval(
                "renew",
                &RENEW,
                &lease.run_id,
                false,
                &[ep.as_bytes(), lease.owner.as_bytes(), ms.as_bytes()],
            )
            .await?;
        match c {
            0 => {
                let rec = Self::record(&lease.run_id, &mut rest, "renew")?;
                Ok(Lease {
                    expires_at: rec.lease_expires_at.unwrap_or_default(),
                    ..lease.clone()
                })
            }
            1 => Err(not_found("renew", &lease.run_id)),
            4 => Err(fenced("renew", &lease.run_id, lease.epoch)),
            _ => Err(bad("renew")),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let ep = lease.epoch.to_string();
        let (c, _) = self
            .eval("release", &RELEASE, &lease.run_id, false, &[ep.as_bytes()])
            .await?;
        match c {
            0 => Ok(()),
            1 => Err(not_found("release", &lease.run_id)),
            4 => Err(fenced("release", &lease.run_id, lease.epoch)),
            _ => Err(bad("release")),
        }
    }

    async fn checkpoint(
        &self,
        run_id: &RunId,
        epoch: Epoch,
        key: &str,
        output: Value,
    ) -> Result<Value> {
        validate_name("step key", key)
            .map_err(|e| e.with_backend(REDIS).with_operation("checkpoint"))?;
        let ep = epoch.to_string();
        let encoded = serde_json::to_vec(&output)?;
        let (c, mut rest) = self
            .eval(
                "checkpoint",
                &CHECKPOINT,
                run_id,
                true,
                &[ep.as_bytes(), key.as_bytes(), &encoded],
            )
            .await?;
        match c {
            0 => Ok(output),
            5 => {
                let stored: Bytes = rest
                    .next()
                    .and_then(Reply::into_bytes)
                    .ok_or_else(|| bad("checkpoint"))?;
                let (_, json) = split_checkpoint(&stored).ok_or_else(|| corrupt(run_id))?;
                Ok(serde_json::from_slice(json)?)
            }
            1 => Err(not_found("checkpoint", run_id)),
            4 => Err(fenced("checkpoint", run_id, epoch)),
            _ => Err(bad("checkpoint")),
        }
    }

    async fn set_status(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        data: Option<Value>,
    ) -> Result<RunRecord> {
        self.change_status("set_status", run_id, epoch, status, data, None)
            .await
    }

    async fn finish_run(
        &self,
        run_id: &RunId,
        epoch: Option<Epoch>,
        status: RunStatus,
        ttl: Duration,
    ) -> Result<RunRecord> {
        const OP: &str = "finish_run";
        check_terminal(status)?;
        let ms = ttl_ms(ttl);
        let expires = now_ms().saturating_add(ms).to_string();
        let record = self
            .change_status(OP, run_id, epoch, status, None, Some((ms, &expires)))
            .await?;
        // The members the run left in other indexes expire with it (best effort: `list_runs`
        // drops a member whose record is gone in any case).
        let mut batch = Batch::default();
        self.expire_in_indexes(&mut batch, run_id, &expires);
        if let Err(e) = self.transport.batch(OP, &batch).await {
            tracing::debug!(run_id = %run_id, error = %e, "index members keep no expiry");
        }
        Ok(record)
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunRecord>> {
        let statuses: Vec<RunStatus> = match status {
            Some(s) => vec![s],
            None => ALL_STATUSES.to_vec(),
        };
        let now = format!("({}", now_ms());
        let mut batch = Batch::default();
        for s in &statuses {
            let idx = self.keys.status_index(s.as_str());
            batch
                .ignored(
                    &idx,
                    redis::cmd("ZREMRANGEBYSCORE")
                        .arg(&idx)
                        .arg("-inf")
                        .arg(&now)
                        .to_owned(),
                )
                .add(
                    &idx,
                    redis::cmd("ZRANGE").arg(&idx).arg(0).arg(-1).to_owned(),
                );
        }
        let replies = self.transport.batch("list_runs", &batch).await?;
        let mut ids = Vec::new();
        for (s, members) in statuses.iter().zip(replies) {
            for m in members.into_array().ok_or_else(|| bad("list_runs"))? {
                let m = m.into_bytes().ok_or_else(|| bad("list_runs"))?;
                if let Ok(id) = std::str::from_utf8(&m) {
                    ids.push((*s, id.to_owned()));
                }
            }
        }
        self.fetch_listed(ids, status).await
    }

    async fn expire_run(&self, run_id: &RunId, ttl: Duration) -> Result<bool> {
        let ms = ttl_ms(ttl);
        let expires = (now_ms().saturating_add(ms)).to_string();
        let rec = self.keys.run_key(run_id.as_str());
        let ck = self.keys.checkpoints_key(run_id.as_str());
        let mut batch = Batch::default();
        batch.add(
            &rec,
            redis::cmd("EVAL")
                .arg(EXPIRE_RUN.source)
                .arg(2)
                .arg(&rec)
                .arg(&ck)
                .arg(ms)
                .to_owned(),
        );
        self.expire_in_indexes(&mut batch, run_id, &expires);
        let replies = self.transport.batch("expire_run", &batch).await?;
        let n = replies
            .first()
            .and_then(Reply::int)
            .ok_or_else(|| bad("expire_run"))?;
        Ok(n == 1)
    }

    async fn delete_run(&self, run_id: &RunId) -> Result<bool> {
        let rec = self.keys.run_key(run_id.as_str());
        let mut batch = Batch::default();
        batch.add(
            &rec,
            redis::cmd("DEL")
                .arg(&rec)
                .arg(self.keys.checkpoints_key(run_id.as_str()))
                .to_owned(),
        );
        for s in ALL_STATUSES {
            let idx = self.keys.status_index(s.as_str());
            batch.ignored(
                &idx,
                redis::cmd("ZREM").arg(&idx).arg(run_id.as_str()).to_owned(),
            );
        }
        let replies = self.transport.batch("delete_run", &batch).await?;
        let n = replies
            .first()
            .and_then(Reply::int)
            .ok_or_else(|| bad("delete_run"))?;
        Ok(n > 0)
    }
}

/// Split a stored checkpoint `<seq> <json>`.
fn split_checkpoint(v: &[u8]) -> Option<(u64, &[u8])> {
    let space = v.iter().position(|b| *b == b' ')?;
    let seq = std::str::from_utf8(&v[..space]).ok()?.parse().ok()?;
    Some((seq, &v[space + 1..]))
}

impl RedisWorkflowStore {
    /// Connect to `url` with default settings; see [`RedisConfig`](crate::RedisConfig) for more.
    ///
    /// # Errors
    /// `InvalidInput` for a bad URL, `Unavailable` if the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(crate::RedisConfig::new(url)
            .connect()
            .await?
            .workflow_store())
    }
}

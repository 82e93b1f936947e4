//! The Lua scripts. Each runs atomically on the server, in one round trip (`EVALSHA`, falling
//! back to `EVAL` once after a server restart flushed the script cache). Scripts answer with
//! status codes instead of errors so that Redis and the Upstash REST API decode them alike.

use std::sync::LazyLock;

/// A Lua script and its SHA-1.
#[derive(Debug)]
pub(crate) struct Script {
    pub(crate) source: &'static str,
    pub(crate) sha: String,
    /// Whether it may write (then `RedisConfig::replica_acks` waits for replicas after it).
    pub(crate) writes: bool,
}

impl Script {
    /// `name` documents the script at its definition; only the source, the hash and whether
    /// it writes (every script but `get`, `read` and `len`) are kept.
    fn new(name: &'static str, source: &'static str) -> Self {
        let sha = redis::Script::new(source).get_hash().to_owned();
        let writes = !matches!(name, "get" | "read" | "len");
        Self {
            source,
            sha,
            writes,
        }
    }
}

/// Read a key. KEYS: key, companion of a log of that name. Returns `{1}` (the name is a log)
/// or `{0, value}` (`value` false for a missing key).
pub(crate) static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "get",
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {0} end
if t ~= 'string' then return {1} end
return {0, redis.call('GET', KEYS[1])}
"#,
    )
});

/// Write a key. KEYS: key, companion. ARGV: value, ttl ms (`""` = none). Returns 1 if the
/// name is a log (nothing written), else 0.
pub(crate) static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "set",
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' then return 1 end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
"#,
    )
});

/// Increment with a TTL set on creation. KEYS: key, companion. ARGV: by, ttl ms (`""` =
/// none). Returns `{0, value}`, `{1}` (a log, or a value that is not an integer) or `{2}`
/// (overflow); nothing changes unless `{0, …}`. The value is returned as the stored string:
/// Lua numbers are doubles and would round integers beyond 2^53.
pub(crate) static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "increment",
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' then return {1} end
local ok, v = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if not ok then
  local msg = type(v) == 'table' and v.err or tostring(v)
  if string.find(msg, 'overflow', 1, true) then return {2} end
  return {1}
end
if t == 'none' and ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {0, redis.call('GET', KEYS[1])}
"#,
    )
});

/// Append to a run log, and optionally announce the batch. KEYS: list, companion hash. ARGV:
/// fence (`""` = none), max_len (`""` = none), must exist (`"1"` or `""`), announce channel
/// (`""` = none), max frame bytes, payloads… Returns `{0, first}`, `{1, fence}` (fenced),
/// `{2, len}` (limit), `{3, 0}` (missing and must exist) or `{4, 0}` (the name is a key).
///
/// The checks come in the reference order (name conflict, must exist, fence, `max_len`) and
/// all of them before any write: a rejected append changes nothing, the fence included, and
/// announces nothing.
///
/// The list index is the cursor: nothing is ever trimmed from the head of a log (an over-long
/// append is rejected, not trimmed), so `LRANGE from …` is a read by cursor. The companion hash
/// holds the fence and makes an empty log exist. A log created after `expire` inherits the
/// companion's TTL, so no key outlives its log.
///
/// **Announce.** With a channel, a non-empty batch is `PUBLISH`ed after it is stored, in the
/// same script: the frame of `durable_core::frame::encode`, byte for byte — `"<first> <n>"`,
/// and when the length-prefixed payloads (`len + digits(len) + 1` bytes each) fit in max frame
/// bytes, `" <len_1>,…,<len_n>\n"` and the payloads. A subscriber can never hear of an event
/// before it is readable, and frames of one log leave in cursor order (scripts run one at a
/// time). `PUBLISH` touches no key, so the script stays in the log's hash slot.
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "append",
        r#"
local meta = redis.call('HGET', KEYS[2], 'f')
if not meta then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {4, 0} end
  if ARGV[3] == '1' then return {3, 0} end
end
local cur = 0
if meta then cur = tonumber(meta) end
local fence = ARGV[1]
if fence ~= '' then
  if tonumber(fence) < cur then return {1, cur} end
end
local len = redis.call('LLEN', KEYS[1])
local n = #ARGV - 5
if ARGV[2] ~= '' and len + n > tonumber(ARGV[2]) then return {2, len} end
if fence ~= '' and tonumber(fence) > cur then
  redis.call('HSET', KEYS[2], 'f', fence)
elseif not meta then
  redis.call('HSET', KEYS[2], 'f', '0')
end
if n > 0 then
  for i = 6, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  if len == 0 then
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  end
  if ARGV[4] ~= '' then
    local header = string.format('%d %d', len, n)
    local lens = {}
    local body = 0
    for i = 6, #ARGV do
      local l = string.format('%d', #ARGV[i])
      lens[#lens + 1] = l
      body = body + #ARGV[i] + #l + 1
    end
    if body <= tonumber(ARGV[5]) then
      redis.call('PUBLISH', ARGV[4],
        header .. ' ' .. table.concat(lens, ',') .. '\n' .. table.concat(ARGV, '', 6, #ARGV))
    else
      redis.call('PUBLISH', ARGV[4], header)
    end
  end
end
return {0, len}
"#,
    )
});

/// Read a run log. KEYS: list, companion. ARGV: from, limit. Returns `{-1}` (missing), `{-3}`
/// (the name is a key), `{-2, len}` (from beyond the end) or `{len, {entries…}}`.
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "read",
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-3} end
  return {-1}
end
local len = redis.call('LLEN', KEYS[1])
local from = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if from > len then return {-2, len} end
if limit == 0 or from == len then return {len, {}} end
return {len, redis.call('LRANGE', KEYS[1], from, from + limit - 1)}
"#,
    )
});

/// A log's length. KEYS: list, companion. Returns -1 when the log does not exist, -2 when the
/// name is a key.
pub(crate) static LEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "len",
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
  return -1
end
return redis.call('LLEN', KEYS[1])
"#,
    )
});

/// Expire a log with its companion. KEYS: list, companion. ARGV: ttl ms. Returns 0 if missing,
/// -1 if the name is a key (nothing changes), else 1.
pub(crate) static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "expire",
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
  return 0
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Shared prelude of the store scripts: server time in ms, integer formatting, terminal check.
/// Lease times come from the Redis server clock (`TIME`), so every client agrees on who holds a
/// lease regardless of its own clock.
macro_rules! store_script {
    ($name:literal, $body:literal $(,)?) => {
        Script::new(
            $name,
            concat!(
                r#"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function s(x) return string.format('%d', x) end
local function terminal(st) return st == 'completed' or st == 'failed' or st == 'aborted' end
"#,
                $body
            ),
        )
    };
}

/// Create a run. KEYS: record, checkpoints. ARGV: status, has resource (`1`/`0`), resource,
/// data. Returns `{1}` if it exists, else `{0, record}`.
pub(crate) static CREATE_RUN: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "create_run",
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1} end
redis.call('DEL', KEYS[2])
local t = s(now())
redis.call('HSET', KEYS[1], 'st', ARGV[1], 'ep', '0', 'ca', t, 'ua', t, 'd', ARGV[4], 'n', '0')
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'rs', ARGV[3]) end
return {0, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// Claim the lease. KEYS: record. ARGV: owner, ttl ms. Returns `{1}` missing, `{2}` terminal,
/// `{3}` leased by another owner, or `{0, record}`.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "claim",
        r#"
local r = redis.call('HMGET', KEYS[1], 'st', 'ep', 'ow', 'le')
if not r[1] then return {1} end
if terminal(r[1]) then return {2} end
local t = now()
if r[3] and r[4] and tonumber(r[4]) > t and r[3] ~= ARGV[1] then return {3} end
redis.call('HSET', KEYS[1], 'ep', s(tonumber(r[2]) + 1), 'ow', ARGV[1],
  'le', s(t + tonumber(ARGV[2])), 'ua', s(t))
return {0, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// Renew a lease. KEYS: record. ARGV: epoch, owner, ttl ms. Returns `{1}` missing, `{4}`
/// fenced, or `{0, record}`.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "renew",
        r#"
local ep = redis.call('HGET', KEYS[1], 'ep')
if not ep then return {1} end
if ep ~= ARGV[1] then return {4} end
local t = now()
redis.call('HSET', KEYS[1], 'ow', ARGV[2], 'le', s(t + tonumber(ARGV[3])), 'ua', s(t))
return {0, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// Release a lease. KEYS: record. ARGV: epoch. Returns `{1}` missing, `{4}` fenced, `{0}`.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "release",
        r#"
local ep = redis.call('HGET', KEYS[1], 'ep')
if not ep then return {1} end
if ep ~= ARGV[1] then return {4} end
redis.call('HDEL', KEYS[1], 'ow', 'le')
redis.call('HSET', KEYS[1], 'ua', s(now()))
return {0}
"#,
    )
});

/// Store a checkpoint, first write wins. KEYS: record, checkpoints. ARGV: epoch, step key,
/// output. Returns `{1}` missing, `{4}` fenced, `{5, stored}` if the key exists, `{0}`.
/// Values are `<seq> <json>` so `load` can restore write order.
pub(crate) static CHECKPOINT: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "checkpoint",
        r#"
local ep = redis.call('HGET', KEYS[1], 'ep')
if not ep then return {1} end
if ep ~= ARGV[1] then return {4} end
local old = redis.call('HGET', KEYS[2], ARGV[2])
if old then return {5, old} end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[2], ARGV[2], s(n) .. ' ' .. ARGV[3])
redis.call('HSET', KEYS[1], 'ua', s(now()))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return {0}
"#,
    )
});

/// Change the status. KEYS: record, checkpoints. ARGV: fenced (`1`/`0`), epoch, status, has
/// data, data, ttl ms (empty: no expiry; else the record and checkpoints expire in the same
/// script, as `finish_run` needs). Returns `{1}` missing, `{4}` fenced, `{2}` terminal, or
/// `{0, record}`.
pub(crate) static SET_STATUS: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "set_status",
        r#"
local r = redis.call('HMGET', KEYS[1], 'st', 'ep')
if not r[1] then return {1} end
if ARGV[1] == '1' and r[2] ~= ARGV[2] then return {4} end
if terminal(r[1]) then return {2} end
redis.call('HSET', KEYS[1], 'st', ARGV[3], 'ua', s(now()))
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'd', ARGV[5]) end
if terminal(ARGV[3]) or ARGV[3] == 'suspended' then redis.call('HDEL', KEYS[1], 'ow', 'le') end
if ARGV[6] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return {0, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// Expire a run's record and checkpoints. KEYS: record, checkpoints. ARGV: ttl ms.
/// Returns 0 if missing, else 1.
pub(crate) static EXPIRE_RUN: LazyLock<Script> = LazyLock::new(|| {
    store_script!(
        "expire_run",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"#,
    )
});

/// Publish to a topic and, if it has consumer groups, append to their stream. KEYS: group
/// stream. ARGV: fan-out channel, payload, group wake-up channel, stream max length, stream
/// TTL ms.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "publish",
        r#"
redis.call('PUBLISH', ARGV[1], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'p', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PUBLISH', ARGV[3], '')
end
return 1
"#,
    )
});

/// Create a consumer group (if missing) and refresh the stream's TTL. KEYS: stream. ARGV:
/// group, TTL ms.
pub(crate) static GROUP_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "group_join",
        r#"
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// Claim jobs idle for at least `min_idle` (crashed consumers, nacked jobs). KEYS: stream.
/// ARGV: group, consumer, min idle ms, count. Returns `{{id, fields, attempt}, …}`.
pub(crate) static GROUP_RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "group_reclaim",
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local out = {}
for _, e in ipairs(p) do
  local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], e[1])
  if c[1] then out[#out + 1] = {c[1][1], c[1][2], e[4] + 1} end
end
return out
"#,
    )
});

/// Nack: make a pending job look idle for ever (without counting a delivery), then wake the
/// group so a consumer reclaims it at once. KEYS: stream. ARGV: group, consumer, id, wake-up
/// channel.
pub(crate) static GROUP_NACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "group_nack",
        r#"
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', '1000000000000', 'JUSTID')
redis.call('PUBLISH', ARGV[4], '')
return 1
"#,
    )
});

/// Remove a detached consumer from its group if it holds no pending job. KEYS: stream. ARGV:
/// group, consumer.
pub(crate) static GROUP_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "group_leave",
        r#"
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if ok and #p == 0 then pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#,
    )
});
